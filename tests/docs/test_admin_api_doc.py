"""docs/admin-api.md's curl examples, run as written against a real server."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from tests.support.releases import ReleaseFactory, versioned_app
from tests.support.tokens import TOKEN

DOC = Path(__file__).resolve().parents[2] / "docs" / "admin-api.md"


def doc_script() -> str:
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    return "\n".join(block for block in blocks if "curl" in block or "URL=" in block)


def test_every_curl_example_runs(serve, release_factory: ReleaseFactory, artifacts, tmp_path):
    dist = tmp_path / "srv-dist"
    dist.mkdir()
    shutil.copy(artifacts["1.7.0"], dist / "myapp-1.7.0.tar.gz")
    release_dir = tmp_path / "srv-releases"
    factory = ReleaseFactory(release_dir, release_factory.wheel)
    v14 = factory.make("1.4.0", versioned_app("1.4.0"), dirname="1.4.0")
    for version in ("1.5.0", "1.6.0"):
        factory.make(version, versioned_app(version), dirname=version)
    server = serve(
        "--workers",
        "1",
        "--release",
        str(v14),
        "--release-dir",
        str(release_dir),
        env={"BEAMDEPLOY_TOKEN": TOKEN},
    )
    script = (
        doc_script()
        .replace("http://127.0.0.1:8000", server.url)
        .replace("/srv/myapp/releases", str(release_dir))
        .replace("/srv/myapp/dist", str(dist))
    )
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BEAMDEPLOY_TOKEN": TOKEN},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert '{"status":"serving","release":"1.4.0"}' in out
    assert '{"draining":true,"since":' in out and '{"draining":false,"since":null}' in out
    assert '"status":"draining","reason":"marked draining by the operator at ' in out
    assert "HTTP/1.1 202" in out and "location: /_deploy/deployments/" in out
    assert '"outcome":"succeeded"' in out
    assert "event: end" in out
    assert '"openapi":"3.0.3"' in out
    assert "beamdeploy_release_info{generation=" in out
    status = server.status()
    assert status["serving"]["release"]["version"] == "1.6.0"
    kinds = [d["kind"] for d in status["deployments"]]
    # upgrade 1.5.0, upload 1.7.0, upgrade 1.6.0, rollback (to 1.7.0), rollback --to 1.6.0,
    # a hot reload's dry run to 1.5.0
    assert kinds[:7] == [
        "hot-reload", "rollback", "rollback", "upgrade", "upgrade", "upgrade", "boot"
    ]  # fmt: skip
    assert "dry run: 1 modules, 0 functions change; nothing was applied" in out
    assert [d["to"]["version"] for d in status["deployments"][:6]] == [
        "1.5.0",
        "1.6.0",
        "1.7.0",
        "1.6.0",
        "1.7.0",
        "1.5.0",
    ]
    assert all(d["outcome"] == "succeeded" for d in status["deployments"])
