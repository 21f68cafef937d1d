"""What an arbiter hands its successor at a reexec, and how it starts it.

The successor is started from the old arbiter's own interpreter and command
line (``sys.orig_argv``, so ``-m beamdeploy_asgi`` or a ``gunicorn`` script
start the same way), in the directory the old one was started from. It
inherits the listening sockets, one end of a channel to the old arbiter and
the old arbiter's stderr, as file descriptors described in
``BEAMDEPLOY_REEXEC``; nothing else of the old arbiter (no worker channel, no
wake-up pipe) is passed on. Our own variable rather than systemd's
LISTEN_FDS, which names fds from 3 up and the pid of the process that reads
them, neither of which a parent can arrange without running code between
fork and exec.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from beamdeploy_asgi.protocol import CONTROL_ENV, SPEC_ENV, TOKEN_ENV

REEXEC_ENV = "BEAMDEPLOY_REEXEC"
NEXT_SOCKET = "control.next.sock"  # the successor's control socket until it takes over
# Never passed on: they describe the old arbiter's own start.
DROPPED_ENV = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", CONTROL_ENV, SPEC_ENV)


@dataclass(frozen=True)
class ReexecSpec:
    parent: int  # the old arbiter's pid
    listeners: list[int]
    channel_fd: int
    stderr_fd: int  # the old arbiter's stderr; the successor's own is a pipe to it
    control_path: str
    deployment_id: str
    release: str | None  # what the successor boots; None: what its command line says
    previous_release: str | None  # what served before, kept for a rollback

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ReexecSpec:
        """Raises ValueError if `text` is not a spec."""
        try:
            data = json.loads(text)
            spec = cls(**data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{REEXEC_ENV} is not a reexec spec: {exc}") from None
        fds = [*spec.listeners, spec.channel_fd, spec.stderr_fd]
        if not spec.listeners or not all(type(fd) is int and fd > 2 for fd in fds):
            raise ValueError(f"{REEXEC_ENV} names no listening socket or a bad file descriptor")
        return spec


def peek_spec(environ: Mapping[str, str]) -> ReexecSpec | None:
    """The spec this process was started with, if it is a reexec'd arbiter."""
    text = environ.get(REEXEC_ENV)
    return ReexecSpec.from_json(text) if text else None


def successor_command() -> list[str]:
    """The command line this interpreter was started with, run by the same interpreter."""
    return [sys.executable, *sys.orig_argv[1:]]


def successor_environment(
    environ: Mapping[str, str], spec: ReexecSpec, token: str | None
) -> dict[str, str]:
    """The old arbiter's environment, with the spec, without what described its own start.

    The admin token was taken out of the environment when the old arbiter
    read it; the successor is an arbiter too and gets it back.
    """
    env = {k: v for k, v in environ.items() if k not in DROPPED_ENV}
    env[REEXEC_ENV] = spec.to_json()
    if token is not None:
        env[TOKEN_ENV] = token
    return env


class OutputTail:
    """The last lines a process printed, each cut to a length, for an error message."""

    def __init__(self, lines: int = 20, width: int = 400) -> None:
        self.lines: deque[str] = deque(maxlen=lines)
        self.width = width
        self.partial = b""

    def feed(self, chunk: bytes) -> None:
        *whole, self.partial = (self.partial + chunk).split(b"\n")
        self.partial = self.partial[-self.width * 4 :]
        for line in whole:
            self._keep(line)

    def close(self) -> None:
        if self.partial:
            self._keep(self.partial)
            self.partial = b""

    def _keep(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip()
        if text.strip():
            self.lines.append(text if len(text) <= self.width else text[: self.width] + "...")

    def text(self) -> str:
        return "\n".join(self.lines)


def write_pidfile(path: str, pid: int) -> None:
    """Replace the pidfile's content in one rename, mode 0644 like gunicorn's Pidfile."""
    staging = f"{path}.{os.getpid()}.tmp"
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, f"{pid}\n".encode())
        os.fchmod(fd, 0o644)
    finally:
        os.close(fd)
    try:
        os.replace(staging, path)
    except OSError:
        os.unlink(staging)
        raise


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"
