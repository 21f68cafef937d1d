"""The worker's request gate: what a hot reload holds, and what it waits for."""

from __future__ import annotations

import asyncio
from typing import Any

from beamdeploy_asgi.worker.reloading import RequestGate


class App:
    """An ASGI app whose requests finish when the test says so."""

    def __init__(self) -> None:
        self.release: dict[str, asyncio.Event] = {}
        self.started: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        self.started.append(path)
        event = self.release.setdefault(path, asyncio.Event())
        if scope["type"] == "http" and path.startswith("/stream"):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await event.wait()  # a long stream: its response has started
            return
        await event.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})


async def call(gate: RequestGate, path: str, kind: str = "http") -> list[Any]:
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    await gate({"type": kind, "path": path}, None, send)
    return sent


def run(test: Any) -> None:
    asyncio.run(asyncio.wait_for(test(), 10))


async def until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0)


def test_shutting_waits_for_running_requests_and_holds_new_ones():
    async def test() -> None:
        app = App()
        gate = RequestGate(app, "/_deploy")
        running = asyncio.ensure_future(call(gate, "/a"))
        await until(lambda: gate.in_flight == 1)
        shut = asyncio.ensure_future(gate.shut(5))
        held = asyncio.ensure_future(call(gate, "/b"))
        await until(lambda: gate.held == 1)
        assert app.started == ["/a"], "the new request waits at the gate"
        assert not shut.done(), "a request is still running"
        app.release["/a"].set()
        assert await shut is True and gate.in_flight == 0
        assert (await running)[0]["status"] == 200
        assert gate.open() == {"held": 1, "in_flight": 0}
        await until(lambda: "/b" in app.started)
        app.release["/b"].set()
        assert (await held)[0]["status"] == 200

    run(test)


def test_a_request_still_running_at_the_timeout_says_no():
    async def test() -> None:
        app = App()
        gate = RequestGate(app, "/_deploy")
        running = asyncio.ensure_future(call(gate, "/slow"))
        await until(lambda: gate.in_flight == 1)
        assert await gate.shut(0.05) is False
        gate.open()
        app.release["/slow"].set()
        await running

    run(test)


def test_streams_websockets_and_admin_routes_do_not_keep_a_reload_waiting():
    async def test() -> None:
        app = App()
        gate = RequestGate(app, "/_deploy")
        stream = asyncio.ensure_future(call(gate, "/stream"))
        socket = asyncio.ensure_future(call(gate, "/ws", kind="websocket"))
        await until(lambda: len(app.started) == 2)
        assert gate.in_flight == 0, "a started response and a websocket are not in flight"
        assert await gate.shut(1) is True
        admin = asyncio.ensure_future(call(gate, "/_deploy/hot-reload"))
        lookalike = asyncio.ensure_future(call(gate, "/_deployed"))
        await until(lambda: "/_deploy/hot-reload" in app.started)
        assert gate.held == 1 and "/_deployed" not in app.started, "only the prefix passes"
        gate.open()
        for path in ("/stream", "/ws", "/_deploy/hot-reload", "/_deployed"):
            app.release.setdefault(path, asyncio.Event()).set()
        await asyncio.gather(stream, socket, admin, lookalike)

    run(test)


def test_a_request_waiting_for_its_body_does_not_keep_a_reload_waiting():
    """A client sending its body a byte at a time must not veto every reload."""

    async def test() -> None:
        body = asyncio.Event()
        ran: list[str] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            ran.append("before body")
            await receive()
            ran.append("after body")
            await send({"type": "http.response.start", "status": 200, "headers": []})

        async def receive() -> Any:
            await body.wait()
            return {"type": "http.request", "body": b"x", "more_body": False}

        gate = RequestGate(app, None)
        sent: list[Any] = []

        async def send(message: Any) -> None:
            sent.append(message)

        slow = asyncio.ensure_future(gate({"type": "http", "path": "/upload"}, receive, send))
        await until(lambda: ran == ["before body"])
        assert gate.in_flight == 0, "waiting for its body, it runs no code"
        assert await gate.shut(0.05) is True
        body.set()
        await until(lambda: ran == ["before body", "after body"])
        assert gate.in_flight == 0 and sent[0]["status"] == 200
        gate.open()
        await slow

    run(test)
