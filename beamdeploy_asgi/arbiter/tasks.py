"""Helper subprocesses (install, preflight) that the arbiter's loop watches.

Their output is read when the selector says it is readable, and their exit
is seen by the loop's reaping, so a slow install never stalls the arbiter.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any


class Task:
    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        selector: selectors.BaseSelector,
        on_line: Callable[[dict[str, Any]], None],
        on_exit: Callable[[Task], None],
        timeout: float,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        owner: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.on_line = on_line
        self.on_exit = on_exit
        self.deadline = time.monotonic() + timeout
        self.selector = selector
        self.lines: list[dict[str, Any]] = []
        self.text: list[str] = []
        self.inbox = b""
        self.returncode: int | None = None
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            **(owner or {}),
        )
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        selector.register(self.proc.stdout, selectors.EVENT_READ, self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def on_readable(self) -> None:
        assert self.proc.stdout is not None
        try:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        if not chunk:
            self._close_output()
            return
        self.inbox += chunk
        while b"\n" in self.inbox:
            raw, self.inbox = self.inbox.split(b"\n", 1)
            self._line(raw)

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace")
        try:
            message = json.loads(text)
        except Exception:  # ValueError, or RecursionError on absurd nesting
            message = None
        if isinstance(message, dict):
            self.lines.append(message)
            self.on_line(message)
        elif text.strip():
            self.text.append(text)

    def _close_output(self) -> None:
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.selector.unregister(self.proc.stdout)
            self.proc.stdout.close()

    def exited(self, status: int) -> None:
        """Called by the arbiter's reaping; reads what is left, then reports."""
        self.returncode = os.waitstatus_to_exitcode(status)
        self.proc.returncode = self.returncode
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            # Only what is buffered: a grandchild may hold the pipe open for ever.
            rest = b""
            while True:
                try:
                    chunk = os.read(self.proc.stdout.fileno(), 65536)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                rest += chunk
            for raw in (self.inbox + rest).split(b"\n"):
                if raw.strip():
                    self._line(raw)
            self.inbox = b""
            self._close_output()
        self.on_exit(self)

    def kill(self) -> None:
        # Not Popen.kill(): it may reap the process, and the arbiter reaps.
        try:
            os.kill(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def last(self, key: str) -> Any:
        for message in reversed(self.lines):
            if key in message:
                return message[key]
        return None

    def output_tail(self, lines: int = 15) -> str:
        return "\n".join(self.text[-lines:])
