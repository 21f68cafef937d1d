"""Every admin error is JSON: {"error": code, "detail": sentence}."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

from beamdeploy_asgi.errors import ControlError

STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "upgrade_in_progress",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_release",
    503: "unavailable",
}

# What the arbiter's refusals mean over HTTP.
CONTROL_STATUS = {
    "bad_request": 400,
    "unauthorized": 401,
    "path_not_allowed": 403,
    "not_found": 404,
    "upgrade_in_progress": 409,
    "reexec_in_progress": 409,  # the arbiter is being replaced
    "invalid_release": 422,
    "no_release": 409,
    "unavailable": 503,
    "metrics_unavailable": 503,  # no prometheus-client in the arbiter's environment
    "not_running": 503,
    "disconnected": 503,
    "timeout": 504,
    "protocol": 502,
}


class AdminError(Exception):
    def __init__(
        self, status: int, detail: str, code: str | None = None, headers: dict | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code or STATUS_CODES.get(status, "error")
        self.detail = detail
        self.headers = headers

    @classmethod
    def from_control(cls, exc: ControlError) -> AdminError:
        return cls(CONTROL_STATUS.get(exc.code, 500), exc.detail, exc.code)


def error_response(
    status: int,
    code: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail, **extra}, status, headers=headers)
