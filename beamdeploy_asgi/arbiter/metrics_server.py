"""--metrics-bind: a tiny HTTP responder in the arbiter's own loop, for Prometheus.

It answers ``GET /metrics`` and nothing else (404), so metrics are there even
when the app's workers are broken or gone. It runs in the loop thread: the
exposition is rendered where the state lives, no lock, no thread. Every
socket is non-blocking; a client gets at most MAX_REQUEST bytes of request
head and REQUEST_TIMEOUT seconds for its whole exchange, and at most
MAX_CONNECTIONS are open at once (more are closed at once), so a slow or
hostile client costs a bounded few sockets and never stalls the loop.

This module does not import prometheus-client: `load_metrics` does, and says
clearly when it is missing.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections.abc import Callable
from logging import Logger
from typing import Any

MAX_REQUEST = 8 * 1024  # bytes of request line and headers
REQUEST_TIMEOUT = 5.0  # seconds for a whole exchange, from accept to the last byte sent
MAX_CONNECTIONS = 16
MAX_DISCARD = 64 * 1024  # bytes read and dropped after an answer, so the close is no reset
PATH = "/metrics"
MISSING = (
    "metrics need prometheus-client in the arbiter's environment: "
    "pip install 'beamdeploy-asgi[metrics]'"
)


class MetricsUnavailable(Exception):
    pass


def load_metrics(arbiter: Any) -> Any:
    """The arbiter's `Metrics`; MetricsUnavailable if prometheus-client is not installed."""
    try:
        from beamdeploy_asgi.arbiter.metrics import Metrics
    except ImportError as exc:
        raise MetricsUnavailable(MISSING) from exc
    return Metrics(arbiter)


def parse_address(value: str) -> tuple[str, int]:
    """host:port, or [v6]:port; a host is required: it binds only where told."""
    host, sep, port = value.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be HOST:PORT like 127.0.0.1:9108, not {value!r}")
    return host, int(port)


class MetricsConnection:
    def __init__(self, sock: socket.socket, server: MetricsServer, now: float) -> None:
        self.sock = sock
        self.server = server
        self.deadline = now + REQUEST_TIMEOUT
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.closed = False
        self.answered = False  # all sent: what still comes is read and dropped, then close
        self.discarded = 0

    def on_readable(self) -> None:
        """Called for both read and write readiness: each step does what will not block."""
        if self.closed:
            return
        if self.answered:
            self._discard()
        elif not self.outbox:
            self._read()
        if self.outbox and not self.closed:
            self._write()

    def _read(self) -> None:
        try:
            chunk = self.sock.recv(MAX_REQUEST + 1 - len(self.inbox))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not chunk:
            self.close()
            return
        self.inbox += chunk
        end = self.inbox.find(b"\r\n\r\n")
        if end < 0:
            end = self.inbox.find(b"\n\n")
        if end >= 0:
            self._answer(bytes(self.inbox[:end]))
        elif len(self.inbox) > MAX_REQUEST:
            self._respond(431, "request header too large\n")

    def _answer(self, head: bytes) -> None:
        line = head.split(b"\n", 1)[0].strip()
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            self._respond(400, "bad request\n")
            return
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method != b"GET" or target != PATH.encode():
            self._respond(404, "not found: only GET /metrics is served here\n")
            return
        try:
            body, content_type = self.server.render(), self.server.content_type
        except Exception:
            self.server.log.exception("metrics: rendering failed")
            self._respond(500, "the metrics could not be rendered\n")
            return
        self._respond(200, body, content_type)

    def _respond(
        self, status: int, body: str, content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        reasons = {
            200: "OK",
            400: "Bad Request",
            404: "Not Found",
            431: "Request Header Fields Too Large",
            500: "Internal Server Error",
        }
        data = body.encode("utf-8")
        head = (
            f"HTTP/1.1 {status} {reasons[status]}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(data)}\r\n"
            "Cache-Control: no-store\r\n"
            "Connection: close\r\n\r\n"
        )
        self.inbox.clear()
        self.outbox += head.encode("latin-1") + data
        self.server.watch(self, selectors.EVENT_WRITE)

    def _write(self) -> None:
        try:
            sent = self.sock.send(self.outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        del self.outbox[:sent]
        if not self.outbox:
            # Closing with unread bytes would reset the connection, answer and all.
            self.answered = True
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self.close()
                return
            self.server.watch(self, selectors.EVENT_READ)

    def _discard(self) -> None:
        try:
            chunk = self.sock.recv(16384)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        self.discarded += len(chunk)
        if not chunk or self.discarded > MAX_DISCARD:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.forget(self)
        with contextlib.suppress(OSError):
            self.sock.close()


class MetricsServer:
    """The listening socket and its connections, registered in the arbiter's selector."""

    def __init__(
        self,
        address: str,
        selector: selectors.BaseSelector,
        render: Callable[[], str],
        content_type: str,
        log: Logger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = parse_address(address)
        self.selector = selector
        self.render = render
        self.content_type = content_type
        self.log = log
        self.clock = clock
        self.sock: socket.socket | None = None
        self.connections: set[MetricsConnection] = set()
        self.retry = False  # a reexec'd arbiter binds once the old one has let go

    def listen_later(self) -> None:
        self.retry = True
        self.tick()

    def listen(self) -> None:
        """Bind and listen; OSError if the address is taken or not ours."""
        host, port = self.address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(MAX_CONNECTIONS)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.selector.register(sock, selectors.EVENT_READ, self)

    def describe(self) -> str:
        host, port = self.address if self.sock is None else self.sock.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def on_readable(self) -> None:
        """Accept what waits; beyond MAX_CONNECTIONS, close at once."""
        assert self.sock is not None
        self.tick()
        for _ in range(MAX_CONNECTIONS):
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.warning("metrics: accept failed: %s", exc)
                return
            if len(self.connections) >= MAX_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)
            conn = MetricsConnection(sock, self, self.clock())
            self.connections.add(conn)
            self.selector.register(sock, selectors.EVENT_READ, conn)

    def watch(self, conn: MetricsConnection, events: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.modify(conn.sock, events, conn)

    def forget(self, conn: MetricsConnection) -> None:
        self.connections.discard(conn)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn.sock)

    def tick(self) -> None:
        """Close every connection past its deadline: slow clients get no more time."""
        now = self.clock()
        for conn in [c for c in self.connections if now > c.deadline]:
            conn.close()
        if self.retry and self.sock is None:
            try:
                self.listen()
            except OSError:
                return
            self.retry = False
            self.log.info("Metrics: http://%s/metrics", self.describe())

    def close(self) -> None:
        for conn in list(self.connections):
            conn.close()
        if self.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(self.sock)
            self.sock.close()
            self.sock = None
