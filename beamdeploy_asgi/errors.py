"""Exceptions raised by beamdeploy-asgi's public API."""

from __future__ import annotations

from typing import Any


class BeamDeployError(Exception):
    """Base class for every error beamdeploy-asgi raises on purpose."""


class NotEnabledError(BeamDeployError):
    """The app is not running under the beamdeploy runtime."""

    def __init__(self) -> None:
        super().__init__(
            "this app is not running under beamdeploy: start it with "
            "`beamdeploy serve` or `gunicorn -k beamdeploy_asgi.Worker` "
            "(or pass state_dir= to reach an arbiter from outside)"
        )


class ReleaseError(BeamDeployError):
    """A release directory or manifest is not usable."""


class ControlError(BeamDeployError):
    """The arbiter refused a request; `code` is stable, `detail` is for people."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class DeploymentFailed(BeamDeployError):
    """A deployment ended without promoting its release; the old one still serves."""

    def __init__(self, deployment: dict[str, Any]) -> None:
        super().__init__(deployment.get("error") or "deployment failed")
        self.deployment = deployment
