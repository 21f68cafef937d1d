"""The line channel between an arbiter and its successor during a reexec.

One end of a socketpair each, read by each arbiter's selector: the
successor reports its boot's progress, then that it serves (or why it
stops); the old arbiter answers with ``take_over`` once the control socket's
name and the pidfile are the successor's. A private channel rather than an
operation on the control socket: nothing but the process the old arbiter
started can claim to be its successor.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
from typing import Any

from beamdeploy_asgi.lines import LineBuffer, LineTooLong, encode, parse_object


class Channel:
    def __init__(self, sock: socket.socket, selector: selectors.BaseSelector, owner: Any) -> None:
        """`owner` is what the selector hands back when the channel is readable."""
        self.sock = sock
        self.selector = selector
        self.reader = LineBuffer(64 * 1024)
        self.closed = False
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, owner)

    def send(self, message: dict[str, Any]) -> bool:
        """Send one small message; False if the other side is gone."""
        if self.closed:
            return False
        try:
            self.sock.sendall(encode(message))
        except OSError:  # gone, or (never with these few bytes) a full buffer
            return False
        return True

    def receive(self) -> list[dict[str, Any]] | None:
        """The messages that arrived; None once the other side closed (or spoke nonsense)."""
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return []
        except OSError:
            chunk = b""
        if not chunk:
            return None
        try:
            lines = self.reader.feed(chunk)
        except LineTooLong:
            return None
        messages = [parse_object(line) for line in lines]
        if any(message is None for message in messages):
            return None
        return [message for message in messages if message is not None]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.sock)
        self.sock.close()
