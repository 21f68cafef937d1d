"""The README's demo command, run for real on a copy of example_app/.

What the page does in a browser is tests/browser/test_demo.py; this is the
rest: start.sh serves, the token it makes is the arbiter's alone, the demo
builds itself and the admin API deploys the build, and a restart resumes.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.demo_process import DemoProcess


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[DemoProcess]:
    process = DemoProcess(tmp_path)
    try:
        yield process
    finally:
        process.stop()
        print(f"--- {process.log_path} (last 80 lines) ---")
        print("\n".join(process.log().splitlines()[-80:]))


def test_start_sh_serves_the_demo_which_builds_itself_and_resumes_after_a_restart(
    demo: DemoProcess,
) -> None:
    url = demo.start()
    token = demo.token
    token_file = demo.dir / ".demo" / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert len(token) >= 16 and url == f"{demo.base}/#token={token}"

    page = httpx.get(demo.base + "/")
    assert page.status_code == 200 and "<title>BeamDeploy demo</title>" in page.text
    assert token not in page.text
    assert httpx.get(demo.base + "/static/demo.js").status_code == 200
    first = who(demo)
    assert (first["version"], first["generation"], first["label"], first["greeting"]) == (
        "1.0.0",
        "1",
        "blue",
        "Hello",
    )

    # The token works for the admin API; the workers never had it.
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.get(demo.base + "/_deploy/status").status_code == 401
    status = httpx.get(demo.base + "/_deploy/status", headers=auth).json()
    pids = [worker["pid"] for worker in status["serving"]["workers"]]
    assert len(pids) == 2 and first["pid"] in pids
    for pid in pids:
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not any(line.startswith(b"BEAMDEPLOY_TOKEN=") for line in environment)
        assert token.encode() not in b"\0".join(environment)

    # The build endpoint takes a JSON body naming one of its variants, and nothing else.
    builds = demo.base + "/api/builds"
    assert httpx.post(builds, content=b"kind=ship").status_code == 415
    assert httpx.post(builds, json={"kind": "ship", "label": "red"}).status_code == 400
    assert httpx.post(builds, json={"kind": "rm -rf"}).status_code == 400

    built = build(demo, {"kind": "ship", "label": "orange"})
    assert built == {
        "kind": "ship",
        "version": "1.1.0",
        "artifact": "demo-1.1.0.tar.gz",
        "label": "orange",
        "greeting": "Hello",
    }
    assert (demo.dir / ".demo" / "builds" / "demo-1.1.0.tar.gz").is_file()
    # A build alone deploys nothing; without the token the admin API deploys nothing either.
    assert who(demo)["version"] == "1.0.0"
    release = {"release": built["artifact"]}
    assert httpx.post(demo.base + "/_deploy/upgrade", json=release).status_code == 401
    done = httpx.post(
        demo.base + "/_deploy/upgrade?wait=true", json=release, headers=auth, timeout=180
    )
    assert done.status_code == 200, done.text
    assert done.json()["outcome"] == "succeeded"
    assert who(demo)["label"] == "orange"

    # Restarted, the demo boots what was deployed last, with the same token.
    demo.stop()
    assert demo.start() == url
    assert demo.token == token
    now = who(demo)
    assert (now["version"], now["label"], now["generation"]) == ("1.1.0", "orange", "1")
    assert demo.log().count("building the wheel of demo 1.0.0") == 1
    status = httpx.get(demo.base + "/_deploy/status", headers=auth).json()
    assert status["serving"]["release"]["version"] == "1.1.0"
    # The next build gets the next version.
    assert build(demo, {"kind": "hot"})["version"] == "1.2.0"


def who(demo: DemoProcess) -> dict[str, Any]:
    answer = httpx.get(demo.base + "/api/whoami")
    assert answer.status_code == 200
    me: dict[str, Any] = answer.json()
    return me


def build(demo: DemoProcess, body: dict[str, str]) -> dict[str, Any]:
    """POST /api/builds, read to its end: the build's output lines, then its result."""
    lines: list[dict[str, Any]] = []
    with httpx.stream("POST", demo.base + "/api/builds", json=body, timeout=180) as answer:
        assert answer.status_code == 200
        for line in answer.iter_lines():
            if line:
                lines.append(json.loads(line))
    assert lines and "done" in lines[-1], lines
    assert any("built " in message.get("line", "") for message in lines[:-1]), lines
    done: dict[str, Any] = lines[-1]["done"]
    return done
