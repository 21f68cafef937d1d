"""The arbiter's life: signals, heartbeats, its own death, the serving environment."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx

from tests.support.load import Load
from tests.support.releases import versioned_app
from tests.support.server import alive, plain_uvicorn, wait_in_flight


def test_workers_do_not_outlive_a_killed_arbiter(serve, releases):
    server = serve("--workers", "2", "--release", str(releases["v1"]))
    workers = server.serving_pids()
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    deadline = time.monotonic() + 15
    while [pid for pid in workers if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if alive(pid)], "orphaned workers"


BLOCKING_APP = versioned_app(
    "blocks",
    extra="import time\n\nasync def block(request):\n    time.sleep(30)  # no heartbeat\n",
    routes='Route("/block", block), ',
)


def request_that_blocks(url: str) -> None:
    try:
        httpx.get(url + "/block", timeout=40)
    except httpx.HTTPError:
        pass  # the worker is killed under it, as it should be


def test_silent_worker_is_aborted_and_replaced(serve, releases):
    server = serve(
        "--workers",
        "1",
        "--timeout",
        "2",
        "--release",
        str(releases.custom("blocks", BLOCKING_APP)),
    )
    (victim,) = server.serving_pids()
    threading.Thread(target=request_that_blocks, args=(server.url,), daemon=True).start()
    status = server.wait_for(
        lambda s: (
            s["serving"]["workers"]
            and s["serving"]["workers"][0]["pid"] != victim
            and s["serving"]["workers"][0]["state"] == "serving"
        ),
        timeout=20,
    )
    assert f"WORKER TIMEOUT (pid:{victim})" in server.log()
    assert f"worker {victim}: no heartbeat for 2s, aborting" in server.log()
    assert status["serving"]["generation"] == 1
    assert httpx.get(server.url).text.startswith("blocks")


def test_worker_that_does_not_exit_on_abort_is_killed(serve, releases):
    """A worker_abort hook that hangs must not keep a silent worker alive."""
    server = serve(
        "--workers", "1", "--timeout", "2", "-c", "conf.py",
        "--release", str(releases.custom("blocks", BLOCKING_APP)),
        launch=False,
    )  # fmt: skip
    server.workdir.mkdir(parents=True)
    (server.workdir / "conf.py").write_text(
        "import time\n\ndef worker_abort(worker):\n    time.sleep(60)\n"
    )
    server.start()
    (victim,) = server.serving_pids()
    threading.Thread(target=request_that_blocks, args=(server.url,), daemon=True).start()
    server.wait_for(
        lambda s: s["serving"]["workers"] and s["serving"]["workers"][0]["pid"] != victim,
        timeout=20,
    )
    assert f"worker {victim} still aborting at its deadline, killing it" in server.log()
    assert not alive(victim)


def test_hup_restarts_the_serving_release_blue_green(serve, releases):
    server = serve("--workers", "2", "--release", str(releases["v1"]))
    old = server.serving_pids()
    with Load(server.url, keepalive_clients=4, close_clients=2, max_seconds=60) as load:
        load.wait_requests(100)
        os.kill(server.proc.pid, signal.SIGHUP)
        status = server.wait_for(lambda s: s["serving"]["generation"] == 2 and not s["upgrading"])
        load.wait_requests(100)
    assert load.result.failures == []
    assert status["serving"]["release"]["version"] == "v1"
    assert status["deployments"][0]["kind"] == "restart"
    assert not set(old) & set(server.serving_pids())


def test_ttin_and_ttou_resize_the_serving_generation(serve, releases):
    server = serve("--workers", "1", "--release", str(releases["v1"]))
    (first,) = server.serving_pids()
    os.kill(server.proc.pid, signal.SIGTTIN)
    grown = server.wait_for(
        lambda s: [w["state"] for w in s["serving"]["workers"]] == ["serving"] * 2
    )
    assert grown["arbiter"]["workers"] == 2 and grown["serving"]["size"] == 2
    os.kill(server.proc.pid, signal.SIGTTOU)
    shrunk = server.wait_for(lambda s: [w["state"] for w in s["serving"]["workers"]] == ["serving"])
    assert shrunk["serving"]["size"] == 1
    (kept,) = [w["pid"] for w in shrunk["serving"]["workers"]]
    assert kept != first, "the oldest worker is the one that drains"
    assert httpx.get(server.url).text.startswith("v1 ")


def test_serving_environment_then_upgrade_to_a_release(serve, releases):
    server = serve(
        "--workers", "1", "--chdir", "src", "--pythonpath", "../lib", "main:app", launch=False
    )
    (server.workdir / "src").mkdir(parents=True)
    (server.workdir / "lib").mkdir()
    (server.workdir / "lib" / "helper.py").write_text("LABEL = 'local'\n")
    (server.workdir / "src" / "main.py").write_text(
        versioned_app("local").replace('VERSION = "local"', "from helper import LABEL as VERSION")
    )
    server.start()
    assert httpx.get(server.url).text.startswith("local gen=1")
    status = server.status()
    assert status["serving"]["release"]["path"] is None
    upgrade = server.cli("upgrade", str(releases["v2"]))
    assert upgrade.returncode == 0, upgrade.stderr
    assert httpx.get(server.url).text.startswith("v2 gen=2")


def test_sigterm_drains_and_exits_cleanly(serve, releases):
    server = serve("--workers", "2", "--release", str(releases["v1"]))
    workers = server.serving_pids()
    # Sent before the signal, on a connection a worker has accepted by then.
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    slow.sendall(b"GET /slow?s=3 HTTP/1.1\r\nHost: test\r\n\r\n")
    wait_in_flight(server.url)
    server.proc.send_signal(signal.SIGTERM)
    answer = b""
    while chunk := slow.recv(4096):
        answer += chunk
    slow.close()
    assert server.proc.wait(30) == 0
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"slow v1")
    assert not [pid for pid in workers if alive(pid)]
    assert not (server.state_dir / "control.sock").exists()


def test_ctrl_c_stops_quietly(serve, releases):
    """Ctrl-C in a terminal sends INT to the arbiter and its workers at once."""
    server = serve("--workers", "2", "--release", str(releases["v1"]))
    workers = server.serving_pids()
    assert server.proc is not None
    os.killpg(server.proc.pid, signal.SIGINT)
    assert server.proc.wait(30) == 0
    log = server.log()
    assert "Shutting down" in log
    assert "Traceback" not in log, "the apps' lifespans end, not cancelled"
    assert "Application shutdown complete" in log
    assert "crashes in a row" not in log and "[ERROR]" not in log, log
    assert not [pid for pid in workers if alive(pid)]


def test_api_is_inert_under_plain_uvicorn(tmp_path: Path):
    (tmp_path / "inert.py").write_text(
        """
import beamdeploy_asgi
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def home(request):
    errors = []
    for call in (beamdeploy_asgi.status, beamdeploy_asgi.current_release,
                 beamdeploy_asgi.upgrading, lambda: beamdeploy_asgi.upgrade("/tmp/x")):
        try:
            call()
        except beamdeploy_asgi.NotEnabledError as exc:
            errors.append(str(exc))
    return JSONResponse({"enabled": beamdeploy_asgi.enabled(), "errors": errors})

app = Starlette(routes=[Route("/", home)])
"""
    )
    with plain_uvicorn(tmp_path, "inert:app") as url:
        body = httpx.get(url).json()
    assert body["enabled"] is False
    assert len(body["errors"]) == 4
    assert all("not running under beamdeploy" in e for e in body["errors"])
