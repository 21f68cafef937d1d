"""What one worker knows about itself, shared by its server, middleware and admin."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from beamdeploy_asgi.config import Configuration
from beamdeploy_asgi.protocol import TOKEN_ENV, WorkerSpec
from beamdeploy_asgi.releases.provenance import app_file
from beamdeploy_asgi.running import current, set_current  # noqa: F401  (app code uses these)
from beamdeploy_asgi.settings import Secret
from beamdeploy_asgi.version import __version__
from beamdeploy_asgi.worker.arbiter_requests import ArbiterRequests
from beamdeploy_asgi.worker.channel import Channel
from beamdeploy_asgi.worker.reloading import ReloadSteps
from beamdeploy_asgi.worker.response_counts import ResponseCounts


class WorkerRuntime:
    """What the server, the drain middleware and the hooks share in a worker."""

    def __init__(self, spec: WorkerSpec, channel: Channel) -> None:
        self.spec = spec
        self.channel = channel
        self.pid = os.getpid()
        self.age = spec.age
        self.generation = spec.generation
        self.release = spec.release
        self.name = (
            f"generation {self.generation} ({self.release['name']} "
            f"{self.release['version']}) worker {self.pid}"
        )
        self.draining = False
        self.host: dict[str, Any] = {}  # the host's drain mark, from the arbiter (Command.HOST)
        self.paused = False  # told to stop accepting, still booted
        self.responses: ResponseCounts | None = None  # on the public listeners
        self.cfg: Any = None
        self.log: Any = None
        self.heartbeat_task: asyncio.Task[None] | None = None
        self.boot_deadline = 0.0
        self.app_file: str | None = None
        self.admin_enabled = spec.admin  # a token is set (in the arbiter)
        self.requests = ArbiterRequests(channel)
        self.gate: Any = None  # the RequestGate in front of the app, once it is built
        self.reloads = ReloadSteps(self)

    def set_release(self, release: dict[str, Any]) -> None:
        """After a hot reload: this worker runs `release` now."""
        self.release = release
        self.name = (
            f"generation {self.generation} ({release['name']} {release['version']}) "
            f"worker {self.pid}"
        )
        self.app_file = app_file(release["app"]) or self.app_file

    def load_config(self) -> None:
        application = Configuration(self.spec.argv, lenient=True)
        self.config_error = application.chdir_error
        self.cfg = application.cfg
        forget_token(self.cfg)
        self.log = self.cfg.logger_class(self.cfg)
        if application.ignored_options:
            self.log.warning(
                "%s: this release's beamdeploy-asgi %s does not know %s; ignored here",
                self.name,
                __version__,
                " ".join(application.ignored_options),
            )
        self.health_path = self.cfg.health_path
        self.graceful_timeout = float(self.cfg.graceful_timeout)
        self.drain_grace = float(self.cfg.drain_grace)
        self.timeout = float(self.cfg.timeout)

    def hook(self, name: str) -> None:
        """Run a worker-side gunicorn hook; there is no arbiter object here.

        Hooks that gunicorn calls as ``(server, worker)`` get ``None`` for the
        server, and this runtime (pid, age, generation, release, cfg, log) as
        the worker.
        """
        hook = getattr(self.cfg, name)
        try:
            if name in ("post_fork", "worker_exit"):
                hook(None, self)
            else:
                hook(self)
        except Exception:
            self.log.exception("%s hook failed", name)

    def reopen_logs(self) -> None:
        self.log.reopen_files()

    def start_heartbeat(self) -> None:
        fd = self.spec.heartbeat_fd
        interval = min(1.0, self.timeout / 4) if self.timeout else 1.0

        async def beat() -> None:
            while True:
                now = time.monotonic()
                os.utime(fd, (now, now))
                await asyncio.sleep(interval)

        self.heartbeat_task = asyncio.ensure_future(beat())


def forget_token(cfg: Any) -> None:
    """Drop the admin token this worker read from the config file, wherever it is kept.

    Only the arbiter checks tokens; app code must find none in this process.
    """
    os.environ.pop(TOKEN_ENV, None)
    secret = cfg.settings["admin_token"].value
    cfg.settings["admin_token"].value = None
    if isinstance(secret, Secret):
        token = secret.reveal()
        for module in list(sys.modules.values()):  # the config file's namespace among them
            namespace = getattr(module, "__dict__", None)
            if isinstance(namespace, dict) and namespace.get("admin_token") == token:
                del namespace["admin_token"]
    kept = [item for item in cfg.raw_env if not item.startswith(f"{TOKEN_ENV}=")]
    cfg.settings["raw_env"].value = kept
