"""The new arbiter of a reexec, as the old one sees it until the handover.

Its stderr is a pipe to the old arbiter, which copies every byte to its own
stderr (so the log stays where it was) and keeps the last lines: when the
successor cannot even start (a config file that no longer loads, a broken
install), they are the reason, and the old arbiter reports them. Once its
arbiter runs, the successor writes to the old arbiter's stderr directly and
reports over the channel instead.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
from collections.abc import Callable
from typing import Any

from beamdeploy_asgi.arbiter.reexec_channel import Channel
from beamdeploy_asgi.arbiter.reexec_spec import OutputTail

READ_AFTER_EXIT = 256 * 1024


class StderrTee:
    """The successor's stderr: copied to ours, its last lines kept."""

    def __init__(self, pipe: Any, selector: selectors.BaseSelector) -> None:
        self.fd = pipe.fileno()
        self.pipe = pipe
        self.selector = selector
        self.tail = OutputTail()
        os.set_blocking(self.fd, False)
        selector.register(self.fd, selectors.EVENT_READ, self)

    def on_readable(self, budget: int = 65536) -> bool:
        """Copy what is there; False once the pipe is closed at the other end."""
        while budget > 0:
            try:
                chunk = os.read(self.fd, min(65536, budget))
            except BlockingIOError:
                return True
            except OSError:
                chunk = b""
            if not chunk:
                self.close()
                return False
            budget -= len(chunk)
            self.tail.feed(chunk)
            with contextlib.suppress(OSError):
                os.write(2, chunk)
        return True

    def close(self) -> None:
        if self.pipe.closed:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.fd)
        self.pipe.close()
        self.tail.close()


class Successor:
    def __init__(
        self,
        *,
        command: list[str],
        env: dict[str, str],
        cwd: str,
        pass_fds: list[int],
        channel: socket.socket,
        selector: selectors.BaseSelector,
        on_message: Callable[[dict[str, Any]], None],
    ) -> None:
        """Start it; raises OSError if it cannot start at all."""
        self.on_message = on_message
        self.returncode: int | None = None
        self.proc = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            pass_fds=pass_fds,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.stderr = StderrTee(self.proc.stderr, selector)
        self.channel = Channel(channel, selector, self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def on_readable(self) -> None:
        """The channel: the successor's messages, or its end."""
        messages = self.channel.receive()
        if messages is None:
            self.channel.close()
            return
        for message in messages:
            self.on_message(message)

    def send(self, message: dict[str, Any]) -> bool:
        return self.channel.send(message)

    def exited(self, status: int) -> None:
        """Reaped by the old arbiter's loop: keep what it still had to say."""
        self.returncode = self.proc.returncode = os.waitstatus_to_exitcode(status)
        if not self.channel.closed:
            self.on_readable()  # a last `failed` may be waiting
        self.stderr.on_readable(READ_AFTER_EXIT)
        self.stderr.close()
        self.channel.close()

    def signal(self, sig: int) -> None:
        # Not Popen.send_signal(): it may reap, and the arbiter's loop reaps.
        if self.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def release(self) -> None:
        """Handed over: it is no longer ours to watch; its stderr is its own already."""
        self.stderr.close()
        self.channel.close()

    def tail(self) -> str:
        return self.stderr.tail.text()
