"""One swap under load vs gunicorn HUP, and an upgrade vs a standalone uvicorn boot.

Under load: both servers run the same Starlette app with 2 workers on
127.0.0.1, under the same bounded load (keep-alive and Connection: close
clients). Prints failed requests, p50/p99 latency before and during the swap,
and how long the swap took (for beamdeploy split into preflight import, boot,
promotion and drain).

Without load: the release's own `python -m uvicorn APP` is started N times,
timed from Popen to its first 200; then a 2-worker beamdeploy server is
swapped N times between v1 and v2, each `beamdeploy_asgi.upgrade()` timed
from the call to `done`. Prints both medians, their ratio, and the median of
each phase of the deployments' timings.

Blue-green vs rolling: a server whose workers each hold `--ballast` MiB is
upgraded with each strategy in turn; prints the swap time, the most workers
alive at once and the peak of their summed RSS, sampled every 5 ms.

    .venv/bin/python benchmarks/swap.py [--clients 20] [--close-clients 4] [--boots 10]
                                        [--no-load] [--bytecode]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import beamdeploy_asgi  # noqa: E402
from benchmarks.common import (
    add_load_arguments,
    children,
    gunicorn_app,
    percentile,
    start_gunicorn,
    stop_group,
    window,
)  # noqa: E402
from tests.support.load import Load, LoadResult  # noqa: E402
from tests.support.releases import ReleaseFactory, build_wheel, versioned_app  # noqa: E402
from tests.support.server import ServerProcess, free_port  # noqa: E402


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
    try:
        server.start()
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


def measure_gunicorn_hup(work: Path, args: argparse.Namespace) -> Measurement:
    measurement = Measurement("gunicorn HUP")
    appdir = gunicorn_app(work)
    port = free_port()
    proc = start_gunicorn(appdir, port, work / "gunicorn.log")
    url = f"http://127.0.0.1:{port}"
    try:
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
        stop_group(proc)
    return measurement


def print_under_load(beam: Measurement, hup: Measurement, args: argparse.Namespace) -> None:
    print(f"one swap, 2 workers, {args.clients} keep-alive + {args.close_clients} close clients")
    print(f"{'':24}{beam.name:>20}{hup.name:>16}")
    hup_rows = hup.rows()
    for key, value in beam.rows().items():
        print(f"{key:24}{value:>20}{hup_rows[key]:>16}")
    for m in (beam, hup):
        if m.result.failures:
            print(f"\n{m.name}: first failures: {m.result.failures[:3]}")


# -- an upgrade without load vs a standalone uvicorn boot --------------------

POLL = 0.005  # coarser polling would add to the boot figure it measures


def answers_200(port: int) -> bool:
    """Whether GET / on 127.0.0.1:port answers 200 now (a new connection each time)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/")
        return connection.getresponse().status == 200
    except OSError:  # refused while nothing listens yet, reset while it starts
        return False
    finally:
        connection.close()


