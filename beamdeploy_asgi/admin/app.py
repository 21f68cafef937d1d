"""The admin sub-app: JSON over HTTP in front of the control socket."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from beamdeploy_asgi import deploy_options
from beamdeploy_asgi import running as worker_runtime
from beamdeploy_asgi.admin.errors import AdminError, error_response
from beamdeploy_asgi.admin.gate import AdminGate, presented_token
from beamdeploy_asgi.admin.health import health_answer
from beamdeploy_asgi.admin.openapi import openapi_schema
from beamdeploy_asgi.admin.uploads import (
    ARTIFACT_TYPES,
    CLOSE,
    UploadSlot,
    receive_upload,
    refuse_oversized,
    timed_chunks,
    uploads_dir,
)
from beamdeploy_asgi.errors import ControlError, DeploymentFailed, ReleaseError
from beamdeploy_asgi.protocol import (
    deployment_request,
    hot_reload_request,
    rollback_request,
    simple_request,
    upgrade_request,
)
from beamdeploy_asgi.releases.confine import PathNotAllowed, confined

RELEASE_DIRS_ENV = "BEAMDEPLOY_RELEASE_DIRS"  # outside the arbiter: where releases may be
LOCAL_BODY_TIMEOUT = 10.0
# (release, wait, upload, the JSON body's other fields)
ReleaseMessage = Callable[[str, bool, bool, dict[str, Any]], dict[str, Any]]

MAX_JSON_BODY = 64 * 1024
_mounted_by_app = False


def admin_app() -> Any:
    """The admin API as an ASGI app, for `app.mount("/_deploy", admin_app())`.

    A worker whose app mounts it does not add its own in front of the app.
    """
    global _mounted_by_app
    _mounted_by_app = True
    return build_admin_app()


def mounted_by_app() -> bool:
    return _mounted_by_app


def build_admin_app() -> Any:
    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/status", status, methods=["GET"]),
        Route("/upgrade", upgrade, methods=["POST"]),
        Route("/hot-reload", hot_reload, methods=["POST"]),
        Route("/rollback", rollback, methods=["POST"]),
        Route("/drain", drain, methods=["POST"]),
        Route("/undrain", undrain, methods=["POST"]),
        Route("/deployments", deployments, methods=["GET"]),
        Route("/deployments/{id}", deployment, methods=["GET"]),
        Route("/deployments/{id}/events", deployment_events, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    handlers = {AdminError: on_admin_error, HTTPException: on_http_exception}
    return AdminGate(Starlette(routes=routes, exception_handlers=handlers))


async def on_admin_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AdminError)
    return error_response(exc.status, exc.code, exc.detail, headers=exc.headers)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return error_response(
            405, "method_not_allowed", f"{request.method} is not allowed here", headers=exc.headers
        )
    if exc.status_code == 404:
        return error_response(404, "not_found", "no such route")
    return error_response(exc.status_code, "error", str(exc.detail), headers=exc.headers)


def _arbiter() -> Any:
    runtime = worker_runtime.current()
    assert runtime is not None  # the gate answered 503 otherwise
    return runtime.requests


async def _ask(
    request: Request, message: dict[str, Any], on_answer: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Forward `message` with the request's token; the arbiter checks it again.

    `on_answer` runs at the arbiter's first reply (an event or the result):
    by then the arbiter has acted on the message.
    """
    try:
        async for reply in _arbiter().stream(message, presented_token(request.scope)):
            if on_answer is not None:
                on_answer()
                on_answer = None
            if "result" in reply:
                return reply["result"]
        raise ControlError("disconnected", "the arbiter did not answer")
    except ControlError as exc:
        raise AdminError.from_control(exc) from None


# -- endpoints ------------------------------------------------------------


async def health(request: Request) -> Response:
    code, body = health_answer(worker_runtime.current())
    return JSONResponse(body, code, headers={"Cache-Control": "no-store"})


async def drain(request: Request) -> Response:
    """Mark the host draining: health answers 503, the workers still serve."""
    return JSONResponse(await _ask(request, simple_request("drain")))


async def undrain(request: Request) -> Response:
    return JSONResponse(await _ask(request, simple_request("undrain")))


async def status(request: Request) -> Response:
    return JSONResponse(await _ask(request, simple_request("status")))


async def metrics(request: Request) -> Response:
    """The arbiter renders the Prometheus text; a worker needs no prometheus-client."""
    answer = await _ask(request, simple_request("metrics"))
    text, content_type = answer.get("text"), answer.get("content_type")
    if not isinstance(text, str) or not isinstance(content_type, str):
        raise AdminError(503, "the arbiter sent no metrics", "unavailable")
    return Response(text, headers={"Content-Type": content_type, "Cache-Control": "no-store"})


