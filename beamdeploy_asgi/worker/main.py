"""Entry point of an exec'd worker: `python -m beamdeploy_asgi.worker`.

The arbiter describes the worker in ``BEAMDEPLOY_WORKER`` (generation,
release, inherited file descriptors, gunicorn arguments). The worker re-reads
gunicorn's configuration in its own interpreter, imports the app from its own
release, and runs a WorkerServer on the inherited listening sockets.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import socket
import sys
import time
from typing import Any

import uvicorn
from uvicorn.importer import import_from_string
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from beamdeploy_asgi.admin.mount import AdminMount, BuiltOnFirstUse
from beamdeploy_asgi.protocol import (
    GENERATION_ENV,
    RELEASE_NAME_ENV,
    RELEASE_VERSION_ENV,
    SPEC_ENV,
    Event,
    ProtocolMismatch,
    WorkerSpec,
)
from beamdeploy_asgi.releases import provenance
from beamdeploy_asgi.running import set_current
from beamdeploy_asgi.worker.channel import Channel
from beamdeploy_asgi.worker.drain import ConnectionCloseWhenDraining
from beamdeploy_asgi.worker.failure import BootFailure, StoppedBeforeServing
from beamdeploy_asgi.worker.reloading import RequestGate
from beamdeploy_asgi.worker.response_counts import ResponseCounts
from beamdeploy_asgi.worker.runtime import WorkerRuntime
from beamdeploy_asgi.worker.server import WorkerServer

BOOT_ERROR = 3  # gunicorn's WORKER_BOOT_ERROR
APP_LOAD_ERROR = 4  # gunicorn's APP_LOAD_ERROR


def main() -> None:
    spec = WorkerSpec.from_json(os.environ.pop(SPEC_ENV))
    channel = Channel(spec.channel_fd)
    try:
        spec.check_protocol()
    except ProtocolMismatch as exc:
        channel.send(Event.FAILED, phase="protocol", error=str(exc))
        sys.exit(BOOT_ERROR)
    runtime = WorkerRuntime(spec, channel)
    set_current(runtime)
    os.environ[GENERATION_ENV] = str(spec.generation)
    os.environ[RELEASE_NAME_ENV] = spec.release["name"]
    os.environ[RELEASE_VERSION_ENV] = spec.release["version"]
    try:
        runtime.load_config()
    except SystemExit:
        channel.send(Event.FAILED, phase="config", error=config_failure())
        sys.exit(BOOT_ERROR)
    if runtime.config_error:
        channel.send(Event.FAILED, phase="config", error=runtime.config_error)
        sys.exit(BOOT_ERROR)
    for path in reversed(spec.pythonpath):
        if path not in sys.path:
            sys.path.insert(0, path)
    configure_logging(runtime)
    runtime.hook("post_fork")
    runtime.boot_deadline = time.monotonic() + float(runtime.cfg.boot_timeout)
    try:
        server = build_server(runtime)
    except BootFailure as failure:
        report(runtime, failure)
        sys.exit(APP_LOAD_ERROR)
    channel.send(Event.IMPORTED)  # during an upgrade, the preflight passed
    sockets = [socket.socket(fileno=fd) for fd in spec.listeners]
    signal.signal(signal.SIGABRT, lambda *_: abort(runtime))
    try:
        runtime.hook("post_worker_init")
        server.run(sockets=sockets)
    except BootFailure as failure:
        report(runtime, failure)
        sys.exit(BOOT_ERROR)
    except StoppedBeforeServing:
        runtime.log.info("%s: stopped before serving", runtime.name)
    finally:
        runtime.hook("worker_exit")


def config_failure() -> str:
    """Why gunicorn's configuration did not load, as far as the worker can tell."""
    cwd = os.getcwd()
    if not os.access(cwd, os.X_OK):  # gunicorn's own check says only "can't chdir"
        return f"cannot enter the working directory {cwd} as uid {os.getuid()}: Permission denied"
    return "the gunicorn configuration did not load (its error is in the log above)"


def build_server(runtime: WorkerRuntime) -> WorkerServer:
    app_spec = runtime.release["app"]
    try:
        app = import_from_string(app_spec)
    except BaseException as exc:  # an import can raise anything, SystemExit included
        raise BootFailure.from_exception("import", f"could not import {app_spec}", exc) from None
    runtime.app_file = app_origin(app_spec, runtime.release.get("path"))
    config = uvicorn.Config(app, **uvicorn_options(runtime.cfg))
    try:
        config.load()
    except BaseException as exc:
        raise BootFailure.from_exception("import", f"could not load {app_spec}", exc) from None
    # The admin API in front of the app never reaches the gate; one the app
    # mounted itself does, and passes it by its path.
    mounted_prefix = runtime.cfg.admin_prefix if app_mounted_admin() else None
    runtime.gate = config.loaded_app = RequestGate(config.loaded_app, mounted_prefix)
    app = with_admin(config, runtime)
    # The private listener and the health check use the app uncounted; the
    # public listeners count its responses and close connections on a pause.
    private_app = ConnectionCloseWhenDraining(app, runtime)
    public_app = ConnectionCloseWhenDraining(app, runtime, when_paused=True)
    runtime.responses = ResponseCounts(public_app, runtime.cfg.admin_prefix)
    config.loaded_app = runtime.responses
    return WorkerServer(config, runtime, private_app)


