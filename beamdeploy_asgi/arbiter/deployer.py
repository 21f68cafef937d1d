"""The deployment state machine: from a request to a serving generation.

    [installing]  an artifact becomes a release in the store
    [preflight]   the new generation's workers start, in parallel, and
                  import the app; the first import that passes ends it
    booting       the workers run lifespan startup and their health check
    promoting     all READY: each is told to accept
    promoted      the new generation serves; STATE_DIR/current points at it
    draining      the old generation stops accepting and drains
    done          every old worker stopped accepting

A failure before promotion goes through `stopping` (the new generation's
workers are stopped) to `failed`, and leaves the serving generation as it
was; an import that fails during the preflight is reported as the
preflight's failure. The machine is driven by events: the pool's (a worker
imported, changed or failed, a generation ended), the install's results and
the clock's (`tick`). It acts only through the `Workers` and `Steps`
interfaces, so a test drives it with fakes, and every deployment ends in
`_end`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from logging import Logger
from pathlib import Path
from typing import Any, Protocol

from beamdeploy_asgi.arbiter.deployment import Deployment, Phase
from beamdeploy_asgi.arbiter.generation import Generation, GenerationState, WorkerState
from beamdeploy_asgi.arbiter.reload_run import ReloadRun
from beamdeploy_asgi.errors import ReleaseError
from beamdeploy_asgi.releases.release import Release

KEPT_DEPLOYMENTS = 50
HOT_RELOAD = "hot-reload"
FIRST_BOOTS = ("boot", "reexec")  # an arbiter's first generation: if it fails, the arbiter stops
# The pool holds each worker to its own deadline; the machine's come this
# much later, so that a deployment ends even if a worker's end is never seen.
BACKSTOP = 2.0
STOP_LIMIT = 5.0 + BACKSTOP  # the pool's STOP_TIMEOUT, then the backstop


class Workers(Protocol):
    """What a deployment asks of the worker pool."""

    serving: Generation | None

    def create(self, release: Release) -> Generation: ...

    def start(self, generation: Generation) -> str | None: ...

    def count(self, generation: Generation, state: WorkerState) -> int: ...

    def live(self, generation: Generation) -> int: ...

    def still_accepting(self, generation: Generation) -> int: ...

    def serve(self, generation: Generation) -> None: ...

    def promote(self, generation: Generation) -> Generation | None: ...

    def drain(self, generation: Generation) -> None: ...

    def stop(self, generation: Generation, cause: str) -> None: ...

    def releases_in_use(self) -> set[str]: ...

    # a hot reload of the serving generation
    hold_spawns: bool

    def reload_members(self, generation: Generation) -> tuple[set[int], str | None]: ...

    def send_reload(
        self, generation: Generation, pids: set[int], message: dict[str, Any]
    ) -> None: ...

    def switch_release(self, generation: Generation, release: Release) -> None: ...

    def retire_pids(self, generation: Generation, pids: set[int]) -> None: ...


class Steps(Protocol):
    """What a deployment asks of the release side: installs, checks, the store."""

    def install(
        self,
        artifact: str,
        *,
        remove_after: bool,
        progress: Callable[[str], None],
        done: Callable[[str], None],
        failed: Callable[[str], None],
        wanted: Callable[[], bool],
    ) -> None: ...

    def open_to_workers(self, release: Release) -> str | None: ...

    def plan(
        self,
        serving: Release,
        new: Release,
        done: Callable[[dict[str, Any] | None, str | None], None],
    ) -> None:
        """A hot reload's plan: `done(plan, None)`, or `done(None, cause)`."""

    def promoted(self, deployment: Deployment) -> None: ...

    def record(self, deployment: Deployment) -> None: ...

    def mark_failed(self, release: Release, phase: str, error: str) -> None: ...

    def prune(self, in_use: set[str]) -> None: ...

    def halt(self, cause: str) -> None:
        """Nothing serves and nothing will: the arbiter stops (raises)."""


class Busy(Exception):
    def __init__(self, deployment: Deployment) -> None:
        super().__init__(
            f"upgrade in progress: deployment {deployment.id} ({deployment.phase}); "
            "try again when it has ended"
        )
        self.deployment = deployment


