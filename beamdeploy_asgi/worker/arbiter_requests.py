"""Admin requests this worker forwards to its arbiter, over its status channel.

The worker never holds the admin token: it passes on the one its client sent,
and the arbiter checks it. Replies come back tagged with the request's id,
so several requests (an event stream among them) can be under way at once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

from beamdeploy_asgi.errors import ControlError
from beamdeploy_asgi.protocol import Event
from beamdeploy_asgi.worker.channel import Channel

REPLY_TIMEOUT = 30.0  # for requests that are answered at once (not followed)
# A followed deployment sends an event at least per phase; its longest quiet
# step is an install (900 s). Past this, the arbiter dropped us: give up.
FOLLOW_IDLE_TIMEOUT = 1200.0


class ArbiterRequests:
    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.pending: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self.ids = itertools.count(1)
        self.lost = False

    async def request(self, request: dict[str, Any], token: str) -> dict[str, Any]:
        """The result of one request; raises ControlError with the arbiter's refusal."""
        async for reply in self.stream(request, token):
            if "result" in reply:
                return reply["result"]
        raise ControlError("disconnected", "the arbiter did not answer")

    async def stream(self, request: dict[str, Any], token: str) -> AsyncIterator[dict[str, Any]]:
        """Yield ``{"event": ...}`` replies, then ``{"result": ...}``."""
        if self.lost:
            raise ControlError("not_running", "the arbiter is gone")
        request_id = next(self.ids)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.pending[request_id] = queue
        timeout = FOLLOW_IDLE_TIMEOUT if request.get("follow") else REPLY_TIMEOUT
        try:
            self.channel.send(Event.ADMIN, id=request_id, token=token, request=request)
            while True:
                try:
                    reply = await asyncio.wait_for(queue.get(), timeout)
                except asyncio.TimeoutError:
                    raise ControlError("timeout", "the arbiter did not answer in time") from None
                if "error" in reply:
                    error = reply["error"] if isinstance(reply["error"], dict) else {}
                    raise ControlError(
                        str(error.get("code", "error")), str(error.get("detail", "error"))
                    )
                yield reply
                if "result" in reply:
                    return
        finally:
            self.pending.pop(request_id, None)

    def on_reply(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        queue = self.pending.get(request_id) if isinstance(request_id, int) else None
        if queue is not None:
            queue.put_nowait(message)

    def on_lost(self) -> None:
        self.lost = True
        for queue in self.pending.values():
            queue.put_nowait({"error": {"code": "not_running", "detail": "the arbiter went away"}})
