"""The deployment state machine: from a request to a serving generation.

    [installing]  an artifact becomes a release in the store
    [preflight]   the new generation's workers start, in parallel, and
                  import the app; the first import that passes ends it
    booting       the workers run lifespan startup and their health check
    [checking]    the smoke command and the before_promote hook
    promoting     all READY: each is told to accept
    promoted      the new generation serves; STATE_DIR/current points at it
    [baking]      the old generation waits, booted, while the new one's
                  answers are watched; too many 5xx and it serves again
    draining      the old generation stops accepting and drains
    done          every old worker stopped accepting

The rolling strategy replaces booting..promoting with `rolling` (see
`rolling.py`). A failure before promotion goes through `stopping` (the new
generation's workers are stopped) to `failed`, and leaves the serving
generation as it was; a bake that trips goes through `rolling-back` to
`rolled-back`. The machine is driven by events: the pool's (a worker
imported, changed, failed, answered or exited, a generation ended), the
install's and checks' results and the clock's (`tick`). It acts only through
the `Workers` and `Steps` interfaces, so a test drives it with fakes, and
every deployment ends in `_end`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from logging import Logger
from pathlib import Path
from typing import Any

from beamdeploy_asgi.arbiter.bake import BakeRun
from beamdeploy_asgi.arbiter.deployment import Deployment, Phase
from beamdeploy_asgi.arbiter.generation import Generation, GenerationState, WorkerState
from beamdeploy_asgi.arbiter.interfaces import Steps, Workers
from beamdeploy_asgi.arbiter.promotion_gate import PromotionGate
from beamdeploy_asgi.arbiter.reload_run import ReloadRun
from beamdeploy_asgi.arbiter.rolling import RollingRun
from beamdeploy_asgi.deploy_options import DeployOptions
from beamdeploy_asgi.errors import ReleaseError
from beamdeploy_asgi.releases.release import Release

KEPT_DEPLOYMENTS = 50
HOT_RELOAD = "hot-reload"
ROLLED_BACK = "rolled-back"
FIRST_BOOTS = ("boot", "reexec")  # an arbiter's first generation: if it fails, the arbiter stops
# The pool holds each worker to its own deadline; the machine's come this
# much later, so that a deployment ends even if a worker's end is never seen.
BACKSTOP = 2.0
STOP_LIMIT = 5.0 + BACKSTOP  # the pool's STOP_TIMEOUT, then the backstop


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
        defaults: DeployOptions | None = None,
        smoke: bool = False,
        check_timeout: float = 0.0,
        past: Iterable[dict[str, Any]] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`drain_timeout`: how long the pool lets a draining worker run before killing it.

        `defaults`: how upgrades deploy unless they say otherwise; `smoke`: a
        smoke command is set; `check_timeout`: the longest the smoke command
        and the before_promote hook may take together.
        """
        self.workers = workers
        self.steps = steps
        self.log = log
        self.boot_timeout = boot_timeout
        self.drain_timeout = drain_timeout
        self.defaults = defaults or DeployOptions()
        self.smoke = smoke
        self.check_timeout = check_timeout
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
        self.rolling: RollingRun | None = None
        self.gate: PromotionGate | None = None
        self.bake: BakeRun | None = None
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
        options: DeployOptions | None = None,
        deployment_id: str | None = None,
    ) -> Deployment:
        """Start a deployment, or raise Busy: one runs at a time.

        `kind` "hot-reload" patches the serving generation instead of booting
        a new one (`dry_run` stops after the plan). `options` (strategy, bake)
        replace the defaults for this deployment. `deployment_id`: a reexec'd
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
        self.deploy = options or self.defaults
        if kind != HOT_RELOAD and deployment.previous is not None:
            deployment.details["strategy"] = self.deploy.strategy
        self.steps.record(deployment)  # so an arbiter that dies now still leaves a trace
        self.log.info("deployment %s (%s): %s", deployment.id, kind, release or artifact)
        self._hook("beamdeploy_deployment_started", deployment)
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
        self.smoke_url: str | None = None
        if self.smoke:
            try:
                self.smoke_url = self.workers.open_private(generation)
            except OSError as exc:
                self._fail(deployment, f"cannot open a private port for the smoke command: {exc}")
                return
        previous = deployment.previous
        if self.deploy.strategy == "rolling" and previous is not None:
            self._roll(deployment, previous, generation)
            return
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

    def _roll(self, deployment: Deployment, old: Generation, new: Generation) -> None:
        self.log.info(
            "deployment %s: rolling %s to %s, %s at a time",
            deployment.id,
            old,
            new,
            self.deploy.max_surge,
        )
        self.since["rolling"] = self.clock()
        self.rolling = RollingRun(
            deployment,
            old,
            new,
            workers=self.workers,
            surge=self.deploy.max_surge,
            gate=lambda then: self._check(deployment, new, then),
            finish=lambda: self._rolled(deployment, new),
            fail=lambda cause: self._fail(deployment, cause, at="boot"),
            progressed=self._progressed,
        )
        self.rolling.start()

    def _progressed(self) -> None:
        """A rollout moved: its deadline starts again (a boot, or an old worker's drain)."""
        self.deadline = self.clock() + max(self.boot_timeout, self.drain_timeout) + BACKSTOP

    def _rolled(self, deployment: Deployment, new: Generation) -> None:
        self._took(deployment, "rolling")
        self.rolling = None
        self._promote(deployment, new)

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
        deployment = self.current
        if deployment is None:
            return
        if self.bake is not None and generation is deployment.target:
            self.bake.observe()
        elif self.rolling is not None and generation is deployment.previous:
            self.rolling.step()  # an old worker's memory is free: room for a new one

    def worker_responses(self, generation: Generation) -> None:
        """The bake window reads them."""
        deployment = self.current
        if deployment is not None and self.bake is not None and generation is deployment.target:
            self.bake.observe()

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
        if deployment.phase is Phase.ROLLING:
            self._fail(
                deployment,
                f"rolling to {target}: no worker moved in "
                f"{max(self.boot_timeout, self.drain_timeout):g}s",
                at="boot",
            )
        elif deployment.phase is Phase.CHECKING:
            self._fail(deployment, f"the checks of {target} did not end in time")
        elif self.bake is not None:
            self.bake.expired()
        elif deployment.phase in (Phase.PREFLIGHT, Phase.BOOTING, Phase.PROMOTING):
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
        if self.rolling is not None:
            self.rolling.step()  # stopped, it takes the new workers out as old ones serve
        if deployment.phase is Phase.STOPPING:
            if self.workers.live(target) == 0:
                self._end(deployment, "failed")
            return
        if self.rolling is not None:
            return
        if self.bake is not None:
            self.bake.step()
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
            self._check(deployment, target, lambda: self._serve(deployment, target))

    def _serve(self, deployment: Deployment, target: Generation) -> None:
        self.since["promotion"] = self.clock()
        self.deadline = self.since["promotion"] + self.boot_timeout + BACKSTOP
        deployment.record(Phase.PROMOTING, f"promoting {target}")
        self.workers.serve(target)

    def _check(self, deployment: Deployment, target: Generation, then: Callable[[], None]) -> None:
        """The smoke command and the before_promote hook, if any, then `then`."""
        if not PromotionGate.needed(self.steps, self.smoke_url):
            then()
            return
        self.since["checks"] = self.clock()
        self.deadline = self.since["checks"] + self.check_timeout + BACKSTOP

        def passed() -> None:
            if self.current is not deployment:
                return
            self._took(deployment, "checks")
            self.gate = None
            self.workers.close_private(target)  # the address was for the checks alone
            deployment.record(Phase.ROLLING if self.rolling else Phase.CHECKING, "checks passed")
            self._progressed()
            then()

        self.gate = PromotionGate(
            deployment,
            target,
            steps=self.steps,
            smoke_url=self.smoke_url,
            passed=passed,
            failed=lambda cause: self._fail(deployment, cause, at="checks"),
        )
        self.gate.start()

    def _promote(self, deployment: Deployment, target: Generation) -> None:
        if "promotion" in self.since:
            self._took(deployment, "promotion")
        old = self.workers.promote(target)
        self.steps.promoted(deployment)
        self.log.info("deployment %s: %s promoted", deployment.id, target)
        deployment.record(Phase.PROMOTED, f"{target} serves")
        self._hook("beamdeploy_promoted", deployment)
        if old is None:
            self._end(deployment, "succeeded")
            return
        if self.deploy.bake and self._keep_warm(deployment, target, old):
            return
        self._drain(deployment, old)

    def _drain(self, deployment: Deployment, old: Generation) -> None:
        self.workers.drain(old)
        self.deadline = self.clock() + self.drain_timeout + BACKSTOP
        deployment.record(Phase.DRAINING, f"draining {old} ({self.workers.live(old)} workers)")
        self.log.info("deployment %s: draining %s", deployment.id, old)
        self._step(deployment)  # a rollout's old workers stopped accepting already

    # -- the bake window ---------------------------------------------------------

    def _keep_warm(self, deployment: Deployment, target: Generation, old: Generation) -> bool:
        """Bake: the old generation waits, paused; False if it cannot."""
        bake = BakeRun(
            deployment,
            old,
            target,
            workers=self.workers,
            steps=self.steps,
            log=self.log,
            clock=self.clock,
            seconds=self.deploy.bake,
            max_error_rate=self.deploy.bake_max_error_rate,
            limit=self.boot_timeout + self.drain_timeout + BACKSTOP,
            baked=lambda: self._baked(deployment, old),
            tripped=lambda cause: self._tripped(deployment, cause),
            rolled_back=lambda: self._end(deployment, ROLLED_BACK),
        )
        if not bake.start():
            return False
        self.bake = bake
        self.deadline = bake.deadline
        return True

    def _baked(self, deployment: Deployment, old: Generation) -> None:
        self.bake = None
        self._drain(deployment, old)

    def _tripped(self, deployment: Deployment, cause: str) -> None:
        deployment.error, self.failed_at = f"bake: {cause}", "bake"
        assert self.bake is not None
        self.deadline = self.bake.deadline

    def roll_back_now(self, reason: str) -> Deployment | None:
        """During a bake, go back to the old generation at once; None if none bakes."""
        deployment = self.current
        if deployment is None or self.bake is None or self.bake.rolling_back:
            return None
        self.bake.roll_back(reason)
        return deployment

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
        if self.gate is not None:
            self.gate.closed = True
            self.gate = None
        if target is None or target.state is not GenerationState.BOOTING or self.reload:
            self._end(deployment, "failed")
            return
        if self.rolling is not None:
            self.rolling.stop(cause)
            # Old workers boot again, then the new ones drain.
            self.deadline = self.clock() + self.boot_timeout + self.drain_timeout + BACKSTOP
        else:
            deployment.record(Phase.STOPPING, f"stopping {target}: {cause.splitlines()[0]}")
            self.workers.stop(target, cause)
            self.deadline = self.clock() + STOP_LIMIT
        self._step(deployment)

    def _end(self, deployment: Deployment, outcome: str, message: str | None = None) -> None:
        """The one way a deployment ends."""
        self.current = None
        self.deadline = None
        self.reload = self.rolling = self.gate = self.bake = None
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
        if self.failed_at in ("preflight", "boot", "bake") and kind != "reexec":
            assert release is not None
            self.steps.mark_failed(release, self.failed_at, deployment.error or "failed")
        if outcome != "succeeded":
            self._hook("beamdeploy_deployment_failed", deployment)
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

    def _hook(self, name: str, deployment: Deployment) -> None:
        """Tell the operator's hook; it cannot change the deployment's course."""
        if self.steps.has_hook(name):
            self.steps.hook(name, deployment.describe())

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
