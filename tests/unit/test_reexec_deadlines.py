"""The old arbiter's side of a reexec against a successor that never serves (a `sleep`).

The successor's command is replaced; everything else (the process, its
signals, its reaping, the deadline) is what the arbiter does.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import types
from collections import deque
from pathlib import Path

import pytest

from beamdeploy_asgi.arbiter import reexec as reexec_module
from beamdeploy_asgi.arbiter.reexec import STARTUP_MARGIN, Reexec, ReexecRefused
from beamdeploy_asgi.releases.release import Release


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Store:
    def __init__(self, root: Path) -> None:
        self.history_file = root / "history"
        self.records: list[dict] = []

    def current(self) -> None:
        return None

    def append_history(self, record: dict) -> None:
        self.records.append(record)


def make_host(tmp_path: Path) -> types.SimpleNamespace:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    release = Release(name="demo", version="1.0", app="demo:app", python="/bin/false", path=None)
    return types.SimpleNamespace(
        log=logging.getLogger("test.reexec"),
        state_dir=str(tmp_path),
        LISTENERS=[listener],
        selector=selectors.DefaultSelector(),
        deployer=types.SimpleNamespace(current=None, previous_release=None, deployments=deque()),
        pool=types.SimpleNamespace(serving=types.SimpleNamespace(release=release), stopping=False),
        store=Store(tmp_path),
        app=types.SimpleNamespace(launch_cwd=str(tmp_path)),
        cfg=types.SimpleNamespace(boot_timeout=5.0),
        control=None,
        pidfile=None,
    )


@pytest.fixture
def rig(tmp_path, monkeypatch):
    monkeypatch.setattr(reexec_module, "successor_command", lambda: ["sleep", "60"])
    host = make_host(tmp_path)
    clock = Clock()
    reexec = Reexec(host, token=None, clock=clock)
    yield host, reexec, clock
    if reexec.successor is not None:
        reexec.successor.kill()
        os.waitpid(reexec.successor.pid, 0)
    host.LISTENERS[0].close()


def reap(reexec: Reexec) -> None:
    assert reexec.successor is not None
    pid, status = os.waitpid(reexec.successor.pid, 0)
    assert reexec.exited(pid, status)


def test_a_successor_that_never_serves_is_stopped_at_the_deadline(rig):
    host, reexec, clock = rig
    deployment = reexec.start()
    assert deployment.phase == "booting"
    assert reexec.busy() is not None
    clock.now += 5.0 + STARTUP_MARGIN - 1
    reexec.tick()
    assert deployment.outcome is None
    clock.now += 2
    reexec.tick()  # SIGTERM: `sleep` dies of it
    reap(reexec)
    assert deployment.outcome == "failed"
    assert deployment.error.startswith(
        f"the new arbiter (pid {deployment.details['new_arbiter_pid']}) did not serve within 35s"
    )
    assert host.store.records[-1]["outcome"] == "failed"
    assert reexec.busy() is None and reexec.current is None


def test_a_successor_that_ignores_sigterm_is_killed(rig, monkeypatch):
    host, reexec, clock = rig
    monkeypatch.setattr(
        reexec_module,
        "successor_command",
        lambda: ["sh", "-c", "trap '' TERM; echo started >&2; exec sleep 60"],
    )
    deployment = reexec.start()
    clock.now += 5.0 + STARTUP_MARGIN + 1
    reexec.tick()
    clock.now += reexec_module.KILL_GRACE + 1
    reexec.tick()
    reap(reexec)
    assert "did not serve within" in deployment.error


def test_a_second_reexec_or_one_during_a_deployment_is_refused(rig):
    host, reexec, clock = rig
    host.deployer.current = types.SimpleNamespace(id="d1", phase="booting")
    with pytest.raises(ReexecRefused, match="upgrade in progress: deployment d1"):
        reexec.start()
    host.deployer.current = None
    reexec.start()
    with pytest.raises(ReexecRefused) as refused:
        reexec.start()
    assert refused.value.code == "reexec_in_progress"


def test_nothing_serving_is_refused(rig):
    host, reexec, clock = rig
    host.pool.serving = None
    with pytest.raises(ReexecRefused, match="not serving"):
        reexec.start()


def test_a_successor_that_cannot_start_fails_at_once(rig, monkeypatch, tmp_path):
    host, reexec, clock = rig
    monkeypatch.setattr(reexec_module, "successor_command", lambda: [str(tmp_path / "nope")])
    deployment = reexec.start()
    assert deployment.outcome == "failed"
    assert deployment.error.startswith("the new arbiter could not start: ")
    assert reexec.current is None and reexec.successor is None
