"""Releases that cannot serve are refused; the serving generation never notices."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

import beamdeploy_asgi
from beamdeploy_asgi.errors import ControlError, DeploymentFailed
from tests.support.load import Load
from tests.support.releases import versioned_app
from tests.support.server import alive

IMPORT_ERROR = """
raise RuntimeError("boom at import time")
"""

LIFESPAN_RAISES = versioned_app(
    "bad-lifespan", lifespan='raise ConnectionError("database unreachable at startup")'
)
HEALTH_500 = versioned_app("bad-health").replace(
    'return JSONResponse({"ok": True})', 'return JSONResponse({"ok": False}, status_code=500)'
)
LIFESPAN_HANGS = versioned_app("hangs", lifespan="await asyncio.sleep(3600)")
SLOW_BOOT = versioned_app("slow-boot", lifespan="await asyncio.sleep(4)")

BROKEN = [
    ("import-error", IMPORT_ERROR, "RuntimeError: boom at import time"),
    ("lifespan-raises", LIFESPAN_RAISES, "ConnectionError: database unreachable at startup"),
    ("health-500", HEALTH_500, "health check GET /healthz answered 500"),
    ("lifespan-hangs", LIFESPAN_HANGS, "did not report READY within 10s (boot timeout)"),
]


def test_broken_releases_fail_and_v1_keeps_serving(serve, releases):
    built = {key: releases.custom(key, source) for key, source, _ in BROKEN}
    server = serve(
        "--workers",
        "2",
        "--release",
        str(releases["v1"]),
        "--health-path",
        "/healthz",
        "--boot-timeout",
        "10",
    )
    v1_pids = server.serving_pids()
    with Load(server.url, keepalive_clients=4, close_clients=2, max_seconds=120) as load:
        for key, _, cause in BROKEN:
            release = built[key]
            load.wait_requests(50)
            seen_before = set(server.seen_pids)
            upgrade = server.cli("upgrade", str(release))
            assert upgrade.returncode == 1, upgrade.stdout
            assert cause in upgrade.stderr, upgrade.stderr
            assert " failed " in upgrade.stdout
            status = server.status()
            assert status["serving"]["release"]["version"] == "v1"
            assert server.serving_pids() == v1_pids
            assert status["upgrading"] is False and status["booting"] == []
            failed = status["deployments"][0]
            assert failed["outcome"] == "failed" and cause in failed["error"]
            new_pids = {e for e in failed_worker_pids(server.log(), key)} - seen_before
            assert not [pid for pid in new_pids if alive(pid)]
        load.wait_requests(50)
    assert load.result.failures == []
    assert set(load.result.bodies) == {"v1"}
    assert server.proc.poll() is None, "the arbiter must survive failed boots"


def failed_worker_pids(log: str, version: str) -> set[int]:
    pids = set()
    for line in log.splitlines():
        if f"(demo {version}): started worker" in line:
            pids.add(int(line.rsplit(" ", 1)[1]))
    return pids


def test_python_api_raises_with_the_cause(serve, releases):
    server = serve("--workers", "1", "--release", str(releases["v1"]))
    with pytest.raises(DeploymentFailed) as failure:
        beamdeploy_asgi.upgrade(
            releases.custom("import-error", IMPORT_ERROR), state_dir=server.state_dir
        )
    deployment = failure.value.deployment
    assert deployment["outcome"] == "failed"
    assert "boom at import time" in deployment["error"]
    assert "Traceback" in deployment["error"]


def test_sigkill_of_a_serving_worker_is_replaced_in_its_generation(serve, releases):
    server = serve("--workers", "2", "--release", str(releases["v1"]))
    before = server.status()["serving"]
    victim = before["workers"][0]["pid"]
    with Load(server.url, keepalive_clients=2, close_clients=1, max_seconds=60) as load:
        load.wait_requests(50)
        os.kill(victim, signal.SIGKILL)
        status = server.wait_for(
            lambda s: (
                len(s["serving"]["workers"]) == 2
                and victim not in [w["pid"] for w in s["serving"]["workers"]]
                and all(w["state"] == "serving" for w in s["serving"]["workers"])
            )
        )
        load.wait_requests(50)
    assert status["serving"]["generation"] == before["generation"]
    assert status["serving"]["release"] == before["release"]
    assert set(load.result.bodies) == {"v1"}


def test_sigkill_of_a_booting_worker_fails_the_upgrade_cleanly(serve, releases):
    server = serve("--workers", "2", "--release", str(releases["v1"]))
    slow = releases.custom("slow-boot", SLOW_BOOT)
    v1_pids = server.serving_pids()
    with Load(server.url, keepalive_clients=2, close_clients=1, max_seconds=60) as load:
        started = beamdeploy_asgi.upgrade(slow, wait=False, state_dir=server.state_dir)
        status = server.wait_for(lambda s: s["booting"] and len(s["booting"][0]["workers"]) == 2)
        booting = [w["pid"] for w in status["booting"][0]["workers"]]
        os.kill(booting[0], signal.SIGKILL)
        status = server.wait_for(lambda s: not s["upgrading"])
        load.wait_requests(30)
    deployment = status["deployments"][0]
    assert deployment["id"] == started["id"]
    assert deployment["outcome"] == "failed"
    assert f"worker {booting[0]} was killed by SIGKILL before it was ready" in deployment["error"]
    assert server.serving_pids() == v1_pids
    assert not [pid for pid in booting if alive(pid)]
    assert load.result.failures == [] and set(load.result.bodies) == {"v1"}


def test_two_concurrent_upgrades_exactly_one_runs(serve, releases):
    server = serve("--workers", "1", "--release", str(releases["v1"]))
    slow = releases.custom("slow-boot", SLOW_BOOT)
    first = beamdeploy_asgi.upgrade(slow, wait=False, state_dir=server.state_dir)
    with pytest.raises(ControlError) as refused:
        beamdeploy_asgi.upgrade(releases["v2"], wait=False, state_dir=server.state_dir)
    assert refused.value.code == "upgrade_in_progress"
    assert "upgrade in progress" in refused.value.detail
    cli = server.cli("upgrade", str(releases["v2"]))
    assert cli.returncode == 1 and "upgrade in progress" in cli.stderr
    status = server.wait_for(lambda s: not s["upgrading"], timeout=60)
    assert status["serving"]["release"]["version"] == "slow-boot"
    ran = [d for d in status["deployments"] if d["kind"] == "upgrade"]
    assert [d["id"] for d in ran] == [first["id"]]


def test_a_crash_looping_generation_is_backed_off(serve, releases):
    # Each worker dies 1 s after startup, once its generation serves.
    crashing = versioned_app(
        "crashes", lifespan="asyncio.get_running_loop().call_later(1.0, os._exit, 1)"
    )
    server = serve("--workers", "1", "--release", str(releases.custom("crashes", crashing)))
    deadline = time.monotonic() + 30
    while "4 crashes in a row" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    delays = re.findall(r"(\d+) crashes in a row, next worker in ([\d.]+)s", server.log())
    assert delays[:3] == [("2", "0.5"), ("3", "1.0"), ("4", "2.0")], server.log()
    assert server.proc.poll() is None


def test_a_venv_without_beamdeploy_is_refused_by_name(serve, releases, tmp_path):
    import json
    import sys

    from tests.support.releases import uv

    bare = tmp_path / "bare-release"
    bare.mkdir()
    (bare / "beamdeploy-release.json").write_text(
        json.dumps({"name": "bare", "version": "1", "app": "main:app"})
    )
    uv("venv", "--python", sys.executable, str(bare / "venv"))
    server = serve("--workers", "1", "--release", str(releases["v1"]))
    done = server.cli("upgrade", str(bare))
    assert done.returncode == 1
    assert "the release's venv lacks beamdeploy-asgi, which runs its workers" in done.stderr
    assert server.status()["serving"]["release"]["version"] == "v1"
