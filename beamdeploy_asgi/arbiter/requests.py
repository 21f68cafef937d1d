"""What the arbiter answers on its control socket."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from beamdeploy_asgi.arbiter.control_server import Replier
from beamdeploy_asgi.arbiter.deployment import Deployment
from beamdeploy_asgi.arbiter.generation import GenerationState
from beamdeploy_asgi.arbiter.listeners import describe
from beamdeploy_asgi.errors import ReleaseError
from beamdeploy_asgi.releases.release import Release
from beamdeploy_asgi.version import __version__


class ControlRequests:
    """Mixin of BeamArbiter: one method per control operation."""

    def handle_control(self: Any, request: dict[str, Any], conn: Replier) -> None:
        op = request["op"]
        if op == "ping":
            conn.reply({"pid": self.pid, "upgrading": self.deployment is not None})
        elif op == "status":
            conn.reply(self.status())
        elif op == "upgrade":
            self.control_upgrade(request, conn)
        elif op == "rollback":
            self.control_rollback(request, conn)
        elif op == "releases":
            conn.reply(self.releases())
        elif op == "deployments":
            conn.reply({"deployments": self.recent_deployments()})
        elif op == "deployment":
            self.control_deployment(request, conn)
        else:
            conn.fail("unknown_op", f"unknown control operation {op!r}")

    def _refuse_busy(self: Any, conn: Replier) -> bool:
        if self.deployment is not None:
            conn.fail(
                "upgrade_in_progress",
                f"upgrade in progress: deployment {self.deployment.id} "
                f"({self.deployment.phase}); try again when it has ended",
            )
            return True
        if self.serving is None or self.stopping:
            conn.fail("unavailable", "the arbiter is not serving")
            return True
        return False

    def control_upgrade(self: Any, request: dict[str, Any], conn: Replier) -> None:
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
            if Path(path).parent != Path(os.path.realpath(self.store.uploads_dir)):
                conn.fail("bad_request", "only uploads may be removed after their install")
                return
        if os.path.isfile(path):
            deployment = self.start_deployment(
                "upgrade", artifact=os.path.abspath(path), remove_after=remove_after
            )
        else:
            try:
                release = Release.load(path)
            except ReleaseError as exc:
                conn.fail("invalid_release", str(exc))
                return
            deployment = self.start_deployment("upgrade", release=release, preflight=True)
        self._answer(deployment, request, conn)

    def control_rollback(self: Any, request: dict[str, Any], conn: Replier) -> None:
        version = request.get("to")
        if version is not None and (not isinstance(version, str) or not version):
            conn.fail("bad_request", "'to' must be a release version")
            return
        if self._refuse_busy(conn):
            return
        try:
            release = Release.load(self.rollback_target(version))
        except LookupError as exc:
            conn.fail("no_release", str(exc.args[0]))
            return
        except ReleaseError as exc:
            conn.fail("invalid_release", str(exc))
            return
        deployment = self.start_deployment("rollback", release=release, preflight=True)
        self._answer(deployment, request, conn)

    def _answer(self: Any, deployment: Deployment, request: dict, conn: Replier) -> None:
        if request.get("follow"):
            self._follow(deployment, conn)
        else:
            conn.reply(deployment.describe())

    def control_deployment(self: Any, request: dict[str, Any], conn: Replier) -> None:
        wanted = request.get("id")
        for deployment in self.deployments:
            if deployment.id == wanted:
                if request.get("follow"):
                    self._follow(deployment, conn)
                else:
                    conn.reply(deployment.describe())
                return
        for record in self.past:
            if record.get("id") == wanted:
                if request.get("follow"):
                    conn.send({"event": {"phase": record.get("phase"), "message": "ended"}})
                conn.reply(record)
                return
        conn.fail("not_found", f"no deployment with id {wanted!r}")

    def _follow(self: Any, deployment: Deployment, conn: Replier) -> None:
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

    def recent_deployments(self: Any, limit: int = 50) -> list[dict[str, Any]]:
        """This run's deployments, then those in the history file, newest first."""
        records = [d.describe() for d in reversed(self.deployments)]
        seen = {r["id"] for r in records}
        records += [r for r in self.past if r.get("id") not in seen]
        return records[:limit]

    def releases(self: Any) -> dict[str, Any]:
        current = self.store.current()
        serving = self.serving.release.path if self.serving else None
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
            "keep": self.cfg.keep_releases,
        }

    def status(self: Any) -> dict[str, Any]:
        def generations(state: GenerationState) -> list[dict[str, Any]]:
            return [g.describe() for g in self.generations if g.state is state]

        return {
            "arbiter": {
                "pid": self.pid,
                "version": __version__,
                "state_dir": self.state_dir,
                "listeners": [describe(s) for s in self.LISTENERS],
                "workers": self.num_workers,
                "started_at": self.started_at,
            },
            "serving": self.serving.describe() if self.serving else None,
            "booting": generations(GenerationState.BOOTING),
            "draining": generations(GenerationState.DRAINING),
            "upgrading": self.deployment is not None,
            "deployment": self.deployment.describe() if self.deployment else None,
            "deployments": self.recent_deployments(limit=10),
        }
