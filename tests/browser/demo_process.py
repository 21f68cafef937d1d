"""The demo as the README starts it: a copy of example_app/, `./start.sh`, stopped after."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.support.server import free_port

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 240.0  # the first start makes a venv, installs uv and builds 1.0.0


class DemoProcess:
    """`./start.sh` in a copy of example_app/ on 127.0.0.1:<free port>."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "example_app"
        if not self.dir.exists():
            shutil.copytree(
                REPO / "example_app",
                self.dir,
                ignore=shutil.ignore_patterns(".venv", "dist", ".beam*", ".demo", "__pycache__"),
            )
        self.port = free_port()
        self.log_path = workdir / "demo.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("BEAMDEPLOY_")},
            "PORT": str(self.port),
            "BEAMDEPLOY_SOURCE": str(REPO),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return (self.dir / ".demo" / "token").read_text().strip()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> str:
        """Start it and wait until it serves; the page's address that start.sh printed."""
        assert self.proc is None or self.proc.poll() is not None
        started_at = len(self.log())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["./start.sh"],
                cwd=self.dir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        printed = re.compile(rf"demo on (http://127\.0\.0\.1:{self.port}/#token=\S+)")
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"start.sh exited with {self.proc.returncode}:\n{self.log()}")
            url = printed.search(self.log()[started_at:])
            if url and self.answers():
                return url.group(1)
            time.sleep(0.2)
        raise AssertionError(f"the demo did not serve within {START_TIMEOUT}s:\n{self.log()}")

    def answers(self) -> bool:
        try:
            return httpx.get(self.base + "/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        """SIGTERM to the arbiter, then SIGKILL to its whole session (workers, builds)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
