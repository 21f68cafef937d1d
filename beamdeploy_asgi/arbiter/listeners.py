"""Listening sockets, bound once by the arbiter and shared by every generation.

One socket per address means one accept queue: when a draining worker stops
accepting, connections waiting in the queue are taken by the next generation
instead of being reset, as they would be with per-worker SO_REUSEPORT sockets.
SO_REUSEPORT is still set so that another process (a second arbiter during a
host migration, say) can bind the same address next to us.
"""

from __future__ import annotations

import os
import socket
import stat
from typing import Any

from gunicorn import systemd


def bind_listeners(cfg: Any, log: Any) -> list[socket.socket]:
    inherited = systemd.listen_fds()
    if inherited:
        first = systemd.SD_LISTEN_FDS_START
        return [socket.socket(fileno=fd) for fd in range(first, first + inherited)]
    return [_bind(address, cfg, log) for address in cfg.address]


def _bind(address: Any, cfg: Any, log: Any) -> socket.socket:
    if isinstance(address, int):
        return socket.socket(fileno=address)
    if isinstance(address, str):
        return _bind_unix(address, cfg)
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(cfg.backlog)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_unix(path: str, cfg: Any) -> socket.socket:
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(cfg.umask)
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    sock.listen(cfg.backlog)
    return sock


def describe(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    if sock.family == socket.AF_INET6:
        return f"http://[{name[0]}]:{name[1]}"
    return f"http://{name[0]}:{name[1]}"


def close_listeners(listeners: list[socket.socket]) -> None:
    for sock in listeners:
        path = sock.getsockname() if sock.family == socket.AF_UNIX else None
        sock.close()
        if isinstance(path, str) and path:
            try:
                os.unlink(path)
            except OSError:
                pass
