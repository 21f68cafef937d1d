"""JSON lines from peers that may not be trusted, read with bounded memory.

Workers and install or preflight subprocesses run release code; a line from
them is capped, and a peer that goes past the cap is treated as failed rather
than buffered without end.
"""

from __future__ import annotations

import json
import socket
from typing import Any

MAX_LINE = 1024 * 1024


class LineTooLong(ValueError):
    """A peer sent more than the cap without ending its line."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a line longer than {limit // 1024} KiB")
        self.limit = limit


class LineBuffer:
    """Splits a byte stream into lines; never holds more than `limit` bytes of one."""

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self.pending = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines `chunk` completes; raises LineTooLong past the cap."""
        self.pending += chunk
        lines = []
        while True:
            end = self.pending.find(b"\n")
            if end < 0:
                break
            if end > self.limit:
                raise LineTooLong(self.limit)
            lines.append(bytes(self.pending[:end]))
            del self.pending[: end + 1]
        if len(self.pending) > self.limit:
            raise LineTooLong(self.limit)
        return lines

    def rest(self) -> bytes:
        """What is left after the last newline (a peer that ended without one)."""
        rest = bytes(self.pending)
        self.pending.clear()
        return rest


def parse_object(line: bytes) -> dict[str, Any] | None:
    """The JSON object on `line`, or None for anything else."""
    try:
        message = json.loads(line, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # RecursionError: absurd nesting
        return None
    return message if isinstance(message, dict) else None


def _no_constant(name: str) -> Any:
    """NaN and Infinity are no JSON: a record holding one could not be sent on."""
    raise ValueError(f"{name} is not JSON")


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def send_some(sock: socket.socket, outbox: bytearray) -> bool:
    """Write what a non-blocking `sock` takes now, removing it from `outbox`.

    False once the peer is gone (what is left in `outbox` will never go).
    """
    while outbox:
        try:
            sent = sock.send(outbox)
        except BlockingIOError:
            return True
        except OSError:
            return False
        del outbox[:sent]
    return True
