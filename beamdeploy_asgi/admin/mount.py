"""How a worker puts the admin API in front of the app, at its prefix."""

from __future__ import annotations

from typing import Any

from beamdeploy_asgi.admin.gate import route_path


class AdminMount:
    """Send requests under `prefix` to the admin app and everything else to the app."""

    def __init__(self, prefix: str, admin: Any, app: Any) -> None:
        self.prefix = prefix
        self.admin = admin
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            path = route_path(scope)
            if path == self.prefix or path.startswith(self.prefix + "/"):
                root = scope.get("root_path", "") + self.prefix
                await self.admin({**scope, "root_path": root}, receive, send)
                return
        await self.app(scope, receive, send)
