"""Deploy strategies with real arbiters and workers: rolling, checks, hooks, the bake.

Each runs under a bounded load and counts what clients saw.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

import beamdeploy_asgi
from beamdeploy_asgi.cli import format_status
from beamdeploy_asgi.errors import DeploymentFailed
from tests.support.load import Load
from tests.support.releases import versioned_app

# Each worker of this release records its pid; every one after the first fails
# its lifespan startup: a rollout gets one worker in, then stops.
ONE_WORKER_BOOTS = """
path = os.environ["BOOT_LOG"]
with open(path, "a") as log:
    log.write(f"{os.getpid()}\\n")
with open(path) as log:
    booted = log.read().split()
if len(booted) > 1:
    raise RuntimeError("only one worker of this release boots")
"""

BROKEN_HOME = """
async def broken(request):
    return PlainTextResponse("broken", status_code=500)
"""


def events(result: dict) -> list[dict]:
    return result["events"]


def test_rolling_replaces_workers_a_few_at_a_time_under_load(serve, releases):
    releases["v2"]
    server = serve("--workers", "3", "--release", str(releases["v1"]))
    with Load(server.url, max_seconds=60, max_requests=20_000) as load:
        load.wait_requests(50)
        started = beamdeploy_asgi.upgrade(
            releases["v2"], strategy="rolling", max_surge=1, wait=False, state_dir=server.state_dir
        )

        def both_answer(status: dict) -> bool:
            running = status["deployment"] or {"events": []}
            progress = [e for e in running["events"] if "new_serving" in e]
            return bool(progress) and progress[-1]["new_serving"] and progress[-1]["old_serving"]

        midway = server.wait_for(lambda s: not s["upgrading"] or both_answer(s))
        result = server.wait_for(lambda s: not s["upgrading"])["deployments"][0]
        load.wait_requests(50)
    assert result["id"] == started["id"]
    shown = format_status(midway)
    assert "rolling in: generation 2, demo v2" in shown, shown
    assert "both releases answer: 1 workers on the new one" in shown, shown
    outcome = load.result
    print(f"rolling 3 workers under load: {outcome.ok} ok, {len(outcome.failures)} failed")
    assert outcome.failures == []
    assert result["outcome"] == "succeeded"
    assert result["strategy"] == "rolling"
    rolling = result["rolling"]
    assert rolling["peak_workers"] <= 3 + 1, "size + surge"
    assert set(outcome.bodies) == {"v1", "v2"}
    status = server.status()
    assert status["serving"]["release"]["version"] == "v2"
    assert len(status["serving"]["workers"]) == 3


def test_a_failed_rollout_brings_the_old_release_back_to_full_size(serve, releases, tmp_path):
    boot_log = tmp_path / "boots"
    broken = releases.custom("v2-one-boots", versioned_app("v2", lifespan=ONE_WORKER_BOOTS))
    server = serve(
        "--workers", "3", "--release", str(releases["v1"]), env={"BOOT_LOG": str(boot_log)}
    )
    with Load(server.url, max_seconds=60, max_requests=20_000) as load:
        load.wait_requests(50)
        run = server.cli("upgrade", str(broken), "--strategy", "rolling", "--json")
        load.wait_requests(50)
    result = json.loads(run.stdout)
    print(f"stopped rollout under load: {load.result.ok} ok, {len(load.result.failures)} failed")
    assert run.returncode == 1
    assert load.result.failures == []
    assert result["outcome"] == "failed"
    assert "only one worker of this release boots" in result["error"]
    assert result["rolling"]["replaced"] == 1
    assert any("workers replaced" in e["message"] for e in events(result))
    status = server.wait_for(
        lambda s: (
            s["serving"]["release"]["version"] == "v1"
            and [w["state"] for w in s["serving"]["workers"]] == ["serving"] * 3
            and not s["booting"]
        )
    )
    assert status["serving"]["size"] == 3
    assert httpx.get(server.url).text.startswith("v1")


def test_the_smoke_command_tests_the_new_generation_before_users_reach_it(
    serve, releases, tmp_path
):
    seen = tmp_path / "smoke.json"
    script = tmp_path / "smoke.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, os, sys, time, urllib.request
            def get(url):
                return urllib.request.urlopen(url, timeout=10).read().decode()
            smoke_url = os.environ["BEAMDEPLOY_SMOKE_URL"]
            record = {{"smoke_url": smoke_url, "new": get(smoke_url + "/")}}
            if os.environ["BEAMDEPLOY_RELEASE_VERSION"] != "v1":  # not the first boot
                record["public"] = get(sys.argv[1] + "/")
                time.sleep(2.5)  # longer than --boot-timeout: the checks have their own
                open({str(seen)!r}, "w").write(json.dumps(record))
            print("smoke: checked", record["new"].split()[0])
            """
        )
    )
    releases["v2"]
    server = serve(
        "--workers", "2", "--boot-timeout", "2", "--release", str(releases["v1"]), launch=False
    )
    server.command += ["--smoke-cmd", f"{sys.executable} {script} {server.url}"]
    server.start()
    result = beamdeploy_asgi.upgrade(releases["v2"], state_dir=server.state_dir)
    record = json.loads(seen.read_text())
    assert record["new"].startswith("v2"), "the smoke URL reaches the new generation"
    assert record["public"].startswith("v1"), "users still reach the old one meanwhile"
    assert record["smoke_url"].startswith("http://127.0.0.1:")
    assert record["smoke_url"] != server.url
    assert result["smoke"]["exit_code"] == 0
    assert "smoke: checked v2" in result["smoke"]["output"]
    assert "checking" in [e["phase"] for e in events(result)]
    with pytest.raises(httpx.HTTPError):
        httpx.get(record["smoke_url"], timeout=5)  # closed once the generation serves


