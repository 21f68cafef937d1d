"""Artifact install time with uv and with pip, for a Starlette app.

Builds one artifact (a Starlette app, with beamdeploy-asgi bundled), then
installs it into fresh release stores, offline, with each installer.

    .venv/bin/python benchmarks/install.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from beamdeploy_asgi.releases.build import build  # noqa: E402
from tests.support.artifacts import write_project  # noqa: E402


def install_once(artifact: Path, installer: str, work: Path, run: int) -> float:
    state = work / f"state-{installer}-{run}"
    env = {
        **os.environ,
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "UV_INDEX_URL": "http://127.0.0.1:9/simple",
        "UV_CACHE_DIR": str(work / f"uv-cache-{run}"),
    }
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "beamdeploy_asgi.releases.install",
            str(artifact),
            "--state-dir",
            str(state),
            "--installer",
            installer,
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{installer} install failed:\n{done.stdout}{done.stderr}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="beamdeploy-install-bench-") as tmp:
        work = Path(tmp)
        print("building the artifact ...", flush=True)
        artifact = build(write_project(work, "1.0.0"), work / "dist", progress=lambda _: None)
        size = artifact.stat().st_size / 1e6
        results = {}
        for installer in ("uv", "pip"):
            print(
                f"installing with {installer} ({args.runs} runs, offline, cold cache) ...",
                flush=True,
            )
            results[installer] = [
                install_once(artifact, installer, work, run) for run in range(args.runs)
            ]
    print()
    print(f"artifact {artifact.name}: {size:.2f} MB")
    print(f"{'installer':<10}{'median (s)':>12}{'min (s)':>10}{'max (s)':>10}")
    for installer, times in results.items():
        print(
            f"{installer:<10}{statistics.median(times):>12.2f}{min(times):>10.2f}"
            f"{max(times):>10.2f}"
        )
    ratio = statistics.median(results["pip"]) / statistics.median(results["uv"])
    print(f"pip / uv: {ratio:.1f}x")


if __name__ == "__main__":
    main()
