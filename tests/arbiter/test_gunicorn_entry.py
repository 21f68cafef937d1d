"""`gunicorn -k beamdeploy_asgi.Worker` runs the same generation runtime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.load import Load
from tests.support.server import alive

GUNICORN = [sys.executable, "-m", "gunicorn"]
CONFIG = """
health_path = "/healthz"
boot_timeout = 20
workers = 2
"""


@pytest.mark.parametrize(
    "worker_class", ["beamdeploy_asgi.Worker", "egg:beamdeploy-asgi#beamdeploy"]
)
def test_plain_gunicorn_swaps_under_load(serve, releases, tmp_path: Path, worker_class: str):
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(CONFIG + f'release = "{releases["v1"]}"\n')
    server = serve("-k", worker_class, "-c", str(config), "unused:app", command=GUNICORN)
    status = server.status()
    assert server.proc.pid == status["arbiter"]["pid"], "the gunicorn process itself is the arbiter"
    assert status["serving"]["release"]["version"] == "v1"
    old = server.serving_pids()
    with Load(server.url, keepalive_clients=4, close_clients=2, max_seconds=60) as load:
        load.wait_requests(100)
        upgrade = server.cli("upgrade", str(releases["v2"]))
        assert upgrade.returncode == 0, upgrade.stderr
        load.wait_requests(200)
    assert load.result.failures == []
    assert list(dict.fromkeys(load.result.sequence)) == ["v1", "v2"]
    server.wait_for(lambda s: not s["draining"])
    assert not [pid for pid in old if alive(pid)]


def test_refused_options_say_why(tmp_path: Path):
    cases = {
        "--preload": "preload_app",
        "--reuse-port": "reuse_port",
        "--reload": "reload",
    }
    for flag, name in cases.items():
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "beamdeploy_asgi",
                "serve",
                flag,
                "--bind",
                "127.0.0.1:0",
                "--state-dir",
                str(tmp_path / "state"),
                "app:app",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
        )
        assert done.returncode == 1
        assert f"unsupported option {name}" in done.stderr, done.stderr
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "beamdeploy_asgi",
            "serve",
            "-k",
            "uvicorn_worker.UvicornWorker",
            "--bind",
            "127.0.0.1:0",
            "app:app",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert done.returncode == 1 and "beamdeploy runs its own uvicorn workers" in done.stderr


def test_first_generation_that_cannot_boot_stops_the_arbiter(serve, tmp_path: Path):
    server = serve("broken:app", launch=False)
    server.workdir.mkdir()
    (server.workdir / "broken.py").write_text("raise ImportError('no such dependency')\n")
    server.start(expect_serving=False)
    assert server.proc.wait(30) == 3
    log = server.log()
    reason = log[log.index("Reason: the first generation failed to boot") :]
    assert "ImportError: no such dependency" in reason
    assert 'broken.py", line 1, in <module>' in reason, "the arbiter shows the traceback"
