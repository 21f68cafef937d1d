"""No code from an artifact runs while it is installed, and never as root.

The host installs exactly the bundled wheels (no index, no dependencies
resolved, no direct reference followed); with `--user` the venv is built as
the workers' user and the release then taken over by the arbiter.
"""

from __future__ import annotations

import http.server
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.arbiter.test_user import NOBODY, python_nobody_can_run, shared_dir  # noqa: F401
from tests.support.artifacts import repack, wheel_bytes
from tests.support.server import ServerProcess

INSTALL = [sys.executable, "-m", "beamdeploy_asgi.releases.install"]


def pth_wheel(markers: Path) -> bytes:
    """A wheel whose .pth file, run at any interpreter start, leaves a marker naming its uid."""
    target = str(markers)
    code = f"import os; open(os.path.join({target!r}, f'ran-as-{{os.getuid()}}'), 'w').close()\n"
    return wheel_bytes("evilpth", "1.0", {"evilpth.pth": code}, [])


def install(artifact: Path, state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*INSTALL, str(artifact), "--state-dir", str(state), *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )


def outcome(done: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_installing_runs_no_code_of_the_artifact(artifacts, tmp_path: Path, installer: str):
    markers = tmp_path / "markers"
    markers.mkdir()
    artifact = repack(
        artifacts["1.0.0"],
        tmp_path / "evil.tar.gz",
        {"wheels/evilpth-1.0-py3-none-any.whl": pth_wheel(markers)},
    )
    done = install(artifact, tmp_path / "state", "--installer", installer)
    assert done.returncode == 0, done.stdout + done.stderr
    release = Path(outcome(done)["result"]["path"])
    assert list(release.glob("venv/lib/python*/site-packages/evilpth.pth")), "it was installed"
    assert list(markers.iterdir()) == [], "code from the artifact ran during the install"
    # The same file does run once the release's interpreter starts: the probe works.
    subprocess.run([str(release / "venv" / "bin" / "python"), "-c", "pass"], check=True)
    assert [p.name for p in markers.iterdir()] == [f"ran-as-{os.getuid()}"]


@pytest.fixture
def fetch_log() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server that records every request made to it."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_a_direct_reference_in_a_wheel_is_refused_and_never_fetched(
    artifacts, tmp_path: Path, fetch_log, installer: str
):
    url, seen = fetch_log
    requirement = f"evilpkg @ {url}/evilpkg-1.0.tar.gz"
    artifact = repack(
        artifacts["1.0.0"],
        tmp_path / "ref.tar.gz",
        {"wheels/fetcher-1.0-py3-none-any.whl": wheel_bytes("fetcher", "1.0", {}, [requirement])},
    )
    state = tmp_path / "state"
    done = install(artifact, state, "--installer", installer)
    assert done.returncode == 1
    error = outcome(done)["error"]
    assert f"fetcher-1.0-py3-none-any.whl requires '{requirement}': a direct reference" in error
    assert seen == [], "the installer fetched what the reference names"
    assert [p.name for p in (state / "releases").iterdir()] == [], "nothing left in the store"


def test_a_requirement_no_bundled_wheel_meets_is_refused_before_any_venv(artifacts, tmp_path):
    artifact = repack(
        artifacts["1.0.0"],
        tmp_path / "incomplete.tar.gz",
        {"wheels/needy-1.0-py3-none-any.whl": wheel_bytes("needy", "1.0", {}, ["absent>=2"])},
    )
    state = tmp_path / "state"
    done = install(artifact, state)
    assert done.returncode == 1
    assert outcome(done)["error"] == (
        "the artifact's wheels are not a complete set: needy-1.0-py3-none-any.whl requires "
        "absent>=2, and the artifact bundles no wheel of absent"
    )
    progress = [json.loads(line).get("progress", "") for line in done.stdout.splitlines()]
    assert not any("building the venv" in line for line in progress)
    assert list((state / "releases").iterdir()) == []