def boot_uvicorn(release: Path, log_path: Path) -> float:
    """Seconds from Popen of the release's `python -m uvicorn APP` to its first 200."""
    manifest = json.loads((release / "beamdeploy-release.json").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEAMDEPLOY")}
    env.pop("VIRTUAL_ENV", None)
    env["PYTHONPATH"] = os.pathsep.join(str(release / p) for p in manifest["pythonpath"])
    port = free_port()
    command = [
        str(release / "venv" / "bin" / "python"),
        "-m",
        "uvicorn",
        manifest["app"],
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(log_path, "ab") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            command,
            cwd=release,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = started + 60
        while not answers_200(port):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"uvicorn exited with {proc.returncode}:\n{log_path.read_text()}"
                )
            if time.perf_counter() > deadline:
                raise RuntimeError(f"uvicorn did not answer within 60 s:\n{log_path.read_text()}")
            time.sleep(POLL)
        return time.perf_counter() - started
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def measure_boots(work: Path, release: Path, runs: int) -> list[float]:
    return [boot_uvicorn(release, work / "uvicorn.log") for _ in range(runs)]


def measure_swaps(
    work: Path, v1: Path, v2: Path, runs: int
) -> tuple[list[float], list[dict[str, float]]]:
    """Seconds from upgrade() to `done` for each swap, and each deployment's timings."""
    server = ServerProcess(work / "beamdeploy-swaps", ["--workers", "2", "--release", str(v1)])
    took: list[float] = []
    timings: list[dict[str, float]] = []
    try:
        server.start()
        for run in range(runs):
            target = v2 if run % 2 == 0 else v1
            started = time.perf_counter()
            deployment = beamdeploy_asgi.upgrade(target, state_dir=server.state_dir)
            took.append(time.perf_counter() - started)
            # The next swap starts once the old generation has gone (its drain
            # outlives `done`), so that it is timed on an idle machine, and
            # the record then has the drain's timing too.
            status = server.wait_for(lambda s: not s["draining"], timeout=120)
            record = next(d for d in status["deployments"] if d["id"] == deployment["id"])
            timings.append(record["timings"])
    finally:
        server.stop()
    return took, timings


def print_boot_vs_swap(boots: list[float], swaps: list[float], timings: list[dict]) -> None:
    print(f"uvicorn boot vs beamdeploy upgrade, 2 workers, no load, {len(boots)}/{len(swaps)} runs")
    print(f"{'':36}{'median':>8}{'min':>8}{'max':>8}")
    for name, values in (
        ("uvicorn boot, Popen to first 200 (s)", boots),
        ("beamdeploy upgrade to done (s)", swaps),
    ):
        print(f"{name:36}{statistics.median(values):8.3f}{min(values):8.3f}{max(values):8.3f}")
    ratio = statistics.median(swaps) / statistics.median(boots)
    print(f"{'ratio upgrade / boot (medians)':36}{ratio:7.2f}x")
    phases: list[str] = []
    for record in timings:
        phases += [phase for phase in record if phase not in phases]
    print("upgrade phases (s), from the deployment records:")
    for phase in phases:
        values = [record[phase] for record in timings if phase in record]
        print(f"  {phase:34}{statistics.median(values):8.3f}{min(values):8.3f}{max(values):8.3f}")


def rss_mib(pids: set[int]) -> float:
    """The summed resident memory of `pids`, those still alive."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/statm").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    return total / 2**20


def measure_strategy(server: ServerProcess, target: Path, strategy: str) -> dict[str, float]:
    """One upgrade with `strategy`, the arbiter's workers' memory sampled meanwhile."""
    assert server.proc is not None
    arbiter = server.proc.pid
    done: list[dict] = []
    started = time.perf_counter()
    thread = threading.Thread(
        target=lambda: done.append(
            beamdeploy_asgi.upgrade(target, strategy=strategy, state_dir=server.state_dir)
        )
    )
    thread.start()
    peak_rss = peak_workers = 0.0
    while thread.is_alive():
        workers = children(arbiter)
        peak_workers = max(peak_workers, len(workers))
        peak_rss = max(peak_rss, rss_mib(workers))
        time.sleep(0.005)  # the sampling interval
    thread.join()
    took = time.perf_counter() - started
    # The drain outlives `done`; the next upgrade starts on an idle arbiter.
    server.wait_for(lambda s: not s["draining"], timeout=120)
    assert done and done[0]["outcome"] == "succeeded", done
    return {"swap (s)": took, "peak workers": peak_workers, "peak RSS (MiB)": peak_rss}


def measure_strategies(
    work: Path, v1: Path, v2: Path, workers: int, runs: int
) -> dict[str, list[dict[str, float]]]:
    """Blue-green and rolling (max surge 1) in turns, on one server, `runs` times each."""
    server = ServerProcess(
        work / "beamdeploy-strategies", ["--workers", str(workers), "--release", str(v1)]
    )
    found: dict[str, list[dict[str, float]]] = {"blue-green": [], "rolling": []}
    try:
        server.start()
        for _ in range(runs):
            for strategy in found:
                done = len(found["blue-green"]) + len(found["rolling"])
                target = v2 if done % 2 == 0 else v1
                found[strategy].append(measure_strategy(server, target, strategy))
    finally:
        server.stop()
    return found


def print_strategies(found: dict[str, list[dict[str, float]]], workers: int, ballast: int) -> None:
    runs = len(found["blue-green"])
    print(
        f"blue-green vs rolling (max surge 1), {workers} workers holding {ballast} MiB each, "
        f"no load, {runs} upgrades each, medians"
    )
    print(f"{'':24}{'blue-green':>12}{'rolling':>12}{'rolling / bg':>14}")
    for measure in ("swap (s)", "peak workers", "peak RSS (MiB)"):
        blue = statistics.median(r[measure] for r in found["blue-green"])
        rolling = statistics.median(r[measure] for r in found["rolling"])
        print(f"{measure:24}{blue:12.2f}{rolling:12.2f}{rolling / blue:13.2f}x")


def compile_bytecode(release: Path) -> None:
    """Write the .pyc of every module of the release, as pip does at install (uv does not)."""
    python = str(release / "venv" / "bin" / "python")
    where = [str(release / "venv" / "lib"), str(release / "app")]
    # Not checked: a package may ship a file that does not compile on this Python.
    subprocess.run([python, "-m", "compileall", "-q", *where], stdout=subprocess.DEVNULL)


def bytecode_note(args: argparse.Namespace) -> str:
    if args.bytecode:
        return "bytecode: compiled before the runs (--bytecode)"
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return "bytecode: none (PYTHONDONTWRITEBYTECODE is set), every boot compiles its modules"
    return "bytecode: written by the first boot of each release"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_arguments(parser)
    parser.add_argument(
        "--boots", type=int, default=10, help="uvicorn boots, and upgrades, without load"
    )
    parser.add_argument("--no-load", action="store_true", help="skip the swap under load")
    parser.add_argument(
        "--strategy-workers", type=int, default=4, help="workers for blue-green vs rolling"
    )
    parser.add_argument(
        "--ballast", type=int, default=64, help="MiB each worker holds, blue-green vs rolling"
    )
    parser.add_argument("--strategy-runs", type=int, default=3, help="upgrades of each strategy")
    parser.add_argument(
        "--bytecode", action="store_true", help="compile the releases' .pyc before measuring"
    )
    args = parser.parse_args()
    socket.setdefaulttimeout(30)
    with tempfile.TemporaryDirectory(prefix="beamdeploy-bench-") as tmp:
        work = Path(tmp)
        print("building releases v1 and v2 ...", flush=True)
        factory = ReleaseFactory(work / "releases", build_wheel(work / "wheel"))
        v1 = factory.make("v1", versioned_app("v1"))
        v2 = factory.make("v2", versioned_app("v2"))
        if args.bytecode:
            compile_bytecode(v1)
            compile_bytecode(v2)
        if not args.no_load:
            print("measuring beamdeploy upgrade ...", flush=True)
            beam = measure_beamdeploy(work, v1, v2, args)
            print("measuring gunicorn HUP (uvicorn-worker) ...", flush=True)
            hup = measure_gunicorn_hup(work, args)
        print(f"measuring {args.boots} standalone uvicorn boots of v1 ...", flush=True)
        boots = measure_boots(work, v1, args.boots)
        print(f"measuring {args.boots} upgrades without load ...", flush=True)
        swaps, timings = measure_swaps(work, v1, v2, args.boots)
        print("measuring blue-green and rolling upgrades ...", flush=True)
        ballast = f"BALLAST = bytes(range(256)) * ({args.ballast} * 4096)"  # resident MiB
        heavy1 = factory.make("v1-heavy", versioned_app("v1", extra=ballast))
        heavy2 = factory.make("v2-heavy", versioned_app("v2", extra=ballast))
        strategies = measure_strategies(
            work, heavy1, heavy2, args.strategy_workers, args.strategy_runs
        )
    if not args.no_load:
        print()
        print_under_load(beam, hup, args)
    print()
    print_boot_vs_swap(boots, swaps, timings)
    print(bytecode_note(args))
    print()
    print_strategies(strategies, args.strategy_workers, args.ballast)


if __name__ == "__main__":
    main()
