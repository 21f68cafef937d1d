"""Counting a worker's public responses by status class, for the bake window.

After a promotion the arbiter watches the new generation's share of 5xx
answers. Counting costs one dict increment per response; the counts reach the
arbiter at most every REPORT_INTERVAL and only when they changed, never as a
channel write per request.
"""

from __future__ import annotations

import asyncio
from typing import Any

from beamdeploy_asgi.admin.mount import route_path
from beamdeploy_asgi.protocol import RESPONSE_CLASSES, Event

REPORT_INTERVAL = 0.1


class ResponseCounts:
    """Count the status class of every HTTP response `app` gives.

    Requests under `skip_prefix` (the admin API, in front of the app or
    mounted by it) are not the app's traffic and are not counted. An app that
    raises before it starts a response, or returns without one, is answered
    500 by uvicorn: that counts as a 5xx.
    """

    def __init__(self, app: Any, skip_prefix: str | None = None) -> None:
        self.app = app
        self.skip_prefix = skip_prefix or None
        self.counts = dict.fromkeys(RESPONSE_CLASSES, 0)
        self.reported = dict(self.counts)  # nothing to say before the first response

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self._skipped(scope):
            await self.app(scope, receive, send)
            return
        started = False
        disconnected = False

        async def receiving() -> Any:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
            return message

        async def counting(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                self.count(message["status"])
            await send(message)

        try:
            await self.app(scope, receiving, counting)
        except BaseException:
            if not started:
                self.count(500)
            raise
        if not started and not disconnected:
            self.count(500)

    def _skipped(self, scope: Any) -> bool:
        prefix = self.skip_prefix
        if prefix is None:
            return False
        path = route_path(scope)
        return path == prefix or path.startswith(prefix + "/")

    def count(self, status: Any) -> None:
        if isinstance(status, int) and 100 <= status < 600:
            self.counts[RESPONSE_CLASSES[status // 100 - 1]] += 1

    def report(self, channel: Any, *, force: bool = False) -> None:
        """Send the counts on the status channel if they changed (or if `force`)."""
        if force or self.counts != self.reported:
            self.reported = dict(self.counts)
            channel.send(Event.RESPONSES, **self.reported)

    async def keep_reporting(self, channel: Any) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            self.report(channel)