def app_origin(app_spec: str, release_path: str | None) -> str | None:
    """The file that defines the app; for a release, checked to lie inside it."""
    if release_path is None:
        return provenance.app_file(app_spec)
    try:
        return provenance.check(app_spec, release_path)
    except provenance.ProvenanceError as exc:
        raise BootFailure("import", str(exc)) from None


def with_admin(config: uvicorn.Config, runtime: WorkerRuntime) -> Any:
    """The admin API in front of the app, unless the app mounted it itself.

    Without an admin token only its /health answers, so the admin app
    (Starlette, the routes, the OpenAPI schema) is built at the first request
    under the prefix rather than at every worker's boot.
    """
    prefix = runtime.cfg.admin_prefix
    if not prefix or app_mounted_admin():
        return config.loaded_app

    def build() -> Any:
        from beamdeploy_asgi.admin.app import build_admin_app

        admin = build_admin_app()
        if config.proxy_headers:
            admin = ProxyHeadersMiddleware(admin, trusted_hosts=config.forwarded_allow_ips)
        return admin

    admin = build() if runtime.admin_enabled else BuiltOnFirstUse(build)
    return AdminMount(prefix, admin, config.loaded_app)


def app_mounted_admin() -> bool:
    """Whether the app mounted admin_app() itself (it had to import it for that)."""
    admin_app = sys.modules.get("beamdeploy_asgi.admin.app")
    return admin_app is not None and admin_app.mounted_by_app()


def uvicorn_options(cfg: Any) -> dict[str, Any]:
    """gunicorn and beamdeploy settings, in uvicorn.Config's terms."""
    forwarded = cfg.forwarded_allow_ips
    options: dict[str, Any] = {
        "http": cfg.uvicorn_http,
        "ws": cfg.uvicorn_ws,
        "loop": getattr(cfg, "asgi_loop", "auto"),
        "lifespan": getattr(cfg, "asgi_lifespan", "auto"),
        "proxy_headers": cfg.proxy_headers,
        # gunicorn 24.1.0 hands over network objects, the others strings.
        "forwarded_allow_ips": (
            ",".join(map(str, forwarded)) if isinstance(forwarded, list) else forwarded
        ),
        "root_path": getattr(cfg, "root_path", "") or "",
        "timeout_keep_alive": cfg.keepalive,
        "limit_concurrency": cfg.limit_concurrency,
        "limit_max_requests": cfg.max_requests or None,
        "limit_max_requests_jitter": cfg.max_requests_jitter,
        "timeout_graceful_shutdown": cfg.graceful_timeout,
        "backlog": cfg.backlog,
        "access_log": bool(cfg.accesslog),
    }
    if cfg.is_ssl:
        ssl = cfg.ssl_options
        options.update(
            ssl_keyfile=ssl.get("keyfile"),
            ssl_certfile=ssl.get("certfile"),
            ssl_version=ssl.get("ssl_version"),
            ssl_cert_reqs=ssl.get("cert_reqs"),
            ssl_ca_certs=ssl.get("ca_certs"),
            ssl_ciphers=ssl.get("ciphers"),
        )
    accepted = inspect.signature(uvicorn.Config).parameters
    chosen = {k: v for k, v in options.items() if k in accepted and v is not None}
    chosen["log_config"] = None  # gunicorn's logger is set up already; keep it
    return chosen


def configure_logging(runtime: WorkerRuntime) -> None:
    """uvicorn's loggers write through gunicorn's error and access logs."""
    import logging

    log = runtime.log
    for name, source in (("uvicorn.error", log.error_log), ("uvicorn.access", log.access_log)):
        logger = logging.getLogger(name)
        logger.handlers = source.handlers
        logger.setLevel(source.level)
        logger.propagate = False


def abort(runtime: WorkerRuntime) -> None:
    """The arbiter saw no heartbeat for `timeout` seconds (gunicorn's WORKER TIMEOUT).

    The handler runs inside whatever blocked the loop, usually a request, and
    uvicorn turns any exception raised there, SystemExit included, into a 500
    and serves on. So the worker leaves with ``os._exit`` after the hook.
    """
    try:
        runtime.log.critical(
            "%s: no heartbeat for %ss, aborting", runtime.name, runtime.cfg.timeout
        )
        runtime.hook("worker_abort")
    finally:
        with contextlib.suppress(Exception):  # even a reentrant write must not stop the exit
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(1)


def report(runtime: WorkerRuntime, failure: BootFailure) -> None:
    runtime.log.error("%s: %s failed: %s", runtime.name, failure.phase, failure.message)
    if failure.traceback:
        sys.stderr.write(failure.traceback + "\n")
    runtime.channel.send(
        Event.FAILED, phase=failure.phase, error=failure.message, traceback=failure.traceback
    )
