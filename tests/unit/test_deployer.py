"""The deployment state machine on its own: a fake pool, fake release steps, a fake clock.

Each test plays the events a real arbiter would see (workers ready, serving,
failing, exiting; install and preflight results; time passing) and checks
the phases the deployment goes through and what it asked of the pool and the
release side. The end-to-end tests run the same paths with real processes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from beamdeploy_asgi.arbiter.deployer import BACKSTOP, STOP_LIMIT, Busy, Deployer
from beamdeploy_asgi.arbiter.deployment import Deployment, Phase
from beamdeploy_asgi.arbiter.generation import Generation, GenerationState, WorkerState
from beamdeploy_asgi.deploy_options import DeployOptions
from beamdeploy_asgi.releases.release import MANIFEST, Release

BOOT_TIMEOUT = 30.0
CHECK_TIMEOUT = 150.0
DRAIN_TIMEOUT = 12.0
SIZE = 2


def release(version: str, path: str | None = None) -> Release:
    return Release(name="demo", version=version, app="demo.app:app", python="/bin/false", path=path)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakePool:
    """Workers as a list of states per generation; the test says what they do.

    Like the real pool, it reports to the deployer only when the test plays
    an event, never from a method the deployer called.
    """

    def __init__(self) -> None:
        self.serving: Generation | None = None
        self.deployer: Deployer | None = None
        self.states: dict[int, list[str]] = {}
        self.accepting: dict[int, int] = {}
        self.calls: list[tuple[str, int]] = []
        self.counter = 0
        self.spawn_error: str | None = None
        self.hold_spawns = False
        self.members_problem: str | None = None
        self.sent: list[tuple[set[int], dict[str, Any]]] = []
        self.retired: set[int] = set()
        self.pausable = True
        self.paused_count: dict[int, int] = {}
        self.counts: dict[int, dict[str, int]] = {}

    # the Workers interface
    def create(self, rel: Release) -> Generation:
        self.counter += 1
        generation = Generation(self.counter, rel, SIZE)
        self.calls.append(("create", generation.number))
        return generation

    def start(self, generation: Generation) -> str | None:
        self.calls.append(("start", generation.number))
        if self.spawn_error:
            self.states[generation.number] = ["booting"]  # the first one started
            return self.spawn_error
        self.states[generation.number] = ["booting"] * generation.size
        return None

    def count(self, generation: Generation, state: WorkerState) -> int:
        return self.states.get(generation.number, []).count(state.value)

    def live(self, generation: Generation) -> int:
        return len(self.states.get(generation.number, []))

    def still_accepting(self, generation: Generation) -> int:
        return self.accepting.get(generation.number, 0)

    def serve(self, generation: Generation) -> None:
        self.calls.append(("serve", generation.number))

    def promote(self, generation: Generation) -> Generation | None:
        self.calls.append(("promote", generation.number))
        old, self.serving = self.serving, generation
        generation.state = GenerationState.SERVING
        self.accepting[generation.number] = generation.size
        return old

    def drain(self, generation: Generation) -> None:
        self.calls.append(("drain", generation.number))
        generation.state = GenerationState.DRAINING

    def stop(self, generation: Generation, cause: str, keep_serving: bool = False) -> None:
        self.calls.append(("stop", generation.number))
        generation.state = GenerationState.FAILED
        generation.failure = cause

    def releases_in_use(self) -> set[str]:
        return {path for path in [self.serving.release.path if self.serving else None] if path}

    def reload_members(self, generation: Generation) -> tuple[set[int], str | None]:
        if self.members_problem:
            return set(), self.members_problem
        return {101, 102}, None

    def send_reload(self, generation: Generation, pids: set[int], message: dict[str, Any]) -> None:
        self.sent.append((set(pids), message))

    def switch_release(self, generation: Generation, rel: Release) -> None:
        generation.release = rel

    def retire_pids(self, generation: Generation, pids: set[int]) -> None:
        self.retired |= pids

    def open_private(self, generation: Generation) -> str:
        self.calls.append(("open_private", generation.number))
        return f"http://127.0.0.1:{9000 + generation.number}"

    def close_private(self, generation: Generation) -> None:
        self.calls.append(("close_private", generation.number))

    def grow(self, generation: Generation, count: int) -> str | None:
        self.calls.append(("grow", generation.number, count))  # type: ignore[arg-type]
        if self.spawn_error:
            return self.spawn_error
        self.states.setdefault(generation.number, []).extend(["booting"] * count)
        return None

    def shrink(self, generation: Generation, count: int) -> None:
        self.calls.append(("shrink", generation.number, count))  # type: ignore[arg-type]
        generation.size -= count
        states = self.states[generation.number]
        for _ in range(count):
            states[states.index("serving")] = "draining"
        accepting = self.accepting.get(generation.number, 0)
        self.accepting[generation.number] = max(accepting - count, 0)

    def restore(self, generation: Generation, size: int) -> None:
        self.calls.append(("restore", generation.number, size))  # type: ignore[arg-type]
        generation.size = size

    def pause(self, generation: Generation) -> None:
        self.calls.append(("pause", generation.number))

    def resume(self, generation: Generation) -> None:
        self.calls.append(("resume", generation.number))

    def can_pause(self, generation: Generation) -> bool:
        return self.pausable

    def paused(self, generation: Generation) -> int:
        return self.paused_count.get(generation.number, 0)

    def responses(self, generation: Generation) -> dict[str, int]:
        return dict(self.counts.get(generation.number, {}))

    def answer(self, generation: Generation, **by_pid: dict[str, Any]) -> None:
        """Workers answer the last step sent: `w101={...}`; ok unless told otherwise."""
        assert self.deployer is not None
        last = self.sent[-1][1]
        for key, fields in by_pid.items():
            answer = {"id": last["id"], "step": last["step"], "ok": True, **fields}
            self.deployer.worker_reloaded(generation, int(key[1:]), answer)

    def steps_sent(self) -> list[str]:
        return [message["step"] for _, message in self.sent]

    # events the test plays
    def _set(self, generation: Generation, state: str, count: int | None = None) -> None:
        states = self.states[generation.number]
        for i in range(len(states) if count is None else count):
            states[i] = state

    def ready(self, generation: Generation, count: int | None = None) -> None:
        self._set(generation, "ready", count)
        assert self.deployer is not None
        self.deployer.worker_changed(generation)

    def acknowledge(self, generation: Generation) -> None:
        self._set(generation, "serving")
        assert self.deployer is not None
        self.deployer.worker_changed(generation)

    def imported(self, generation: Generation) -> None:
        assert self.deployer is not None
        self.deployer.worker_imported(generation)

    def fail(self, generation: Generation, cause: str, phase: str = "boot") -> None:
        self.states[generation.number][0] = "stopping"
        assert self.deployer is not None
        self.deployer.worker_failed(generation, cause, phase)

    def exit_all(self, generation: Generation) -> None:
        self.states[generation.number] = []
        assert self.deployer is not None
        self.deployer.generation_ended(generation)

    def stop_accepting(self, generation: Generation) -> None:
        self.accepting[generation.number] = 0
        assert self.deployer is not None
        self.deployer.worker_changed(generation)


class Halted(Exception):
    pass


class FakeSteps:
    def __init__(self) -> None:
        self.installs: list[dict[str, Any]] = []
        self.open_problem: str | None = None
        self.promotions: list[str] = []
        self.records: list[tuple[str, str | None]] = []
        self.marked: list[tuple[str, str, str]] = []
        self.pruned: list[set[str]] = []
        self.plans: list[Any] = []
        self.smokes: list[tuple[str, Any]] = []
        self.hooks_set: set[str] = set()
        self.hook_calls: list[tuple[str, dict[str, Any], Any]] = []
        self.restores: list[str] = []

    def install(self, artifact: str, **callbacks: Any) -> None:
        self.installs.append({"artifact": artifact, **callbacks})

    def plan(self, serving: Release, new: Release, done: Any) -> None:
        self.plans.append(done)

    def open_to_workers(self, rel: Release) -> str | None:
        return self.open_problem

    def promoted(self, deployment: Deployment) -> None:
        self.promotions.append(deployment.id)

    def record(self, deployment: Deployment) -> None:
        self.records.append((deployment.id, deployment.outcome))

    def mark_failed(self, rel: Release, phase: str, error: str) -> None:
        self.marked.append((rel.version, phase, error))

    def smoke(self, url: str, rel: Release, done: Any) -> None:
        self.smokes.append((url, done))

    def has_hook(self, name: str) -> bool:
        return name in self.hooks_set

    def hook(self, name: str, record: dict[str, Any], done: Any = None) -> None:
        self.hook_calls.append((name, record, done))

    def restored(self, rel: Release) -> None:
        self.restores.append(rel.version)

    def prune(self, in_use: set[str]) -> None:
        self.pruned.append(in_use)

    def halt(self, cause: str) -> None:
        raise Halted(cause)


class Rig:
    def __init__(self, defaults: DeployOptions | None = None, smoke: bool = False) -> None:
        self.pool = FakePool()
        self.steps = FakeSteps()
        self.clock = Clock()
        self.deployer = Deployer(
            self.pool,
            self.steps,
            logging.getLogger("test.deployer"),
            boot_timeout=BOOT_TIMEOUT,
            drain_timeout=DRAIN_TIMEOUT,
            defaults=defaults,
            smoke=smoke,
            check_timeout=CHECK_TIMEOUT,
            clock=self.clock,
            past=[{"id": "earlier", "kind": "upgrade", "outcome": "succeeded"}],
        )
        self.pool.deployer = self.deployer

    def serving(self, version: str = "1.0", path: str | None = "/r/1.0") -> Generation:
        """Boot a first generation through the machine, the way the arbiter does."""
        deployment = self.deployer.start("boot", release=release(version, path))
        generation = deployment.target
        assert generation is not None
        self.pool.ready(generation)
        self.pool.acknowledge(generation)
        assert deployment.outcome == "succeeded"
        return generation


def phases(deployment: Deployment) -> list[str]:
    return [str(phase) for phase in dict.fromkeys(e["phase"] for e in deployment.events)]


@pytest.fixture
def rig() -> Rig:
    return Rig()


# -- the paths that succeed ----------------------------------------------------


def test_first_boot_promotes_when_every_worker_is_ready_and_serving(rig):
    deployment = rig.deployer.start("boot", release=release("1.0", "/r/1.0"))
    target = deployment.target
    assert deployment.phase is Phase.BOOTING
    assert rig.pool.calls == [("create", 1), ("start", 1)]

    rig.pool.ready(target, count=1)
    assert deployment.phase is Phase.BOOTING
    assert deployment.events[-1]["message"].endswith("1/2 ready")
    rig.pool.ready(target)
    assert deployment.phase is Phase.PROMOTING
    assert ("serve", 1) in rig.pool.calls

    rig.pool.acknowledge(target)
    assert deployment.outcome == "succeeded"
    assert phases(deployment) == ["booting", "promoting", "promoted", "done"]
    assert rig.pool.serving is target
    assert rig.steps.promotions == [deployment.id]
    assert rig.deployer.current is None
    assert rig.steps.records[0] == (deployment.id, None), "recorded when it started"
    assert rig.steps.records[-1] == (deployment.id, "succeeded")


def test_upgrade_goes_through_preflight_boot_promotion_and_drain(rig):
    old = rig.serving()
    deployment = rig.deployer.start("upgrade", release=release("2.0", "/r/2.0"), preflight=True)
    target = deployment.target
    assert deployment.previous is old
    assert deployment.phase is Phase.PREFLIGHT, "the new workers import the app first"
    assert rig.pool.calls[-1] == ("start", target.number)

    rig.clock.advance(0.2)
    rig.pool.imported(target)
    assert deployment.phase is Phase.BOOTING
    rig.pool.imported(target)  # the second worker's import changes nothing
    assert [e["phase"] for e in deployment.events] == ["preflight", "booting"]
    rig.clock.advance(0.1)
    rig.pool.ready(target)
    assert deployment.phase is Phase.PROMOTING
    rig.pool.acknowledge(target)
    assert deployment.phase is Phase.DRAINING
    assert ("drain", old.number) in rig.pool.calls
    assert rig.pool.serving is target

    rig.pool.stop_accepting(old)
    assert deployment.outcome == "succeeded"
    assert phases(deployment) == [
        "preflight",
        "booting",
        "promoting",
        "promoted",
        "draining",
        "done",
    ]
    assert deployment.timings["preflight"] == pytest.approx(0.2)
    assert deployment.timings["boot"] == pytest.approx(0.1), "after the preflight"
    assert rig.deployer.previous_release == "/r/1.0"


def test_a_worker_that_only_says_ready_passes_the_preflight(rig):
    """Workers of older releases do not report `imported`."""
    rig.serving()
    deployment = rig.deployer.start("rollback", release=release("0.9", "/r/0.9"), preflight=True)
    rig.pool.ready(deployment.target, count=1)
    assert deployment.phase is Phase.BOOTING
    assert deployment.events[-1]["message"].endswith("1/2 ready")
    rig.pool.ready(deployment.target)
    assert deployment.phase is Phase.PROMOTING


def test_the_drain_time_is_kept_when_the_old_generation_is_gone(rig):
    old = rig.serving()
    deployment = rig.deployer.start("upgrade", release=release("2.0", "/r/2.0"))
    rig.pool.ready(deployment.target)
    rig.pool.acknowledge(deployment.target)
    rig.pool.stop_accepting(old)
    assert deployment.outcome == "succeeded" and deployment.drained_at is None

    old.drain_started_at, old.stopped_at = 50.0, 52.5
    old.state = GenerationState.STOPPED
    rig.pool.exit_all(old)
    assert deployment.drained_at == 52.5
    assert deployment.timings["drain"] == pytest.approx(2.5)
    # The previous release stays, whatever the store's keep count says.
    assert "/r/1.0" in rig.steps.pruned[-1]


def test_an_artifact_is_installed_then_preflighted(rig, tmp_path):
    rig.serving()
    deployment = rig.deployer.start("upgrade", artifact="/uploads/demo-2.0.tar.gz")
    assert deployment.phase is Phase.INSTALLING
    install = rig.steps.installs[0]
    assert install["artifact"] == "/uploads/demo-2.0.tar.gz" and install["wanted"]()
    install["progress"]("running uv pip install")
    assert deployment.events[-1]["message"] == "running uv pip install"
    assert rig.pool.counter == 1, "nothing booted while installing"

    install["done"](str(made_release(tmp_path, "2.0")))
    assert deployment.release is not None and deployment.release.version == "2.0"
    assert deployment.phase is Phase.PREFLIGHT
    assert "install" in deployment.timings


def made_release(root: Path, version: str) -> Path:
    path = root / f"demo-{version}"
    (path / "venv" / "bin").mkdir(parents=True)
    (path / "venv" / "bin" / "python").write_text("")
    (path / "venv" / "bin" / "python").chmod(0o755)
    manifest = {"name": "demo", "version": version, "app": "demo.app:app"}
    (path / MANIFEST).write_text(json.dumps(manifest))
    return path


# -- the paths that fail ----------------------------------------------------------


def test_a_failed_import_fails_the_preflight_and_keeps_the_old_generation(rig):
    old = rig.serving()
    deployment = rig.deployer.start("upgrade", release=release("2.0", "/r/2.0"), preflight=True)
    target = deployment.target
    cause = "could not import demo.app:app: ModuleNotFoundError: No module named 'redis'"
    rig.pool.fail(target, cause, phase="import")
    assert deployment.phase is Phase.STOPPING
    assert ("stop", target.number) in rig.pool.calls
    assert deployment.outcome is None, "it ends once its workers are gone"
    rig.pool.fail(target, "worker 9 was killed by SIGTERM before it was ready")

    rig.pool.exit_all(target)
    assert deployment.outcome == "failed"
    assert deployment.error == f"preflight: {cause}", "the first failure is the one reported"
    assert rig.steps.marked == [("2.0", "preflight", deployment.error)]
    assert rig.pool.serving is old and ("drain", old.number) not in rig.pool.calls
    assert rig.steps.promotions == [rig.deployer.deployments[0].id], "only the boot promoted"
    assert phases(deployment) == ["preflight", "stopping", "failed"]


def test_a_failure_after_the_preflight_passed_is_a_boot_failure(rig):
    rig.serving()
    deployment = rig.deployer.start("upgrade", release=release("2.0", "/r/2.0"), preflight=True)
    target = deployment.target
    rig.pool.imported(target)
    rig.pool.fail(target, "lifespan startup failed: RuntimeError: no database")
    rig.pool.exit_all(target)
    assert deployment.outcome == "failed"
    assert deployment.error == "lifespan startup failed: RuntimeError: no database"
    assert rig.steps.marked[0][1] == "boot"
    assert phases(deployment) == ["preflight", "booting", "stopping", "failed"]


def test_an_import_failure_without_a_preflight_is_a_boot_failure(rig):
    """A restart (HUP) has no preflight: what fails, fails the boot."""
    old = rig.serving()
    deployment = rig.deployer.start("restart", release=old.release)
    rig.pool.fail(deployment.target, "could not import demo.app:app", phase="import")
    rig.pool.exit_all(deployment.target)
    assert deployment.error == "could not import demo.app:app"
    assert rig.steps.marked[0][1] == "boot"


def test_a_worker_failing_after_it_was_told_to_serve_fails_the_deployment(rig):
    old = rig.serving()
    deployment = rig.deployer.start("upgrade", release=release("2.0", "/r/2.0"))
    target = deployment.target
    rig.pool.ready(target)
    assert deployment.phase is Phase.PROMOTING
    rig.pool.fail(target, "worker 7 exited with code 1 before it was ready")
    assert deployment.phase is Phase.STOPPING
    rig.pool.exit_all(target)
    assert deployment.outcome == "failed"
    assert rig.pool.serving is old


def test_a_worker_that_cannot_be_spawned_fails_the_boot(rig):
    rig.serving()
    rig.pool.spawn_error = "could not start /r/2.0/venv/bin/python: Permission denied"
    deployment = rig.deployer.start("upgrade", release=release("2.0", "/r/2.0"))
    assert deployment.phase is Phase.STOPPING, "the one that started is stopped"
    rig.pool.exit_all(deployment.target)
    assert deployment.outcome == "failed"
    assert "Permission denied" in deployment.error


def test_a_failed_install_fails_without_booting_or_marking(rig):
    rig.serving()
    deployment = rig.deployer.start("upgrade", artifact="/uploads/bad.tar.gz")
    install = rig.steps.installs[0]
    install["failed"]("the archive holds ../../etc/passwd")
    assert deployment.outcome == "failed"
    assert deployment.error == "install failed: the archive holds ../../etc/passwd"
    assert rig.pool.counter == 1, "no generation was created"
    assert rig.steps.marked == []
    assert not install["wanted"](), "the install is no longer awaited"
    install["progress"]("late output")
    assert deployment.phase is Phase.FAILED, "late progress does not revive it"


def test_an_installed_release_that_does_not_load_fails_the_install(rig, tmp_path):
    rig.serving()
    deployment = rig.deployer.start("upgrade", artifact="/uploads/demo.tar.gz")
    rig.steps.installs[0]["done"](str(tmp_path / "missing"))
    assert deployment.outcome == "failed"
    assert deployment.error.startswith("install failed: release ")


def test_a_release_the_workers_cannot_open_fails_before_anything_starts(rig):
    rig.serving()
    rig.steps.open_problem = "Operation not permitted"
    deployment = rig.deployer.start("upgrade", release=release("2.0", "/r/2.0"), preflight=True)
    assert deployment.outcome == "failed"
    assert deployment.error == "cannot open /r/2.0 to the workers: Operation not permitted"
    assert rig.pool.counter == 1, "no generation was created"


def test_a_failed_first_boot_halts_the_arbiter(rig):
    deployment = rig.deployer.start("boot", release=release("1.0", "/r/1.0"))
    rig.pool.fail(deployment.target, "could not import demo.app:app")
    with pytest.raises(Halted, match="the first generation failed to boot: could not import"):
        rig.pool.exit_all(deployment.target)
    assert deployment.outcome == "failed" and rig.deployer.current is None


# -- deadlines ------------------------------------------------------------------


def test_a_boot_that_outlives_its_timeout_is_failed_by_the_clock(rig):
    rig.serving()
    deployment = rig.deployer.start("upgrade", release=release("2.0", "/r/2.0"))
    target = deployment.target
    rig.pool.ready(target, count=1)
    rig.clock.advance(BOOT_TIMEOUT + BACKSTOP - 0.01)
    rig.deployer.tick()
    assert deployment.phase is Phase.BOOTING, "not yet"
    rig.clock.advance(0.02)
    rig.deployer.tick()
    assert deployment.phase is Phase.STOPPING
    assert deployment.error == (
        f"generation 2 (demo 2.0): 1/2 workers ready after {BOOT_TIMEOUT:g}s (boot timeout)"
    )


def test_a_stopping_generation_whose_end_is_never_seen_ends_at_its_limit(rig):
    old = rig.serving()
    deployment = rig.deployer.start("upgrade", release=release("2.0", "/r/2.0"))
    rig.pool.fail(deployment.target, "boom")
    rig.clock.advance(STOP_LIMIT + 0.01)
    rig.deployer.tick()
    assert deployment.outcome == "failed" and deployment.error == "boom"
    assert rig.pool.serving is old


def test_a_drain_that_never_ends_is_done_at_the_drain_limit(rig):
    old = rig.serving()
    deployment = rig.deployer.start("upgrade", release=release("2.0", "/r/2.0"))
    rig.pool.ready(deployment.target)
    rig.pool.acknowledge(deployment.target)
    assert deployment.phase is Phase.DRAINING
    rig.clock.advance(DRAIN_TIMEOUT)
    rig.deployer.tick()
    assert deployment.phase is Phase.DRAINING
    rig.clock.advance(BACKSTOP + 0.01)
    rig.deployer.tick()
    assert deployment.outcome == "succeeded"
    assert rig.pool.serving is deployment.target and old.state is GenerationState.DRAINING


def test_a_tick_without_a_deployment_does_nothing(rig):
    rig.deployer.tick()
    rig.serving()
    rig.clock.advance(10_000)
    rig.deployer.tick()
    assert rig.deployer.current is None


# -- one at a time, and what is left over ----------------------------------------


def test_a_second_deployment_meanwhile_is_refused(rig):
    rig.serving()
    first = rig.deployer.start("upgrade", release=release("2.0", "/r/2.0"))
    with pytest.raises(Busy, match=f"upgrade in progress: deployment {first.id} \\(booting\\)"):
        rig.deployer.start("rollback", release=release("1.0", "/r/1.0"))
    assert rig.deployer.current is first
    rig.pool.ready(first.target)
    rig.pool.acknowledge(first.target)
    rig.pool.stop_accepting(first.previous)
    second = rig.deployer.start("rollback", release=release("1.0", "/r/1.0"))
    assert second.previous is first.target


def test_late_events_of_an_ended_deployment_change_nothing(rig):
    rig.serving()
    failed = rig.deployer.start("upgrade", release=release("2.0", "/r/2.0"), preflight=True)
    rig.pool.imported(failed.target)
    rig.pool.fail(failed.target, "boom")
    rig.pool.exit_all(failed.target)
    assert failed.outcome == "failed"
    events = len(failed.events)

    upgrade = rig.deployer.start("upgrade", release=release("3.0", "/r/3.0"), preflight=True)
    rig.pool.states[failed.target.number] = ["ready", "ready"]
    rig.deployer.worker_changed(failed.target)
    rig.deployer.worker_failed(failed.target, "late", "import")
    rig.deployer.worker_imported(failed.target)
    assert len(failed.events) == events
    assert upgrade.phase is Phase.PREFLIGHT and upgrade.error is None
    # The release being deployed is never pruned meanwhile.
    rig.deployer.prune()
    assert rig.steps.pruned[-1] == {"/r/1.0", "/r/3.0"}


def test_an_install_that_ends_after_its_deployment_is_ignored(rig, tmp_path):
    rig.serving()
    deployment = rig.deployer.start("upgrade", artifact="/uploads/demo.tar.gz")
    rig.deployer.abandon("the arbiter is shutting down")
    rig.steps.installs[0]["done"](str(made_release(tmp_path, "2.0")))
    assert deployment.release is None and rig.pool.counter == 1


def test_abandon_ends_the_deployment_without_marking_or_halting(rig):
    rig.deployer.abandon("nothing runs: nothing to do")
    deployment = rig.deployer.start("boot", release=release("1.0", "/r/1.0"))
    rig.deployer.abandon("the arbiter is shutting down")
    assert deployment.outcome == "failed" and deployment.error == "the arbiter is shutting down"
    assert deployment.target.state is GenerationState.FAILED
    assert rig.steps.marked == [] and rig.deployer.current is None


def test_recent_lists_this_run_newest_first_then_the_history(rig):
    rig.serving()
    upgrade = rig.deployer.start("upgrade", release=release("2.0", "/r/2.0"))
    ids = [record["id"] for record in rig.deployer.recent()]
    assert ids[0] == upgrade.id and ids[-1] == "earlier" and len(ids) == 3
    assert rig.deployer.find("earlier") == rig.deployer.past[0]
    assert rig.deployer.find(upgrade.id) is upgrade
    assert rig.deployer.find("nope") is None


# -- hot reload -----------------------------------------------------------------


PLAN = {
    "modules": [
        {"module": "main", "old_file": "/r/1.0/app/main.py", "new_file": "/r/1.1/app/main.py"}
    ],
    "functions": 2,
    "refusals": [],
    "refused": 0,
    "old_paths": ["/r/1.0/app"],
    "new_paths": ["/r/1.1/app"],
}


def hot_reload(rig: Rig, **options: Any) -> tuple[Deployment, Generation]:
    serving = rig.serving()
    deployment = rig.deployer.start("hot-reload", release=release("1.1", "/r/1.1"), **options)
    assert deployment.phase is Phase.PLANNING
    return deployment, serving


def test_a_hot_reload_goes_step_by_step_through_every_worker(rig):
    deployment, serving = hot_reload(rig, suspend_timeout=1.5)
    rig.steps.plans[0](PLAN, None)
    assert deployment.phase is Phase.PREPARING and rig.pool.hold_spawns
    pids, prepare = rig.pool.sent[-1]
    assert pids == {101, 102} and prepare["modules"] == PLAN["modules"]
    assert prepare["new_paths"] == ["/r/1.1/app"]
    rig.pool.answer(serving, w101={})
    assert deployment.phase is Phase.PREPARING, "waits for every worker"
    rig.pool.answer(serving, w102={})
    assert deployment.phase is Phase.SUSPENDING
    assert rig.pool.sent[-1][1]["timeout"] == 1.5
    rig.pool.answer(serving, w101={}, w102={})
    assert deployment.phase is Phase.COMMITTING
    commit = rig.pool.sent[-1][1]
    assert (commit["old_version"], commit["new_version"]) == ("1.0", "1.1")
    hooks = [{"module": "main", "result": "None", "seconds": 0.001}]
    rig.pool.answer(serving, w101={"hooks": hooks}, w102={"hooks": hooks})
    assert deployment.phase is Phase.RESUMING
    assert serving.release.version == "1.1", "the generation runs the new release now"
    assert rig.steps.promotions[-1] == deployment.id, "current points at it"
    rig.pool.answer(serving, w101={"held": 3, "held_for": 0.004}, w102={"held": 0})
    assert deployment.outcome == "succeeded"
    assert rig.pool.steps_sent() == ["prepare", "suspend", "commit", "resume"]
    assert not rig.pool.hold_spawns
    assert deployment.details["workers"]["101"]["resume"] == {"held": 3, "held_for": 0.004}
    assert deployment.details["workers"]["102"]["commit"]["hooks"] == hooks
    assert rig.pool.serving is serving and rig.pool.calls.count(("start", 2)) == 0
    assert rig.deployer.previous_release == "/r/1.0"
    summary = deployment.summary()
    assert summary["from"]["version"] == "1.0" and summary["to"]["version"] == "1.1"


def test_a_refused_plan_touches_no_worker(rig):
    deployment, serving = hot_reload(rig)
    refused = {**PLAN, "refusals": ["/r/1.1/app/main.py:3: import: ..."], "refused": 1}
    rig.steps.plans[0](refused, None)
    assert deployment.outcome == "failed" and rig.pool.sent == []
    assert deployment.error.startswith("hot reload refused (1 reasons); deploy it with")
    assert "/r/1.1/app/main.py:3: import: ..." in deployment.error
    assert serving.release.version == "1.0" and rig.steps.marked == []


def test_a_dry_run_plans_and_stops(rig):
    deployment, serving = hot_reload(rig, dry_run=True)
    rig.steps.plans[0](PLAN, None)
    assert deployment.outcome == "succeeded" and rig.pool.sent == []
    assert deployment.events[-1]["message"].startswith("dry run: 1 modules, 2 functions change")
    kept = deployment.details["plan"]
    assert kept["module_count"] == 1 and kept["modules"][0]["module"] == "main"
    assert deployment.details["dry_run"] is True
    assert rig.deployer.previous_release is None, "nothing moved: nothing to roll back to"
    assert serving.release.version == "1.0"


@pytest.mark.parametrize(
    ("plan", "why"),
    [
        ({}, "'modules' is not a list"),
        ({**PLAN, "refused": "0"}, "'refused' is not a count"),
        ({**PLAN, "new_paths": ["/etc"]}, "'/etc' in 'new_paths' lies outside release /r/1.1"),
        (
            {**PLAN, "modules": [{"module": "m", "old_file": None, "new_file": "/r/1.1/../x"}]},
            "is not an absolute path without '..'",
        ),
        ({**PLAN, "old_paths": [], "new_paths": ["/r/1.1/app"]}, "differ in length"),
        ({**PLAN, "modules": [{"module": "m"}] * 5001}, "more than 5000 entries"),
    ],
)
def test_a_malformed_plan_fails_the_reload_not_the_arbiter(rig, plan, why):
    """The plan comes from a process running the serving release's code."""
    deployment, _ = hot_reload(rig)
    rig.steps.plans[0](plan, None)
    assert deployment.outcome == "failed" and rig.pool.sent == []
    assert deployment.error.startswith("hot reload planning failed: the plan is malformed: ")
    assert why in deployment.error


