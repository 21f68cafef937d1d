"""Pause, resume, response counts and the private listener, with real workers.

No deployer feature uses them yet, so the test is the arbiter: it owns the
listening socket, runs the real WorkerPool (which spawns real workers, here
from this environment) and pumps their status channels itself.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from beamdeploy_asgi import config as config_module
from beamdeploy_asgi.arbiter.generation import Generation, WorkerProcess, WorkerState
from beamdeploy_asgi.arbiter.pool import SpawnContext, WorkerPool
from beamdeploy_asgi.config import Configuration
from beamdeploy_asgi.protocol import DEPLOY_VERSION
from beamdeploy_asgi.releases.release import Release
from tests.worker.test_drain import raw_get

APP = """
import asyncio
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

IN_FLIGHT = 0

async def home(request):
    return PlainTextResponse("home")

async def slow(request):
    global IN_FLIGHT
    IN_FLIGHT += 1
    try:
        await asyncio.sleep(float(request.query_params["s"]))
    finally:
        IN_FLIGHT -= 1
    return PlainTextResponse("slow")

async def in_flight(request):
    return PlainTextResponse(str(IN_FLIGHT))

async def missing(request):
    return PlainTextResponse("no", status_code=404)

async def fail(request):
    raise RuntimeError("boom")  # Starlette answers 500 itself

routes = [Route("/", home), Route("/slow", slow), Route("/in-flight", in_flight),
          Route("/missing", missing), Route("/fail", fail)]
starlette_app = Starlette(routes=routes)

async def app(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/raise":
        raise RuntimeError("before any response")  # uvicorn answers 500
    await starlette_app(scope, receive, send)
"""


class Listener:
    """Stands in for the deployer: records what the pool reports."""

    def __init__(self) -> None:
        self.changed = 0
        self.responses = 0

    def worker_changed(self, generation: Generation) -> None:
        self.changed += 1

    def worker_responses(self, generation: Generation) -> None:
        self.responses += 1

    def worker_imported(self, generation: Generation) -> None:
        pass

    def worker_failed(self, generation: Generation, cause: str, phase: str) -> None:
        raise AssertionError(f"worker failed ({phase}): {cause}")

    def generation_ended(self, generation: Generation) -> None:
        pass

    def worker_reloaded(self, generation: Generation, pid: int, answer: dict[str, Any]) -> None:
        pass

    def worker_exited(self, generation: Generation, pid: int) -> None:
        pass


class Arbiter:
    """The pool and the loop of an arbiter, run by the test."""

    def __init__(self, workdir: Path, argv: list[str]) -> None:
        (workdir / "app").mkdir()
        (workdir / "app" / "main.py").write_text(APP)
        self.release = Release.from_environment("main:app", (str(workdir / "app"),))
        self.public = socket.socket()
        self.public.bind(("127.0.0.1", 0))
        self.public.listen(16)
        self.port = self.public.getsockname()[1]
        self.cfg = Configuration(argv).cfg
        self.selector = selectors.DefaultSelector()
        self.listener = Listener()
        self.pool = WorkerPool(
            context=SpawnContext(
                self.cfg, argv, str(workdir), [self.public], str(workdir / "control.sock"), False
            ),
            selector=self.selector,
            log=logging.getLogger("test.pause"),
            hooks_arg=None,
            on_admin_request=lambda worker, message: None,
            size=1,
        )
        self.pool.listener = self.listener

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pump(self, condition: Callable[[], bool], timeout: float = 30.0) -> None:
        """Run the arbiter's loop until `condition` holds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s")
            for key, events in self.selector.select(0.05):
                worker = key.data
                if events & selectors.EVENT_WRITE:
                    worker.flush()
                if events & selectors.EVENT_READ:
                    self.pool.read(worker)
            for worker in self.pool.workers():
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
                if pid:
                    self.pool.exited(pid, status)

    def boot(self, *, private: bool = False) -> tuple[Generation, WorkerProcess, str | None]:
        generation = self.pool.create(self.release)
        url = self.pool.open_private(generation) if private else None
        assert self.pool.start(generation) is None
        (worker,) = generation.workers.values()
        self.pump(lambda: worker.state is WorkerState.READY)
        return generation, worker, url

    def serve(self, generation: Generation, worker: WorkerProcess) -> None:
        self.pool.promote(generation)
        self.pool.serve(generation)
        self.pump(lambda: worker.state is WorkerState.SERVING)

    def close(self) -> None:
        for worker in self.pool.workers():
            if worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait()
            worker.close()
        for generation in list(self.pool.generations):
            self.pool.close_private(generation)
        self.selector.close()
        self.public.close()


@pytest.fixture
def arbiter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Arbiter]]:
    monkeypatch.setattr(config_module, "RUNNING", config_module.RUNNING)  # reading sets it
    made: list[Arbiter] = []

    def make(*argv: str) -> Arbiter:
        made.append(Arbiter(tmp_path, list(argv)))
        return made[-1]

    yield make
    for each in made:
        each.close()


def queued(listener: socket.socket) -> int:
    """Connections waiting in the listening socket's accept queue (Linux tcp_info)."""
    info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("8B6I", info)[12]  # tcpi_unacked: the queue, for a listener


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(15)
    return sock


