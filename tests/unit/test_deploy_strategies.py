"""Rolling upgrades, promotion checks and the bake window, in the state machine alone.

The same fakes as test_deployer.py: the test plays the workers' events and
checks what the deployer asked of the pool and the release side.
"""

from __future__ import annotations

import pytest

from beamdeploy_asgi.arbiter.bake import BakeWatch
from beamdeploy_asgi.arbiter.deployer import BACKSTOP
from beamdeploy_asgi.arbiter.deployment import Phase
from beamdeploy_asgi.arbiter.generation import Generation, GenerationState
from beamdeploy_asgi.deploy_options import BadOption, DeployOptions, checked, from_text
from tests.unit.test_deployer import BOOT_TIMEOUT, CHECK_TIMEOUT, SIZE, Rig, phases, release

ROLLING = DeployOptions(strategy="rolling", max_surge=1)


def set_states(rig: Rig, generation: Generation, *states: str) -> None:
    rig.pool.states[generation.number] = list(states)


def changed(rig: Rig, generation: Generation) -> None:
    rig.deployer.worker_changed(generation)


def old_worker_exits(rig: Rig, old: Generation) -> None:
    states = rig.pool.states[old.number]
    states.remove("draining")
    rig.deployer.worker_exited(old, 1)


# -- rolling -------------------------------------------------------------------


def test_rolling_replaces_one_worker_at_a_time_within_the_surge():
    rig = Rig(defaults=ROLLING)
    old = rig.serving()
    deployment = rig.deployer.start("upgrade", release=release("2.0", "/r/2.0"))
    new = deployment.target
    assert deployment.phase is Phase.ROLLING
    assert rig.pool.calls[-1] == ("grow", new.number, 1), "size + surge: one new worker"

    set_states(rig, new, "ready")
    changed(rig, new)
    assert ("serve", new.number) in rig.pool.calls
    set_states(rig, new, "serving")
    changed(rig, new)
    assert rig.pool.calls[-1] == ("shrink", old.number, 1)
    # The old worker still drains: no room for another new one yet.
    assert rig.pool.states[old.number] == ["draining", "serving"]
    assert [c for c in rig.pool.calls if c[0] == "grow"] == [("grow", new.number, 1)]
    event = deployment.events[-1]
    assert (event["new_serving"], event["old_serving"]) == (1, 1)
    assert "1/2 workers on demo 2.0" in event["message"]

    old_worker_exits(rig, old)
    assert [c for c in rig.pool.calls if c[0] == "grow"][-1] == ("grow", new.number, 1)
    assert len(rig.pool.states[new.number]) == 2
    set_states(rig, new, "serving", "serving")
    changed(rig, new)
    assert rig.pool.calls[-3:] == [("shrink", old.number, 1), ("promote", 2), ("drain", 1)]
    # The fake's old workers stopped accepting at once: nothing is left to wait for.
    assert deployment.outcome == "succeeded"
    assert rig.pool.serving is new
    assert phases(deployment) == ["rolling", "promoted", "draining", "done"]
    assert deployment.details["strategy"] == "rolling"
    assert "rolling" in deployment.timings


def test_a_bigger_surge_boots_more_at_once():
    rig = Rig(defaults=DeployOptions(strategy="rolling", max_surge=2))
    rig.serving()
    deployment = rig.deployer.start("upgrade", release=release("2.0", "/r/2.0"))
    assert rig.pool.calls[-1] == ("grow", deployment.target.number, 2)


def test_a_failed_new_worker_stops_the_rollout_and_gives_the_old_release_its_size():
    rig = Rig(defaults=ROLLING)
    old = rig.serving()
    deployment = rig.deployer.start("upgrade", release=release("2.0", "/r/2.0"))
    new = deployment.target
    set_states(rig, new, "ready")
    changed(rig, new)
    set_states(rig, new, "serving")
    changed(rig, new)
    old_worker_exits(rig, old)
    assert rig.pool.states[new.number] == ["serving", "booting"]

    rig.pool.states[new.number][1] = "stopping"  # the second new worker
    rig.deployer.worker_failed(new, "worker 7 crashed at import", "import")
    assert deployment.phase is Phase.STOPPING
    assert ("stop", new.number) in rig.pool.calls
    assert ("restore", old.number, SIZE) in rig.pool.calls
    # One old worker serves, one is missing: the new one that serves stays for now.
    assert ("shrink", new.number, 1) not in rig.pool.calls
    rig.pool.states[old.number].append("serving")  # the pool started it again
    changed(rig, old)
    assert ("shrink", new.number, 1) in rig.pool.calls, "now it may go"
    assert deployment.details["rolling"]["replaced"] == 1
    assert "stopped with 1/2 workers replaced" in deployment.events[-1]["message"]
    rig.pool.exit_all(new)
    assert deployment.outcome == "failed"
    assert rig.pool.serving is old
    assert rig.steps.marked[-1][:2] == ("2.0", "boot")


