"""Hot reload with real workers: the code changes, the processes and their state stay."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from pathlib import Path

import httpx
import pytest

import beamdeploy_asgi
from beamdeploy_asgi.errors import DeploymentFailed
from tests.support.load import Load
from tests.support.releases import ReleaseFactory
from tests.support.server import ServerProcess, wait_in_flight
from tests.support.tokens import AUTH, TOKEN

MAIN = """
import asyncio, os
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

import labels

VERSION = "{version}"
STATE = {{"count": 0, "hooks": []}}
IN_FLIGHT = 0


async def home(request):
    STATE["count"] += 1
    return PlainTextResponse(f"{{VERSION}} {{labels.label()}}{body_extra} count={{STATE['count']}}")


async def state(request):
    return JSONResponse({{
        "count": STATE["count"],
        "hooks": STATE["hooks"],
        "pid": os.getpid(),
        "version": os.environ.get("BEAMDEPLOY_RELEASE_VERSION"),
    }})


async def slow(request):
    global IN_FLIGHT
    IN_FLIGHT += 1
    try:
        await asyncio.sleep(float(request.query_params.get("s", "2")))
    finally:
        IN_FLIGHT -= 1
    return PlainTextResponse(f"slow {{VERSION}}")


async def in_flight(request):
    return PlainTextResponse(str(IN_FLIGHT))


async def lazy_word(request):
    import lazy  # first imported here, maybe only after a reload

    return PlainTextResponse(lazy.WORD)

{extra}

app = Starlette(routes=[
    Route("/", home), Route("/state", state), Route("/slow", slow), Route("/in-flight", in_flight),
    Route("/lazy", lazy_word),
])
"""

LABELS = """
def label():
    return "{label}"
"""

HOOK = """
def shout(word):
    return word.upper()


def beamdeploy_code_change(old_version, new_version):
    STATE["hooks"].append(f"{old_version}->{new_version}")
"""


def counter_app(version: str, *, label: str = "blue", body_extra: str = "", extra: str = ""):
    main = MAIN.format(version=version, body_extra=body_extra, extra=extra)
    return main, {"labels.py": LABELS.format(label=label), "lazy.py": f'WORD = "{label}"\n'}


@pytest.fixture
def counter(release_factory, tmp_path_factory):
    """Build counter-app releases under a fresh directory; the same name, new versions."""
    root = tmp_path_factory.mktemp("hot")

    def make(version: str, **changes: str) -> Path:
        main, files = counter_app(version, **changes)
        return ReleaseFactory(root, release_factory.wheel).make(version, main, files=files)

    return make


def states(server: ServerProcess, workers: int) -> dict[int, dict]:
    """Each worker's /state, by pid: new connections until every worker answered."""
    seen: dict[int, dict] = {}
    for _ in range(200):
        answer = httpx.get(server.url + "/state", headers={"Connection": "close"}).json()
        seen[answer["pid"]] = answer
        if len(seen) == workers:
            return seen
    raise AssertionError(f"only {len(seen)} of {workers} workers answered")


