"""The lowest versions beamdeploy-asgi declares really work, arbiter and workers alike.

A release whose venv has exactly the minimum of every dependency in
pyproject.toml runs the arbiter and its first generation, keeps its workers
through a log reopen, swaps to a release on current versions and back, under
load, with no failed request.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import httpx

from tests.support.load import Load
from tests.support.releases import versioned_app
from tests.support.server import ServerProcess, alive

REPO = Path(__file__).resolve().parents[2]
WATCHED = ("gunicorn", "uvicorn", "starlette", "anyio")


def lowest_versions() -> dict[str, str]:
    """{name: minimum} from pyproject.toml's [project] dependencies."""
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    found = {}
    for dependency in dependencies:
        match = re.match(r"^([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", dependency)
        if match and match[1] in WATCHED:
            found[match[1]] = match[2]
    assert set(found) == set(WATCHED), dependencies
    return found


def installed_versions(python: Path) -> dict[str, str]:
    code = f"import importlib.metadata as m\nfor name in {WATCHED!r}: print(name, m.version(name))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return dict(line.split() for line in done.stdout.splitlines())


def same_version(installed: str, minimum: str) -> bool:
    """24.0.0 is 24: compare release numbers padded with zeros."""
    a, b = ([int(p) for p in v.split(".")] for v in (installed, minimum))
    width = max(len(a), len(b))
    return a + [0] * (width - len(a)) == b + [0] * (width - len(b))


def wait_for_log(server: ServerProcess, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log():
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{server.log()}"
        time.sleep(0.05)


def test_the_lowest_versions_boot_and_swap_under_load(serve, releases):
    lowest = lowest_versions()
    pins = tuple(f"{name}=={version}" for name, version in lowest.items())
    release = releases.custom("lowest", versioned_app("lowest"), packages=pins)
    python = release / "venv" / "bin" / "python"
    installed = installed_versions(python)
    assert all(same_version(installed[n], v) for n, v in lowest.items()), installed
    current = releases["v1"]

    # The arbiter itself runs on the lowest versions too.
    server = serve(
        "--workers", "2", "--release", str(release),
        command=[str(python), "-m", "beamdeploy_asgi", "serve"],
    )  # fmt: skip
    assert "gunicorn " + installed["gunicorn"] in server.log()
    # The admin API, mounted by the workers at /_deploy, routes on this Starlette.
    health = httpx.get(server.url + "/_deploy/health")
    assert health.status_code == 200 and health.json()["status"] == "serving"
    pids = server.serving_pids()
    # Log rotation: the arbiter passes SIGUSR1 on; workers reopen their logs and live on
    # (uvicorn before 0.29 never installed their handler, and SIGUSR1 killed them).
    os.kill(server.proc.pid, signal.SIGUSR1)
    wait_for_log(server, "Handling signal: usr1")
    with Load(server.url, keepalive_clients=4, close_clients=2, max_seconds=90) as load:
        load.wait_requests(100)
        assert server.serving_pids() == pids and all(alive(pid) for pid in pids)
        to_current = server.cli("upgrade", str(current))
        assert to_current.returncode == 0, to_current.stderr
        load.wait_requests(200)
        back = server.cli("rollback")
        assert back.returncode == 0, back.stderr
        server.wait_for(lambda s: not s["draining"])
        load.wait_requests(200)
    result = load.result

    assert result.failures == []
    assert result.sequence[0] == "lowest" and result.sequence[-1] == "lowest"
    assert result.bodies["v1"] > 0 and result.bodies["lowest"] >= 300
    status = server.status()
    assert status["serving"]["release"]["version"] == "lowest"
    assert [d["kind"] for d in status["deployments"][:3]] == ["rollback", "upgrade", "boot"]
    assert all(d["outcome"] == "succeeded" for d in status["deployments"][:3])
