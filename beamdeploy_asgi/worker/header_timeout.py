"""Closing connections that never finish sending a request's headers.

uvicorn has no deadline for request headers: its keep-alive timer runs only
between requests, and any byte received cancels it. A client that opens a
connection and sends nothing, or half a request line, holds the connection,
and a slot of ``limit_concurrency``, forever (slowloris). A periodic sweep
closes every HTTP connection that has been waiting for headers too long.

Only connections between requests count: waiting starts when the connection
is first seen or its last response completed. A request in progress and
websockets are never touched. Worker code runs under the uvicorn of the
release's venv, so uvicorn's internals are read defensively.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from beamdeploy_asgi.worker.drain import is_websocket


class HeaderTimeout:
    def __init__(self, connections: set[Any], limit: float, log: Any = None) -> None:
        self.connections = connections
        self.limit = limit
        self.interval = min(1.0, limit / 4)
        self.log = log
        # connection -> (its cycle when seen waiting, since when it waits)
        self.waiting: dict[Any, tuple[Any, float]] = {}
        self.task: asyncio.Task[None] | None = None

    @classmethod
    def start(
        cls, connections: set[Any], header_timeout: float, keepalive: float, log: Any = None
    ) -> HeaderTimeout:
        """Sweep `connections` from now on.

        An idle keep-alive connection is uvicorn's to close, after
        `keepalive` seconds: the limit is never below ``keepalive + 1``.
        """
        sweeper = cls(connections, max(float(header_timeout), float(keepalive) + 1), log)
        sweeper.task = asyncio.ensure_future(sweeper.run())
        return sweeper

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.sweep(time.monotonic())
            except Exception:  # never let the sweep die and leave connections unwatched
                if self.log is not None:
                    self.log.exception("header timeout sweep failed")

    def sweep(self, now: float) -> int:
        """Close the connections waiting for headers longer than the limit; how many."""
        waiting: dict[Any, tuple[Any, float]] = {}
        closed = 0
        for connection in list(self.connections):
            if is_websocket(connection):
                continue
            cycle = getattr(connection, "cycle", None)
            if cycle is not None and not getattr(cycle, "response_complete", False):
                continue  # a request in progress: not waiting for headers
            seen = self.waiting.get(connection)
            # A new cycle since the last sweep: a request came and was answered.
            since = seen[1] if seen is not None and seen[0] is cycle else now
            if now - since < self.limit:
                waiting[connection] = (cycle, since)
                continue
            transport = getattr(connection, "transport", None)
            if transport is not None and not transport.is_closing():
                transport.close()
                closed += 1
        self.waiting = waiting
        if closed and self.log is not None:
            self.log.info(
                "closed %s connection(s) that sent no complete request headers in %gs",
                closed,
                self.limit,
            )
        return closed