def test_body_constant_and_new_helper_keep_pids_and_state(serve, counter):
    v1 = counter("1.0")
    v2 = counter("1.1", label="green", body_extra=" {shout('hot')}", extra=HOOK)
    server = serve("--workers", "2", "--release", str(v1))
    pids = sorted(server.serving_pids())
    with Load(server.url, keepalive_clients=4, close_clients=2, max_seconds=120) as load:
        load.wait_requests(200)
        counts_before = {pid: s["count"] for pid, s in states(server, 2).items()}
        done = beamdeploy_asgi.hot_reload(v2, state_dir=server.state_dir)
        load.wait_requests(load.result.ok + 200)
    assert load.result.failures == []
    assert done["kind"] == "hot-reload" and done["outcome"] == "succeeded"
    assert sorted(server.serving_pids()) == pids, "the same processes serve"
    after = states(server, 2)
    for pid, state in after.items():
        assert state["count"] > counts_before[pid], "module state kept: the counter goes on"
        assert state["hooks"] == ["1.0->1.1"], "the code-change hook ran once in each worker"
        assert state["version"] == "1.1"
    answer = httpx.get(server.url).text
    assert answer.startswith("1.1 green HOT count="), answer
    assert httpx.get(server.url + "/lazy").text == "green", "a module first imported now is new"
    assert load.result.sequence[-1] == "1.1"

    status = server.status()
    assert status["serving"]["release"]["version"] == "1.1"
    assert status["serving"]["release"]["path"] == str(v2)
    assert (server.state_dir / "current").resolve() == v2
    plan = done["plan"]
    changed = {m["module"]: m["changes"] for m in plan["modules"]}
    assert set(changed) == {"main", "labels", "lazy"}
    assert {"home", "shout", "beamdeploy_code_change"} <= set(changed["main"]["functions"])
    assert changed["main"]["constants"] == ["VERSION"]
    workers = done["workers"]
    assert sorted(map(int, workers)) == pids
    for report in workers.values():
        assert report["commit"]["hooks"][0]["module"] == "main"
        assert report["resume"]["held_for"] < 1.0
    phases = [e["phase"] for e in done["events"]]
    assert [p for p in dict.fromkeys(phases)] == [
        "planning",
        "preparing",
        "suspending",
        "committing",
        "resuming",
        "done",
    ]

    # A worker that dies now is replaced from the new release.
    os.kill(pids[0], signal.SIGKILL)
    status = server.wait_for(
        lambda s: (
            pids[0] not in [w["pid"] for w in s["serving"]["workers"]]
            and len(s["serving"]["workers"]) == 2
            and all(w["state"] == "serving" for w in s["serving"]["workers"])
        )
    )
    new_pid = next(w["pid"] for w in status["serving"]["workers"] if w["pid"] not in pids)
    fresh = states(server, 2)[new_pid]
    assert fresh["version"] == "1.1" and fresh["hooks"] == [], "booted on the new code"

    # And a rollback goes back to the release that served before, blue-green.
    back = beamdeploy_asgi.rollback(state_dir=server.state_dir)
    assert back["to"]["version"] == "1.0"
    assert httpx.get(server.url).text.startswith("1.0 blue count=")


def test_dry_run_prints_the_plan_and_changes_nothing(serve, counter):
    v1, v2 = counter("1.0"), counter("1.1", label="green")
    server = serve("--workers", "2", "--release", str(v1))
    pids = sorted(server.serving_pids())
    done = server.cli("hot-reload", str(v2), "--dry-run")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "plan: 1.0 -> 1.1" in done.stdout
    assert "  labels: label()" in done.stdout
    assert "dry run: 3 modules, 1 functions change; nothing was applied" in done.stdout
    assert sorted(server.serving_pids()) == pids
    assert httpx.get(server.url).text.startswith("1.0 blue ")
    assert server.status()["serving"]["release"]["version"] == "1.0"


def test_a_request_outliving_the_suspend_timeout_fails_the_reload(serve, counter):
    v1, v2 = counter("1.0"), counter("1.1", label="green")
    server = serve("--workers", "1", "--release", str(v1))
    slow: dict[str, str] = {}

    def request_slowly() -> None:
        slow["text"] = httpx.get(server.url + "/slow?s=3", timeout=30).text

    thread = threading.Thread(target=request_slowly)
    thread.start()
    try:
        wait_in_flight(server.url)
        with pytest.raises(DeploymentFailed) as failed:
            beamdeploy_asgi.hot_reload(v2, state_dir=server.state_dir, suspend_timeout=0.5)
    finally:
        thread.join(30)
    error = failed.value.deployment["error"]
    assert error.startswith("hot reload failed: requests did not finish in time; nothing was")
    assert "1 requests still running after 0.5s (--suspend-timeout)" in error
    assert slow["text"] == "slow 1.0", "the request was answered, on the old code"
    assert httpx.get(server.url).text.startswith("1.0 blue ")
    assert server.status()["serving"]["release"]["version"] == "1.0"


FAILING_HOOK = """
MARKER = "{marker}"


def beamdeploy_code_change(old_version, new_version):
    STATE["hooks"].append("ran")
    try:  # the first worker here fails, the others succeed
        os.close(os.open(MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    raise RuntimeError("cannot migrate here")
"""


