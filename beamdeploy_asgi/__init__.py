"""Zero-downtime deploys of ASGI services under a long-lived gunicorn arbiter.

The names below are imported when first used, so that the arbiter, the CLI
and the installer do not load the admin app (Starlette) they never serve.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from beamdeploy_asgi.version import __version__

if TYPE_CHECKING:
    from beamdeploy_asgi.admin import admin_app
    from beamdeploy_asgi.api import (
        current_release,
        drain,
        enabled,
        hot_reload,
        reexec,
        rollback,
        status,
        undrain,
        upgrade,
        upgrading,
    )
    from beamdeploy_asgi.arbiter.gunicorn_worker import Worker
    from beamdeploy_asgi.errors import (
        BeamDeployError,
        ControlError,
        DeploymentFailed,
        NotEnabledError,
        ReleaseError,
    )

_WHERE = {
    "admin_app": "beamdeploy_asgi.admin",
    "current_release": "beamdeploy_asgi.api",
    "drain": "beamdeploy_asgi.api",
    "enabled": "beamdeploy_asgi.api",
    "hot_reload": "beamdeploy_asgi.api",
    "reexec": "beamdeploy_asgi.api",
    "rollback": "beamdeploy_asgi.api",
    "status": "beamdeploy_asgi.api",
    "undrain": "beamdeploy_asgi.api",
    "upgrade": "beamdeploy_asgi.api",
    "upgrading": "beamdeploy_asgi.api",
    "Worker": "beamdeploy_asgi.arbiter.gunicorn_worker",
    "BeamDeployError": "beamdeploy_asgi.errors",
    "ControlError": "beamdeploy_asgi.errors",
    "DeploymentFailed": "beamdeploy_asgi.errors",
    "NotEnabledError": "beamdeploy_asgi.errors",
    "ReleaseError": "beamdeploy_asgi.errors",
}

__all__ = [
    "BeamDeployError",
    "ControlError",
    "DeploymentFailed",
    "NotEnabledError",
    "ReleaseError",
    "Worker",
    "__version__",
    "admin_app",
    "current_release",
    "drain",
    "enabled",
    "hot_reload",
    "reexec",
    "rollback",
    "status",
    "undrain",
    "upgrade",
    "upgrading",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'beamdeploy_asgi' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name]), name)
    globals()[name] = value
    return value
