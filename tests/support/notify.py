"""A stand-in for systemd's $NOTIFY_SOCKET: it reads what the arbiter says, and who says it."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

UCRED = struct.Struct("3i")  # pid, uid, gid


@dataclass
class Notification:
    pid: int  # the sender, as the kernel says (systemd checks NotifyAccess= with it)
    fields: dict[str, str]
    at: float  # time.monotonic() when it was read

    def __contains__(self, line: str) -> bool:
        key, _, value = line.partition("=")
        return self.fields.get(key) == value


class NotifySocket:
    """Read by a thread as they come, as systemd does: the queue (10 datagrams) never fills."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.received: list[Notification] = []
        self.changed = threading.Condition()
        self.closed = False
        self.reader = threading.Thread(target=self._read_all, daemon=True)
        self.reader.start()

    def close(self) -> None:
        self.closed = True
        self.reader.join()
        self.sock.close()

    def _read_all(self) -> None:
        while not self.closed:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
            except TimeoutError:
                continue
            pid = 0
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = UCRED.unpack(payload[: UCRED.size])[0]
            fields = dict(line.partition("=")[::2] for line in data.decode().splitlines() if line)
            with self.changed:
                self.received.append(Notification(pid, fields, time.monotonic()))
                self.changed.notify_all()

    def wait_for(
        self, predicate: Callable[[Notification], bool], timeout: float = 60.0, after: int = 0
    ) -> int:
        """The index of the first notification from `after` on that matches."""
        deadline = time.monotonic() + timeout
        index = after
        with self.changed:
            while True:
                while index < len(self.received):
                    if predicate(self.received[index]):
                        return index
                    index += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    shown = "\n".join(f"{n.pid}: {n.fields}" for n in self.received[after:])
                    raise AssertionError(f"no such notification within {timeout}s; got:\n{shown}")
                self.changed.wait(left)

    def statuses(self, start: int, end: int) -> list[str]:
        return [n.fields["STATUS"] for n in self.received[start:end] if "STATUS" in n.fields]
