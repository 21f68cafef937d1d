"""docs/admin-api.md's curl examples, run as written against a real server."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.admin.test_admin_api import TOKEN
from tests.support.releases import ReleaseFactory, versioned_app

DOC = Path(__file__).resolve().parents[2] / "docs" / "admin-api.md"


def doc_script() -> str:
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    return "\n".join(block for block in blocks if "curl" in block or "URL=" in block)


def test_every_curl_example_runs(serve, release_factory: ReleaseFactory, tmp_path: Path):
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
    assert '{"status":"serving"}' in out
    assert "HTTP/1.1 202" in out and "location: /_deploy/deployments/" in out
    assert '"outcome":"succeeded"' in out
    assert "event: end" in out
    assert '"openapi":"3.0.3"' in out
    assert server.status()["serving"]["release"]["version"] == "1.6.0"
