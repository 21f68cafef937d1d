"""How a worker puts the admin API in front of the app, at its prefix.

Nothing here imports Starlette, so that the mount costs a worker nothing at
boot when its admin app is built later (see worker/main.py).
"""

from __future__ import annotations

from typing import Any


def route_path(scope: dict[str, Any]) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


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


class BuiltOnFirstUse:
    """An ASGI app that `build()` makes at its first request, not before."""

    def __init__(self, build: Any) -> None:
        self.build = build
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.app is None:
            self.app = self.build()  # no await in between: one build, even for concurrent calls
        await self.app(scope, receive, send)