def test_hostile_numbers_in_a_worker_answer_are_kept_as_zero(rig):
    deployment, serving = hot_reload(rig)
    rig.steps.plans[0](PLAN, None)
    huge = {"patches": [{"module": "main", "function_objects": 10**400}]}
    rig.pool.answer(serving, w101=huge, w102={"patches": [{"function_objects": float("inf")}]})
    assert deployment.details["workers"]["101"]["prepare"]["function_objects"] == 0.0
    assert deployment.details["workers"]["102"]["prepare"]["function_objects"] == 0.0
    assert deployment.phase is Phase.SUSPENDING


def test_a_failed_plan_or_unready_workers_fail_before_any_step(rig):
    deployment, _ = hot_reload(rig)
    rig.steps.plans[0](None, "the plan exited with code 1")
    assert deployment.error == "hot reload planning failed: the plan exited with code 1"
    rig.pool.members_problem = "worker 101 of generation 1 is booting, not serving"
    second = rig.deployer.start("hot-reload", release=release("1.1", "/r/1.1"))
    rig.steps.plans[1](PLAN, None)
    assert (
        second.error
        == "hot reload cannot start: worker 101 of generation 1 is booting, not serving"
    )
    assert rig.pool.sent == [] and not rig.pool.hold_spawns


def test_a_worker_that_refuses_at_prepare_aborts_everywhere(rig):
    deployment, serving = hot_reload(rig)
    rig.steps.plans[0](PLAN, None)
    refusal = "/r/1.1/app/main.py:9: route-signature: ..."
    rig.pool.answer(serving, w101={}, w102={"ok": False, "refusals": [refusal]})
    assert deployment.phase is Phase.UNDOING
    assert rig.pool.steps_sent() == ["prepare", "abort"]
    assert deployment.outcome is None, "reported once every worker is back"
    rig.pool.answer(serving, w101={}, w102={})
    assert deployment.outcome == "failed"
    assert deployment.error == (
        "hot reload failed: the workers refused the new code; nothing was changed:\n" + refusal
    )
    assert serving.release.version == "1.0" and not rig.pool.hold_spawns


