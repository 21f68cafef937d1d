"""The README's demo command, run for real on a copy of example_app/."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.support.server import free_port

REPO = Path(__file__).resolve().parents[1]


def test_start_sh_serves_the_demo_and_deploy_sh_swaps_it(tmp_path: Path):
    demo = tmp_path / "example_app"
    shutil.copytree(
        REPO / "example_app", demo, ignore=shutil.ignore_patterns(".venv", "dist", ".beam*")
    )
    port = free_port()
    env = {**os.environ, "PORT": str(port), "BEAMDEPLOY_SOURCE": str(REPO)}
    log = open(tmp_path / "demo.log", "wb")

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            ["./start.sh"],
            cwd=demo,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    proc = start()
    try:
        page = wait_for_page(port, proc)
        assert page is not None, (tmp_path / "demo.log").read_text()
        assert "Release 1.0.0" in page.text
        assert "generation <b>1</b>" in page.text
        assert "worker pid <b>" in page.text

        deployed = subprocess.run(
            ["./deploy.sh", "1.1.0"],
            cwd=demo,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert "done" in deployed.stdout
        page = httpx.get(f"http://127.0.0.1:{port}/")
        assert "Release 1.1.0" in page.text and "generation <b>2</b>" in page.text

        # Restarted, the demo boots what was deployed last.
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        proc = start()
        page = wait_for_page(port, proc)
        assert "Release 1.1.0" in page.text and "generation <b>1</b>" in page.text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def wait_for_page(port: int, proc: subprocess.Popen) -> httpx.Response | None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/")
        except httpx.TransportError:
            time.sleep(0.5)
    return None
