"""The admin HTTP API: deployments over HTTP, served by every worker."""

from beamdeploy_asgi.admin.app import admin_app

__all__ = ["admin_app"]
