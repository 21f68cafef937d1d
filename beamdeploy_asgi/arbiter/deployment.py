"""A deployment: one attempt to put a release into service, and its story."""

from __future__ import annotations

import enum
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from beamdeploy_asgi.arbiter.generation import Generation
from beamdeploy_asgi.releases.release import Release

Listener = Callable[[dict[str, Any]], None]
MAX_EVENTS = 500
MAX_MESSAGE = 2000  # the error, with its traceback, is kept whole in `error`


class Phase(str, enum.Enum):
    """Where a deployment stands; its value is what events, status and history say."""

    STARTING = "starting"
    INSTALLING = "installing"  # an artifact becomes a release in the store
    PREFLIGHT = "preflight"  # the app is imported once
    BOOTING = "booting"  # every worker of the new generation boots
    CHECKING = "checking"  # the smoke command and the before_promote hook
    ROLLING = "rolling"  # rolling strategy: new workers replace old ones a few at a time
    PROMOTING = "promoting"  # all READY: each is told to accept
    PROMOTED = "promoted"  # the new generation serves
    BAKING = "baking"  # the old generation waits, booted, while the new one's answers count
    ROLLING_BACK = "rolling-back"  # the bake tripped: the old one serves, the new one drains
    DRAINING = "draining"  # the old one stops accepting
    STOPPING = "stopping"  # a failed generation is being stopped
    PLANNING = "planning"  # hot reload: what changes between the two releases, and is it allowed
    PREPARING = "preparing"  # hot reload: every worker compiles and checks the new code
    SUSPENDING = "suspending"  # hot reload: every worker holds new requests, finishes the rest
    COMMITTING = "committing"  # hot reload: every worker patches its code and runs the hooks
    RESUMING = "resuming"  # hot reload: held requests go on, on the new code
    UNDOING = "undoing"  # hot reload: every worker puts the old code back
    DONE = "done"
    FAILED = "failed"
    ROLLED_BACK = "rolled-back"

    def __str__(self) -> str:
        return self.value


@dataclass
class Deployment:
    """Blue-green: [installing ->] [preflight ->] booting -> [checking ->] promoting ->
    promoted -> [baking ->] draining -> done; or stopping -> failed (or straight
    to failed) at any step; a bake that trips: rolling-back -> rolled-back.
    Rolling: [installing ->] rolling [-> checking -> rolling] -> promoted ->
    draining -> done; or stopping -> failed.
    Hot reload: [installing ->] planning -> preparing -> suspending -> committing ->
    resuming -> done; or [undoing ->] failed."""

    kind: str
    previous: Generation | None
    release: Release | None = None
    from_release: Release | None = None  # what served when it started (a hot reload changes it)
    artifact: str | None = None
    target: Generation | None = None
    id: str = field(default_factory=lambda: secrets.token_hex(6))
    phase: Phase = Phase.STARTING
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    drained_at: float | None = None
    outcome: str | None = None
    error: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    listeners: list[Listener] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # a hot reload's plan and results

    def __post_init__(self) -> None:
        if self.from_release is None and self.previous is not None:
            self.from_release = self.previous.release

    @property
    def ended(self) -> bool:
        return self.outcome is not None

    def record(self, phase: Phase, message: str, **extra: Any) -> None:
        """Add an event; past MAX_EVENTS only a change of phase is kept, so memory stays flat."""
        if len(self.events) >= MAX_EVENTS and phase == self.phase:
            return
        self.phase = phase
        message = message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + "..."
        event = {"phase": phase, "message": message, "at": time.time(), **extra}
        self.events.append(event)
        for listener in list(self.listeners):
            listener(event)

    def finish(self, outcome: str, message: str, error: str | None = None) -> None:
        self.ended_at = time.time()
        self.error = error
        self.outcome = outcome
        ends = {"succeeded": Phase.DONE, "rolled-back": Phase.ROLLED_BACK}
        self.record(ends.get(outcome, Phase.FAILED), message)
        self.listeners.clear()

    def describe(self) -> dict[str, Any]:
        record = self.summary()
        record["events"] = list(self.events)
        return record

    def summary(self) -> dict[str, Any]:
        """What the history file keeps: everything but the events."""
        if self.release is not None:
            to: dict[str, Any] | None = self.release.describe()
        else:
            to = {"artifact": self.artifact}
        return {
            "id": self.id,
            "kind": self.kind,
            "from": self.from_release.describe() if self.from_release else None,
            "to": to,
            "generation": self.target.number if self.target else None,
            "phase": self.phase,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "drained_at": self.drained_at,
            "outcome": self.outcome,
            "error": self.error,
            "timings": dict(self.timings),
            **self.details,
        }
