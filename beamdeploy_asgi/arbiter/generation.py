"""Generations and their worker processes, as the arbiter tracks them."""

from __future__ import annotations

import enum
import selectors
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from gunicorn.workers.workertmp import WorkerTmp

from beamdeploy_asgi.lines import LineBuffer, encode, send_some
from beamdeploy_asgi.releases.release import Release

MAX_OUTBOX = 8 * 1024 * 1024  # replies queued for a worker that does not read


class GenerationState(str, enum.Enum):
    BOOTING = "booting"
    SERVING = "serving"
    STANDBY = "standby"  # promoted away from, booted and paused for a bake window
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


class WorkerState(str, enum.Enum):
    BOOTING = "booting"  # exec'd, loading the app and running lifespan startup
    READY = "ready"  # booted and checked, waiting to be told to accept
    SERVING = "serving"  # accepting connections
    DRAINING = "draining"  # stopped accepting, finishing its connections
    STOPPING = "stopping"  # told to stop before it ever served


@dataclass
class WorkerProcess:
    """One exec'd worker: its process, its status channel and its heartbeat."""

    generation: Generation
    age: int
    proc: subprocess.Popen[bytes]
    channel: socket.socket
    heartbeat: WorkerTmp
    state: WorkerState = WorkerState.BOOTING
    started: float = field(default_factory=time.monotonic)
    serving_since: float | None = None
    deadline: float | None = None
    aborted: bool = False
    stopped_accepting: bool = False
    failure: str | None = None
    app_file: str | None = None
    hot_reload: int = 0  # the reload steps' version its beamdeploy-asgi speaks; 0: none
    open_requests: int = 0  # admin requests it forwarded that are not answered yet
    deploy: int = 0  # pause, resume, response counts, private listener: DEPLOY_VERSION; 0: none
    paused: bool = False  # it said it stopped accepting, still booted
    responses: dict[str, int] = field(default_factory=dict)  # its last counts, by class
    reader: LineBuffer = field(default_factory=LineBuffer)
    outbox: bytearray = field(default_factory=bytearray)
    selector: selectors.BaseSelector | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, message: dict[str, Any]) -> bool:
        """Queue `message` and write what the socket takes now; False if dropped.

        The channel is non-blocking: a worker that does not read gets at most
        MAX_OUTBOX bytes queued, never a stalled arbiter.
        """
        data = encode(message)
        if self.channel.fileno() < 0 or len(self.outbox) + len(data) > MAX_OUTBOX:
            return False
        self.outbox += data
        self.flush()
        return True

    def flush(self) -> None:
        if not send_some(self.channel, self.outbox):
            self.outbox.clear()
        if self.selector is not None:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbox else 0)
            try:
                self.selector.modify(self.channel, events, self)
            except (KeyError, ValueError):
                self.outbox.clear()  # no longer watched: the worker is gone or rejected

    def describe(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "state": self.state.value,
            "age": self.age,
            "app_file": self.app_file,
            "artifact_sha256": self.generation.release.artifact_sha256,
        }

    def close(self) -> None:
        self.channel.close()
        self.heartbeat.close()


@dataclass
class Generation:
    """The set of workers running one release."""

    number: int
    release: Release
    size: int
    state: GenerationState = GenerationState.BOOTING
    workers: dict[int, WorkerProcess] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    promoted_at: float | None = None
    drain_started_at: float | None = None
    stopped_at: float | None = None
    failure: str | None = None
    crash_streak: int = 0
    crashes: int = 0  # workers of it that died while it served, ever
    respawn_at: float = 0.0
    ran: list[str] = field(default_factory=list)  # releases hot-reloaded away from, still in use
    private_listener: socket.socket | None = None  # loopback, served from READY on
    exited_responses: dict[str, int] = field(default_factory=dict)  # its gone workers' counts

    def in_state(self, *states: WorkerState) -> list[WorkerProcess]:
        return [w for w in self.workers.values() if w.state in states]

    def describe(self) -> dict[str, Any]:
        return {
            "generation": self.number,
            "state": self.state.value,
            "release": self.release.describe(),
            "size": self.size,
            "workers": [w.describe() for w in self.workers.values()],
            "created_at": self.created_at,
            "promoted_at": self.promoted_at,
            "drain_started_at": self.drain_started_at,
            "stopped_at": self.stopped_at,
            "failure": self.failure,
        }

    def __str__(self) -> str:
        return f"generation {self.number} ({self.release})"
