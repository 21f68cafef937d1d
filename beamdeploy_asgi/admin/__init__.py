"""The admin HTTP API: deployments over HTTP, served by every worker.

`admin_app` is imported when first used: a worker puts `mount.AdminMount` in
front of its app, and without an admin token it does not load the admin app
(Starlette, the routes, the OpenAPI schema) at boot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from beamdeploy_asgi.admin.app import admin_app

__all__ = ["admin_app"]


def __getattr__(name: str) -> Any:
    if name != "admin_app":
        raise AttributeError(f"module 'beamdeploy_asgi.admin' has no attribute {name!r}")
    from beamdeploy_asgi.admin.app import admin_app

    globals()[name] = admin_app
    return admin_app
