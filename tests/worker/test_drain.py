"""What clients of a draining generation see: answers, never errors."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
import websockets.sync.client
from websockets.exceptions import ConnectionClosed

import beamdeploy_asgi
from tests.support.load import Load
from tests.support.server import wait_in_flight


def test_in_flight_request_finishes_on_the_old_generation(serve, releases):
    releases["v2"]  # built before the server starts
    server = serve("--workers", "1", "--release", str(releases["v1"]))
    answers: list[httpx.Response] = []
    # Still running when the drain starts, however slow the upgrade is here.
    slow = threading.Thread(
        target=lambda: answers.append(httpx.get(server.url + "/slow?s=8", timeout=30))
    )
    slow.start()
    wait_in_flight(server.url)
    beamdeploy_asgi.upgrade(releases["v2"], state_dir=server.state_dir)
    slow.join(30)
    assert answers[0].status_code == 200
    assert answers[0].text == "slow v1"
    assert answers[0].headers["connection"] == "close"
    assert httpx.get(server.url).text.startswith("v2")


def raw_get(sock: socket.socket) -> tuple[str, str]:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += receive(sock)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(
        next(
            line.split(b":")[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
    )
    while len(body) < length:
        body += receive(sock)
    return head.decode().lower(), body.decode()


def receive(sock: socket.socket) -> bytes:
    data = sock.recv(4096)
    if not data:
        raise AssertionError("the server closed the connection before answering")
    return data


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_idle_keepalive_connection_gets_connection_close_then_is_closed(serve, releases, http):
    releases["v2"], releases["v3"]  # built before the server starts
    # The keep-alive timeout outlasts the swaps: only the drain closes connections.
    server = serve(
        "--workers", "1", "--release", str(releases["v1"]),
        "--drain-grace", "3", "--keep-alive", "60", "--http", http,
    )  # fmt: skip
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(10)
    head, body = raw_get(sock)
    assert body.startswith("v1") and "connection: close" not in head
    # The upgrade returns once the old worker stopped accepting; its grace runs.
    beamdeploy_asgi.upgrade(releases["v2"], state_dir=server.state_dir)
    head, body = raw_get(sock)  # sent during the grace, on the old connection
    assert body.startswith("v1")
    assert "connection: close" in head
    assert sock.recv(10) == b"", "the server closes the connection after that response"
    sock.close()

    idle = socket.create_connection(("127.0.0.1", server.port))
    idle.settimeout(10)
    assert raw_get(idle)[1].startswith("v2")
    beamdeploy_asgi.upgrade(releases["v3"], state_dir=server.state_dir)
    started = time.monotonic()
    assert idle.recv(10) == b"", "an idle connection is closed cleanly (FIN, not reset)"
    assert time.monotonic() - started < 10


def test_websocket_is_closed_with_1012_at_the_drain_deadline(serve, releases):
    server = serve("--workers", "1", "--release", str(releases["v1"]), "--graceful-timeout", "3")
    ws_url = server.url.replace("http", "ws") + "/ws"
    with websockets.sync.client.connect(ws_url) as ws:
        assert ws.recv(timeout=5) == "v1"
        beamdeploy_asgi.upgrade(releases["v2"], state_dir=server.state_dir)
        drain_started = time.monotonic()
        ws.send("still here")  # the old worker keeps the websocket during the drain
        try:
            ws.recv(timeout=15)
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
        waited = time.monotonic() - drain_started
    assert code == 1012
    assert 1.0 < waited < 8
    with websockets.sync.client.connect(ws_url) as ws:
        assert ws.recv(timeout=5) == "v2"


def test_max_requests_recycles_workers_without_errors(serve, releases):
    server = serve("--workers", "2", "--release", str(releases["v1"]), "--max-requests", "150")
    first = set(server.serving_pids())
    load = Load(
        server.url, keepalive_clients=4, close_clients=2, max_requests=1200, max_seconds=60
    ).run()
    assert load.failures == []
    assert load.ok >= 1200
    status = server.wait_for(lambda s: len(s["serving"]["workers"]) == 2)
    assert status["serving"]["generation"] == 1
    assert not first & set(server.serving_pids()), "every worker was recycled"
