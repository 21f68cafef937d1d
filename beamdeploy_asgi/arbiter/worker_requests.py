"""Admin requests that workers forward to the arbiter over their status channel.

The admin token lives in the arbiter alone: a worker serving ``/_deploy``
passes on the token its client presented, and the arbiter checks it, for every
request, before acting. App code in a worker can write to the same channel,
but without the token it gets nothing.
"""

from __future__ import annotations

import hmac
from typing import Any

from beamdeploy_asgi.arbiter.generation import WorkerProcess
from beamdeploy_asgi.protocol import Command

MAX_TOKEN = 4096


class WorkerConnection:
    """The reply side of one forwarded request, with ControlConnection's interface."""

    def __init__(self, worker: WorkerProcess, request_id: int) -> None:
        self.worker = worker
        self.request_id = request_id
        self.closed = False

    def send(self, message: dict[str, Any], last: bool = False) -> None:
        if self.closed:
            return
        delivered = self.worker.send({"cmd": Command.ADMIN, "id": self.request_id, **message})
        self.closed = last or not delivered

    def reply(self, result: dict[str, Any]) -> None:
        self.send({"result": result}, last=True)

    def fail(self, code: str, detail: str) -> None:
        self.send({"error": {"code": code, "detail": detail}}, last=True)


def token_matches(given: Any, token: str) -> bool:
    """Compare in constant time, as bytes.

    The worker passes the Authorization header's bytes as a latin-1 string
    (what HTTP headers are), so any UTF-8 token matches byte for byte.
    """
    if not isinstance(given, str) or len(given) > MAX_TOKEN:
        return False
    try:
        presented = given.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(presented, token.encode("utf-8"))


def parse_request(message: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """(id, request) of a forwarded request, or None if it is malformed."""
    request_id, request = message.get("id"), message.get("request")
    if not isinstance(request_id, int) or isinstance(request_id, bool):
        return None
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        return None
    return request_id, request