async def deployments(request: Request) -> Response:
    return JSONResponse(await _ask(request, simple_request("deployments")))


async def deployment(request: Request) -> Response:
    return JSONResponse(await _ask(request, deployment_request(request.path_params["id"])))


async def deployment_events(request: Request) -> Response:
    deployment_id = request.path_params["id"]
    await _ask(request, deployment_request(deployment_id))  # 404 before the stream
    return StreamingResponse(
        _server_sent_events(request, deployment_request(deployment_id, follow=True)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store"},
    )


async def _server_sent_events(request: Request, message: dict[str, Any]) -> AsyncIterator[bytes]:
    try:
        async for reply in _arbiter().stream(message, presented_token(request.scope)):
            if "event" in reply:
                event = reply["event"]
                yield _sse(event["phase"], event)
            else:
                yield _sse("end", reply["result"])
    except ControlError as exc:
        yield _sse("error", {"error": exc.code, "detail": exc.detail})


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


async def upgrade(request: Request) -> Response:
    """Options (strategy, bake) come as query parameters, or as fields of a JSON body."""
    from_query = _deploy_options(request)

    def message(release: str, wait: bool, upload: bool, fields: dict[str, Any]) -> dict[str, Any]:
        options = {**from_query, **_body_options(fields)}
        return upgrade_request(release, follow=wait, remove_after=upload, options=options)

    return await _deploy_release(request, message)


async def hot_reload(request: Request) -> Response:
    dry_run = _flag(request.query_params.get("dry_run"), "dry_run")
    suspend_timeout = _seconds(request.query_params.get("suspend_timeout"), "suspend_timeout")
    if worker_runtime.current() is None:
        return await _hot_reload_here(request, dry_run)

    def message(release: str, wait: bool, upload: bool, fields: dict[str, Any]) -> dict[str, Any]:
        return hot_reload_request(
            release,
            follow=wait,
            dry_run=dry_run,
            suspend_timeout=suspend_timeout,
            remove_after=upload,
        )

    return await _deploy_release(request, message)


async def _hot_reload_here(request: Request, dry_run: bool) -> Response:
    """No arbiter: this process reloads itself, on the event loop's thread.

    The release must lie in one of the directories BEAMDEPLOY_RELEASE_DIRS
    names (separated by ':'); an artifact would need the arbiter's store.
    """
    from beamdeploy_asgi.reload.local import reload_here

    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise AdminError(
            415,
            'outside the arbiter, send JSON ({"release": PATH}) naming a release directory',
        )
    dirs = [d for d in os.environ.get(RELEASE_DIRS_ENV, "").split(os.pathsep) if d]
    try:
        release = confined((await _json_document(request))["release"], dirs)
    except PathNotAllowed as exc:
        raise AdminError(exc.status, str(exc), exc.code) from None
    try:
        record = reload_here(release, dry_run=dry_run)
    except ReleaseError as exc:
        raise AdminError(422, str(exc), "invalid_release") from None
    except DeploymentFailed as exc:
        record = exc.deployment
        return error_response(422, "deployment_failed", record["error"], deployment=record)
    return JSONResponse(record)


async def _deploy_release(request: Request, message: ReleaseMessage) -> Response:
    """A release named in JSON (inside --release-dir), or an artifact sent as the body."""
    runtime = worker_runtime.current()
    assert runtime is not None  # the gate answered 503 otherwise
    wait = _flag(request.query_params.get("wait"), "wait")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ARTIFACT_TYPES:
        return await _deploy_upload(request, runtime.cfg, wait, message)
    if content_type != "application/json":
        raise AdminError(
            415,
            'send JSON ({"release": PATH}) as application/json, or the artifact as '
            f"application/gzip, not {content_type or 'no content type'}",
        )
    document = await _json_document(request)
    try:
        release = confined(document.pop("release"), runtime.cfg.release_dirs)
    except PathNotAllowed as exc:
        raise AdminError(exc.status, str(exc), exc.code) from None
    return await _deploy(request, message(str(release), wait, False, document), wait)


async def _deploy_upload(
    request: Request, cfg: Any, wait: bool, message: ReleaseMessage
) -> Response:
    """Receive the artifact and hand it to the arbiter: one upload at a time.

    Every refusal that does not need the body comes before a byte of it is
    read: too large, another upload under way, a deployment running. The
    slot is free again once the arbiter has taken the upload over.
    """
    refuse_oversized(request, cfg.max_upload_size)
    with UploadSlot(uploads_dir()) as slot:
        if (await _ask(request, simple_request("ping"))).get("upgrading"):
            raise AdminError(
                409,
                "upgrade in progress: a deployment is running; try again when it has ended",
                "upgrade_in_progress",
                headers=CLOSE,
            )
        upload = await receive_upload(
            request,
            slot.directory,
            cfg.max_upload_size,
            idle=cfg.header_timeout,
            total=cfg.upload_timeout,
        )
        handed_over = False

        def hand_over() -> None:  # the arbiter installs it, then removes it
            nonlocal handed_over
            handed_over = True
            slot.release()

        try:
            return await _deploy(request, message(str(upload), wait, True, {}), wait, hand_over)
        finally:
            if not handed_over:
                upload.unlink(missing_ok=True)


async def rollback(request: Request) -> Response:
    wait = _flag(request.query_params.get("wait"), "wait")
    options = _deploy_options(request)
    to = None
    body = await read_limited(request, MAX_JSON_BODY)
    if body.strip():
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise AdminError(400, "the request body is not valid JSON") from None
        if not isinstance(document, dict):
            raise AdminError(400, 'the body must be empty or a JSON object like {"to": "1.4.0"}')
        to = document.pop("to", None)
        if to is not None:
            if not isinstance(to, str) or not to:
                raise AdminError(400, "'to' must be a release version")
        options.update(_body_options(document))
    return await _deploy(request, rollback_request(to, follow=wait, options=options), wait)


async def _deploy(
    request: Request,
    message: dict[str, Any],
    wait: bool,
    on_answer: Callable[[], None] | None = None,
) -> Response:
    """202 with Location at once, or with wait the outcome: 200, or 422 with the cause."""
    if not wait:
        started = await _ask(request, message, on_answer)
        location = f"{request.scope.get('root_path', '')}/deployments/{started['id']}"
        return JSONResponse(started, 202, headers={"Location": location})
    outcome = await _ask(request, message, on_answer)
    # During a bake, a rollback ends the upgrade being baked `rolled-back`: as asked.
    wanted = ("succeeded", "rolled-back") if message["op"] == "rollback" else ("succeeded",)
    if outcome["outcome"] not in wanted:
        return error_response(
            422, "deployment_failed", outcome["error"] or "deployment failed", deployment=outcome
        )
    return JSONResponse(outcome)


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_schema(request.scope.get("root_path", "")))


