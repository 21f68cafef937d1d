"""Who may use the admin API: a bearer token, and optionally an address list.

Without a token configured, every route but /health answers 404: the admin
API is remote code execution by design, so it does not exist until someone
chose a secret for it.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from beamdeploy_asgi.admin.errors import error_response
from beamdeploy_asgi.settings import admin_token
from beamdeploy_asgi.worker import runtime as worker_runtime

PUBLIC = "/health"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="beamdeploy"'}


def route_path(scope: dict[str, Any]) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class AdminGate:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await refusal(scope, receive, send)
        else:
            await send({"type": "websocket.close", "code": 1008})

    def refusal(self, scope: dict[str, Any]) -> Any:
        runtime = worker_runtime.current()
        if runtime is None:
            return error_response(
                503,
                "not_enabled",
                "this app is not running under beamdeploy, so there is nothing to deploy",
            )
        path = route_path(scope)
        if path == PUBLIC:
            return None
        cfg = runtime.cfg
        token = admin_token(cfg)
        if token is None:
            return error_response(404, "not_found", "no such route")
        client = (scope.get("client") or ("", 0))[0]
        if cfg.admin_allow and not _allowed(client, cfg.admin_allow):
            runtime.log.warning(
                "admin: refused %s %s from %s (address)", scope.get("method"), path, client
            )
            return error_response(
                403, "address_not_allowed", f"address {client} may not use the admin API"
            )
        given = _bearer(scope)
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            why = "no token" if given is None else "wrong token"
            runtime.log.warning(
                "admin: refused %s %s from %s (%s)", scope.get("method"), path, client, why
            )
            return error_response(
                401,
                "unauthorized",
                "send the admin token as 'Authorization: Bearer <token>'",
                headers=CHALLENGE,
            )
        return None


def _bearer(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
            return None
    return None


def _allowed(client: str, networks: list[str]) -> bool:
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net) for net in networks)
