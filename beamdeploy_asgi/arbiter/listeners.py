"""Listening sockets, bound once by the arbiter and shared by every generation.

One socket per address means one accept queue: when a draining worker stops
accepting, connections waiting in the queue are taken by the next generation
instead of being reset, as they would be with per-worker SO_REUSEPORT sockets.
No SO_REUSEPORT here either: with it a second server on the same address
would start without a word and take half of the connections. An address that
anything already listens on is refused, naming who holds it.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Any

from gunicorn import systemd


class ListenError(Exception):
    """An address could not be listened on; the message says which and why."""


def bind_listeners(cfg: Any, log: Any, inherited: list[int] | None = None) -> list[socket.socket]:
    """`inherited`: the fds of the sockets an arbiter passed on at a reexec (see reexec_spec)."""
    if inherited:
        return [_adopt(fd) for fd in inherited]
    inherited_count = systemd.listen_fds()  # socket activation; LISTEN_* leave the environment
    if inherited_count:
        first = systemd.SD_LISTEN_FDS_START
        return [_adopt(fd) for fd in range(first, first + inherited_count)]
    bound: list[socket.socket] = []
    try:
        for address in cfg.address:
            bound.append(_bind(address, cfg))
    except BaseException:
        close_listeners(bound)
        raise
    return bound


def _adopt(fd: int) -> socket.socket:
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)  # workers get it through pass_fds, nothing else does
    return sock


def _bind(address: Any, cfg: Any) -> socket.socket:
    if isinstance(address, int):
        return socket.socket(fileno=address)
    if isinstance(address, str):
        return _bind_unix(address, cfg)
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Lets us rebind over connections of a previous run in TIME_WAIT;
        # on Linux it never lets two sockets listen on one address.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(cfg.backlog)
    except OSError as exc:
        sock.close()
        raise ListenError(_refusal(_show(host, port), exc, port)) from None
    return sock


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _refusal(where: str, exc: OSError, port: int | None = None) -> str:
    if exc.errno == errno.EADDRINUSE:
        holder = holders_of_port(port) if port is not None else ""
        by = f" by {holder}" if holder else ""
        return f"cannot listen on {where}: the address is already in use{by}"
    return f"cannot listen on {where}: {exc.strerror or exc}"


def holders_of_port(port: int) -> str:
    """'pid N (command)' of the processes listening on TCP `port`, as far as /proc shows."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                next(rows, None)
                for row in rows:
                    fields = row.split()
                    if len(fields) > 9 and fields[3] == "0A":  # LISTEN
                        if int(fields[1].rsplit(":", 1)[1], 16) == port:
                            inodes.add(f"socket:[{fields[9]}]")
        except OSError:
            continue
    if not inodes:
        return ""
    found = [pid for pid in _pids() if _holds(pid, inodes)]
    if not found:
        return ""
    # A server's workers share its socket: name the first (its parent, as a
    # rule) and count the others.
    first = f"pid {found[0]} ({_command(found[0])})"
    others = len(found) - 1
    return first + (f" and {others} other process{'es' if others > 1 else ''}" if others else "")


def _holds(pid: int, inodes: set[str]) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:
            continue
    return False


def _pids() -> list[int]:
    return sorted(int(name) for name in os.listdir("/proc") if name.isdigit())


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            words = cmdline.read(4096).split(b"\0")
    except OSError:
        return "?"
    text = " ".join(word.decode(errors="replace") for word in words if word)
    text = " ".join(text.split())  # one line, whatever the command line held
    return (text[:120] + "...") if len(text) > 120 else (text or "?")


def _bind_unix(path: str, cfg: Any) -> socket.socket:
    where = f"unix:{path}"
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            if _answers(path):
                raise ListenError(f"cannot listen on {where}: another server listens there")
            os.unlink(path)  # left behind by a server that is gone
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(cfg.umask)
    try:
        sock.bind(path)
        sock.listen(cfg.backlog)
    except OSError as exc:
        sock.close()
        raise ListenError(_refusal(where, exc)) from None
    finally:
        os.umask(old_umask)
    return sock


def _answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def describe(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    if sock.family == socket.AF_INET6:
        return f"http://[{name[0]}]:{name[1]}"
    return f"http://{name[0]}:{name[1]}"


def close_listeners(listeners: list[socket.socket], unlink: bool = True) -> None:
    """Close them; `unlink` a unix socket's path too, unless a successor serves on it."""
    for sock in listeners:
        path = sock.getsockname() if sock.family == socket.AF_UNIX and unlink else None
        sock.close()
        if isinstance(path, str) and path:
            try:
                os.unlink(path)
            except OSError:
                pass
