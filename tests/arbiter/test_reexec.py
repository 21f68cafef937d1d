"""`beamdeploy reexec` and USR2: a new arbiter takes over, the sockets never close."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import httpx

import beamdeploy_asgi
from tests.support.load import Load
from tests.support.notify import NotifySocket
from tests.support.releases import versioned_app
from tests.support.server import ServerProcess, alive

SLOW_BOOT = versioned_app("slow-boot", lifespan="await asyncio.sleep(4)")


def wait_gone(pid: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still runs after {timeout}s"
        time.sleep(0.05)


def assert_taken_over(server: ServerProcess, old: int, pidfile: Path) -> dict:
    """The new arbiter serves alone, owns the control socket and the pidfile."""
    assert server.proc is not None
    assert server.proc.wait(60) == 0, "the old arbiter did not exit cleanly"
    status = server.wait_for(lambda s: s["arbiter"]["pid"] != old and not s["draining"])
    new = status["arbiter"]["pid"]
    assert alive(new)
    assert pidfile.read_text().strip() == str(new)
    control = server.state_dir / "control.sock"
    assert stat.S_IMODE(control.stat().st_mode) == 0o600
    assert not (server.state_dir / "control.next.sock").exists()
    assert server.cli("status").returncode == 0
    return status


def test_reexec_under_load_loses_no_request(serve, releases, tmp_path):
    notify = NotifySocket(tmp_path / "notify.sock")  # read as it comes, as systemd does
    pidfile = tmp_path / "arbiter.pid"
    server = serve(
        "--workers", "2", "--release", str(releases["v1"]), "--pid", str(pidfile),
        env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")},
    )  # fmt: skip
    before = server.status()
    old, old_workers = before["arbiter"]["pid"], server.serving_pids()
    with Load(server.url, keepalive_clients=6, close_clients=3, max_seconds=90) as load:
        load.wait_requests(300)
        done = server.cli("reexec")
        load.wait_requests(300)
    assert done.returncode == 0, done.stderr + done.stdout
    assert load.result.failures == [], load.result.failures[:5]
    assert load.result.ok > 600

    status = assert_taken_over(server, old, pidfile)
    new = status["arbiter"]["pid"]
    assert f"arbiter {new} serves" in done.stdout
    assert status["serving"]["release"]["path"] == before["serving"]["release"]["path"]
    assert status["arbiter"]["listeners"] == before["arbiter"]["listeners"]
    assert not [pid for pid in old_workers if alive(pid)]
    handed = notify.received[notify.wait_for(lambda n: f"MAINPID={new}" in n)]
    notify.close()
    assert handed.pid == old and "READY=1" in handed
    record = status["deployments"][0]
    assert (record["kind"], record["outcome"]) == ("reexec", "succeeded")
    assert (record["old_arbiter_pid"], record["new_arbiter_pid"]) == (old, new)
    assert httpx.get(server.url).text.startswith("v1 ")
    # The new arbiter deploys like the old one did.
    upgrade = server.cli("upgrade", str(releases["v2"]))
    assert upgrade.returncode == 0, upgrade.stderr
    assert httpx.get(server.url).text.startswith("v2 ")


def test_usr2_reexecs_too(serve, releases, tmp_path):
    pidfile = tmp_path / "arbiter.pid"
    server = serve("--workers", "2", "--release", str(releases["v1"]), "--pid", str(pidfile))
    old = server.status()["arbiter"]["pid"]
    with Load(server.url, keepalive_clients=4, close_clients=2, max_seconds=90) as load:
        load.wait_requests(200)
        os.kill(old, signal.SIGUSR2)
        server.wait_for(lambda s: s["arbiter"]["pid"] != old, timeout=60)
        load.wait_requests(200)
    assert load.result.failures == [], load.result.failures[:5]
    status = assert_taken_over(server, old, pidfile)
    assert "took over; draining the workers" in server.log()
    assert f"Took over from arbiter {old}" in server.log()
    assert status["serving"]["release"]["version"] == "v1"


def test_reexec_that_cannot_start_leaves_the_old_arbiter_serving(serve, releases):
    """The config file was edited after start and no longer loads: the new arbiter exits."""
    server = serve(
        "--workers", "2", "--release", str(releases["v1"]), "-c", "gunicorn.conf.py",
        launch=False,
    )  # fmt: skip
    server.workdir.mkdir(parents=True)
    config = server.workdir / "gunicorn.conf.py"
    config.write_text("graceful_timeout = 10\n")
    server.start()
    old = server.status()["arbiter"]["pid"]
    config.write_text("graceful_timeout = 10\nraise RuntimeError('half-edited config')\n")
    with Load(server.url, keepalive_clients=4, close_clients=2, max_seconds=90) as load:
        load.wait_requests(100)
        failed = server.cli("reexec")
        load.wait_requests(100)
    assert load.result.failures == []
    assert failed.returncode == 1
    assert "reexec failed: the new arbiter (pid " in failed.stderr
    assert "exited with code 1 before it served" in failed.stderr
    assert "half-edited config" in failed.stderr
    status = server.status()
    assert status["arbiter"]["pid"] == old
    assert status["reexec"] is None
    assert [w["state"] for w in status["serving"]["workers"]] == ["serving", "serving"]
    record = status["deployments"][0]
    assert (record["kind"], record["outcome"]) == ("reexec", "failed")
    assert "half-edited config" in record["error"]
    assert not (server.state_dir / "control.next.sock").exists()
    # Fixed, it goes through (here through the Python API).
    config.write_text("graceful_timeout = 10\n")
    done = beamdeploy_asgi.reexec(state_dir=server.state_dir)
    assert done["outcome"] == "succeeded" and done["old_arbiter_pid"] == old
    server.wait_for(lambda s: s["arbiter"]["pid"] == done["new_arbiter_pid"])


def test_successor_killed_during_its_boot_is_reported(serve, releases):
    server = serve("--workers", "1", "--release", str(releases.custom("slow-boot", SLOW_BOOT)))
    old = server.status()["arbiter"]["pid"]
    started = beamdeploy_asgi.reexec(wait=False, state_dir=server.state_dir)
    assert started["phase"] == "booting"
    status = server.wait_for(lambda s: s["reexec"] and s["reexec"]["pid"])
    new = status["reexec"]["pid"]
    shown = server.cli("status").stdout
    assert f"reexec in progress: {started['id']} (" in shown
    assert f"new arbiter pid {new}" in shown
    os.kill(new, signal.SIGKILL)
    status = server.wait_for(lambda s: s["reexec"] is None)
    record = status["deployments"][0]
    assert (record["kind"], record["outcome"]) == ("reexec", "failed")
    assert f"the new arbiter (pid {new}) was killed by SIGKILL before it served" in record["error"]
    assert status["arbiter"]["pid"] == old
    assert httpx.get(server.url).text.startswith("slow-boot ")


def test_reexec_and_deployments_refuse_each_other(serve, releases):
    server = serve("--workers", "1", "--release", str(releases["v1"]))
    old = server.status()["arbiter"]["pid"]
    slow = releases.custom("slow-boot", SLOW_BOOT)
    assert server.cli("upgrade", str(slow), "--no-wait").returncode == 0
    server.wait_for(lambda s: s["upgrading"])
    refused = server.cli("reexec")
    assert refused.returncode == 1
    assert "error: upgrade in progress: deployment" in refused.stderr
    server.wait_for(lambda s: not s["upgrading"], timeout=60)

    assert server.cli("reexec", "--no-wait").returncode == 0
    server.wait_for(lambda s: s["reexec"] is not None)
    again = server.cli("reexec")
    assert again.returncode == 1
    assert "error: the arbiter is being replaced: reexec" in again.stderr
    upgrade = server.cli("upgrade", str(releases["v1"]))
    assert upgrade.returncode == 1
    assert "error: the arbiter is being replaced" in upgrade.stderr
    server.wait_for(lambda s: s["arbiter"]["pid"] != old, timeout=60)


def test_reexec_bad_input(serve, releases, tmp_path):
    nowhere = ServerProcess(tmp_path / "none", [])
    missing = nowhere.cli("reexec")
    assert missing.returncode == 1
    assert "error: no beamdeploy arbiter listens on" in missing.stderr
    extra = nowhere.cli("reexec", "v2")
    assert extra.returncode == 2
    assert "unrecognized arguments: v2" in extra.stderr
