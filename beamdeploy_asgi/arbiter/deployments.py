"""How the arbiter takes a deployment from a request to a serving generation.

    [installing]  an artifact becomes a release in the store (subprocess)
    [preflight]   the app is imported once in the release's interpreter (subprocess)
    booting       every worker of the new generation boots, in parallel
    promoting     all READY: each is told to accept
    promoted      the new generation serves; STATE_DIR/current points at it
    draining      the old generation stops accepting and drains
    done          every old worker stopped accepting

A failure before promotion stops whatever was started and leaves the serving
generation as it was.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from gunicorn import systemd
from gunicorn.errors import HaltServer

from beamdeploy_asgi.arbiter.artifact_install import INSTALL_TIMEOUT, ArtifactInstall, died
from beamdeploy_asgi.arbiter.deployment import Deployment, Phase
from beamdeploy_asgi.arbiter.generation import Generation, GenerationState, WorkerState
from beamdeploy_asgi.arbiter.spawn import owner_problem, worker_owner
from beamdeploy_asgi.arbiter.tasks import Task
from beamdeploy_asgi.errors import ReleaseError
from beamdeploy_asgi.protocol import RELEASE_PATH_ENV, Command
from beamdeploy_asgi.releases.provenance import bootstrap, release_environment
from beamdeploy_asgi.releases.release import Release


class Deployments:
    """Mixin of BeamArbiter; the attributes it uses are set in BeamArbiter.__init__."""

    serving: Generation | None
    deployment: Deployment | None

    # -- starting ----------------------------------------------------------

    def start_deployment(
        self: Any,
        kind: str,
        *,
        release: Release | None = None,
        artifact: str | None = None,
        preflight: bool = False,
        remove_after: bool = False,
    ) -> Deployment:
        deployment = Deployment(
            kind=kind, previous=self.serving, release=release, artifact=artifact
        )
        self.deployment = deployment
        self.deployments.append(deployment)
        self._remember(deployment)  # so an arbiter that dies now still leaves a trace
        self.log.info("deployment %s (%s): %s", deployment.id, kind, release or artifact)
        if artifact is not None:
            self._install(deployment, artifact, remove_after)
        else:
            self._release_ready(deployment, preflight)
        return deployment

    def _install(self: Any, deployment: Deployment, artifact: str, remove_after: bool) -> None:
        deployment.record(Phase.INSTALLING, f"installing {Path(artifact).name}")
        started = time.monotonic()

        def done(path: str) -> None:
            if self.deployment is not deployment:
                return
            deployment.timings["install"] = time.monotonic() - started
            try:
                deployment.release = Release.load(path)
            except ReleaseError as exc:
                self._fail_early(deployment, f"install failed: {exc}")
                return
            self._release_ready(deployment, preflight=True)

        def forget_upload() -> None:
            if remove_after:  # unpacked by now, or refused
                _unlink(artifact)

        def failed(cause: str) -> None:
            forget_upload()
            if self.deployment is deployment:
                deployment.timings["install"] = time.monotonic() - started
                self._fail_early(deployment, f"install failed: {cause}")

        ArtifactInstall(
            artifact,
            state_dir=self.state_dir,
            cfg=self.cfg,
            start_task=self._start_task,
            progress=lambda text: deployment.record(Phase.INSTALLING, text),
            done=done,
            failed=failed,
            wanted=lambda: self.deployment is deployment and not self.stopping,
        ).start(on_prepared=forget_upload)

    def _release_ready(self: Any, deployment: Deployment, preflight: bool) -> None:
        release = deployment.release
        assert release is not None
        if release.path is not None and worker_owner(self.cfg):
            try:
                self.store.open_to_group(release.path, self.cfg.gid)
            except OSError as exc:
                self._fail_early(deployment, f"cannot open {release.path} to the workers: {exc}")
                return
        if not preflight:
            self._boot(deployment)
            return
        deployment.record(Phase.PREFLIGHT, f"importing {release.app} in {release}")
        started = time.monotonic()

        def on_exit(task: Task) -> None:
            if self.deployment is not deployment:
                return
            deployment.timings["preflight"] = time.monotonic() - started
            if task.returncode == 0:
                self._boot(deployment)
                return
            cause = task.last("error") or died(task, "the preflight import")
            tail = task.last("traceback")
            self._fail_early(deployment, f"preflight: {cause}" + (f"\n{tail}" if tail else ""))

        env = dict(os.environ)
        if release.path is not None:
            env = release_environment(env)
            env["VIRTUAL_ENV"] = os.path.join(release.path, "venv")
            env[RELEASE_PATH_ENV] = release.path
        self._start_task(
            "preflight",
            [
                release.python,
                *bootstrap("beamdeploy_asgi.releases.preflight"),
                release.app,
                *release.pythonpath,
            ],
            on_line=lambda message: None,
            on_exit=on_exit,
            timeout=self.cfg.boot_timeout,
            env=env,
            cwd=self.cfg.chdir,
            owner=worker_owner(self.cfg),  # release code never runs as the arbiter's user
        )

    def _start_task(
        self: Any, name: str, argv: list[str], *, cleanup: bool = False, **kwargs: Any
    ) -> None:
        """Start a helper; `cleanup` ones (removals) never fail the running deployment."""
        try:
            task = Task(name, argv, selector=self.selector, **kwargs)
        except OSError as exc:
            if kwargs.get("owner"):
                problem = owner_problem(exc, self.cfg, argv[0], kwargs.get("cwd"))
            else:
                problem = str(exc)
            deployment = self.deployment
            if not cleanup and deployment is not None and not deployment.ended:
                self._fail_early(deployment, f"{name} could not start: {problem}")
            else:
                self.log.error("%s could not start: %s", name, problem)
            return
        self.tasks[task.pid] = task

    def _boot(self: Any, deployment: Deployment) -> None:
        release = deployment.release
        assert release is not None
        self.generation_counter += 1
        generation = Generation(self.generation_counter, release, self.num_workers)
        deployment.target = generation
        deployment.booting_since = time.time()
        self.generations.append(generation)
        self.log.info(
            "deployment %s: booting %s with %s workers", deployment.id, generation, generation.size
        )
        deployment.record(
            Phase.BOOTING,
            f"booting {generation}: 0/{generation.size} ready",
            ready=0,
            total=generation.size,
        )
        for _ in range(generation.size):
            if self.deployment is not deployment or deployment.ended:
                break
            self.spawn(generation)

    # -- stepping ------------------------------------------------------------

    def deployment_progress(self: Any) -> None:
        """Step the current deployment as far as the workers' states allow."""
        deployment = self.deployment
        if deployment is None or deployment.target is None:
            return
        target = deployment.target
        if deployment.phase is Phase.STOPPING:
            if not target.workers:
                self._deployment_over()
            return
        if deployment.phase is Phase.BOOTING:
            ready = len(target.in_state(WorkerState.READY))
            if ready != deployment.events[-1].get("ready"):
                deployment.record(
                    Phase.BOOTING,
                    f"booting {target}: {ready}/{target.size} ready",
                    ready=ready,
                    total=target.size,
                )
            if ready == target.size:
                deployment.timings["boot"] = time.time() - deployment.booting_since
                deployment.record(Phase.PROMOTING, f"promoting {target}")
                for worker in target.workers.values():
                    worker.send({"cmd": Command.SERVE})
        elif deployment.phase is Phase.PROMOTING:
            if len(target.in_state(WorkerState.SERVING)) == target.size:
                self.promote(deployment)
        if deployment.phase is Phase.DRAINING and deployment.previous is not None:
            if all(
                w.stopped_accepting or w.state is WorkerState.STOPPING
                for w in deployment.previous.workers.values()
            ):
                self.finish_deployment(deployment)

    def promote(self: Any, deployment: Deployment) -> None:
        target = deployment.target
        assert target is not None and deployment.booting_since is not None
        promoted_at = time.time()
        deployment.timings["promotion"] = (
            promoted_at - deployment.booting_since - deployment.timings["boot"]
        )
        target.state = GenerationState.SERVING
        target.promoted_at = promoted_at
        old = self.serving
        self.serving = target
        if target.release.path is not None:
            self.store.set_current(target.release.path)
            self.store.clear_failed(target.release.path)
        self.log.info("deployment %s: %s promoted", deployment.id, target)
        deployment.record(Phase.PROMOTED, f"{target} serves")
        if deployment.kind == "boot":
            systemd.sd_notify("READY=1\nSTATUS=beamdeploy serving", self.log)
        if old is None:
            self.finish_deployment(deployment)
            return
        old.state = GenerationState.DRAINING
        old.drain_started_at = promoted_at
        for worker in list(old.workers.values()):
            self.retire(worker)
        deployment.record(Phase.DRAINING, f"draining {old} ({len(old.workers)} workers)")
        self.log.info("deployment %s: draining %s", deployment.id, old)
        if not old.workers:
            self.generation_emptied(old)
        self.deployment_progress()

    # -- ending ----------------------------------------------------------------

    def finish_deployment(self: Any, deployment: Deployment) -> None:
        self.log.info("deployment %s: done, %s serves", deployment.id, deployment.target)
        deployment.finish("succeeded", f"{deployment.target} serves")
        self.deployment = None
        if deployment.previous is not None:
            self.previous_release = deployment.previous.release.path
        self._remember(deployment)
        self.prune_store()

    def abort_deployment(self: Any, cause: str) -> None:
        deployment = self.deployment
        if deployment is None or deployment.ended or deployment.target is None:
            return
        target = deployment.target
        if target.state is not GenerationState.BOOTING:
            return  # promoted already: its failures are those of the serving generation
        target.state = GenerationState.FAILED
        target.failure = cause
        self.log.error("deployment %s failed: %s", deployment.id, cause.splitlines()[0])
        deployment.error = cause
        deployment.record(Phase.STOPPING, f"stopping {target}: {cause.splitlines()[0]}")
        for worker in list(target.workers.values()):
            if worker.state is not WorkerState.STOPPING:
                self._stop_unserved(worker)
        if not target.workers:
            self._deployment_over()

    def _deployment_over(self: Any) -> None:
        """The failed generation is gone; report the failure now that all is clean."""
        deployment = self.deployment
        if deployment is None:
            return
        if not deployment.ended:
            deployment.finish("failed", f"{deployment.target} failed", deployment.error)
        self.generation_emptied(deployment.target)
        self._end_failed(deployment, "boot")

    def _fail_early(self: Any, deployment: Deployment, cause: str) -> None:
        """A failure before any worker started: nothing to stop."""
        phase = deployment.phase
        self.log.error("deployment %s failed: %s", deployment.id, cause.splitlines()[0])
        deployment.finish("failed", cause.splitlines()[0], cause)
        self._end_failed(deployment, phase)

    def _end_failed(self: Any, deployment: Deployment, phase: str) -> None:
        self.deployment = None
        self._remember(deployment)
        release = deployment.release
        if release is not None and release.path is not None and phase in ("preflight", "boot"):
            try:
                self.store.mark_failed(release.path, phase, deployment.error or "failed")
            except OSError as exc:
                self.log.error("cannot mark %s as failed: %s", release.path, exc)
        if self.serving is None and not self.stopping:
            # The whole cause, worker traceback included: there is no `upgrade` to show it.
            cause = deployment.error or "unknown cause"
            raise HaltServer(f"the first generation failed to boot: {cause}", 3)

    def _remember(self: Any, deployment: Deployment) -> None:
        try:
            self.store.append_history(deployment.summary())
        except OSError as exc:
            self.log.error("cannot write %s: %s", self.store.history_file, exc)

    def prune_store(self: Any) -> None:
        """Keep `keep_releases`; never a release that runs, the current or the previous one."""
        protected = {g.release.path for g in self.generations if g.release.path}
        if self.deployment is not None and self.deployment.release is not None:
            if self.deployment.release.path:
                protected.add(self.deployment.release.path)
        if self.previous_release:
            protected.add(self.previous_release)
        current = self.store.current()
        if current is not None:
            protected.add(str(current))
        for path, doomed in self.store.prune(self.cfg.keep_releases, protected):
            self.log.info("removed old release %s (keeping %s)", path, self.cfg.keep_releases)
            # Deleting a venv takes a while; a subprocess does it, not the loop.
            self._start_task(
                "remove",
                ["rm", "-rf", "--", doomed],
                cleanup=True,
                on_line=lambda m: None,
                on_exit=lambda task: None,
                timeout=INSTALL_TIMEOUT,
            )

    # -- rollback --------------------------------------------------------------

    def rollback_target(self: Any, version: str | None) -> str:
        """The release to roll back to; raises LookupError saying why there is none."""
        serving = self.serving.release.path if self.serving else None
        if version is None:
            for record in self.recent_deployments(limit=1000):
                if record["kind"] in ("boot", "restart") or record["outcome"] != "succeeded":
                    continue
                if (record.get("to") or {}).get("path") != serving:
                    continue
                previous = (record.get("from") or {}).get("path")
                if previous and previous != serving and Path(previous).is_dir():
                    return previous
                break
            raise LookupError("no previous release to roll back to")
        kept = self.store.releases()
        failed = {r["path"]: r["failed"] for r in kept if r["failed"]}
        for release in reversed(kept):
            if release["version"] == version and release["path"] not in failed:
                return release["path"]
        for record in self.recent_deployments(limit=1000):
            for side in ("to", "from"):
                release = record.get(side) or {}
                path = release.get("path")
                if (
                    release.get("version") == version
                    and path
                    and path not in failed
                    and Path(path).is_dir()
                ):
                    return path
        for path, why in failed.items():
            if any(r["path"] == path and r["version"] == version for r in kept):
                raise LookupError(
                    f"release {version} failed at {why.get('phase')} when last deployed "
                    f"({why.get('error')}); rollback skips it (use upgrade to try it again)"
                )
        raise LookupError(f"no kept release has version {version!r}")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
