"""Whether the operator took this host out of its load balancer: the drain mark.

The mark belongs to the host, so the arbiter holds it, not a generation: a
deploy while drained stays drained, and the file STATE_DIR/drained keeps it
across an arbiter restart or reexec. Workers answer the public health check
from their own copy, which the arbiter pushes on their status channel when
the mark changes and to each worker it starts; a probe never reaches the
arbiter.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from logging import Logger
from pathlib import Path
from typing import Any

from beamdeploy_asgi.protocol import Command

FILE_NAME = "drained"


class HostState:
    def __init__(
        self, state_dir: str | os.PathLike[str], log: Logger, tell: Callable[[dict[str, Any]], None]
    ) -> None:
        """`tell` hands the workers' command to every worker, now and at each spawn."""
        self.path = Path(state_dir) / FILE_NAME
        self.log = log
        self.tell = tell
        self.drained_at: float | None = self._read()
        if self.drained_at is not None:
            self.log.warning("this host is marked draining since %s", stamp(self.drained_at))
        self.tell(self.command())

    def _read(self) -> float | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:  # unreadable: keep the host out rather than in
            self.log.error("cannot read %s (%s): the host stays marked draining", self.path, exc)
            return time.time()
        try:
            since = json.loads(text)["since"]
            return float(since)
        except (ValueError, TypeError, KeyError):  # written by hand: its mere presence counts
            return time.time()

    @property
    def draining(self) -> bool:
        return self.drained_at is not None

    def drain(self) -> dict[str, Any]:
        """Mark the host draining (again: the first time stays); raises OSError if not kept."""
        if self.drained_at is None:
            since = time.time()
            temporary = self.path.with_name(FILE_NAME + ".new")
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(json.dumps({"since": since}) + "\n")
            os.replace(temporary, self.path)
            self.drained_at = since
            self.log.warning("host marked draining: /_deploy/health answers 503")
            self.tell(self.command())
        return self.describe()

    def undrain(self) -> dict[str, Any]:
        if self.drained_at is not None:
            self.path.unlink(missing_ok=True)
            self.drained_at = None
            self.log.warning("host drain mark removed: /_deploy/health answers 200")
            self.tell(self.command())
        return self.describe()

    def describe(self) -> dict[str, Any]:
        """For status: {"draining": bool, "since": unix time or None}."""
        return {"draining": self.draining, "since": self.drained_at}

    def command(self) -> dict[str, Any]:
        """What each worker keeps to answer health: a reason, none when serving."""
        reason = None
        if self.drained_at is not None:
            reason = f"marked draining by the operator at {stamp(self.drained_at)}"
        return {"cmd": Command.HOST.value, "draining": self.draining, "reason": reason}


def stamp(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
