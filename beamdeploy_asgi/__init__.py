"""Zero-downtime deploys of ASGI services under a long-lived gunicorn arbiter."""

from __future__ import annotations

from beamdeploy_asgi.admin import admin_app
from beamdeploy_asgi.api import (
    current_release,
    enabled,
    rollback,
    status,
    upgrade,
    upgrading,
)
from beamdeploy_asgi.errors import (
    BeamDeployError,
    ControlError,
    DeploymentFailed,
    NotEnabledError,
    ReleaseError,
)
from beamdeploy_asgi.version import __version__
from beamdeploy_asgi.worker.gunicorn_worker import Worker

__all__ = [
    "__version__",
    "BeamDeployError",
    "ControlError",
    "DeploymentFailed",
    "NotEnabledError",
    "ReleaseError",
    "Worker",
    "admin_app",
    "current_release",
    "enabled",
    "rollback",
    "status",
    "upgrade",
    "upgrading",
]