def test_a_commit_that_fails_in_one_worker_undoes_every_worker(rig):
    deployment, serving = hot_reload(rig)
    rig.steps.plans[0](PLAN, None)
    rig.pool.answer(serving, w101={}, w102={})
    rig.pool.answer(serving, w101={}, w102={})
    cause = (
        "main.beamdeploy_code_change('1.0', '1.1') raised KeyError: 'x'; every change was undone"
    )
    rig.pool.answer(serving, w101={}, w102={"ok": False, "error": cause})
    assert deployment.phase is Phase.UNDOING and rig.pool.steps_sent()[-1] == "undo"
    assert serving.release.version == "1.0", "never switched"
    rig.pool.answer(serving, w101={}, w102={})
    assert deployment.outcome == "failed"
    assert f"worker 102: {cause}" in deployment.error
    assert "a worker could not apply the new code" in deployment.error


def test_a_worker_that_exits_or_does_not_answer_fails_the_step(rig):
    deployment, serving = hot_reload(rig, suspend_timeout=2.0)
    rig.steps.plans[0](PLAN, None)
    rig.pool.answer(serving, w101={})
    rig.deployer.worker_exited(serving, 102)
    assert deployment.phase is Phase.UNDOING, "a worker gone at prepare is a no"
    rig.deployer.worker_exited(serving, 102)  # no code left to abort in it
    rig.pool.answer(serving, w101={})
    assert deployment.outcome == "failed" and "worker 102 exited" in deployment.error

    second = rig.deployer.start("hot-reload", release=release("1.1", "/r/1.1"), suspend_timeout=2.0)
    rig.steps.plans[1](PLAN, None)
    rig.pool.answer(serving, w101={}, w102={})
    rig.pool.answer(serving, w101={})  # 102 never answers the suspend
    rig.clock.advance(2.0 + 2.0 - 0.01)
    rig.deployer.tick()
    assert second.phase is Phase.SUSPENDING
    rig.clock.advance(0.02)
    rig.deployer.tick()
    assert second.phase is Phase.UNDOING
    rig.clock.advance(60)
    rig.deployer.tick()  # nobody confirms the abort either: they are replaced
    assert second.outcome == "failed" and rig.pool.retired == {101, 102}
    assert "worker 102: worker 102 did not answer in time" in second.error