def test_a_failing_smoke_command_vetoes_the_promotion(serve, releases):
    releases["v2"]
    server = serve("--workers", "1", "--release", str(releases["v1"]), launch=False)
    server.command += ["--smoke-cmd", "echo 'expected v2, got v0'; exit 3"]
    with pytest.raises(AssertionError, match="smoke command failed"):
        server.start()  # the first boot is checked too: it halts
    server = serve("--workers", "1", "--release", str(releases["v1"]), launch=False)
    server.command += [
        "--smoke-cmd",
        'case "$BEAMDEPLOY_RELEASE_VERSION" in v1) ;; *) exit 3;; esac',
    ]
    server.start()
    pids = server.serving_pids()
    run = server.cli("upgrade", str(releases["v2"]), "--json")
    result = json.loads(run.stdout)
    assert run.returncode == 1
    assert result["outcome"] == "failed"
    assert "smoke command failed" in result["error"] and "exited with code 3" in result["error"]
    assert result["smoke"]["exit_code"] == 3
    assert server.serving_pids() == pids
    assert httpx.get(server.url).text.startswith("v1")


def hooks_config(tmp_path: Path, body: str) -> Path:
    config = tmp_path / "hooks.py"
    config.write_text(textwrap.dedent(body))
    return config


def test_promotion_hooks_are_called_and_before_promote_can_veto(serve, releases, tmp_path):
    calls = tmp_path / "calls.jsonl"
    config = hooks_config(
        tmp_path,
        f"""
        import json, time

        def note(name, deployment):
            with open({str(calls)!r}, "a") as out:
                out.write(json.dumps({{"hook": name, "id": deployment["id"],
                                      "to": deployment["to"].get("version")}}) + "\\n")

        def beamdeploy_deployment_started(server, deployment):
            note("started", deployment)

        def beamdeploy_before_promote(server, deployment):
            note("before_promote", deployment)
            version = deployment["to"]["version"]
            if version == "v3":
                return False
            if version == "v4":
                raise RuntimeError("the change window is closed")
            if version == "v5":
                time.sleep(30)

        def beamdeploy_promoted(server, deployment):
            note("promoted", deployment)

        def beamdeploy_deployment_failed(server, deployment):
            note("failed", deployment)
        """,
    )
    v4 = releases.custom("v4", versioned_app("v4"))
    v5 = releases.custom("v5", versioned_app("v5"))
    releases["v2"], releases["v3"]
    server = serve(
        "--workers",
        "1",
        "-c",
        str(config),
        "--hook-timeout",
        "1",
        "--release",
        str(releases["v1"]),
    )
    ok = beamdeploy_asgi.upgrade(releases["v2"], state_dir=server.state_dir)
    with pytest.raises(DeploymentFailed) as vetoed:
        beamdeploy_asgi.upgrade(releases["v3"], state_dir=server.state_dir)
    with pytest.raises(DeploymentFailed) as raised:
        beamdeploy_asgi.upgrade(v4, state_dir=server.state_dir)
    with pytest.raises(DeploymentFailed) as hung:
        beamdeploy_asgi.upgrade(v5, state_dir=server.state_dir)
    assert vetoed.value.deployment["error"] == (
        "beamdeploy_before_promote vetoed the promotion: it returned False"
    )
    assert raised.value.deployment["error"] == (
        "beamdeploy_before_promote vetoed the promotion: RuntimeError: the change window is closed"
    )
    assert "did not return within 1s (--hook-timeout)" in hung.value.deployment["error"]
    assert httpx.get(server.url).text.startswith("v2")

    def noted() -> list[tuple[str, str]]:
        lines = calls.read_text().splitlines()
        return [(c["hook"], c["to"]) for c in map(json.loads, lines)]

    server.wait_for(lambda s: ("failed", "v5") in noted())
    hooks = noted()
    assert [h for h in hooks if h[1] == "v2"] == [
        ("started", "v2"),
        ("before_promote", "v2"),
        ("promoted", "v2"),
    ]
    assert [h for h in hooks if h[1] == "v3"] == [
        ("started", "v3"),
        ("before_promote", "v3"),
        ("failed", "v3"),
    ]
    assert ok["outcome"] == "succeeded"
    assert "hook beamdeploy_before_promote failed" in server.log()


