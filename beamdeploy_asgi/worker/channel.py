"""The worker's end of its status channel to the arbiter.

Sends are blocking writes of one short JSON line. Reads happen in the event
loop when the socket is readable. End of file means the arbiter is gone: only
the arbiter holds the other end, so this is our parent-death signal.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from beamdeploy_asgi.lines import LineBuffer, LineTooLong, encode, parse_object
from beamdeploy_asgi.protocol import Event


class Channel:
    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.reader = LineBuffer()

    def send(self, event: Event, **fields: Any) -> None:
        line = encode({"event": event.value, **fields})
        try:
            self.sock.sendall(line)
        except OSError:
            pass  # the arbiter is gone; on_lost handles that

    def watch(
        self,
        on_command: Callable[[dict[str, Any]], None],
        on_lost: Callable[[], None],
    ) -> None:
        loop = asyncio.get_running_loop()

        def readable() -> None:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                loop.remove_reader(self.sock.fileno())
                on_lost()
                return
            try:
                lines = self.reader.feed(chunk)
            except LineTooLong:
                lines = []
                self.reader = LineBuffer()  # only the arbiter writes here; drop the junk
            for line in lines:
                command = parse_object(line)
                if command is not None:
                    on_command(command)

        loop.add_reader(self.sock.fileno(), readable)
