"""Admin requests that workers forward to the arbiter over their status channel.

The admin token lives in the arbiter alone: a worker serving ``/_deploy``
passes on the token its client presented, and the arbiter checks it, for every
request, before acting. App code in a worker can write to the same channel,
but without the token it gets nothing.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from logging import Logger
from typing import Any

from beamdeploy_asgi.arbiter.control_server import Handler
from beamdeploy_asgi.arbiter.generation import WorkerProcess
from beamdeploy_asgi.protocol import Command
from beamdeploy_asgi.releases.confine import PathNotAllowed, confined

MAX_TOKEN = 4096


class WorkerConnection:
    """The reply side of one forwarded request, with ControlConnection's interface."""

    def __init__(self, worker: WorkerProcess, request_id: int) -> None:
        self.worker = worker
        self.request_id = request_id
        self.closed = False
        worker.open_requests += 1

    def send(self, message: dict[str, Any], last: bool = False) -> None:
        if self.closed:
            return
        delivered = self.worker.send({"cmd": Command.ADMIN, "id": self.request_id, **message})
        if last or not delivered:
            self.closed = True
            self.worker.open_requests -= 1

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


class ForwardedRequests:
    """Checks each forwarded request's token, then hands it to the control handler."""

    def __init__(
        self,
        *,
        token: str | None,
        release_dirs: list[str],
        handle: Handler,
        reject: Callable[[WorkerProcess, str], None],
        log: Logger,
        tokenless: frozenset[str] = frozenset(),
    ) -> None:
        """`tokenless`: operations answered without the token (metrics with --metrics-allow)."""
        self.token = token
        self.tokenless = tokenless
        self.release_dirs = release_dirs
        self.handle = handle
        self.reject = reject
        self.log = log

    def __call__(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        parsed = parse_request(message)
        if parsed is None:
            self.reject(worker, f"worker {worker.pid} forwarded a malformed admin request")
            return
        request_id, request = parsed
        conn = WorkerConnection(worker, request_id)
        if self.token is None:
            conn.fail("not_found", "the admin API is off: no admin token is set")
        elif request["op"] in self.tokenless and message.get("token") is None:
            self._handle(request, conn)
        elif not token_matches(message.get("token"), self.token):
            self.log.warning(
                "admin: refused %r forwarded by worker %s (wrong token)",
                request["op"][:40],
                worker.pid,
            )
            conn.fail("unauthorized", "send the admin token as 'Authorization: Bearer <token>'")
        elif request["op"] == "auth":
            conn.reply({"ok": True})
        elif self._confine(request, conn):
            self._handle(request, conn)

    def _handle(self, request: dict[str, Any], conn: WorkerConnection) -> None:
        try:
            self.handle(request, conn)
        except Exception:
            self.log.exception("admin request %r failed", request["op"][:40])
            conn.fail("internal_error", "the arbiter failed to handle this request")

    def _confine(self, request: dict[str, Any], conn: WorkerConnection) -> bool:
        """An upgrade over HTTP deploys an upload, or a path inside --release-dir only."""
        release = request.get("release")
        if (
            request["op"] not in ("upgrade", "hot_reload")
            or request.get("remove_after")
            or not isinstance(release, str)
        ):
            return True  # uploads are confined to the uploads dir by the upgrade itself
        try:
            request["release"] = str(confined(release, self.release_dirs))
        except PathNotAllowed as exc:
            conn.fail(exc.code, str(exc))
            return False
        return True
