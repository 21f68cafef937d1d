"""One swap under load: beamdeploy upgrade vs gunicorn HUP with uvicorn-worker.

Both servers run the same Starlette app with 2 workers on 127.0.0.1, under
the same bounded load (keep-alive and Connection: close clients). Prints
failed requests, p50/p99 latency before and during the swap, and how long
the swap took (for beamdeploy split into preflight import, boot, promotion
and drain).

    .venv/bin/python benchmarks/swap.py [--clients 20] [--close-clients 4]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import beamdeploy_asgi  # noqa: E402
from tests.support.load import Load, LoadResult  # noqa: E402
from tests.support.releases import ReleaseFactory, build_wheel, versioned_app  # noqa: E402
from tests.support.server import ServerProcess, free_port  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def window(result: LoadResult, start: float, end: float) -> list[float]:
    return [latency * 1000 for sent, latency in result.latencies if start <= sent < end]


class Measurement:
    def __init__(self, name: str) -> None:
        self.name = name
        self.result = LoadResult()
        self.swap_start = self.swap_end = 0.0
        self.split: dict[str, float] = {}

    def rows(self) -> dict[str, str]:
        before = window(self.result, 0, self.swap_start)
        during = window(self.result, self.swap_start, self.swap_end)
        rows = {
            "requests answered": f"{self.result.ok}",
            "failed requests": f"{len(self.result.failures)}",
            "throughput (req/s)": f"{self.result.rate:.0f}",
            "p50 before (ms)": f"{percentile(before, 0.50):.1f}",
            "p99 before (ms)": f"{percentile(before, 0.99):.1f}",
            "p50 during swap (ms)": f"{percentile(during, 0.50):.1f}",
            "p99 during swap (ms)": f"{percentile(during, 0.99):.1f}",
            "swap total (s)": f"{self.swap_end - self.swap_start:.2f}",
        }
        for phase in ("preflight", "boot", "promotion", "drain"):
            value = self.split.get(phase)
            rows[f"  {phase} (s)"] = f"{value:.3f}" if value is not None else "n/a"
        return rows


def load_for(url: str, args: argparse.Namespace) -> Load:
    return Load(
        url,
        keepalive_clients=args.clients,
        close_clients=args.close_clients,
        max_seconds=args.before + args.after + 60,
    )


def measure_beamdeploy(work: Path, v1: Path, v2: Path, args: argparse.Namespace) -> Measurement:
    measurement = Measurement("beamdeploy upgrade")
    server = ServerProcess(work / "beamdeploy", ["--workers", "2", "--release", str(v1)])
    server.start()
    try:
        load = load_for(server.url, args)
        load.start()
        time.sleep(args.before)
        measurement.swap_start = time.monotonic()
        deployment = beamdeploy_asgi.upgrade(v2, state_dir=server.state_dir)
        status = server.wait_for(lambda s: not s["draining"], timeout=120)
        measurement.swap_end = time.monotonic()
        time.sleep(args.after)
        measurement.result = load.stop()
        record = next(d for d in status["deployments"] if d["id"] == deployment["id"])
        measurement.split = record["timings"]
    finally:
        server.stop()
    return measurement


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.update(int(c) for c in (task / "children").read_text().split())
        except FileNotFoundError:
            continue  # a thread of the master that just ended
    return found


def measure_gunicorn_hup(work: Path, args: argparse.Namespace) -> Measurement:
    measurement = Measurement("gunicorn HUP")
    appdir = work / "gunicorn-app"
    appdir.mkdir(parents=True)
    (appdir / "main.py").write_text(versioned_app("v1"))
    port = free_port()
    log = open(work / "gunicorn.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-k",
            "uvicorn_worker.UvicornWorker",
            "-w",
            "2",
            "-b",
            f"127.0.0.1:{port}",
            "main:app",
        ],
        cwd=appdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url)
        while len(children(proc.pid)) < 2:
            time.sleep(0.05)
        load = load_for(url, args)
        load.start()
        time.sleep(args.before)
        old = children(proc.pid)
        (appdir / "main.py").write_text(versioned_app("v2"))
        measurement.swap_start = time.monotonic()
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 120
        while children(proc.pid) & old or load.result.bodies.get("v2", 0) == 0:
            if time.monotonic() > deadline:
                raise RuntimeError("gunicorn did not finish its HUP")
            time.sleep(0.01)
        measurement.swap_end = time.monotonic()
        time.sleep(args.after)
        measurement.result = load.stop()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    return measurement


def wait_until_up(url: str) -> None:
    for _ in range(300):
        try:
            httpx.get(url)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} never answered")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20, help="keep-alive clients")
    parser.add_argument("--close-clients", type=int, default=4, help="Connection: close clients")
    parser.add_argument("--before", type=float, default=4.0, help="seconds of load before")
    parser.add_argument("--after", type=float, default=2.0, help="seconds of load after")
    args = parser.parse_args()
    socket.setdefaulttimeout(30)
    with tempfile.TemporaryDirectory(prefix="beamdeploy-bench-") as tmp:
        work = Path(tmp)
        print("building releases v1 and v2 ...", flush=True)
        factory = ReleaseFactory(work / "releases", build_wheel(work / "wheel"))
        v1 = factory.make("v1", versioned_app("v1"))
        v2 = factory.make("v2", versioned_app("v2"))
        print("measuring beamdeploy upgrade ...", flush=True)
        beam = measure_beamdeploy(work, v1, v2, args)
        print("measuring gunicorn HUP (uvicorn-worker) ...", flush=True)
        hup = measure_gunicorn_hup(work, args)
    print()
    print(f"one swap, 2 workers, {args.clients} keep-alive + {args.close_clients} close clients")
    print(f"{'':24}{beam.name:>20}{hup.name:>16}")
    hup_rows = hup.rows()
    for key, value in beam.rows().items():
        print(f"{key:24}{value:>20}{hup_rows[key]:>16}")
    for m in (beam, hup):
        if m.result.failures:
            print(f"\n{m.name}: first failures: {m.result.failures[:3]}")


if __name__ == "__main__":
    main()
