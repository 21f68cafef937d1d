"""The operator's deployment hooks, run so that none can stop the arbiter.

A hook is the operator's Python from the gunicorn config file, but it may
hang (a network call) or raise. Each call runs in a thread of its own; the
arbiter's loop looks at it on every pass (`check`), and a call past
``--hook-timeout`` is reported as such and left behind: a thread cannot be
killed, and the deployment goes on without it.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import Logger
from typing import Any

MAX_REASON = 2000

Done = Callable[[str | None], None]  # None: the hook passed; else why not


@dataclass
class HookCall:
    name: str
    done: Done | None
    deadline: float
    started: float
    result: list[Any] = field(default_factory=list)  # [value] or [None, error] once it ended
    thread: threading.Thread | None = None


class DeploymentHooks:
    def __init__(
        self,
        cfg: Any,
        log: Logger,
        server: Any,
        wake: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`server` is what the hooks get first, as gunicorn's own hooks do: the arbiter.
        `wake` wakes the arbiter's loop (from the hook's thread) when a hook ended."""
        self.cfg = cfg
        self.log = log
        self.server = server
        self.wake = wake
        self.clock = clock
        self.running: list[HookCall] = []

    def call(self, name: str, record: dict[str, Any], done: Done | None = None) -> None:
        """Run hook `name` with the deployment's record; `done` gets its verdict later.

        A hook that returns False, raises or runs out of time fails; the
        reason says which.
        """
        hook = getattr(self.cfg, name)
        now = self.clock()
        call = HookCall(name, done, now + self.cfg.hook_timeout, now)

        def run() -> None:
            try:
                call.result.append(hook(self.server, record))
            except BaseException as exc:  # noqa: BLE001 - the operator's code; reported
                call.result += [None, _reason(exc)]
            self.wake()

        call.thread = threading.Thread(target=run, name=f"hook {name}", daemon=True)
        call.thread.start()
        self.running.append(call)

    def check(self) -> None:
        """Report the hooks that ended or ran out of time."""
        now = self.clock()
        for call in list(self.running):
            if call.result:
                self.running.remove(call)
                self._report(call, _verdict(call.result), now)
            elif now > call.deadline:
                self.running.remove(call)
                took = self.cfg.hook_timeout
                self._report(call, f"it did not return within {took:g}s (--hook-timeout)", now)

    @property
    def waiting(self) -> bool:
        return bool(self.running)

    def _report(self, call: HookCall, failure: str | None, now: float) -> None:
        took = now - call.started
        if failure is None:
            self.log.info("hook %s passed in %.2fs", call.name, took)
        else:
            self.log.error("hook %s failed after %.2fs: %s", call.name, took, failure)
        if call.done is not None:
            call.done(failure)


def _verdict(result: list[Any]) -> str | None:
    if len(result) == 2:
        return str(result[1])
    if result[0] is False:
        return "it returned False"
    return None


def _reason(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    text = "".join(lines).strip()
    return text if len(text) <= MAX_REASON else text[:MAX_REASON] + "..."
