"""Workers as another user (gunicorn's user/group) while the arbiter stays root.

These sessions and their CI run as root, and `nobody` is the other user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import ServerProcess
from tests.support.tokens import AUTH, TOKEN

NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory `nobody` can traverse (pytest's own temp dirs are root's, 0700)."""
    assert os.geteuid() == 0, "running workers as another user needs root"
    path = Path(tempfile.mkdtemp(prefix="beamdeploy-user-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def python_nobody_can_run() -> str:
    """This Python version, from an install `nobody` can run (not one under /root)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, shutil.which(version), f"/usr/bin/{version}"):
        if not candidate or not os.path.exists(candidate):
            continue
        try:
            ran = subprocess.run(
                [candidate, "-c", "pass"], user=NOBODY.pw_uid, capture_output=True, cwd="/"
            )
        except PermissionError:
            continue
        if ran.returncode == 0:
            return candidate
    raise AssertionError(f"no {version} on this machine that nobody can run")


def process_ids(pid: int) -> dict[str, list[int]]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            fields[key] = [int(v) for v in value.split()]
    return fields


def test_workers_run_as_the_configured_user(shared_dir, artifacts):
    server = ServerProcess(
        shared_dir / "server",
        [
            "--workers", "2", "--user", "nobody",  # and nobody's own group
            "--timeout", "3",  # the heartbeat file must be writable by the workers' user
            "--release-python", python_nobody_can_run(),
            "--release", str(artifacts["1.0.0"]),
        ],
        env={"BEAMDEPLOY_TOKEN": TOKEN},
    )  # fmt: skip
    try:
        server.start()
        assert httpx.get(server.url).text.startswith("1.0.0 sample")
        nobody = NOBODY.pw_uid, NOBODY.pw_gid
        for pid in server.serving_pids():
            ids = process_ids(pid)
            assert set(ids["Uid"]) == {nobody[0]} and set(ids["Gid"]) == {nobody[1]}
            assert ids["Groups"] == [nobody[1]], "no supplementary group of root is kept"

        state = server.state_dir
        assert stat.S_IMODE(state.stat().st_mode) == 0o711
        sock = (state / "control.sock").stat()
        assert stat.S_IMODE(sock.st_mode) == 0o600 and sock.st_uid == 0, "the arbiter's alone"
        uploads = (state / "uploads").stat()
        assert stat.S_IMODE(uploads.st_mode) == 0o700 and uploads.st_uid == nobody[0]
        for pid in server.serving_pids():
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert TOKEN.encode() not in environ and b"BEAMDEPLOY_TOKEN" not in environ

        # The app's user cannot deploy through the control socket, token or not.
        connect = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(13)\n"
            's.sendall(b\'{"op": "upgrade", "release": "/x"}\\n\')\n'
        )
        as_nobody = subprocess.run(
            [python_nobody_can_run(), "-c", connect, str(state / "control.sock")],
            user=NOBODY.pw_uid, group=NOBODY.pw_gid, extra_groups=[], cwd="/", timeout=60,
        )  # fmt: skip
        assert as_nobody.returncode == 13, "nobody may not even connect"

        # The worker writes the upload as nobody and forwards the request, with
        # the client's token, to the arbiter, which checks it.
        answer = httpx.post(
            server.url + "/_deploy/upgrade?wait=true",
            content=artifacts["1.1.0"].read_bytes(),
            headers={**AUTH, "Content-Type": "application/gzip"},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        assert httpx.get(server.url).text.startswith("1.1.0 sample")
        assert list((state / "uploads").iterdir()) == []
        for release in (state / "releases").iterdir():
            mode = release.stat()
            assert stat.S_IMODE(mode.st_mode) == 0o750 and mode.st_gid == nobody[1]
        time.sleep(4)
        assert "WORKER TIMEOUT" not in server.log()
    finally:
        server.stop()


def test_a_working_directory_the_user_cannot_reach_is_named(tmp_path, shared_dir, artifacts):
    server = ServerProcess(
        tmp_path / "server",  # under pytest's temp dir, which only root may enter
        [
            "--workers", "1", "--user", "nobody", "--release", str(artifacts["1.0.0"]),
            "--release-python", python_nobody_can_run(),
        ],
    )  # fmt: skip
    server.state_dir = shared_dir / "state"  # which the workers' user can reach
    server.command[server.command.index("--state-dir") + 1] = str(server.state_dir)
    try:
        server.start(expect_serving=False)
        assert server.proc.wait(60) != 0
    finally:
        server.stop()
    assert (
        f"cannot enter the working directory {server.workdir} as uid {NOBODY.pw_uid}: "
        "Permission denied" in server.log()
    )


@pytest.mark.parametrize(
    ("user", "reason"),
    [
        ("54321", "the workers would keep group root"),  # no passwd entry, so no group
        ("nobody", "must belong to the arbiter's user"),
    ],
)
def test_unsafe_ownership_is_refused(shared_dir, releases, user, reason):
    server = ServerProcess(
        shared_dir / "server",
        ["--workers", "1", "--user", user, "--release", str(releases["v1"])],
    )
    if user == "nobody":  # a state dir the workers' user owns could be used against root
        server.state_dir.mkdir(parents=True)
        os.chown(server.state_dir, NOBODY.pw_uid, NOBODY.pw_gid)
    try:
        server.start(expect_serving=False)
        assert server.proc.wait(60) == 1
    finally:
        server.stop()
    assert reason in server.log()


def test_a_state_dir_the_user_cannot_reach_is_refused_at_start(tmp_path, artifacts):
    server = ServerProcess(
        tmp_path / "server",  # its state dir is under pytest's temp dir, root's alone
        ["--workers", "1", "--user", "nobody", "--release", str(artifacts["1.0.0"])],
    )
    try:
        server.start(expect_serving=False)
        assert server.proc.wait(60) == 1
    finally:
        server.stop()
    assert (
        f"the workers' user (uid {NOBODY.pw_uid}) cannot enter {server.state_dir / 'releases'}"
        in server.log()
    )


def test_a_token_in_the_config_file_is_refused_with_user(shared_dir, releases):
    config = shared_dir / "beam.conf.py"
    config.write_text('admin_token = "config-file-token-0123456789"\n')
    server = ServerProcess(
        shared_dir / "server",
        ["--workers", "1", "--user", "nobody", "-c", str(config), "--release", str(releases["v1"])],
    )
    try:
        server.start(expect_serving=False)
        assert server.proc.wait(60) == 1
    finally:
        server.stop()
    log = server.log()
    assert "unsupported option admin_token in the config file" in log
    assert "config-file-token-0123456789" not in log


def test_a_state_dir_under_a_directory_the_workers_own_is_refused(shared_dir, releases):
    theirs = shared_dir / "app-home"  # say, the app user's home
    theirs.mkdir()
    os.chown(theirs, NOBODY.pw_uid, NOBODY.pw_gid)
    server = ServerProcess(
        shared_dir / "server",
        ["--workers", "1", "--user", "nobody", "--release", str(releases["v1"])],
    )
    server.state_dir = theirs / "state"
    server.command[server.command.index("--state-dir") + 1] = str(server.state_dir)
    try:
        server.start(expect_serving=False)
        assert server.proc.wait(60) == 1
    finally:
        server.stop()
    assert f"{theirs}, above the state dir, belongs to uid {NOBODY.pw_uid}" in server.log()