def test_a_rollout_with_no_progress_ends_at_the_boot_timeout():
    rig = Rig(defaults=ROLLING)
    rig.serving()
    deployment = rig.deployer.start("upgrade", release=release("2.0", "/r/2.0"))
    rig.clock.advance(BOOT_TIMEOUT + BACKSTOP + 1)
    rig.deployer.tick()
    assert deployment.phase is Phase.STOPPING
    assert "no worker moved in 30s" in deployment.error


def test_the_first_boot_is_never_rolling():
    rig = Rig(defaults=ROLLING)
    deployment = rig.deployer.start("boot", release=release("1.0", "/r/1.0"))
    assert deployment.phase is Phase.BOOTING
    assert ("start", deployment.target.number) in rig.pool.calls


# -- checks before promotion -----------------------------------------------------


def test_the_smoke_command_runs_against_the_private_port_before_promotion():
    rig = Rig(smoke=True)
    old = boot_checked(rig)
    deployment = rig.deployer.start("upgrade", release=release("2.0", "/r/2.0"))
    new = deployment.target
    assert ("open_private", new.number) in rig.pool.calls
    rig.pool.ready(new)
    assert deployment.phase is Phase.CHECKING
    assert ("serve", new.number) not in rig.pool.calls, "no traffic before the checks"
    url, done = rig.steps.smokes[-1]
    assert url == f"http://127.0.0.1:{9000 + new.number}"
    done(None, {"exit_code": 0, "output": "3 passed"})
    assert deployment.phase is Phase.PROMOTING
    assert deployment.details["smoke"]["output"] == "3 passed"
    rig.pool.acknowledge(new)
    rig.pool.stop_accepting(old)
    assert deployment.outcome == "succeeded"
    assert "checks" in deployment.timings


def boot_checked(rig: Rig) -> Generation:
    """The first boot, through its own smoke check."""
    deployment = rig.deployer.start("boot", release=release("1.0", "/r/1.0"))
    rig.pool.ready(deployment.target)
    rig.steps.smokes[-1][1](None, {"exit_code": 0})
    rig.pool.acknowledge(deployment.target)
    assert deployment.outcome == "succeeded"
    return deployment.target


def test_a_failing_smoke_command_fails_the_upgrade_and_keeps_the_old_generation():
    rig = Rig(smoke=True)
    old = boot_checked(rig)
    deployment = rig.deployer.start("upgrade", release=release("2.0", "/r/2.0"))
    rig.pool.ready(deployment.target)
    rig.steps.smokes[-1][1]("'pytest' exited with code 1", {"exit_code": 1, "output": "F"})
    assert deployment.phase is Phase.STOPPING
    assert deployment.error.startswith("smoke command failed: 'pytest' exited with code 1")
    assert deployment.details["smoke"]["exit_code"] == 1
    rig.pool.exit_all(deployment.target)
    assert deployment.outcome == "failed"
    assert rig.pool.serving is old
    assert rig.steps.hook_calls == [], "no hook is set"


def test_before_promote_may_veto_with_a_reason():
    rig = Rig()
    rig.steps.hooks_set = {"beamdeploy_before_promote", "beamdeploy_deployment_failed"}
    deployment = rig.deployer.start("boot", release=release("1.0", "/r/1.0"))
    rig.pool.ready(deployment.target)
    name, record, done = rig.steps.hook_calls[-1]
    assert name == "beamdeploy_before_promote" and record["id"] == deployment.id
    done(None)
    rig.pool.acknowledge(deployment.target)
    assert deployment.outcome == "succeeded"

    upgrade = rig.deployer.start("upgrade", release=release("2.0", "/r/2.0"))
    rig.pool.ready(upgrade.target)
    rig.steps.hook_calls[-1][2]("it returned False")
    assert upgrade.error == "beamdeploy_before_promote vetoed the promotion: it returned False"
    rig.pool.exit_all(upgrade.target)
    assert upgrade.outcome == "failed"
    assert rig.steps.hook_calls[-1][0] == "beamdeploy_deployment_failed"
    assert rig.steps.hook_calls[-1][1]["outcome"] == "failed"