def test_a_release_that_fails_on_real_traffic_is_rolled_back_within_the_bake(serve, releases):
    bad = releases.custom(
        "v2-500", versioned_app("v2", extra=BROKEN_HOME, routes='Route("/", broken), ')
    )
    server = serve("--workers", "2", "--release", str(releases["v1"]), "--health-path", "/healthz")
    warm = sorted(server.serving_pids())
    with Load(server.url, max_seconds=60, max_requests=20_000) as load:
        load.wait_requests(50)
        run = server.cli("upgrade", str(bad), "--bake", "30", "--json")
        load.wait_requests(50)
    result = json.loads(run.stdout)
    failed = load.result.failures
    print(f"bad release under load: {len(failed)} requests answered 500 before the rollback")
    assert run.returncode == 1
    assert result["outcome"] == "rolled-back"
    assert result["phase"] == "rolled-back"
    assert result["error"].startswith("bake: ")
    assert "responses were 5xx" in result["error"]
    bake = result["bake"]
    assert bake["errors"] >= 1 and bake["responses"] >= 20
    assert result["timings"]["bake"] < 30, "rolled back inside the window"
    assert failed and all(f.startswith("HTTP 500") for f in failed)
    tripped = next(e["at"] for e in events(result) if e["phase"] == "rolling-back")
    after_trip = [at for at in load.result.failed_sent_at if at > tripped]
    late = [at for at in load.result.failed_sent_at if at > result["ended_at"]]
    print(
        f"the bake counted {bake['errors']} 5xx when it tripped; clients saw {len(failed)}, "
        f"{len(after_trip)} of them sent after the trip (on connections the new generation "
        "answered while it drained)"
    )
    assert late == [], "once the rollback has ended, no request fails"
    assert len(after_trip) < len(failed) / 2, "most were sent before the trip"
    status = server.status()
    assert sorted(w["pid"] for w in status["serving"]["workers"]) == warm, (
        "no boot: the old workers"
    )
    assert status["serving"]["release"]["version"] == "v1"
    assert httpx.get(server.url).text.startswith("v1")
    releases_listed = server.cli("releases", "--json")
    assert releases_listed.returncode == 0


def test_a_good_release_bakes_and_completes(serve, releases):
    releases["v2"]
    server = serve("--workers", "2", "--release", str(releases["v1"]))
    old = set(server.serving_pids())
    with Load(server.url, max_seconds=60, max_requests=20_000) as load:
        load.wait_requests(50)
        result = beamdeploy_asgi.upgrade(releases["v2"], bake=2, state_dir=server.state_dir)
        load.wait_requests(20)
    assert load.result.failures == []
    assert result["outcome"] == "succeeded"
    phases = [e["phase"] for e in events(result)]
    assert phases.index("baking") < phases.index("draining")
    assert result["timings"]["bake"] >= 2
    assert result["bake"]["errors"] == 0 and result["bake"]["responses"] > 0
    status = server.wait_for(lambda s: not s["draining"] and not s["standby"])
    assert old.isdisjoint(w["pid"] for w in status["serving"]["workers"])


def test_bad_options_are_refused_with_their_name(serve, releases):
    server = serve("--workers", "1", "--release", str(releases["v1"]))
    run = server.cli("upgrade", str(releases["v1"]), "--strategy", "rolling", "--bake", "5")
    assert run.returncode == 1
    assert "bake with the blue-green strategy" in run.stderr
    run = server.cli("upgrade", str(releases["v1"]), "--max-surge", "0")
    assert run.returncode == 2 and "'max_surge' must be a whole number" in run.stderr
    with pytest.raises(ValueError, match="'strategy' must be one of"):
        beamdeploy_asgi.upgrade(releases["v1"], strategy="canary", state_dir=server.state_dir)
    assert server.status()["deployments"][0]["kind"] == "boot", "nothing was started"


def test_a_rollback_during_the_bake_is_instant(serve, releases):
    releases["v2"]
    server = serve("--workers", "2", "--release", str(releases["v1"]))
    warm = sorted(server.serving_pids())
    with Load(server.url, max_seconds=60, max_requests=20_000) as load:
        load.wait_requests(50)
        beamdeploy_asgi.upgrade(releases["v2"], bake=60, wait=False, state_dir=server.state_dir)
        baking = server.wait_for(lambda s: (s["deployment"] or {}).get("phase") == "baking")
        rolled = server.cli("rollback", "--json")
        load.wait_requests(50)
    result = json.loads(rolled.stdout)
    assert rolled.returncode == 0, rolled.stderr
    assert result["outcome"] == "rolled-back"
    assert result["error"] == "bake: rolled back by the operator during the bake"
    assert load.result.failures == []
    assert sorted(server.serving_pids()) == warm
    assert httpx.get(server.url).text.startswith("v1")
    shown = format_status(baking)
    assert "serving: generation 2, demo v2" in shown, shown
    assert "standby (kept booted for the bake): generation 1, demo v1" in shown, shown
    assert "  baking 60s: " in shown and "(rolls back above 5%)" in shown, shown


def test_rolling_and_a_bake_together_are_refused_at_start(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "beamdeploy_asgi", "serve", "--strategy", "rolling", "--bake", "5",
         "--bind", "127.0.0.1:0", "--state-dir", str(tmp_path / "state"), "app:app"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 1
    assert "bake with the rolling strategy" in run.stderr
