"""Replacing the arbiter under load: `beamdeploy reexec` vs gunicorn's USR2 + TERM.

Both servers run the same Starlette app with 2 workers on 127.0.0.1, under
the same bounded load (keep-alive and Connection: close clients), and get
their master replaced once:

- beamdeploy: `beamdeploy_asgi.reexec()`; the new arbiter boots the release,
  takes over, the old one drains and exits.
- gunicorn (uvicorn-worker): `USR2` to the master, which re-executes itself
  next to the old one; once the new master has its workers, `TERM` to the
  old master, which stops its workers gracefully and exits (gunicorn's
  documented way to upgrade gunicorn on the fly).

Prints failed requests, p50/p99 latency before and during the replacement,
the time until the new master serves and until the old one has exited.

    .venv/bin/python benchmarks/reexec.py [--clients 20] [--close-clients 4]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import beamdeploy_asgi  # noqa: E402
from benchmarks.common import (  # noqa: E402
    add_load_arguments,
    children,
    gunicorn_app,
    percentile,
    start_gunicorn,
    stop_group,
    window,
)
from tests.support.load import Load, LoadResult  # noqa: E402
from tests.support.releases import ReleaseFactory, build_wheel, versioned_app  # noqa: E402
from tests.support.server import ServerProcess, alive, free_port  # noqa: E402

STARTED = re.compile(r"\[(\d+)\] \[INFO\] Application startup complete")


class Measurement:
    def __init__(self, name: str) -> None:
        self.name = name
        self.result = LoadResult()
        self.start = self.serving = self.old_gone = 0.0

    def rows(self) -> dict[str, str]:
        before = window(self.result, 0, self.start)
        during = window(self.result, self.start, self.old_gone)
        return {
            "requests answered": f"{self.result.ok}",
            "failed requests": f"{len(self.result.failures)}",
            "throughput (req/s)": f"{self.result.rate:.0f}",
            "p50 before (ms)": f"{percentile(before, 0.50):.1f}",
            "p99 before (ms)": f"{percentile(before, 0.99):.1f}",
            "p50 during (ms)": f"{percentile(during, 0.50):.1f}",
            "p99 during (ms)": f"{percentile(during, 0.99):.1f}",
            "new master serves (s)": f"{self.serving - self.start:.2f}",
            "old master gone (s)": f"{self.old_gone - self.start:.2f}",
        }


def load_for(url: str, args: argparse.Namespace) -> Load:
    return Load(
        url,
        keepalive_clients=args.clients,
        close_clients=args.close_clients,
        max_seconds=args.before + args.after + 120,
    )


def wait(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout:g}s")
        time.sleep(0.01)


def measure_beamdeploy(work: Path, v1: Path, args: argparse.Namespace) -> Measurement:
    measurement = Measurement("beamdeploy reexec")
    server = ServerProcess(work / "beamdeploy", ["--workers", "2", "--release", str(v1)])
    try:
        server.start()
        assert server.proc is not None
        load = load_for(server.url, args)
        load.start()
        time.sleep(args.before)
        measurement.start = time.monotonic()
        result = beamdeploy_asgi.reexec(state_dir=server.state_dir)
        measurement.serving = time.monotonic()
        server.seen_arbiters.add(result["new_arbiter_pid"])  # so that stop() ends it
        server.proc.wait(120)
        measurement.old_gone = time.monotonic()
        time.sleep(args.after)
        measurement.result = load.stop()
    finally:
        server.stop()
    return measurement


def measure_gunicorn(work: Path, args: argparse.Namespace) -> Measurement:
    measurement = Measurement("gunicorn USR2+TERM")
    appdir = gunicorn_app(work)
    port = free_port()
    log = work / "gunicorn.log"
    # Its console script: gunicorn's USR2 re-executes sys.argv, and `python -m
    # gunicorn` would come back as gunicorn/__main__.py, with gunicorn/http
    # hiding the standard library's http package from its workers.
    script = str(Path(sys.executable).parent / "gunicorn")
    proc = start_gunicorn(appdir, port, log, command=[script])
    try:
        load = load_for(f"http://127.0.0.1:{port}", args)
        load.start()
        time.sleep(args.before)
        old_workers = children(proc.pid)
        measurement.start = time.monotonic()
        os.kill(proc.pid, signal.SIGUSR2)

        def new_master_serves() -> bool:
            """Both workers of the new master finished their startup (gunicorn says no more)."""
            started = {int(pid) for pid in STARTED.findall(log.read_text(errors="replace"))}
            for pid in children(proc.pid) - old_workers:
                if len(children(pid) & started) >= 2:
                    return True
            return False

        wait(new_master_serves, "the new master's workers did not start")
        measurement.serving = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(120)
        measurement.old_gone = time.monotonic()
        wait(lambda: not any(alive(pid) for pid in old_workers), "old workers still run")
        time.sleep(args.after)
        measurement.result = load.stop()
    finally:
        stop_group(proc)
    return measurement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_arguments(parser)
    args = parser.parse_args()
    socket.setdefaulttimeout(30)
    with tempfile.TemporaryDirectory(prefix="beamdeploy-bench-") as tmp:
        work = Path(tmp)
        print("building release v1 ...", flush=True)
        v1 = ReleaseFactory(work / "releases", build_wheel(work / "wheel")).make(
            "v1", versioned_app("v1")
        )
        print("measuring beamdeploy reexec ...", flush=True)
        beam = measure_beamdeploy(work, v1, args)
        print("measuring gunicorn USR2 + TERM (uvicorn-worker) ...", flush=True)
        gunicorn = measure_gunicorn(work, args)
    print()
    print(
        f"one master replaced, 2 workers, {args.clients} keep-alive + "
        f"{args.close_clients} close clients"
    )
    print(f"{'':24}{beam.name:>20}{gunicorn.name:>20}")
    other = gunicorn.rows()
    for key, value in beam.rows().items():
        print(f"{key:24}{value:>20}{other[key]:>20}")
    for m in (beam, gunicorn):
        if m.result.failures:
            print(f"\n{m.name}: first failures: {m.result.failures[:3]}")


if __name__ == "__main__":
    main()
