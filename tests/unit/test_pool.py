"""The worker pool's bookkeeping, with stand-in workers and a fake clock.

A stand-in worker is a real `sleep` process (so signals go to a process of
ours) with a real socketpair as its status channel; the test writes what a
worker would send and reads what the pool answers. A recording listener
stands in for the deployer.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import socket
import subprocess
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from beamdeploy_asgi.arbiter.generation import (
    Generation,
    GenerationState,
    WorkerProcess,
    WorkerState,
)
from beamdeploy_asgi.arbiter.pool import STOP_TIMEOUT, SpawnContext, WorkerPool
from beamdeploy_asgi.releases.release import Release

BOOT_TIMEOUT = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


class Listener:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.exits: list[int] = []
        self.reloads: list[tuple[int, dict[str, Any]]] = []
        self.responses: list[int] = []

    def worker_imported(self, generation: Generation) -> None:
        self.events.append(("imported", generation.number))

    def worker_changed(self, generation: Generation) -> None:
        self.events.append(("changed", generation.number))

    def worker_failed(self, generation: Generation, cause: str, phase: str) -> None:
        self.events.append(("failed", generation.number, cause, phase))

    def generation_ended(self, generation: Generation) -> None:
        self.events.append(("ended", generation.number))

    def worker_exited(self, generation: Generation, pid: int) -> None:
        self.exits.append(pid)

    def worker_reloaded(self, generation: Generation, pid: int, answer: dict[str, Any]) -> None:
        self.reloads.append((pid, answer))

    def worker_responses(self, generation: Generation) -> None:
        self.responses.append(generation.number)


class Heartbeat:
    def close(self) -> None:
        pass


class Rig:
    def __init__(self) -> None:
        self.clock = Clock()
        self.selector = selectors.DefaultSelector()
        self.listener = Listener()
        self.exits: list[int] = []
        cfg = SimpleNamespace(
            boot_timeout=BOOT_TIMEOUT,
            graceful_timeout=10,
            child_exit=lambda arbiter, worker: self.exits.append(worker.pid),
            pre_fork=lambda arbiter, worker: None,
        )
        self.pool = WorkerPool(
            context=SpawnContext(cfg, [], "/", [], "/nonexistent.sock", admin=False),
            selector=self.selector,
            log=logging.getLogger("test.pool"),
            hooks_arg=None,
            on_admin_request=lambda worker, message: None,
            size=2,
            clock=self.clock,
        )
        self.pool.listener = self.listener
        self.processes: list[subprocess.Popen[bytes]] = []
        self.ends: dict[int, socket.socket] = {}

    def worker(self, generation: Generation) -> WorkerProcess:
        """A stand-in worker of `generation`, registered like a spawned one."""
        proc = subprocess.Popen(["sleep", "60"])
        self.processes.append(proc)
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        self.ends[proc.pid] = theirs
        worker = WorkerProcess(
            generation=generation,
            age=len(self.processes),
            proc=proc,
            channel=ours,
            heartbeat=Heartbeat(),  # type: ignore[arg-type]
            started=self.clock(),
        )
        generation.workers[proc.pid] = worker
        self.selector.register(ours, selectors.EVENT_READ, worker)
        worker.selector = self.selector
        return worker

    def says(self, worker: WorkerProcess, raw: bytes) -> None:
        self.ends[worker.pid].sendall(raw)
        self.pool.read(worker)

    def said(self, worker: WorkerProcess, **message: Any) -> None:
        self.says(worker, json.dumps(message).encode() + b"\n")

    def heard(self, worker: WorkerProcess) -> list[dict[str, Any]]:
        end = self.ends[worker.pid]
        end.setblocking(False)
        try:
            data = end.recv(65536)
        except BlockingIOError:
            return []
        return [json.loads(line) for line in data.splitlines()]

    def exit(self, worker: WorkerProcess, code: int = 0) -> None:
        worker.proc.kill()
        worker.proc.wait()
        self.pool.exited(worker.pid, code << 8)

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for end in self.ends.values():
            end.close()
        self.selector.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    made = Rig()
    try:
        yield made
    finally:
        made.close()


def generation(rig: Rig) -> Generation:
    release = Release(name="demo", version="2.0", app="demo.app:app", python="/bin/false")
    return rig.pool.create(release)


def test_ready_and_imported_reach_the_deployer_with_the_app_file(rig):
    new = generation(rig)
    worker = rig.worker(new)
    rig.said(worker, event="imported")
    rig.said(worker, event="ready", protocol=1, app_file="/r/demo/app.py")
    assert worker.state is WorkerState.READY and worker.app_file == "/r/demo/app.py"
    assert rig.listener.events == [("imported", new.number), ("changed", new.number)]
    assert rig.heard(worker) == [], "not told to serve: the deployer decides"

    rig.pool.serve(new)
    assert rig.heard(worker) == [{"cmd": "serve"}]
    rig.said(worker, event="serving")
    assert worker.state is WorkerState.SERVING and worker.serving_since == rig.clock.now


def test_a_replacement_in_the_serving_generation_serves_at_once(rig):
    serving = generation(rig)
    rig.pool.promote(serving)
    worker = rig.worker(serving)
    rig.said(worker, event="ready", protocol=1)
    assert rig.heard(worker) == [{"cmd": "serve"}]
    assert rig.listener.events == [], "the serving generation is no deployment's business"


def test_a_protocol_mismatch_fails_the_worker_naming_both_versions(rig):
    new = generation(rig)
    worker = rig.worker(new)
    rig.said(worker, event="ready", protocol=99)
    (event,) = rig.listener.events
    assert event[0] == "failed" and event[3] == "boot"
    assert "99" in event[2] and "1" in event[2]
    assert worker.state is WorkerState.STOPPING
    assert worker.proc.wait(timeout=10) == -signal.SIGTERM


def test_a_failed_import_is_reported_as_such_with_its_traceback(rig):
    new = generation(rig)
    worker = rig.worker(new)
    rig.said(
        worker,
        event="failed",
        phase="import",
        error="could not import demo.app:app: ModuleNotFoundError",
        traceback="Traceback ...",
    )
    assert rig.listener.events == [
        ("failed", new.number, "could not import demo.app:app: ModuleNotFoundError\n"
         "Traceback ...", "import"),
    ]  # fmt: skip
    assert worker.state is WorkerState.STOPPING
    assert worker.deadline == rig.clock.now + STOP_TIMEOUT, "it exits by itself, or is killed"


def test_a_line_past_the_cap_or_not_json_rejects_the_worker(rig):
    new = generation(rig)
    flooder, junk = rig.worker(new), rig.worker(new)
    rig.ends[flooder.pid].setblocking(False)
    sent = 0
    while sent < 2 * 1024 * 1024:  # past the 1 MiB cap, fed as it arrives
        try:
            sent += rig.ends[flooder.pid].send(b"x" * 65536)
        except BlockingIOError:
            pass
        rig.pool.read(flooder)
        if flooder.failure:
            break
    assert "sent a line longer than 1024 KiB on its status channel" in flooder.failure
    rig.says(junk, b"[1, 2]\n")
    assert junk.failure.endswith("sent a status line that is not a JSON object")
    assert [e[0] for e in rig.listener.events] == ["failed", "failed"]


def test_boot_timeout_on_the_fake_clock(rig):
    new = generation(rig)
    worker = rig.worker(new)
    rig.clock.now += BOOT_TIMEOUT
    rig.pool.check(heartbeat_timeout=0)
    assert rig.listener.events == []
    rig.clock.now += 0.01
    rig.pool.check(heartbeat_timeout=0)
    (event,) = rig.listener.events
    assert event[2] == f"worker {worker.pid} did not report READY within 30s (boot timeout)"
    assert worker.state is WorkerState.STOPPING

    rig.clock.now += STOP_TIMEOUT + 0.01
    rig.pool.check(heartbeat_timeout=0)
    assert worker.proc.wait(timeout=10) in (-signal.SIGTERM, -signal.SIGKILL)


def test_an_exit_before_ready_fails_the_boot_and_the_failed_generation_ends(rig):
    new = generation(rig)
    first, second = rig.worker(new), rig.worker(new)
    rig.exit(first, code=3)
    cause = f"worker {first.pid} exited with code 3 before it was ready"
    assert rig.listener.events == [("failed", new.number, cause, "boot"), ("changed", new.number)]
    assert rig.exits == [first.pid], "gunicorn's child_exit hook ran"
    rig.pool.stop(new, "boom")
    assert new.state is GenerationState.FAILED and second.state is WorkerState.STOPPING
    rig.exit(second)
    assert rig.listener.events[-1] == ("ended", new.number)
    assert new not in rig.pool.generations


def test_a_drained_generation_stops_when_its_last_worker_exits(rig):
    old = generation(rig)
    rig.pool.promote(old)
    workers = [rig.worker(old), rig.worker(old)]
    for worker in workers:
        rig.said(worker, event="ready", protocol=1)
        rig.said(worker, event="serving")
    rig.pool.promote(generation(rig))
    rig.pool.drain(old)
    assert all(w.state is WorkerState.DRAINING for w in workers)
    assert rig.pool.still_accepting(old) == 2
    rig.said(workers[0], event="draining")
    assert rig.pool.still_accepting(old) == 1
    assert rig.listener.events[-1] == ("changed", old.number)
    for worker in workers:
        rig.exit(worker)
    assert old.state is GenerationState.STOPPED and old.stopped_at is not None
    assert rig.listener.events[-1] == ("ended", old.number)


def test_crashes_of_the_serving_generation_back_off(rig):
    serving = generation(rig)
    rig.pool.promote(serving)
    delays = []
    for _ in range(4):
        worker = rig.worker(serving)
        rig.said(worker, event="ready", protocol=1)
        rig.said(worker, event="serving")
        rig.exit(worker, code=1)
        delays.append(serving.respawn_at - rig.clock.now)
    assert delays == [0.0, 0.5, 1.0, 2.0]
    assert serving.state is GenerationState.SERVING, "a crash never ends the serving generation"


def test_hot_reload_members_commands_and_answers(rig):
    serving = generation(rig)
    rig.pool.promote(serving)
    old, new = rig.worker(serving), rig.worker(serving)
    rig.said(old, event="ready", protocol=1)  # a beamdeploy-asgi without hot reload
    rig.said(old, event="serving")
    rig.said(new, event="ready", protocol=1, hot_reload=1)
    rig.heard(old), rig.heard(new)
    pids, problem = rig.pool.reload_members(serving)
    assert pids == set() and f"worker {old.pid} runs a beamdeploy-asgi that cannot" in problem
    assert "upgrade" in problem
    rig.said(new, event="serving")
    old.hot_reload = 1
    pids, problem = rig.pool.reload_members(serving)
    assert pids == {old.pid, new.pid} and problem is None

    rig.pool.send_reload(serving, {new.pid}, {"id": 7, "step": "prepare"})
    assert rig.heard(new) == [{"cmd": "reload", "id": 7, "step": "prepare"}]
    assert rig.heard(old) == []
    rig.said(new, event="reload", id=7, step="prepare", ok=True, app_file="/r/2/main.py")
    assert rig.listener.reloads == [
        (new.pid, {"event": "reload", "id": 7, "step": "prepare", "ok": True,
                   "app_file": "/r/2/main.py"}),
    ]  # fmt: skip
    assert new.app_file == "/r/2/main.py"

    rig.pool.hold_spawns = True
    rig.exit(old, code=1)
    assert rig.listener.exits == [old.pid]
    rig.pool.manage()  # no worker of the old code starts during a reload
    assert list(serving.workers) == [new.pid]


def test_a_reaped_pid_that_is_no_worker_is_not_ours(rig):
    assert rig.pool.exited(os.getpid(), 0) is False


def test_a_hot_reloaded_generation_keeps_the_release_it_started_from_in_use(rig):
    first = Release(name="demo", version="1.0", app="main:app", python="/x", path="/r/1.0")
    then = Release(name="demo", version="1.1", app="main:app", python="/x", path="/r/1.1")
    serving = rig.pool.create(first)
    rig.pool.switch_release(serving, then)
    assert serving.release is then
    assert rig.pool.releases_in_use() == {"/r/1.0", "/r/1.1"}, "its interpreter is still 1.0's"


def serving_workers(rig: Rig, generation: Generation, count: int) -> list[WorkerProcess]:
    workers = [rig.worker(generation) for _ in range(count)]
    for worker in workers:
        rig.said(worker, event="ready", protocol=1, deploy=1)
        rig.said(worker, event="serving")
        rig.heard(worker)
    return workers


def test_the_deploy_capability_is_taken_only_as_an_int(rig):
    new = generation(rig)
    old, fake, current = rig.worker(new), rig.worker(new), rig.worker(new)
    rig.said(old, event="ready", protocol=1)
    rig.said(fake, event="ready", protocol=1, deploy=True)
    rig.said(current, event="ready", protocol=1, deploy=1)
    assert [old.deploy, fake.deploy, current.deploy] == [0, 0, 1]


def test_response_counts_are_validated_and_summed_over_live_and_exited_workers(rig):
    new = generation(rig)
    rig.pool.promote(new)
    first, second = serving_workers(rig, new, 2)
    assert rig.pool.responses(new) == {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0}

    rig.said(first, event="responses", **{"1xx": 0, "2xx": 90, "3xx": 1, "4xx": 2, "5xx": 3})
    assert first.responses == {"1xx": 0, "2xx": 90, "3xx": 1, "4xx": 2, "5xx": 3}
    assert rig.listener.responses == [new.number], "the serving generation's counts too"
    # Anything but a count is ignored, key by key; the last good count stays.
    junk = {"2xx": True, "3xx": -1, "4xx": 2**53, "5xx": 4.0, "6xx": 7, "1xx": "5"}
    rig.said(first, event="responses", **junk)
    assert first.responses == {"1xx": 0, "2xx": 90, "3xx": 1, "4xx": 2, "5xx": 3}
    rig.said(first, event="responses", **{"4xx": 2**53 - 1, "2xx": None})
    assert first.responses["4xx"] == 2**53 - 1 and first.responses["2xx"] == 90
    rig.said(first, event="responses", **{"4xx": 2})
    rig.said(second, event="responses", **{"2xx": 10, "5xx": 1})
    assert len(rig.listener.responses) == 5

    assert rig.pool.responses(new) == {"1xx": 0, "2xx": 100, "3xx": 1, "4xx": 2, "5xx": 4}
    rig.exit(first, code=1)  # a crash does not take its 5xx with it
    assert rig.pool.responses(new) == {"1xx": 0, "2xx": 100, "3xx": 1, "4xx": 2, "5xx": 4}
    replacement = serving_workers(rig, new, 1)[0]
    rig.said(replacement, event="responses", **{"5xx": 6})
    assert rig.pool.responses(new) == {"1xx": 0, "2xx": 100, "3xx": 1, "4xx": 2, "5xx": 10}
    other = generation(rig)
    assert rig.pool.responses(other)["5xx"] == 0, "counted by generation"


def test_pause_and_resume_go_to_serving_workers_and_come_back_for_any_generation(rig):
    serving = generation(rig)
    rig.pool.promote(serving)
    first, second = serving_workers(rig, serving, 2)
    booting = rig.worker(serving)
    rig.said(booting, event="ready", protocol=1, deploy=1)
    rig.heard(booting)  # its serve order: not serving yet
    rig.listener.events.clear()

    rig.pool.pause(serving)
    assert rig.heard(first) == rig.heard(second) == [{"cmd": "pause"}]
    assert rig.heard(booting) == []
    rig.said(first, event="paused")
    assert first.paused and not second.paused
    assert rig.pool.paused(serving) == 1
    assert rig.listener.events == [("changed", serving.number)], "even the serving generation"
    rig.said(second, event="paused")
    rig.said(second, event="paused")  # a second pause answers again
    assert rig.pool.paused(serving) == 2 and len(rig.listener.events) == 3

    rig.pool.resume(serving)
    assert rig.heard(first) == rig.heard(second) == [{"cmd": "resume"}]
    rig.said(first, event="resumed")
    assert not first.paused and rig.pool.paused(serving) == 1
    assert rig.listener.events[-1] == ("changed", serving.number)
    rig.exit(second)
    assert rig.pool.paused(serving) == 0, "only live workers count"


def test_the_private_listener_is_opened_before_start_and_closed_with_its_generation(rig):
    new = generation(rig)
    url = rig.pool.open_private(new)
    sock = new.private_listener
    assert sock is not None and url == f"http://127.0.0.1:{sock.getsockname()[1]}"
    assert not sock.get_inheritable(), "only the workers it is passed to get it"
    assert rig.pool.open_private(new) == url, "opened once"
    with socket.create_connection(sock.getsockname(), timeout=5):
        accepted, _ = sock.accept()  # a listening socket on loopback
        accepted.close()
    rig.pool.close_private(new)
    assert new.private_listener is None and sock.fileno() == -1
    rig.pool.close_private(new)  # closing twice is harmless

    started = generation(rig)
    rig.worker(started)
    with pytest.raises(RuntimeError, match="has workers already"):
        rig.pool.open_private(started)

    failed = generation(rig)
    rig.pool.open_private(failed)
    worker = rig.worker(failed)
    rig.pool.stop(failed, "the smoke check failed")
    assert failed.private_listener is None, "closed when the generation is stopped"
    rig.exit(worker)

    drained = generation(rig)
    rig.pool.open_private(drained)
    rig.pool.promote(drained)
    (worker,) = serving_workers(rig, drained, 1)
    rig.pool.promote(generation(rig))
    rig.pool.drain(drained)
    assert drained.private_listener is not None, "still served while it drains"
    rig.exit(worker)
    assert drained.private_listener is None and drained.state is GenerationState.STOPPED
