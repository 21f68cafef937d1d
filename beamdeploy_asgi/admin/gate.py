"""Who may use the admin API: a bearer token, and optionally an address list.

Without a token configured, every route but /health answers 404: the admin
API is remote code execution by design, so it does not exist until someone
chose a secret for it. The token is the arbiter's alone: the gate passes on
the one the client sent, and the arbiter says whether it is right.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Mapping
from typing import Any

from beamdeploy_asgi import running as worker_runtime
from beamdeploy_asgi.admin.errors import error_response
from beamdeploy_asgi.admin.mount import route_path
from beamdeploy_asgi.errors import ControlError
from beamdeploy_asgi.protocol import TOKEN_ENV, simple_request

PUBLIC = "/health"
METRICS = "/metrics"  # also without the token, to --metrics-allow addresses
LOCAL = "/hot-reload"  # outside the arbiter: this process reloads itself
MIN_LOCAL_TOKEN = 16  # as the arbiter demands
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="beamdeploy"'}
TOKEN_SCOPE_KEY = "beamdeploy.token"  # the checked token, for the endpoints to pass on


def presented_token(scope: Mapping[str, Any]) -> str | None:
    """The checked token of a request the gate let in."""
    return scope.get(TOKEN_SCOPE_KEY)


class AdminGate:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal, token = await self.check(scope)
        if refusal is None:
            await self.app({**scope, TOKEN_SCOPE_KEY: token}, receive, send)
        elif scope["type"] == "http":
            await refusal(scope, receive, send)
        else:
            await send({"type": "websocket.close", "code": 1008})

    async def check(self, scope: dict[str, Any]) -> tuple[Any, str | None]:
        """(refusal response or None, the token to pass on)."""
        runtime = worker_runtime.current()
        path = route_path(scope)
        if runtime is None:
            return self._check_here(scope, path)
        if path == PUBLIC:
            return None, None
        if not runtime.admin_enabled:
            return error_response(404, "not_found", "no such route"), None
        client = (scope.get("client") or ("", 0))[0]
        cfg = runtime.cfg
        metrics_allow = getattr(cfg, "metrics_allow", None)
        if path == METRICS and metrics_allow and _allowed(client, metrics_allow):
            return None, None  # the arbiter answers `metrics` without a token then
        if cfg.admin_allow and not _allowed(client, cfg.admin_allow):
            runtime.log.warning(
                "admin: refused %s %s from %s (address)", scope.get("method"), path, client
            )
            return (
                error_response(
                    403, "address_not_allowed", f"address {client} may not use the admin API"
                ),
                None,
            )
        given = _bearer(scope)
        why = "no token"
        if given is not None:
            try:
                await runtime.requests.request(simple_request("auth"), given)
            except ControlError as exc:
                if exc.code != "unauthorized":
                    return error_response(503, "unavailable", exc.detail), None
                why = "wrong token"
            else:
                return None, given
        runtime.log.warning(
            "admin: refused %s %s from %s (%s)", scope.get("method"), path, client, why
        )
        return _unauthorized(), None

    def _check_here(self, scope: dict[str, Any], path: str) -> tuple[Any, str | None]:
        """Outside the arbiter only a hot reload of this process exists, with
        BEAMDEPLOY_TOKEN checked here: there is no arbiter to ask."""
        token = os.environ.get(TOKEN_ENV) or ""
        if path == PUBLIC:
            return None, None
        if path != LOCAL or len(token) < MIN_LOCAL_TOKEN:
            why = "this app is not running under beamdeploy, so there is nothing to deploy"
            if len(token) >= MIN_LOCAL_TOKEN:
                why += f" (only {LOCAL} works here, on this process)"
            elif token:
                why += f" (a token for {LOCAL} needs at least {MIN_LOCAL_TOKEN} characters)"
            return error_response(503, "not_enabled", why), None
        given = _bearer(scope)
        if given is not None and _same(given, token):
            return None, given
        return _unauthorized(), None


def _unauthorized() -> Any:
    return error_response(
        401,
        "unauthorized",
        "send the admin token as 'Authorization: Bearer <token>'",
        headers=CHALLENGE,
    )


def _same(given: str, token: str) -> bool:
    """In constant time, as bytes: the header's latin-1 bytes against the token's UTF-8."""
    try:
        return hmac.compare_digest(given.encode("latin-1"), token.encode("utf-8"))
    except UnicodeEncodeError:
        return False


def _bearer(scope: dict[str, Any]) -> str | None:
    """The bearer token as latin-1 text: exactly the header's bytes, for the arbiter."""
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
