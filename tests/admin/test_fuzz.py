"""The admin API fuzzed from its own OpenAPI schema, against a running server."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.tokens import TOKEN


def test_schemathesis_finds_no_server_error(serve, releases, tmp_path: Path):
    # An empty release directory: the fuzzer may post any path, and none of
    # them may deploy anything.
    empty = tmp_path / "releases"
    empty.mkdir()
    server = serve(
        "--workers",
        "2",
        "--release",
        str(releases["v1"]),
        "--release-dir",
        str(empty),
        env={"BEAMDEPLOY_TOKEN": TOKEN},
    )
    before = server.status()["serving"]
    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    run = subprocess.run(
        [
            schemathesis,
            "run",
            f"{server.url}/_deploy/openapi.json",
            "-H",
            f"Authorization: Bearer {TOKEN}",
            # Every check but positive_data_acceptance: a well-formed path to a
            # directory that is no release is refused with 422, by design.
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            "40",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    assert "passed" in run.stdout
    after = server.wait_for(lambda s: not s["upgrading"], timeout=120)  # installs may still run
    assert server.proc.poll() is None
    assert after["serving"] == before
    # Uploads of random bytes may start installs; none may have succeeded.
    assert [d for d in after["deployments"] if d["outcome"] == "succeeded"] == [
        after["deployments"][-1]
    ]
    assert after["deployments"][-1]["kind"] == "boot"
    assert not list((server.state_dir / "uploads").iterdir()), "no upload is left behind"