def test_a_late_check_answer_after_a_failure_is_dropped():
    rig = Rig(smoke=True)
    boot_checked(rig)
    deployment = rig.deployer.start("upgrade", release=release("2.0", "/r/2.0"))
    rig.pool.ready(deployment.target)
    rig.pool.fail(deployment.target, "worker died")
    rig.steps.smokes[-1][1](None, {"exit_code": 0})  # too late: ignored
    assert deployment.phase is Phase.STOPPING
    assert "smoke" not in deployment.details


def test_checks_that_never_answer_end_at_their_deadline():
    rig = Rig(smoke=True)
    boot_checked(rig)
    deployment = rig.deployer.start("upgrade", release=release("2.0", "/r/2.0"))
    rig.pool.ready(deployment.target)
    rig.clock.advance(CHECK_TIMEOUT + 3)
    rig.deployer.tick()
    assert deployment.phase is Phase.STOPPING
    assert "did not end in time" in deployment.error


def test_rolling_checks_the_first_new_worker_before_it_serves():
    rig = Rig(defaults=ROLLING, smoke=True)
    boot_checked(rig)
    deployment = rig.deployer.start("upgrade", release=release("2.0", "/r/2.0"))
    new = deployment.target
    set_states(rig, new, "ready")
    changed(rig, new)
    assert deployment.phase is Phase.CHECKING
    assert ("serve", new.number) not in rig.pool.calls
    changed(rig, new)  # a second event while checking starts no second check
    assert len(rig.steps.smokes) == 2
    rig.steps.smokes[-1][1](None, {"exit_code": 0})
    assert ("serve", new.number) in rig.pool.calls
    assert deployment.phase is Phase.ROLLING


def test_the_lifecycle_hooks_are_told():
    rig = Rig()
    rig.steps.hooks_set = {"beamdeploy_deployment_started", "beamdeploy_promoted"}
    rig.serving()
    assert [c[0] for c in rig.steps.hook_calls] == [
        "beamdeploy_deployment_started",
        "beamdeploy_promoted",
    ]
    assert all(c[2] is None for c in rig.steps.hook_calls), "they cannot change the course"


# -- the bake window -----------------------------------------------------------


def baking(rig: Rig, bake: float = 60.0) -> tuple[Generation, Generation, object]:
    old = rig.serving()
    deployment = rig.deployer.start(
        "upgrade", release=release("2.0", "/r/2.0"), options=DeployOptions(bake=bake)
    )
    new = deployment.target
    rig.pool.ready(new)
    rig.pool.acknowledge(new)
    return old, new, deployment


def test_a_clean_bake_drains_the_old_generation_after_the_window():
    rig = Rig()
    old, new, deployment = baking(rig)
    assert deployment.phase is Phase.BAKING
    assert ("pause", old.number) in rig.pool.calls
    assert ("drain", old.number) not in rig.pool.calls
    assert old.state is GenerationState.STANDBY
    rig.pool.counts[new.number] = {"2xx": 100, "5xx": 2}
    rig.deployer.worker_responses(new)
    assert deployment.phase is Phase.BAKING
    rig.clock.advance(61)
    rig.deployer.tick()
    assert deployment.phase is Phase.DRAINING
    assert ("drain", old.number) in rig.pool.calls
    rig.pool.stop_accepting(old)
    assert deployment.outcome == "succeeded"
    assert deployment.details["bake"]["responses"] == 102
    assert deployment.timings["bake"] == pytest.approx(61)
    assert phases(deployment)[-4:] == ["promoted", "baking", "draining", "done"]


def test_too_many_5xx_during_the_bake_roll_back_at_once():
    rig = Rig()
    rig.steps.hooks_set = {"beamdeploy_deployment_failed"}
    old, new, deployment = baking(rig)
    rig.pool.counts[new.number] = {"2xx": 10, "5xx": 9}
    rig.deployer.worker_responses(new)
    assert deployment.phase is Phase.BAKING, "19 answers: too few to judge"
    rig.pool.counts[new.number] = {"2xx": 10, "5xx": 10}
    rig.deployer.worker_responses(new)
    assert deployment.phase is Phase.ROLLING_BACK
    assert rig.pool.calls[-4:] == [
        ("resume", old.number),
        ("serve", old.number),
        ("promote", old.number),
        ("drain", new.number),
    ]
    assert rig.pool.serving is old
    assert rig.steps.restores == ["1.0"]
    assert deployment.details["bake"]["errors"] == 10
    rig.pool.stop_accepting(new)
    assert deployment.phase is Phase.ROLLING_BACK, "until its last worker is gone"
    rig.pool.exit_all(new)
    assert deployment.outcome == "rolled-back"
    assert deployment.phase is Phase.ROLLED_BACK
    assert deployment.error.startswith("bake: 10 of 20 responses were 5xx (50%)")
    assert rig.steps.marked[-1][:2] == ("2.0", "bake")
    assert rig.steps.hook_calls[-1][0] == "beamdeploy_deployment_failed"
    assert rig.deployer.previous_release is None, "what serves is what served before"


