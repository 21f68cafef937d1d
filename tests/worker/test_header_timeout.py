"""Connections that never finish their request headers are closed (slowloris).

uvicorn itself waits for headers forever; a worker closes such connections
after max(--header-timeout, keepalive + 1) seconds, and leaves alone what is
not waiting for headers: a request in progress, a websocket, and an idle
keep-alive connection within its keep-alive time.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time

import httpx
import pytest
import websockets.sync.client

from tests.worker.test_drain import raw_get

HEADER_TIMEOUT = 1
KEEPALIVE = 4  # well past HEADER_TIMEOUT + SWEEP: the idle check below has slack
LIMIT = max(HEADER_TIMEOUT, KEEPALIVE + 1)  # an idle keep-alive connection is uvicorn's
SWEEP = 1  # the sweep's period: a connection is seen at most this late
SLOW = LIMIT + 2 * SWEEP + 1  # a request still in progress when every stalled one is closed


def closed_at(socks: dict[str, socket.socket], timeout: float) -> dict[str, float]:
    """When each socket was closed by the server (EOF or reset), by monotonic clock."""
    when: dict[str, float] = {}
    with selectors.DefaultSelector() as selector:
        for name, sock in socks.items():
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, name)
        deadline = time.monotonic() + timeout
        while len(when) < len(socks) and time.monotonic() < deadline:
            for key, _ in selector.select(deadline - time.monotonic()):
                try:
                    data = key.fileobj.recv(4096)  # type: ignore[union-attr]
                except ConnectionResetError:
                    data = b""
                assert data == b"", f"{key.data}: the server answered {data!r}"
                when[key.data] = time.monotonic()
                selector.unregister(key.fileobj)
    return when


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_stalled_headers_are_closed_and_nothing_else(serve, releases, http):
    server = serve(
        "--workers", "1", "--release", str(releases["v1"]), "--http", http,
        "--header-timeout", str(HEADER_TIMEOUT), "--keep-alive", str(KEEPALIVE),
    )  # fmt: skip
    address = ("127.0.0.1", server.port)
    slow: dict[str, httpx.Response] = {}
    in_progress = threading.Thread(
        target=lambda: slow.update(answer=httpx.get(f"{server.url}/slow?s={SLOW}", timeout=60))
    )
    in_progress.start()
    with websockets.sync.client.connect(server.url.replace("http", "ws") + "/ws") as ws:
        assert ws.recv(timeout=5) == "v1"

        stalled, started = {}, {}
        stalled["silent"] = socket.create_connection(address)  # never sends a byte
        started["silent"] = time.monotonic()
        stalled["half request line"] = socket.create_connection(address)
        stalled["half request line"].sendall(b"GET / HT")
        started["half request line"] = time.monotonic()
        # uvicorn's keep-alive timer stops at the first byte of the next request.
        after_response = stalled["half headers after a response"] = socket.create_connection(
            address
        )
        after_response.settimeout(10)
        assert raw_get(after_response)[1].startswith("v1")
        started["half headers after a response"] = time.monotonic()
        after_response.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n")

        keepalive = socket.create_connection(address)
        keepalive.settimeout(10)
        assert raw_get(keepalive)[1].startswith("v1")
        answered = time.monotonic()
        # Idle past the header timeout and a sweep, within keep-alive: still open.
        # The idle time is the stimulus here; there is no event to wait for.
        time.sleep(HEADER_TIMEOUT + SWEEP)
        head, body = raw_get(keepalive)
        assert body.startswith("v1") and time.monotonic() - answered < KEEPALIVE
        keepalive.close()

        closed = closed_at(stalled, timeout=LIMIT + 2 * SWEEP + 3)
        waited = {name: closed[name] - started[name] for name in closed}
        print(f"{http}: closed after {waited} (limit {LIMIT}s)")
        assert set(waited) == set(stalled), f"not closed within the limit: {waited}"
        for name, seconds in waited.items():
            assert LIMIT - 0.5 <= seconds <= LIMIT + 2 * SWEEP + 0.5, (name, seconds)

        # Connected before the stalled ones and answered after they were closed.
        in_progress.join(SLOW + 10)
        assert slow["answer"].status_code == 200 and slow["answer"].text == "slow v1"
        assert ws.ping().wait(5), "the websocket is still open"
        ws.send("still here")
    for sock in stalled.values():
        sock.close()
    assert f"sent no complete request headers in {LIMIT}s" in server.log()
    assert httpx.get(server.url).text.startswith("v1")
