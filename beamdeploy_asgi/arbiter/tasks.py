"""Helper subprocesses (install, preflight) that the arbiter's loop watches.

Their output is read when the selector says it is readable, and their exit
is seen by the loop's reaping, so a slow install never stalls the arbiter.
They run release code, so what is kept of their output is bounded: a capped
line, the last messages and the last lines of text.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from logging import Logger
from typing import Any

from beamdeploy_asgi.lines import LineBuffer, LineTooLong, parse_object

KEPT_MESSAGES = 100
KEPT_TEXT_LINES = 200
TEXT_LINE_CHARS = 2000
READ_AFTER_EXIT = 1024 * 1024  # a grandchild may hold the pipe open and keep writing


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
        keep_messages: int = KEPT_MESSAGES,
        max_output: int | None = None,
        messages: bool = True,
    ) -> None:
        """`keep_messages` JSON lines are kept; past `max_output` bytes, the task is killed.

        Without `messages`, every line is text: a command that is not ours.
        """
        self.messages = messages
        self.name = name
        self.argv = argv
        self.on_line = on_line
        self.on_exit = on_exit
        self.deadline = time.monotonic() + timeout
        self.selector = selector
        self.lines: deque[dict[str, Any]] = deque(maxlen=keep_messages)
        self.max_output = max_output
        self.output = 0
        self.text: deque[str] = deque(maxlen=KEPT_TEXT_LINES)
        self.reader = LineBuffer()
        self.failure: str | None = None  # why the arbiter stopped it, if it did
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
        self._feed(chunk)

    def _feed(self, chunk: bytes) -> None:
        self.output += len(chunk)
        if self.max_output is not None and self.output > self.max_output:
            self.failure = f"it printed more than {self.max_output >> 10} KiB"
            self._close_output()
            self.kill()
            return
        try:
            lines = self.reader.feed(chunk)
        except LineTooLong as exc:
            self.failure = f"it printed {exc}"
            self._close_output()
            self.kill()
            return
        for raw in lines:
            self._line(raw)

    def _line(self, raw: bytes) -> None:
        message = parse_object(raw) if self.messages else None
        if message is not None:
            self.lines.append(message)
            self.on_line(message)
            return
        text = raw.decode("utf-8", "replace")
        if text.strip():
            self.text.append(text[:TEXT_LINE_CHARS])

    def _close_output(self) -> None:
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.selector.unregister(self.proc.stdout)
            self.proc.stdout.close()

    def exited(self, status: int) -> None:
        """Called by the arbiter's reaping; reads what is left, then reports."""
        self.returncode = os.waitstatus_to_exitcode(status)
        self.proc.returncode = self.returncode
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            # Only what is buffered, and not without end.
            budget = READ_AFTER_EXIT
            while budget > 0 and not self.proc.stdout.closed:
                try:
                    chunk = os.read(self.proc.stdout.fileno(), min(65536, budget))
                except BlockingIOError:
                    break
                if not chunk:
                    break
                budget -= len(chunk)
                self._feed(chunk)
            if self.failure is None:
                self._line(self.reader.rest())
            self._close_output()
        self.on_exit(self)

    def kill(self) -> None:
        # Not Popen.kill(): it may reap the process, and the arbiter reaps.
        if self.returncode is not None:
            return  # reaped: the pid may belong to another process by now
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
        return "\n".join(list(self.text)[-lines:])


class TaskRunner:
    """The helper subprocesses running now, watched by the arbiter's selector."""

    def __init__(self, selector: selectors.BaseSelector, log: Logger) -> None:
        self.selector = selector
        self.log = log
        self.running: dict[int, Task] = {}

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        could_not_start: Callable[[OSError], None] | None = None,
        **kwargs: Any,
    ) -> None:
        """Start a task; if it cannot start, `could_not_start` gets the error (or it is logged)."""
        try:
            task = Task(name, argv, selector=self.selector, **kwargs)
        except OSError as exc:
            if could_not_start is None:
                self.log.error("%s could not start: %s", name, exc)
            else:
                could_not_start(exc)
            return
        self.running[task.pid] = task

    def exited(self, pid: int, status: int) -> bool:
        """A reaped child; False if it is no task of ours."""
        task = self.running.pop(pid, None)
        if task is None:
            return False
        task.exited(status)
        return True

    def check(self) -> None:
        now = time.monotonic()
        for task in self.running.values():
            if now > task.deadline:
                self.log.error("%s did not finish in time, killing it", task.name)
                task.text.append(f"killed: {task.name} did not finish in time")
                task.deadline = float("inf")
                task.kill()

    def kill_all(self) -> None:
        for task in self.running.values():
            task.kill()