def test_files_outside_the_format_are_refused(artifacts, tmp_path: Path):
    markers = tmp_path / "markers"
    markers.mkdir()
    site = "venv/lib/python3.11/site-packages/x.pth"
    artifact = repack(
        artifacts["1.0.0"],
        tmp_path / "venv.tar.gz",
        {site: b"import os; open(%r, 'w').close()\n" % str(markers / "ran").encode()},
    )
    done = install(artifact, tmp_path / "state")
    assert done.returncode == 1
    assert site in outcome(done)["error"]
    assert list(markers.iterdir()) == []


def test_under_user_the_venv_is_built_as_that_user_and_sealed_as_root(shared_dir, artifacts):  # noqa: F811
    markers = shared_dir / "markers"
    markers.mkdir()
    markers.chmod(0o777)
    evil = repack(
        artifacts["1.1.0"],
        shared_dir / "evil-1.1.0.tar.gz",
        {"wheels/evilpth-1.0-py3-none-any.whl": pth_wheel(markers)},
    )
    evil.chmod(0o600)  # only root can read it: the arbiter unpacks it, not the workers' user
    server = ServerProcess(
        shared_dir / "server",
        [
            "--workers", "1", "--user", "nobody",
            "--release-python", python_nobody_can_run(),
            "--release", str(artifacts["1.0.0"]),
        ],
    )  # fmt: skip
    try:
        server.start()
        upgrade = server.cli("upgrade", str(evil))
        assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
        assert f"as uid {NOBODY.pw_uid}" in upgrade.stdout, "the venv was built as nobody"
        assert httpx.get(server.url).text.startswith("1.1.0 sample")
        # The .pth ran when the workers started, as nobody only.
        assert {p.name for p in markers.iterdir()} == {f"ran-as-{NOBODY.pw_uid}"}
        release = Path(server.status()["serving"]["release"]["path"])
        for path in [release, *release.rglob("*")]:
            info = path.lstat()
            assert info.st_uid == 0, f"{path} is not root's"
            if not stat.S_ISLNK(info.st_mode):
                assert info.st_gid == NOBODY.pw_gid
                assert not info.st_mode & 0o022, f"{path} is writable by group or others"
    finally:
        server.stop()


def test_every_hostile_artifact_leaves_the_serving_generation_untouched(
    serve, artifacts, tmp_path: Path, fetch_log, offline
):
    url, seen = fetch_log
    markers = tmp_path / "markers"
    markers.mkdir()
    base = artifacts["1.1.0"]
    hostile = {
        "direct reference": (
            {"wheels/f-1.0-py3-none-any.whl": wheel_bytes("f", "1.0", {}, [f"e @ {url}/e.tgz"])},
            "a direct reference",
        ),
        "incomplete": (
            {"wheels/n-1.0-py3-none-any.whl": wheel_bytes("n", "1.0", {}, ["absent"])},
            "bundles no wheel of absent",
        ),
        "venv member": (
            {"venv/lib/python3.11/site-packages/x.pth": b"import os; os.mkdir(%r)\n"
             % str(markers / "ran").encode()},
            "venv/lib/python3.11/site-packages/x.pth",
        ),
    }  # fmt: skip
    server = serve("--workers", "2", "--release", str(artifacts["1.0.0"]), env=offline)
    pids = server.serving_pids()
    for name, (extra, expected) in hostile.items():
        artifact = repack(base, tmp_path / name.replace(" ", "-") / "sample-1.1.0.tar.gz", extra)
        upgrade = server.cli("upgrade", str(artifact))
        assert upgrade.returncode == 1, name
        assert expected in upgrade.stderr, upgrade.stderr
        assert server.serving_pids() == pids, f"{name}: the serving generation changed"
        assert httpx.get(server.url).text.startswith("1.0.0 sample")
    assert seen == [] and list(markers.iterdir()) == []
    store = server.state_dir / "releases"
    assert [p.name for p in store.iterdir()] == ["sample-1.0.0"], "nothing of theirs was kept"
