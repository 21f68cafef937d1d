"""Running a real arbiter for a test, and always stopping it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from beamdeploy_asgi import status as api_status
from beamdeploy_asgi.errors import ControlError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def alive(pid: int) -> bool:
    """True for a running process (zombies count as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class ServerProcess:
    """`beamdeploy serve` (or plain gunicorn) on 127.0.0.1:<free port>."""

    def __init__(
        self,
        workdir: Path,
        args: list[str],
        *,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        """`pass_fds`: inherited by the arbiter (a socket-activation launcher's socket)."""
        self.workdir = workdir
        self.pass_fds = pass_fds
        self.port = free_port()
        self.state_dir = workdir / "state"
        self.log_path = workdir / "server.log"
        self.env = {**os.environ, **(env or {})}
        if command is None:
            command = [
                sys.executable,
                "-m",
                "beamdeploy_asgi",
                "serve",
                "--state-dir",
                str(self.state_dir),
            ]
        else:  # plain gunicorn does not know beamdeploy's flags
            self.env["BEAMDEPLOY_STATE_DIR"] = str(self.state_dir)
        self.command = [*command, "--bind", f"127.0.0.1:{self.port}", *args]
        self.env.pop("BEAMDEPLOY_CONTROL", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen_pids: set[int] = set()
        self.seen_arbiters: set[int] = set()  # after a reexec, not only proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0, expect_serving: bool = True) -> ServerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command,
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=self.pass_fds,
        )
        log.close()
        if expect_serving:
            self.wait_for(lambda s: s["serving"] is not None and not s["upgrading"], timeout)
        return self

    def status(self) -> dict[str, Any]:
        status = api_status(state_dir=self.state_dir)
        self.seen_arbiters.add(status["arbiter"]["pid"])
        standby = status.get("standby", [])
        for gen in [status["serving"], *status["booting"], *standby, *status["draining"]]:
            if gen:
                self.seen_pids.update(w["pid"] for w in gen["workers"])
        return status

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            try:
                last = self.status()
            except ControlError as exc:
                last = exc
                # After a reexec another arbiter answers: only one that is gone is the end.
                if self.proc.poll() is not None and not self.successor_alive():
                    raise AssertionError(
                        f"arbiter exited with {self.proc.returncode}:\n{self.log()}"
                    ) from None
            else:
                if predicate(last):
                    return last
            time.sleep(0.05)
        raise AssertionError(
            f"condition not met within {timeout}s; last status {last}\n{self.log()}"
        )

    def successor_alive(self) -> bool:
        """Whether an arbiter that took over from proc (a reexec) still runs."""
        assert self.proc is not None
        return any(alive(pid) for pid in self.seen_arbiters if pid != self.proc.pid)

    def serving_pids(self) -> list[int]:
        return [w["pid"] for w in self.status()["serving"]["workers"]]

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "beamdeploy_asgi", *args, "--state-dir", str(self.state_dir)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM, then SIGKILL of the whole session: nothing outlives a test."""
        if self.proc is None:
            return None
        try:
            self.status()
        except (ControlError, OSError):
            pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self._stop_successors(timeout)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        for pid in self.seen_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return self.proc.returncode

    def _stop_successors(self, timeout: float) -> None:
        """Arbiters that took over from proc (a reexec) are not its children: TERM, then wait."""
        others = {pid for pid in self.seen_arbiters if self.proc and pid != self.proc.pid}
        for pid in others:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(alive(pid) for pid in others) and time.monotonic() < deadline:
            time.sleep(0.05)


@contextlib.contextmanager
def plain_uvicorn(app_dir: Path, app: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`uvicorn APP` without beamdeploy on a free port; yields its URL once it answers."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BEAMDEPLOY")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)],
        cwd=app_dir,
        env={**clean, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url)
                break
            except httpx.TransportError:
                if proc.poll() is not None:
                    raise AssertionError(f"uvicorn {app} exited with {proc.returncode}") from None
                if time.monotonic() > deadline:
                    raise AssertionError(f"uvicorn {app} did not answer within 60s") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def wait_in_flight(url: str, timeout: float = 15.0) -> None:
    """Until a worker says a /slow request is running in it (the test app counts them).

    Each poll is a new connection, so with several workers the one running it
    answers sooner or later.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = httpx.get(url + "/in-flight", headers={"Connection": "close"}, timeout=5)
        if answer.text.strip() not in ("", "0"):
            return
        time.sleep(0.02)
    raise AssertionError(f"no /slow request reached the app within {timeout}s")
