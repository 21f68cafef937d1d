"""A bounded HTTP load: keep-alive clients and Connection: close clients.

It runs in a thread with its own event loop, so a test can deploy (with
blocking calls) while traffic flows, and it stops by itself after
`max_seconds` or `max_requests`, whichever comes first.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx


@dataclass
class LoadResult:
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    bodies: Counter[str] = field(default_factory=Counter)
    sequence: list[str] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (sent at, seconds)
    failed_sent_at: list[float] = field(default_factory=list)  # wall clock, one per failure
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0


class Load:
    def __init__(
        self,
        url: str,
        *,
        keepalive_clients: int = 4,
        close_clients: int = 2,
        max_seconds: float = 120.0,
        max_requests: int = 200_000,
        pause: float = 0.0,
        path: str = "/",
    ) -> None:
        self.url = url.rstrip("/") + path
        self.keepalive_clients = keepalive_clients
        self.close_clients = close_clients
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.pause = pause
        self.result = LoadResult()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> LoadResult:
        self._stop.set()
        self._thread.join(self.max_seconds + 30)
        return self.result

    def run(self) -> LoadResult:
        """Run to the end of the bounds (requests or seconds)."""
        self.start()
        self._thread.join(self.max_seconds + 30)
        return self.result

    def wait_requests(self, count: int, timeout: float = 30.0) -> None:
        target = self.result.ok + len(self.result.failures) + count
        deadline = time.monotonic() + timeout
        while self.result.ok + len(self.result.failures) < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"load made no progress: {self.result.failures[-5:]}")
            time.sleep(0.02)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        started = time.monotonic()
        deadline = started + self.max_seconds
        clients = [self._client(keepalive=True) for _ in range(self.keepalive_clients)]
        clients += [self._client(keepalive=False) for _ in range(self.close_clients)]
        await asyncio.gather(*(self._drive(client, deadline) for client in clients))
        self.result.elapsed = time.monotonic() - started

    def _client(self, keepalive: bool) -> httpx.AsyncClient:
        headers = {} if keepalive else {"Connection": "close"}
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1 if keepalive else 0)
        return httpx.AsyncClient(headers=headers, limits=limits, timeout=30.0)

    async def _drive(self, client: httpx.AsyncClient, deadline: float) -> None:
        result = self.result
        async with client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                if result.ok + len(result.failures) >= self.max_requests:
                    break
                sent = time.monotonic()
                sent_at = time.time()
                try:
                    response = await client.get(self.url)
                except httpx.HTTPError as exc:
                    at = time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"
                    kind = "keep-alive" if client.headers.get("connection") != "close" else "close"
                    result.failures.append(f"{at} {kind} {type(exc).__name__}: {exc}")
                    result.failed_sent_at.append(sent_at)
                    continue
                if response.status_code != 200:
                    result.failures.append(f"HTTP {response.status_code}: {response.text[:100]}")
                    result.failed_sent_at.append(sent_at)
                    continue
                result.ok += 1
                key = response.text.split(" ", 1)[0]
                result.bodies[key] += 1
                if not result.sequence or result.sequence[-1] != key:
                    result.sequence.append(key)
                result.latencies.append((sent, time.monotonic() - sent))
                if self.pause:
                    await asyncio.sleep(self.pause)