def test_late_or_stray_answers_change_nothing(rig):
    deployment, serving = hot_reload(rig)
    rig.steps.plans[0](PLAN, None)
    rig.deployer.worker_reloaded(serving, 101, {"id": 999, "step": "prepare", "ok": False})
    rig.deployer.worker_reloaded(serving, 101, {"id": rig.pool.sent[-1][1]["id"], "step": "commit"})
    rig.deployer.worker_reloaded(
        serving, 555, {"id": rig.pool.sent[-1][1]["id"], "step": "prepare"}
    )
    assert deployment.phase is Phase.PREPARING
    rig.pool.answer(serving, w101={}, w102={})
    assert deployment.phase is Phase.SUSPENDING


def test_a_worker_that_cannot_undo_is_replaced(rig):
    deployment, serving = hot_reload(rig)
    rig.steps.plans[0](PLAN, None)
    rig.pool.answer(serving, w101={}, w102={})
    rig.pool.answer(serving, w101={}, w102={})
    rig.pool.answer(serving, w101={}, w102={"ok": False, "error": "hook raised"})
    rig.pool.answer(serving, w101={"ok": False, "error": "RuntimeError: cannot"}, w102={})
    assert deployment.outcome == "failed"
    assert rig.pool.retired == {101}, "it may run the new code, or hold its requests"


