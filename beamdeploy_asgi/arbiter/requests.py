"""What the arbiter answers on its control socket: one method per operation."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from beamdeploy_asgi.arbiter.control_server import Replier
from beamdeploy_asgi.arbiter.deployer import Busy, Deployer
from beamdeploy_asgi.arbiter.deployment import Deployment
from beamdeploy_asgi.arbiter.generation import GenerationState
from beamdeploy_asgi.arbiter.host_state import HostState
from beamdeploy_asgi.arbiter.pool import WorkerPool
from beamdeploy_asgi.arbiter.reexec import Reexec, ReexecRefused
from beamdeploy_asgi.arbiter.rollback import rollback_target
from beamdeploy_asgi.deploy_options import BadOption, DeployOptions
from beamdeploy_asgi.errors import ReleaseError
from beamdeploy_asgi.releases.release import Release
from beamdeploy_asgi.releases.store import ReleaseStore

MAX_SUSPEND = 60.0


class ControlRequests:
    def __init__(
        self,
        *,
        deployer: Deployer,
        pool: WorkerPool,
        store: ReleaseStore,
        keep_releases: int,
        describe_arbiter: Callable[[], dict[str, Any]],
        reexec: Reexec | None = None,
        metrics: Callable[[], dict[str, Any]] | None = None,
        host: HostState | None = None,
    ) -> None:
        """`metrics`: the exposition text and its content type; ValueError when off."""
        self.deployer = deployer
        self.pool = pool
        self.store = store
        self.keep_releases = keep_releases
        self.describe_arbiter = describe_arbiter
        self.reexecs = reexec
        self.metrics = metrics
        self.host = host

    def handle(self, request: dict[str, Any], conn: Replier) -> None:
        op = request["op"]
        if op == "ping":
            conn.reply({"pid": os.getpid(), "upgrading": self.deployer.current is not None})
        elif op == "status":
            conn.reply(self.status())
        elif op == "upgrade":
            self.upgrade(request, conn)
        elif op == "hot_reload":
            self.hot_reload(request, conn)
        elif op == "rollback":
            self.rollback(request, conn)
        elif op == "reexec" and self.reexecs is not None:
            self.reexec(request, conn)
        elif op == "releases":
            conn.reply(self.releases())
        elif op == "deployments":
            conn.reply({"deployments": self.deployer.recent()})
        elif op == "deployment":
            self.deployment(request, conn)
        elif op == "metrics" and self.metrics is not None:
            try:
                conn.reply(self.metrics())
            except ValueError as exc:
                conn.fail("metrics_unavailable", str(exc))
        elif op in ("drain", "undrain") and self.host is not None:
            self.mark_host(op, conn)
        else:
            conn.fail("unknown_op", f"unknown control operation {op!r}")

    def _refuse_busy(self, conn: Replier) -> bool:
        replaced = self.reexecs.busy() if self.reexecs is not None else None
        if replaced is not None:
            conn.fail("reexec_in_progress", replaced)
            return True
        current = self.deployer.current
        if current is not None:
            conn.fail("upgrade_in_progress", str(Busy(current)))
            return True
        if self.pool.serving is None or self.pool.stopping:
            conn.fail("unavailable", "the arbiter is not serving")
            return True
        return False

    def upgrade(self, request: dict[str, Any], conn: Replier) -> None:
        options = self._options(request, conn)
        if options is not None:
            self._deploy("upgrade", request, conn, preflight=True, options=options)

    def _options(self, request: dict[str, Any], conn: Replier) -> DeployOptions | None:
        """The deployment's strategy and bake: the defaults with the request's changes."""
        changes = request.get("options") or {}
        if not isinstance(changes, dict):
            conn.fail("bad_request", "'options' must be an object")
            return None
        try:
            return self.deployer.defaults.overridden(changes)
        except BadOption as exc:
            conn.fail("bad_request", str(exc))
            return None

    def hot_reload(self, request: dict[str, Any], conn: Replier) -> None:
        timeout = request.get("suspend_timeout", 3.0)
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not 0 < timeout <= MAX_SUSPEND
        ):
            conn.fail(
                "bad_request",
                f"'suspend_timeout' must be seconds, above 0 and at most {MAX_SUSPEND:g}",
            )
            return
        self._deploy(
            "hot-reload",
            request,
            conn,
            dry_run=bool(request.get("dry_run")),
            suspend_timeout=float(timeout),
        )

    def _deploy(self, kind: str, request: dict[str, Any], conn: Replier, **options: Any) -> None:
        """An upgrade or a hot reload of a release directory or an artifact."""
        path = request.get("release")
        if not isinstance(path, str) or not path or "\x00" in path:
            conn.fail("bad_request", "'release' must be the path of a release or an artifact")
            return
        if self._refuse_busy(conn):
            return
        remove_after = bool(request.get("remove_after"))
        if remove_after:
            # Resolved once; the install and the removal use this path, which
            # can only name an entry of the uploads directory itself.
            path = os.path.realpath(path)
            if Path(path).parent != Path(os.path.realpath(self.store.uploads_dir)) or not (
                os.path.isfile(path)
            ):
                conn.fail("bad_request", "only uploads may be removed after their install")
                return
        if os.path.isfile(path):
            options.pop("preflight", None)  # an installed artifact always gets it
            deployment = self.deployer.start(
                kind, artifact=os.path.abspath(path), remove_after=remove_after, **options
            )
        else:
            try:
                release = Release.load(path)
            except ReleaseError as exc:
                conn.fail("invalid_release", str(exc))
                return
            deployment = self.deployer.start(kind, release=release, **options)
        self._answer(deployment, request, conn)

    def rollback(self, request: dict[str, Any], conn: Replier) -> None:
        version = request.get("to")
        if version is not None and (not isinstance(version, str) or not version):
            conn.fail("bad_request", "'to' must be a release version")
            return
        options = self._options(request, conn)
        if options is None:
            return
        baking = None
        if version is None:
            baking = self.deployer.roll_back_now("rolled back by the operator during the bake")
        if baking is not None:
            self._answer(baking, request, conn)  # the old generation, still booted, serves again
            return
        if self._refuse_busy(conn):
            return
        serving = self.pool.serving
        try:
            path = rollback_target(
                version,
                serving=serving.release.path if serving else None,
                records=self.deployer.recent(limit=1000),
                kept=self.store.releases(),
            )
            release = Release.load(path)
        except LookupError as exc:
            conn.fail("no_release", str(exc.args[0]))
            return
        except ReleaseError as exc:
            conn.fail("invalid_release", str(exc))
            return
        deployment = self.deployer.start(
            "rollback", release=release, preflight=True, options=options
        )
        self._answer(deployment, request, conn)

    def reexec(self, request: dict[str, Any], conn: Replier) -> None:
        """Replace the arbiter by a new one started the same way (see arbiter/reexec.py)."""
        assert self.reexecs is not None
        try:
            deployment = self.reexecs.start()
        except ReexecRefused as exc:
            conn.fail(exc.code, exc.detail)
            return
        self._answer(deployment, request, conn)

    def mark_host(self, op: str, conn: Replier) -> None:
        """Take the host out of its load balancer's rotation, or back in (host_state.py)."""
        assert self.host is not None
        replaced = self.reexecs.busy() if self.reexecs is not None else None
        if replaced:  # the new arbiter read the mark when it started: it would not see this
            conn.fail("reexec_in_progress", replaced)
            return
        try:
            conn.reply(self.host.drain() if op == "drain" else self.host.undrain())
        except OSError as exc:
            conn.fail("state_dir", f"cannot keep the drain mark in {self.host.path}: {exc}")

    def deployment(self, request: dict[str, Any], conn: Replier) -> None:
        found = self.deployer.find(request.get("id"))
        if found is None:
            conn.fail("not_found", f"no deployment with id {request.get('id')!r}")
        elif isinstance(found, Deployment):
            self._answer(found, request, conn)
        else:  # the record of an earlier arbiter's deployment
            if request.get("follow"):
                conn.send({"event": {"phase": found.get("phase"), "message": "ended"}})
            conn.reply(found)

    def _answer(self, deployment: Deployment, request: dict[str, Any], conn: Replier) -> None:
        if request.get("follow"):
            self._follow(deployment, conn)
        else:
            conn.reply(deployment.describe())

    def _follow(self, deployment: Deployment, conn: Replier) -> None:
        for event in deployment.events:
            conn.send({"event": event})
        if deployment.ended:
            conn.reply(deployment.describe())
            return

        def forward(event: dict[str, Any]) -> None:
            conn.send({"event": event})
            if deployment.ended:
                conn.reply(deployment.describe())

        deployment.listeners.append(forward)

    def releases(self) -> dict[str, Any]:
        current = self.store.current()
        serving = self.pool.serving.release.path if self.pool.serving else None
        listed = []
        for release in reversed(self.store.releases()):  # newest first
            listed.append(
                {
                    **release,
                    "current": current is not None and str(current) == release["path"],
                    "serving": release["path"] == serving,
                }
            )
        return {
            "releases": listed,
            "current": str(current) if current else None,
            "keep": self.keep_releases,
        }

    def status(self) -> dict[str, Any]:
        def generations(state: GenerationState) -> list[dict[str, Any]]:
            return [g.describe() for g in self.pool.generations if g.state is state]

        current = self.deployer.current
        return {
            "arbiter": self.describe_arbiter(),
            "host": self.host.describe() if self.host is not None else None,
            "serving": self.pool.serving.describe() if self.pool.serving else None,
            "booting": generations(GenerationState.BOOTING),
            "standby": generations(GenerationState.STANDBY),
            "draining": generations(GenerationState.DRAINING),
            "upgrading": current is not None,
            "deployment": current.describe() if current else None,
            "reexec": self.reexecs.describe() if self.reexecs is not None else None,
            "deployments": self.deployer.recent(limit=10),
        }