def test_a_hook_that_raises_in_one_worker_undoes_every_worker(serve, counter, tmp_path):
    v1 = counter("1.0")
    marker = tmp_path / "hook-failed-once"
    v2 = counter("1.1", label="green", extra=FAILING_HOOK.format(marker=marker))
    server = serve("--workers", "2", "--release", str(v1))
    pids = sorted(server.serving_pids())
    with pytest.raises(DeploymentFailed) as failed:
        beamdeploy_asgi.hot_reload(v2, state_dir=server.state_dir)
    error = failed.value.deployment["error"]
    assert "hot reload failed: a worker could not apply the new code" in error
    assert re.search(
        r"worker \d+: main.beamdeploy_code_change\('1.0', '1.1'\) raised RuntimeError: "
        "cannot migrate here; every change was undone",
        error,
    ), error
    assert marker.exists()
    phases = [e["phase"] for e in failed.value.deployment["events"]]
    assert "undoing" in phases and "resuming" not in phases
    for state in states(server, 2).values():
        assert state["version"] == "1.0"
        assert state["hooks"] == ["ran"], "each hook ran once; the code was undone after"
    for _ in range(10):
        assert httpx.get(server.url, headers={"Connection": "close"}).text.startswith("1.0 blue ")
    assert sorted(server.serving_pids()) == pids
    assert server.status()["serving"]["release"]["version"] == "1.0"


def test_the_hot_reload_cli_reports_json(serve, counter):
    v1, v2 = counter("1.0"), counter("1.1", label="green")
    server = serve("--workers", "1", "--release", str(v1))
    done = server.cli("hot-reload", str(v2), "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["kind"] == "hot-reload" and record["to"]["version"] == "1.1"
    assert record["from"]["version"] == "1.0"
    history = server.status()["deployments"]
    assert history[0]["id"] == record["id"] and history[0]["kind"] == "hot-reload"


def test_an_artifact_of_a_packaged_app_is_installed_then_hot_reloaded(serve, artifacts, offline):
    """The app is its own wheel in the venv here, not files under app/."""
    server = serve("--workers", "2", "--release", str(artifacts["1.0.0"]), env=offline)
    pids = sorted(server.serving_pids())
    done = server.cli("hot-reload", str(artifacts["1.1.0"]))
    assert done.returncode == 0, done.stdout + done.stderr
    for phase in ("installing", "planning", "preparing", "committing", "done"):
        assert f" {phase} " in done.stdout
    assert "  sample.app: VERSION =" in done.stdout
    assert httpx.get(server.url).text.startswith("1.1.0 sample")
    assert sorted(server.serving_pids()) == pids
    serving = server.status()["serving"]["release"]
    assert serving["version"] == "1.1.0"
    assert serving["path"] == str(server.state_dir / "releases" / "sample-1.1.0")


def test_over_http_the_request_asking_for_it_is_not_waited_for(serve, counter, tmp_path):
    v1, v2 = counter("1.0"), counter("1.1", label="green")
    server = serve(
        "--workers", "2", "--release", str(v1), "--release-dir", str(v2.parent),
        env={"BEAMDEPLOY_TOKEN": TOKEN},
    )  # fmt: skip
    url = server.url + "/_deploy/hot-reload"
    outside = httpx.post(url, json={"release": str(tmp_path)}, headers=AUTH)
    assert outside.status_code == 403 and outside.json()["error"] == "path_not_allowed"
    bad = httpx.post(url + "?suspend_timeout=0", json={"release": v2.name}, headers=AUTH)
    assert bad.status_code == 400 and "suspend_timeout" in bad.json()["detail"]
    assert httpx.post(url, json={"release": v2.name}).status_code == 401
    done = httpx.post(url + "?wait=true", json={"release": v2.name}, headers=AUTH, timeout=60)
    assert done.status_code == 200, done.text
    assert done.json()["outcome"] == "succeeded"
    assert httpx.get(server.url).text.startswith("1.1 green ")
