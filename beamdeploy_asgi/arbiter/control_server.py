"""The arbiter's end of the control socket, driven by the arbiter's selector.

Every socket is non-blocking and every read or write is a single call made
when the selector says it will not block, so a slow or stuck client never
stalls the loop that also reaps and watches the workers.
"""

from __future__ import annotations

import os
import selectors
import socket
from collections.abc import Callable
from typing import Any, Protocol

from beamdeploy_asgi.lines import LineBuffer, LineTooLong, encode, parse_object, send_some


class Replier(Protocol):
    """Where the answer to one request goes: a control connection, or a worker's channel."""

    closed: bool

    def send(self, message: dict[str, Any], last: bool = False) -> None: ...

    def reply(self, result: dict[str, Any]) -> None: ...

    def fail(self, code: str, detail: str) -> None: ...


Handler = Callable[[dict[str, Any], Replier], None]


class ControlConnection:
    def __init__(self, sock: socket.socket, server: ControlServer) -> None:
        self.sock = sock
        self.server = server
        self.reader = LineBuffer()
        self.outbox = bytearray()
        self.handled = False
        self.closing = False
        self.closed = False

    def send(self, message: dict[str, Any], last: bool = False) -> None:
        if self.closed:
            return
        self.outbox += encode(message)
        self.closing = self.closing or last
        self._flush()

    def reply(self, result: dict[str, Any]) -> None:
        self.send({"result": result}, last=True)

    def fail(self, code: str, detail: str) -> None:
        self.send({"error": {"code": code, "detail": detail}}, last=True)

    def on_readable(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.close()
            return
        if self.handled:
            return
        try:
            lines = self.reader.feed(chunk)
        except LineTooLong:
            self.handled = True
            self.fail("bad_request", "request line too long")
            return
        if not lines:
            return
        self.handled = True
        request = parse_object(lines[0])
        if request is None or not isinstance(request.get("op"), str):
            self.fail("bad_request", "request must be a JSON object with an 'op'")
            return
        try:
            self.server.handler(request, self)
        except Exception:
            # A bug in one request must not take the arbiter down with it.
            self.server.log.exception("control request %r failed", request.get("op"))
            self.fail("internal_error", "the arbiter failed to handle this request; see its log")

    def on_writable(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if not send_some(self.sock, self.outbox):
            self.close()
            return
        if not self.outbox and self.closing:
            self.close()
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbox else 0)
        self.server.selector.modify(self.sock, events, self)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.selector.unregister(self.sock)
        self.sock.close()
        self.server.connections.discard(self)


class ControlServer:
    def __init__(
        self,
        path: str,
        selector: selectors.BaseSelector,
        handler: Handler,
        log: Any,
    ) -> None:
        self.path: str | None = path
        self.log = log
        self.selector = selector
        self.handler = handler
        self.connections: set[ControlConnection] = set()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self.sock.listen(64)
        self.sock.setblocking(False)
        selector.register(self.sock, selectors.EVENT_READ, self)

    def on_readable(self) -> None:
        try:
            sock, _ = self.sock.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        connection = ControlConnection(sock, self)
        self.connections.add(connection)
        self.selector.register(sock, selectors.EVENT_READ, connection)

    def give_up_name(self) -> None:
        """Another arbiter's socket has this path now (a reexec): close() leaves it alone."""
        self.path = None

    def close(self) -> None:
        for connection in list(self.connections):
            connection.close()
        self.selector.unregister(self.sock)
        self.sock.close()
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