# -- request parsing ------------------------------------------------------


def _seconds(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 60:
        raise AdminError(400, f"query parameter {name!r} must be seconds, above 0 and at most 60")
    return seconds


def _deploy_options(request: Request) -> dict[str, Any]:
    """Strategy and bake from the query string; other parameters are not ours to judge."""
    given = {k: v for k, v in request.query_params.items() if k in deploy_options.NAMES}
    try:
        return deploy_options.from_text(given)
    except deploy_options.BadOption as exc:
        raise AdminError(400, f"query parameter {exc}") from None


def _body_options(fields: dict[str, Any]) -> dict[str, Any]:
    """Strategy and bake from a JSON body's fields; any other field is refused."""
    try:
        return {k: v for k, v in deploy_options.checked(fields).items() if v is not None}
    except deploy_options.BadOption as exc:
        raise AdminError(400, str(exc)) from None


def _flag(value: str | None, name: str) -> bool:
    if value is None or value.lower() in ("", "false", "0", "no"):
        return False
    if value.lower() in ("true", "1", "yes"):
        return True
    raise AdminError(400, f"query parameter {name!r} must be true or false, not {value!r}")


async def _json_document(request: Request) -> dict[str, Any]:
    """A JSON object naming a release; its other fields are the caller's to read."""
    body = await read_limited(request, MAX_JSON_BODY)
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise AdminError(400, "the request body is not valid JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("release"), str):
        raise AdminError(400, 'the body must be a JSON object like {"release": "<path>"}')
    if not document["release"] or "\x00" in document["release"]:
        raise AdminError(400, "'release' must be a non-empty path")
    return document


async def read_limited(request: Request, limit: int) -> bytes:
    """A small body, in full within --header-timeout, or 413/408."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise AdminError(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise AdminError(413, f"the request body is larger than {limit} bytes", headers=CLOSE)
    runtime = worker_runtime.current()
    timeout = float(runtime.cfg.header_timeout) if runtime is not None else LOCAL_BODY_TIMEOUT
    body = bytearray()
    try:
        async for chunk in timed_chunks(request, idle=timeout, total=timeout):
            body.extend(chunk)
            if len(body) > limit:
                raise AdminError(
                    413, f"the request body is larger than {limit} bytes", headers=CLOSE
                )
    except ClientDisconnect:
        raise AdminError(400, "the client went away before the request body ended") from None
    return bytes(body)