def test_a_crash_during_the_bake_rolls_back():
    rig = Rig()
    old, new, deployment = baking(rig)
    new.crashes += 1
    rig.deployer.worker_exited(new, 7)
    assert deployment.phase is Phase.ROLLING_BACK
    assert "1 worker of the new generation crashed" in deployment.error


def test_old_workers_that_cannot_pause_drain_as_before():
    rig = Rig()
    rig.pool.pausable = False
    old, new, deployment = baking(rig)
    assert deployment.phase is Phase.DRAINING
    assert any("no bake" in e["message"] for e in deployment.events)


def test_the_counts_before_promotion_do_not_count():
    watch = BakeWatch(seconds=5, max_error_rate=0.05, baseline={"5xx": 30}, crashes=0)
    watch.update({"5xx": 30, "2xx": 40})
    assert (watch.responses, watch.errors, watch.verdict(0)) == (40, 0, None)
    watch.update({"5xx": 33, "2xx": 40})
    assert watch.verdict(0).startswith("3 of 43 responses were 5xx")


# -- the options -----------------------------------------------------------------


def test_options_are_checked_with_names():
    assert DeployOptions().overridden({"strategy": "rolling", "max_surge": 3}).max_surge == 3
    with pytest.raises(BadOption, match="'strategy' must be one of blue-green, rolling"):
        checked({"strategy": "canary"})
    with pytest.raises(BadOption, match="'max_surge' must be a whole number from 1 to 64"):
        checked({"max_surge": True})
    with pytest.raises(BadOption, match="'bake' must be seconds"):
        checked({"bake": float("nan")})
    with pytest.raises(BadOption, match="'bake_max_error_rate' must be a share"):
        checked({"bake_max_error_rate": 1})
    with pytest.raises(BadOption, match="unknown option 'canary'"):
        checked({"canary": 1})
    with pytest.raises(BadOption, match="bake with the blue-green strategy"):
        DeployOptions().overridden({"strategy": "rolling", "bake": 30})
    assert from_text({"max_surge": "2", "bake": "1.5"}) == {"max_surge": 2, "bake": 1.5}
    with pytest.raises(BadOption, match="'max_surge' must be a number, not 'x'"):
        from_text({"max_surge": "x"})


def test_an_operator_rollback_during_the_bake_is_instant():
    rig = Rig()
    old, new, deployment = baking(rig)
    assert rig.deployer.roll_back_now("rolled back by the operator") is deployment
    assert deployment.phase is Phase.ROLLING_BACK
    assert deployment.error == "bake: rolled back by the operator"
    rig.pool.exit_all(new)
    assert deployment.outcome == "rolled-back"
    assert rig.deployer.roll_back_now("again") is None, "nothing bakes now"


def test_the_new_generation_drains_only_once_the_old_one_accepts_again():
    rig = Rig()
    old, new, deployment = baking(rig)
    rig.pool.paused_count[old.number] = SIZE  # both old workers still paused
    new.crashes += 1
    rig.deployer.worker_exited(new, 7)
    assert deployment.phase is Phase.ROLLING_BACK
    assert ("drain", new.number) not in rig.pool.calls
    rig.pool.paused_count[old.number] = 1  # one of them resumed
    changed(rig, old)
    assert ("drain", new.number) in rig.pool.calls
    rig.pool.exit_all(new)
    assert deployment.outcome == "rolled-back"


def test_a_rolling_back_that_never_sees_the_old_generation_accept_ends_at_its_deadline():
    rig = Rig()
    old, new, deployment = baking(rig)
    rig.pool.paused_count[old.number] = SIZE
    rig.deployer.roll_back_now("operator")
    rig.clock.advance(BOOT_TIMEOUT + 12 + BACKSTOP + 1)
    rig.deployer.tick()
    assert ("drain", new.number) in rig.pool.calls
    assert deployment.outcome == "rolled-back"


def test_a_private_port_that_cannot_be_opened_fails_the_upgrade_cleanly():
    rig = Rig(smoke=True)
    boot_checked(rig)

    def refuse(generation):
        raise OSError(24, "Too many open files")

    rig.pool.open_private = refuse
    deployment = rig.deployer.start("upgrade", release=release("2.0", "/r/2.0"))
    assert deployment.outcome == "failed"
    assert deployment.error == (
        "cannot open a private port for the smoke command: [Errno 24] Too many open files"
    )
    assert rig.deployer.current is None