def raw_get_answer(sock: socket.socket) -> tuple[str, str]:
    """The answer to a request already sent on `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, "closed before answering"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(4096)
    return head.decode().lower(), body.decode()


def test_the_private_listener_answers_before_serve_and_is_not_counted(arbiter):
    server = arbiter("--health-path", "/")
    generation, worker, private = server.boot(private=True)
    assert worker.deploy == DEPLOY_VERSION

    # READY and never told to serve: only the private listener answers.
    answer = httpx.get(private + "/", timeout=10)
    assert answer.status_code == 200 and answer.text == "home"
    assert httpx.get(private + "/fail", timeout=10).status_code == 500
    assert httpx.get(private + "/_deploy/health", timeout=10).status_code == 200
    waiting = connect(server.port)
    server.pump(lambda: queued(server.public) == 1)

    server.serve(generation, worker)
    waiting.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    head, body = raw_get_answer(waiting)
    assert head.startswith("http/1.1 200") and body == "home"
    waiting.close()
    server.pool.close_private(generation)  # as the deployer does once the checks passed
    with pytest.raises(httpx.ConnectError):
        httpx.get(private + "/", timeout=10)  # serving users, it stopped serving privately
    server.pump(lambda: server.pool.responses(generation)["2xx"] == 1)

    server.pool.drain(generation)
    server.pump(lambda: not server.pool.workers())
    assert worker.proc.returncode == 0
    # Neither the health check nor the private requests were counted.
    assert server.pool.responses(generation) == {
        "1xx": 0, "2xx": 1, "3xx": 0, "4xx": 0, "5xx": 0,
    }  # fmt: skip


def test_responses_are_counted_by_class_on_the_public_listeners_only(arbiter):
    server = arbiter()
    generation, worker, private = server.boot(private=True)
    assert httpx.get(private + "/", timeout=10).status_code == 200  # not counted
    server.serve(generation, worker)
    # A connection each: uvicorn closes the connection of an app that raised.
    assert httpx.get(server.url + "/_deploy/health").status_code == 200  # admin: not counted
    statuses = [
        httpx.get(server.url + path).status_code for path in ("/missing", "/fail", "/raise")
    ]
    assert statuses == [404, 500, 500]
    for _ in range(3):
        assert httpx.get(server.url + "/").status_code == 200
    expected = {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 1, "5xx": 2}
    server.pump(lambda: server.pool.responses(generation) == expected)
    assert server.listener.responses >= 1

    # The drain reports once more; the exited worker's counts stay the generation's.
    server.pool.drain(generation)
    server.pump(lambda: not server.pool.workers())
    assert server.pool.responses(generation) == expected


def test_pause_stops_accepting_finishes_connections_and_resume_accepts_again(arbiter):
    server = arbiter("--drain-grace", "2", "--keep-alive", "60")
    generation, worker, private = server.boot(private=True)
    server.serve(generation, worker)

    idle, busy, late = connect(server.port), connect(server.port), connect(server.port)
    for sock in (idle, busy, late):
        head, body = raw_get(sock)
        assert body == "home" and "connection: close" not in head
    answers: list[tuple[str, str]] = []

    def slow_request() -> None:
        busy.sendall(b"GET /slow?s=4 HTTP/1.1\r\nHost: test\r\n\r\n")
        answers.append(raw_get_answer(busy))

    thread = threading.Thread(target=slow_request)
    thread.start()
    polls = 0

    def in_flight() -> bool:
        nonlocal polls
        polls += 1  # each is a response, counted
        return httpx.get(server.url + "/in-flight", timeout=10).text == "1"

    server.pump(in_flight)

    changed = server.listener.changed
    server.pool.pause(generation)
    server.pump(lambda: worker.paused)
    assert server.pool.paused(generation) == 1
    assert server.listener.changed == changed + 1, "the serving generation's pause is told"

    # A request sent during the grace is answered, with Connection: close.
    head, body = raw_get(late)
    assert body == "home" and "connection: close" in head
    assert late.recv(10) == b""
    # An idle keep-alive connection is closed cleanly after the grace.
    assert idle.recv(10) == b""
    # The request in flight at the pause finishes, with Connection: close.
    thread.join(15)
    ((head, body),) = answers
    assert body == "slow" and "connection: close" in head
    assert busy.recv(10) == b""

    # A new client waits in the accept queue, answered by no one while paused.
    waiting = connect(server.port)
    waiting.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    server.pump(lambda: queued(server.public) == 1)
    # Pausing again is harmless and answered: the worker's loop runs, and still
    # does not accept.
    server.pool.pause(generation)
    server.pump(lambda: server.listener.changed == changed + 2)
    assert queued(server.public) == 1
    waiting.setblocking(False)
    with pytest.raises(BlockingIOError):
        waiting.recv(10)
    waiting.setblocking(True)

    server.pool.resume(generation)
    server.pump(lambda: not worker.paused)
    head, body = raw_get_answer(waiting)
    assert body == "home" and "connection: close" not in head, "answered normally again"
    head, body = raw_get(waiting)  # and kept alive
    assert body == "home" and "connection: close" not in head
    assert queued(server.public) == 0
    waiting.close()

    # SIGTERM while paused: the usual drain and exit.
    server.pool.pause(generation)
    server.pump(lambda: worker.paused)
    server.pool.drain(generation)
    server.pump(lambda: not server.pool.workers())
    assert worker.proc.returncode == 0
    assert server.pool.responses(generation) == {
        "1xx": 0, "2xx": 7 + polls, "3xx": 0, "4xx": 0, "5xx": 0,
    }  # fmt: skip


def test_sigterm_while_paused_answers_in_flight_requests(arbiter):
    server = arbiter("--drain-grace", "1")
    generation, worker, private = server.boot(private=True)
    server.serve(generation, worker)
    server.pool.pause(generation)
    server.pump(lambda: worker.paused)
    waiting = connect(server.port)
    waiting.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    server.pump(lambda: queued(server.public) == 1)
    os.kill(worker.pid, signal.SIGTERM)
    server.pump(lambda: worker.stopped_accepting)
    server.pump(lambda: not server.pool.workers())
    assert queued(server.public) == 1, "still queued for the next worker, never refused"
    waiting.close()