def test_a_fault_in_the_arbiter_while_reloading_undoes_the_workers_not_the_arbiter(rig):
    deployment, serving = hot_reload(rig)
    rig.steps.plans[0](PLAN, None)
    rig.pool.answer(serving, w101={}, w102={})
    rig.pool.answer(serving, w101={}, w102={})

    def broken_switch(generation: Generation, rel: Release) -> None:
        raise RuntimeError("a bug")

    rig.pool.switch_release = broken_switch  # type: ignore[method-assign]
    rig.pool.answer(serving, w101={}, w102={})
    assert deployment.phase is Phase.UNDOING and rig.pool.steps_sent()[-1] == "undo"
    assert not rig.pool.hold_spawns
    rig.pool.answer(serving, w101={}, w102={})
    assert deployment.outcome == "failed"
    assert "an internal error (RuntimeError: a bug)" in deployment.error


def test_a_reexecd_arbiters_boot_keeps_the_old_ones_id_and_halts_unmarked_if_it_fails(rig):
    deployment = rig.deployer.start(
        "reexec", release=release("1.0", "/r/1.0"), deployment_id="from-old"
    )
    assert deployment.id == "from-old"
    assert rig.steps.records == [("from-old", None)]
    rig.pool.fail(deployment.target, "could not import demo.app:app")
    with pytest.raises(Halted, match="the first generation failed to boot"):
        rig.pool.exit_all(deployment.target)
    assert rig.steps.marked == [], "the old arbiter still serves that release"
