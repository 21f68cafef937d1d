"""The pure pieces of a reexec: the spec, the successor's environment, its output, the pidfile."""

from __future__ import annotations

import os
import signal
import socket
import stat
import sys

import pytest

from beamdeploy_asgi.arbiter import systemd_notify
from beamdeploy_asgi.arbiter.reexec_channel import Channel
from beamdeploy_asgi.arbiter.reexec_spec import (
    REEXEC_ENV,
    OutputTail,
    ReexecSpec,
    describe_exit,
    peek_spec,
    successor_command,
    successor_environment,
    write_pidfile,
)
from beamdeploy_asgi.arbiter.rollback import rollback_target
from beamdeploy_asgi.protocol import CONTROL_ENV, TOKEN_ENV

SPEC = ReexecSpec(
    parent=100,
    listeners=[5, 6],
    channel_fd=7,
    stderr_fd=8,
    control_path="/srv/state/control.next.sock",
    deployment_id="abc",
    release="/srv/state/releases/demo-1.0",
    previous_release=None,
)


def test_the_spec_travels_in_the_environment():
    env = successor_environment({"PATH": "/bin"}, SPEC, token=None)
    assert peek_spec(env) == SPEC
    assert peek_spec({}) is None


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"parent": 1}',
        SPEC.to_json().replace('"listeners": [5, 6]', '"listeners": []'),
        SPEC.to_json().replace('"channel_fd": 7', '"channel_fd": 1'),
        SPEC.to_json().replace('"listeners": [5, 6]', '"listeners": ["5"]'),
    ],
)
def test_a_spec_that_is_not_one_is_refused(text):
    with pytest.raises(ValueError, match=REEXEC_ENV):
        peek_spec({REEXEC_ENV: text})


def test_the_successor_gets_the_token_back_and_nothing_of_the_old_start():
    old = {
        "PATH": "/bin",
        "LISTEN_FDS": "2",
        "LISTEN_PID": "9",
        CONTROL_ENV: "/x/control.sock",
        "NOTIFY_SOCKET": "/run/systemd/notify",
    }
    env = successor_environment(old, SPEC, token="t" * 32)
    assert env[TOKEN_ENV] == "t" * 32
    assert env["NOTIFY_SOCKET"] == "/run/systemd/notify"
    assert "LISTEN_FDS" not in env and "LISTEN_PID" not in env and CONTROL_ENV not in env
    assert TOKEN_ENV not in successor_environment(old, SPEC, token=None)


def test_the_successor_runs_this_interpreter_with_its_own_options_and_arguments():
    assert successor_command() == [sys.executable, *sys.orig_argv[1:]]


def test_the_output_tail_keeps_the_last_lines_cut_to_a_width():
    tail = OutputTail(lines=3, width=10)
    tail.feed(b"one\n\ntwo\nthr")
    tail.feed(b"ee\nfour is a long line\nfi")
    assert tail.text() == "two\nthree\nfour is a ..."
    tail.close()
    assert tail.text() == "three\nfour is a ...\nfi"


def test_the_pidfile_is_replaced_whole(tmp_path):
    path = tmp_path / "arbiter.pid"
    path.write_text("100\n")
    write_pidfile(str(path), 4242)
    assert path.read_text() == "4242\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["arbiter.pid"]


def test_an_exit_is_described():
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"


def test_main_pid_goes_to_the_notify_socket_when_there_is_one(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd_notify.main_pid(42) is False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        assert systemd_notify.main_pid(42) is True
        assert listener.recv(100) == b"MAINPID=42"
    name = f"@beamdeploy-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name[1:])
        monkeypatch.setenv("NOTIFY_SOCKET", name)
        assert systemd_notify.notify("READY=1") is True
        assert listener.recv(100) == b"READY=1"
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody"))
    assert systemd_notify.main_pid(42) is False


class Owner:
    pass


def test_the_channel_carries_lines_and_says_when_the_other_side_is_gone():
    import selectors

    selector = selectors.DefaultSelector()
    left, right = socket.socketpair()
    ours, theirs = Channel(left, selector, Owner()), Channel(right, selector, Owner())
    assert ours.send({"event": "ready", "pid": 7})
    assert theirs.receive() == [{"event": "ready", "pid": 7}]
    assert theirs.receive() == []
    right_raw = socket.socket(fileno=os.dup(right.fileno()))
    right_raw.sendall(b"not json\n")
    assert ours.receive() is None
    theirs.close()
    right_raw.close()
    assert ours.receive() is None
    assert not ours.send({"event": "late"})
    ours.close()


def test_a_reexec_record_is_no_previous_release_for_a_rollback():
    records = [
        {
            "kind": "reexec",
            "outcome": "succeeded",
            "to": {"path": "/r/2"},
            "from": {"path": "/r/2"},
        },
        {
            "kind": "upgrade",
            "outcome": "succeeded",
            "to": {"path": "/r/2"},
            "from": {"path": "/r/1"},
        },
    ]
    with pytest.raises(LookupError):  # /r/1 is not a directory here
        rollback_target(None, serving="/r/2", records=records, kept=[])
    records[1]["from"] = {"path": "/"}
    assert rollback_target(None, serving="/r/2", records=records, kept=[]) == "/"
