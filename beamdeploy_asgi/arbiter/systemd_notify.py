"""Messages to systemd's notification socket ($NOTIFY_SOCKET), see sd_notify(3).

Only what beamdeploy sends today: the arbiter's main pid after a reexec, so
that systemd follows the new arbiter instead of taking the old one's exit
for the service's end. It is kept apart so that the rest of systemd's
protocol (READY, RELOADING, STOPPING, the watchdog) can join it here.
"""

from __future__ import annotations

import os
import socket

NOTIFY_ENV = "NOTIFY_SOCKET"


def notify(state: str) -> bool:
    """Send `state` (``KEY=VALUE`` lines) if systemd listens; True if it was sent.

    Without $NOTIFY_SOCKET this is no service of systemd's: nothing is sent.
    An address starting with ``@`` is in the abstract namespace.
    """
    address = os.environ.get(NOTIFY_ENV)
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError:
            return False
    return True


def main_pid(pid: int) -> bool:
    """Tell systemd that `pid` is the service's main process from now on."""
    return notify(f"MAINPID={pid}")
