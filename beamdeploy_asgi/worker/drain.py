"""Closing connections during a drain without clients seeing an error."""

from __future__ import annotations

import array
import fcntl
import termios
from typing import Any

CLOSE = (b"connection", b"close")


class ConnectionCloseWhenDraining:
    """Give every response that starts after the drain began `Connection: close`.

    The client then closes the connection itself after reading the response,
    instead of sending its next request on a socket we are about to close.
    With `when_paused` (the public listeners' app) this holds during a pause
    too: the client's next connection goes to a worker that accepts.
    """

    def __init__(self, app: Any, runtime: Any, *, when_paused: bool = False) -> None:
        self.app = app
        self.runtime = runtime
        self.when_paused = when_paused

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        runtime = self.runtime
        when_paused = self.when_paused

        async def send_closing(message: Any) -> None:
            closing = runtime.draining or (when_paused and runtime.paused)
            if message["type"] == "http.response.start" and closing:
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"connection"]
                message = {**message, "headers": [*headers, CLOSE]}
            await send(message)

        await self.app(scope, receive, send_closing)


def is_websocket(connection: Any) -> bool:
    return type(connection).__module__.startswith("uvicorn.protocols.websockets")


def unread_bytes(connection: Any) -> int:
    """Bytes the client sent that the server has not read yet.

    Closing a socket with unread data makes the kernel answer with a reset,
    which the client sees as an error on the request it just sent.
    """
    transport = getattr(connection, "transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.fileno() < 0:
        return 0
    pending = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, pending)
    except OSError:
        return 0
    return pending[0]
