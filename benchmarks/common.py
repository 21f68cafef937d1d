"""What the benchmarks share: latency windows, and a plain gunicorn to compare with.

The gunicorn side runs the same Starlette app with uvicorn-worker, the way a
team runs it before beamdeploy: `gunicorn -k uvicorn_worker.UvicornWorker`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.load import LoadResult  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def window(result: LoadResult, start: float, end: float) -> list[float]:
    """Latencies (ms) of the requests sent between `start` and `end` (monotonic)."""
    return [latency * 1000 for sent, latency in result.latencies if start <= sent < end]


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.update(int(c) for c in (task / "children").read_text().split())
        except FileNotFoundError:
            continue  # a thread of the master that just ended
    return found


def wait_until_up(url: str) -> None:
    for _ in range(300):
        try:
            httpx.get(url)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} never answered")


def start_gunicorn(
    appdir: Path,
    port: int,
    log_path: Path,
    workers: int = 2,
    command: list[str] | None = None,
) -> subprocess.Popen:
    """gunicorn with uvicorn-worker serving appdir's main:app, in a session of its own.

    `command` starts gunicorn (default: ``python -m gunicorn``).
    """
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [
                *(command or [sys.executable, "-m", "gunicorn"]),
                "-k",
                "uvicorn_worker.UvicornWorker",
                "-w",
                str(workers),
                "-b",
                f"127.0.0.1:{port}",
                "main:app",
            ],
            cwd=appdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_until_up(f"http://127.0.0.1:{port}")
    while len(children(proc.pid)) < workers:
        time.sleep(0.05)
    return proc


def stop_group(proc: subprocess.Popen) -> None:
    """TERM the process's whole session (a re-executed master included), then KILL."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The bounded load every benchmark here runs: its clients and how long around the change."""
    parser.add_argument("--clients", type=int, default=20, help="keep-alive clients")
    parser.add_argument("--close-clients", type=int, default=4, help="Connection: close clients")
    parser.add_argument("--before", type=float, default=4.0, help="seconds of load before")
    parser.add_argument("--after", type=float, default=2.0, help="seconds of load after")


def gunicorn_app(work: Path) -> Path:
    """A directory holding the v1 test app as main.py, for plain gunicorn to serve."""
    from tests.support.releases import versioned_app

    appdir = work / "gunicorn-app"
    appdir.mkdir(parents=True)
    (appdir / "main.py").write_text(versioned_app("v1"))
    return appdir
