"""The control protocol: one JSON object per line over the arbiter's unix socket.

A client sends one request line, for example ``{"op": "status"}`` or
``{"op": "upgrade", "release": "/srv/app/releases/1.5.0", "follow": true}``.
The arbiter answers with zero or more ``{"event": {...}}`` lines (only when
following a deployment) and then exactly one ``{"result": {...}}`` or
``{"error": {"code": ..., "detail": ...}}`` line, and closes the connection.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

from beamdeploy_asgi.errors import ControlError
from beamdeploy_asgi.lines import LineBuffer, LineTooLong, encode, parse_object

SOCKET_NAME = "control.sock"


def socket_path(state_dir: str) -> str:
    return os.path.join(state_dir, SOCKET_NAME)


class ControlClient:
    """A blocking client; the CLI and the Python API both use it."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    def request(
        self,
        message: dict[str, Any],
        on_event: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send one request, feed events to `on_event`, return the result."""
        for reply in self._exchange(message, timeout):
            if "event" in reply:
                if on_event is not None:
                    on_event(reply["event"])
            elif "result" in reply:
                return reply["result"]
            elif "error" in reply:
                error = reply["error"]
                raise ControlError(error.get("code", "error"), error.get("detail", "error"))
        raise ControlError("disconnected", "the arbiter closed the control connection early")

    def _exchange(self, message: dict[str, Any], timeout: float | None) -> Iterator[dict]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            try:
                sock.connect(self.path)
            except FileNotFoundError:
                raise ControlError(
                    "not_running", f"no beamdeploy arbiter listens on {self.path}"
                ) from None
            except ConnectionRefusedError:
                raise ControlError(
                    "not_running", f"no beamdeploy arbiter answers on {self.path} (stale socket)"
                ) from None
            except PermissionError:
                raise ControlError(
                    "forbidden", f"no permission to use the control socket {self.path}"
                ) from None
            try:
                sock.sendall(encode(message))
            except OSError as exc:
                raise ControlError("disconnected", f"the arbiter went away: {exc}") from None
            sock.settimeout(timeout)
            reader = LineBuffer()
            while True:
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    raise ControlError("timeout", "the arbiter did not answer in time") from None
                except OSError as exc:
                    raise ControlError("disconnected", f"the arbiter went away: {exc}") from None
                if not chunk:
                    return
                try:
                    lines = reader.feed(chunk)
                except LineTooLong:
                    raise ControlError("protocol", "the arbiter sent an oversized line") from None
                for line in lines:
                    yield _reply(line)
        finally:
            sock.close()


def _reply(line: bytes) -> dict[str, Any]:
    reply = parse_object(line)
    if reply is None:
        raise ControlError("protocol", "the arbiter sent a line that is not a JSON object")
    return reply