class Deployer:
    def __init__(
        self,
        workers: Workers,
        steps: Steps,
        log: Logger,
        *,
        boot_timeout: float,
        drain_timeout: float,
        past: Iterable[dict[str, Any]] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`drain_timeout`: how long the pool lets a draining worker run before killing it."""
        self.workers = workers
        self.steps = steps
        self.log = log
        self.boot_timeout = boot_timeout
        self.drain_timeout = drain_timeout
        self.clock = clock
        self.current: Deployment | None = None
        self.deployments: deque[Deployment] = deque(maxlen=KEPT_DEPLOYMENTS)
        self.past = list(past)  # earlier arbiters' deployments, newest first
        self.previous_release: str | None = None
        self._reset()

    def _reset(self) -> None:
        """The current deployment's machine state."""
        self.deadline: float | None = None
        self.failed_at: str | None = None
        self.ready = 0  # workers of the new generation last reported ready
        self.reload: ReloadRun | None = None
        self.since: dict[str, float] = {}

    # -- starting ----------------------------------------------------------

    def start(
        self,
        kind: str,
        *,
        release: Release | None = None,
        artifact: str | None = None,
        preflight: bool = False,
        remove_after: bool = False,
        dry_run: bool = False,
        suspend_timeout: float = 3.0,
        deployment_id: str | None = None,
    ) -> Deployment:
        """Start a deployment, or raise Busy: one runs at a time.

        `kind` "hot-reload" patches the serving generation instead of booting
        a new one (`dry_run` stops after the plan). `deployment_id`: a reexec'd
        arbiter records its boot under the id of the old arbiter's reexec.
        """
        if self.current is not None:
            raise Busy(self.current)
        deployment = Deployment(
            kind=kind, previous=self.workers.serving, release=release, artifact=artifact
        )
        if deployment_id is not None:
            deployment.id = deployment_id
        self.current = deployment
        self.deployments.append(deployment)
        self._reset()
        self.options = {"dry_run": dry_run, "suspend_timeout": suspend_timeout}
        self.steps.record(deployment)  # so an arbiter that dies now still leaves a trace
        self.log.info("deployment %s (%s): %s", deployment.id, kind, release or artifact)
        if artifact is not None:
            self._install(deployment, artifact, remove_after)
        else:
            self._release_ready(deployment, preflight)
        return deployment

    def _install(self, deployment: Deployment, artifact: str, remove_after: bool) -> None:
        deployment.record(Phase.INSTALLING, f"installing {Path(artifact).name}")
        self.since["install"] = self.clock()

        def progress(text: str) -> None:
            if self.current is deployment:
                deployment.record(Phase.INSTALLING, text)

        def done(path: str) -> None:
            if self.current is not deployment:
                return
            self._took(deployment, "install")
            try:
                deployment.release = Release.load(path)
            except ReleaseError as exc:
                self._fail(deployment, f"install failed: {exc}", at="install")
                return
            self._release_ready(deployment, preflight=True)

        def failed(cause: str) -> None:
            if self.current is deployment:
                self._took(deployment, "install")
                self._fail(deployment, f"install failed: {cause}", at="install")

        self.steps.install(
            artifact,
            remove_after=remove_after,
            progress=progress,
            done=done,
            failed=failed,
            wanted=lambda: self.current is deployment,
        )

    def _release_ready(self, deployment: Deployment, preflight: bool) -> None:
        release = deployment.release
        assert release is not None
        problem = self.steps.open_to_workers(release)
        if problem is not None:
            self._fail(deployment, f"cannot open {release.path} to the workers: {problem}")
            return
        if deployment.kind == HOT_RELOAD:
            self._hot_reload(deployment, release)
            return
        self._boot(deployment, preflight)

    def _hot_reload(self, deployment: Deployment, release: Release) -> None:
        serving = self.workers.serving
        if serving is None:
            self._fail(deployment, "nothing serves: there is nothing to hot-reload")
            return
        deployment.target = serving
        self.reload = ReloadRun(
            deployment,
            serving,
            release,
            workers=self.workers,
            steps=self.steps,
            log=self.log,
            clock=self.clock,
            suspend_timeout=float(self.options["suspend_timeout"]),
            dry_run=bool(self.options["dry_run"]),
            finish=lambda message: self._end(deployment, "succeeded", message),
            fail=lambda cause: self._fail(deployment, cause),
        )
        self.reload.start()

    def _boot(self, deployment: Deployment, preflight: bool) -> None:
        release = deployment.release
        assert release is not None
        generation = self.workers.create(release)
        deployment.target = generation
        self.since["boot"] = self.since["preflight"] = self.clock()
        self.deadline = self.since["boot"] + self.boot_timeout + BACKSTOP
        self.log.info(
            "deployment %s: booting %s with %s workers", deployment.id, generation, generation.size
        )
        if preflight:
            deployment.record(Phase.PREFLIGHT, f"importing {release.app} in {generation}")
        else:
            deployment.record(
                Phase.BOOTING,
                f"booting {generation}: 0/{generation.size} ready",
                ready=0,
                total=generation.size,
            )
        cause = self.workers.start(generation)
        if cause is not None:
            self._fail(deployment, cause, at="boot")

    # -- events ----------------------------------------------------------------

    def worker_changed(self, generation: Generation) -> None:
        deployment = self.current
        if deployment is not None and generation in (deployment.target, deployment.previous):
            self._step(deployment)

    def worker_reloaded(self, generation: Generation, pid: int, answer: dict[str, Any]) -> None:
        if self.reload is not None and generation is self.reload.generation:
            self.reload.answered(pid, answer)

    def worker_exited(self, generation: Generation, pid: int) -> None:
        if self.reload is not None and generation is self.reload.generation:
            self.reload.exited(pid)

    def worker_imported(self, generation: Generation) -> None:
        deployment = self.current
        if deployment is not None and generation is deployment.target:
            self._passed(deployment)

    def worker_failed(self, generation: Generation, cause: str, phase: str) -> None:
        deployment = self.current
        if deployment is None or generation is not deployment.target:
            return
        if phase == "import" and deployment.phase is Phase.PREFLIGHT:
            self._fail(deployment, f"preflight: {cause}", at="preflight")
        else:
            self._fail(deployment, cause, at="boot")

    def generation_ended(self, generation: Generation) -> None:
        if generation.stopped_at is not None:  # drained, not failed
            for deployment in self.deployments:
                if deployment.previous is generation and deployment.drained_at is None:
                    deployment.drained_at = generation.stopped_at
                    started = generation.drain_started_at or generation.stopped_at
                    deployment.timings["drain"] = generation.stopped_at - started
            self.prune()  # its release may go now that nothing runs it
        self.worker_changed(generation)

    def _passed(self, deployment: Deployment) -> None:
        """A worker imported the app: the preflight passed, the boot goes on."""
        if deployment.phase is not Phase.PREFLIGHT:
            return
        self._took(deployment, "preflight")
        self.since["boot"] = self.clock()  # the rest of the boot
        assert deployment.target is not None
        self._booting(deployment, deployment.target)

    def tick(self) -> None:
        """Deadlines: a deployment never waits without end for an event."""
        if self.reload is not None:
            self.reload.tick()
            return
        deployment = self.current
        if deployment is None or self.deadline is None or self.clock() <= self.deadline:
            return
        self.deadline = None
        target = deployment.target
        assert target is not None
        if deployment.phase in (Phase.PREFLIGHT, Phase.BOOTING, Phase.PROMOTING):
            ready = self.workers.count(target, WorkerState.READY)
            self._fail(
                deployment,
                f"{target}: {ready}/{target.size} workers ready after "
                f"{self.boot_timeout:g}s (boot timeout)",
                at="boot",
            )
        elif deployment.phase is Phase.STOPPING:
            self.log.warning(
                "deployment %s: %s still has %s workers; ending it anyway",
                deployment.id,
                target,
                self.workers.live(target),
            )
            self._end(deployment, "failed")
        elif deployment.phase is Phase.DRAINING:
            assert deployment.previous is not None
            self.log.warning(
                "deployment %s: %s workers of %s still accepted at the drain limit",
                deployment.id,
                self.workers.still_accepting(deployment.previous),
                deployment.previous,
            )
            self._end(deployment, "succeeded")

    # -- stepping ------------------------------------------------------------

    def _step(self, deployment: Deployment) -> None:
        """Move the deployment as far as the workers' states allow."""
        if self.current is not deployment or deployment.target is None:
            return
        target = deployment.target
        if deployment.phase is Phase.STOPPING:
            if self.workers.live(target) == 0:
                self._end(deployment, "failed")
            return
        if deployment.phase is Phase.PREFLIGHT and self.workers.count(target, WorkerState.READY):
            self._passed(deployment)  # a worker that does not say `imported` says `ready`
        if deployment.phase is Phase.BOOTING:
            self._booting(deployment, target)
        if deployment.phase is Phase.PROMOTING:
            if self.workers.count(target, WorkerState.SERVING) == target.size:
                self._promote(deployment, target)
        if deployment.phase is Phase.DRAINING:
            previous = deployment.previous
            if previous is None or self.workers.still_accepting(previous) == 0:
                self._end(deployment, "succeeded")

    def _booting(self, deployment: Deployment, target: Generation) -> None:
        ready = self.workers.count(target, WorkerState.READY)
        if ready != self.ready or deployment.phase is not Phase.BOOTING:
            self.ready = ready
            deployment.record(
                Phase.BOOTING,
                f"booting {target}: {ready}/{target.size} ready",
                ready=ready,
                total=target.size,
            )
        if ready == target.size:
            self._took(deployment, "boot")
            self.since["promotion"] = self.clock()
            deployment.record(Phase.PROMOTING, f"promoting {target}")
            self.workers.serve(target)

    def _promote(self, deployment: Deployment, target: Generation) -> None:
        self._took(deployment, "promotion")
        old = self.workers.promote(target)
        self.steps.promoted(deployment)
        self.log.info("deployment %s: %s promoted", deployment.id, target)
        deployment.record(Phase.PROMOTED, f"{target} serves")
        if old is None:
            self._end(deployment, "succeeded")
            return
        self.workers.drain(old)
        self.deadline = self.clock() + self.drain_timeout + BACKSTOP
        deployment.record(Phase.DRAINING, f"draining {old} ({self.workers.live(old)} workers)")
        self.log.info("deployment %s: draining %s", deployment.id, old)

    # -- ending ----------------------------------------------------------------

    def _fail(self, deployment: Deployment, cause: str, at: str | None = None) -> None:
        """Stop what was started; the deployment ends once it is stopped.

        `at` (install, preflight, boot) is where the release failed; the
        first failure is the one reported.
        """
        if self.current is not deployment:
            return
        if deployment.phase is Phase.STOPPING:
            self._step(deployment)
            return
        target = deployment.target
        deployment.error, self.failed_at = cause, at
        self.log.error("deployment %s failed: %s", deployment.id, cause.splitlines()[0])
        if target is None or target.state is not GenerationState.BOOTING or self.reload:
            self._end(deployment, "failed")
            return
        deployment.record(Phase.STOPPING, f"stopping {target}: {cause.splitlines()[0]}")
        self.workers.stop(target, cause)
        self.deadline = self.clock() + STOP_LIMIT
        self._step(deployment)

    def _end(self, deployment: Deployment, outcome: str, message: str | None = None) -> None:
        """The one way a deployment ends."""
        self.current = None
        self.deadline = None
        self.reload = None
        kind = deployment.kind
        if outcome == "succeeded":
            message = message or f"{deployment.target} serves"
            self.log.info("deployment %s: done, %s", deployment.id, message)
            serving = self.workers.serving
            before = deployment.from_release
            # What served before stays for a rollback (not after a dry run).
            if serving is not None and serving.release is deployment.release and before:
                if before.path != serving.release.path:
                    self.previous_release = before.path
            deployment.finish(outcome, message)
        else:
            error = deployment.error or "failed"
            deployment.finish(outcome, error.splitlines()[0], error)
        self.steps.record(deployment)
        release = deployment.release
        # A reexec'd arbiter's boot failing says nothing of the release the old one serves.
        if outcome == "failed" and self.failed_at in ("preflight", "boot") and kind != "reexec":
            assert release is not None
            self.steps.mark_failed(release, self.failed_at, deployment.error or "failed")
        self.prune()
        if outcome == "failed" and self.workers.serving is None and kind in FIRST_BOOTS:
            # The whole cause, worker traceback included: there is no `upgrade` to show it.
            self.steps.halt(f"the first generation failed to boot: {deployment.error}")

    def abandon(self, reason: str) -> None:
        """The arbiter stops: the running deployment ends failed, nothing else is done."""
        deployment = self.current
        if deployment is None:
            return
        self.current = None
        if deployment.target is not None and deployment.target.state is GenerationState.BOOTING:
            deployment.target.state = GenerationState.FAILED
        deployment.finish("failed", "arbiter stopping", reason)
        self.steps.record(deployment)

    def prune(self) -> None:
        """Old releases may go; never one that runs, is being deployed, or served last."""
        in_use = self.workers.releases_in_use()
        if self.current is not None and self.current.release is not None:
            in_use.add(self.current.release.path or "")
        if self.previous_release:
            in_use.add(self.previous_release)
        self.steps.prune(in_use - {""})

    def _took(self, deployment: Deployment, step: str) -> None:
        deployment.timings[step] = self.clock() - self.since[step]

    # -- what happened -----------------------------------------------------------

    def find(self, deployment_id: Any) -> Deployment | dict[str, Any] | None:
        """A deployment of this run, or the record of an earlier one."""
        for deployment in self.deployments:
            if deployment.id == deployment_id:
                return deployment
        for record in self.past:
            if record.get("id") == deployment_id:
                return record
        return None

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """This run's deployments, then those in the history file, newest first."""
        records = [d.describe() for d in reversed(self.deployments)]
        seen = {r["id"] for r in records}
        records += [r for r in self.past if r.get("id") not in seen]
        return records[:limit]
