"""Why a worker could not boot, in a form the arbiter can pass to the deployer."""

from __future__ import annotations

import traceback

TRACEBACK_TAIL = 30  # lines


class BootFailure(Exception):
    def __init__(self, phase: str, message: str, traceback_text: str = "") -> None:
        super().__init__(message)
        self.phase = phase
        self.message = message
        self.traceback = traceback_text

    @classmethod
    def from_exception(cls, phase: str, what: str, exc: BaseException) -> BootFailure:
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
        tail = "".join(lines).splitlines()[-TRACEBACK_TAIL:]
        return cls(phase, f"{what}: {type(exc).__name__}: {exc}", "\n".join(tail))


class StoppedBeforeServing(Exception):
    """The arbiter told this worker to stop before it ever accepted a connection."""
