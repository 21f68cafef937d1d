"""Bad input on every way in gets a clear error and changes nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat

import pytest

import beamdeploy_asgi
from beamdeploy_asgi.errors import ControlError


def raw_exchange(path, payload: bytes) -> list[dict]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(payload)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


def test_control_socket_is_private_and_survives_garbage(serve, releases):
    server = serve("--workers", "1", "--release", str(releases["v1"]))
    control = server.state_dir / "control.sock"
    assert stat.S_IMODE(os.stat(control).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(control).st_mode)
    cases = {
        b"not json\n": "bad_request",
        b"[1, 2]\n": "bad_request",
        b'{"no": "op"}\n': "bad_request",
        b'{"op": "explode"}\n': "unknown_op",
        b'{"op": "upgrade"}\n': "bad_request",
        b'{"op": "upgrade", "release": 42}\n': "bad_request",
        b'{"op": "deployment", "id": "nope"}\n': "not_found",
    }
    for payload, code in cases.items():
        (reply,) = raw_exchange(control, payload)
        assert reply["error"]["code"] == code, payload
    with socket.socket(socket.AF_UNIX) as sock:  # connects and leaves mid-line
        sock.connect(str(control))
        sock.sendall(b'{"op": "sta')
    assert server.status()["serving"]["release"]["version"] == "v1"
    assert server.proc.poll() is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: d, "has no beamdeploy-release.json"),
        (lambda d: (d / "beamdeploy-release.json").write_text("{oops") and d, "is not valid JSON"),
        (
            lambda d: (
                (d / "beamdeploy-release.json").write_text('{"name": "x", "version": "1"}') and d
            ),
            "'app' must be a non-empty string",
        ),
        (
            lambda d: (
                (d / "beamdeploy-release.json").write_text(
                    '{"name": "x", "version": "1", "app": "no colon"}'
                )
                and d
            ),
            "must look like 'module:attribute'",
        ),
        (
            lambda d: (
                (d / "beamdeploy-release.json").write_text(
                    '{"name": "x", "version": "1", "app": "m:app"}'
                )
                and d
            ),
            "has no executable venv/bin/python",
        ),
    ],
)
def test_invalid_releases_are_refused_by_name(serve, releases, tmp_path, make, message):
    server = serve("--workers", "1", "--release", str(releases["v1"]))
    bad = tmp_path / "bad-release"
    bad.mkdir()
    target = make(bad)
    shown = server.cli("upgrade", str(target))
    assert shown.returncode == 1
    assert message in shown.stderr, shown.stderr
    with pytest.raises(ControlError) as refused:
        beamdeploy_asgi.upgrade(target, state_dir=server.state_dir)
    assert refused.value.code == "invalid_release"
    status = server.status()
    assert status["serving"]["generation"] == 1 and status["deployments"][0]["kind"] == "boot"


def test_cli_without_an_arbiter_says_so(tmp_path):
    import subprocess
    import sys

    shown = subprocess.run(
        [sys.executable, "-m", "beamdeploy_asgi", "status", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 1
    assert "no beamdeploy arbiter listens on" in shown.stderr


def test_restart_after_a_crash_reuses_the_state_dir_and_refuses_a_twin(serve, releases):
    server = serve("--workers", "1", "--release", str(releases["v1"]))
    twin = serve("--workers", "1", "--release", str(releases["v1"]), launch=False)
    twin.state_dir = server.state_dir
    twin.command[twin.command.index("--state-dir") + 1] = str(server.state_dir)
    twin.start(expect_serving=False)
    assert twin.proc.wait(30) == 1
    assert "another beamdeploy arbiter already runs" in twin.log()

    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    assert (server.state_dir / "control.sock").exists()  # stale
    server.start()
    assert server.status()["serving"]["release"]["version"] == "v1"


def test_deeply_nested_json_is_refused_not_fatal(serve, releases):
    server = serve("--workers", "1", "--release", str(releases["v1"]))
    (reply,) = raw_exchange(server.state_dir / "control.sock", b"[" * 100_000 + b"\n")
    assert reply["error"]["code"] == "bad_request"
    assert server.proc.poll() is None
    assert server.status()["serving"]["release"]["version"] == "v1"


def test_only_uploads_may_be_removed_after_install(serve, releases, tmp_path):
    server = serve("--workers", "1", "--release", str(releases["v1"]))
    victim = tmp_path / "precious.tar.gz"
    victim.write_bytes(b"not yours")
    nested = server.state_dir / "uploads" / "sub"
    nested.mkdir()
    (nested / "x.tar.gz").write_bytes(b"x")
    # A release directory the workers' user made in the uploads dir is no upload.
    planted = server.state_dir / "uploads" / "planted"
    shutil.copytree(releases["v2"], planted, symlinks=True)
    for op in ("upgrade", "hot_reload"):
        for path in (victim, nested / "x.tar.gz", planted):
            request = {"op": op, "release": str(path), "remove_after": True}
            (reply,) = raw_exchange(
                server.state_dir / "control.sock", json.dumps(request).encode() + b"\n"
            )
            assert reply["error"]["code"] == "bad_request", (op, path)
    assert victim.read_bytes() == b"not yours"
    assert server.status()["deployments"][0]["kind"] == "boot", "nothing was deployed"


def test_missing_release_paths_say_they_do_not_exist(serve, releases, tmp_path):
    server = serve("--workers", "1", "--release", str(releases["v1"]))
    missing = tmp_path / "no" / "such" / "file.tar.gz"
    upgrade = server.cli("upgrade", str(missing))
    assert upgrade.returncode == 1
    assert f"release '{missing}' does not exist" in upgrade.stderr, upgrade.stderr

    first = serve("--workers", "1", "--release", str(missing), launch=False)
    first.start(expect_serving=False)
    assert first.proc.wait(30) == 1
    assert f"Error: release '{missing}' does not exist" in first.log()
