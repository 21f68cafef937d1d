"""Uploads over the admin API: one at a time, refused before their body, timed.

The clients here are raw sockets that send the headers and a little of a
large body, then wait: an answer that comes back at once was given before
the body was read.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import httpx

from tests.support.tokens import AUTH, TOKEN

BIG = 100 * 1024 * 1024
LITTLE = b"\x1f\x8b" + b"\0" * 16_000  # under uvicorn's read-ahead (64 KiB)
AT_ONCE = 1.0  # seconds: an answer that did not wait for the body


def upload_head(declared: int) -> bytes:
    return (
        "POST /_deploy/upgrade HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/gzip\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()


def start_upload(server, declared: int, first: bytes = LITTLE) -> socket.socket:
    """An artifact upload with only `first` of its `declared` bytes sent."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(upload_head(declared) + first)
    return sock


def read_answer(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], dict]:
    """(status, headers, JSON body) of the answer on `sock`."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before an answer: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, json.loads(body)


def closed_by_server(sock: socket.socket, timeout: float = 5) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


class UploadsWatch:
    """The most files ever seen at once in STATE_DIR/uploads, polled every millisecond."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.most = 0
        self.seen: set[str] = set()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        while not self.done.is_set():
            try:
                names = os.listdir(self.directory)
            except FileNotFoundError:
                names = []
            self.seen.update(names)
            self.most = max(self.most, len(names))
            time.sleep(0.001)

    def __enter__(self) -> UploadsWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


def upload_server(serve, releases, *args: str):
    return serve("--release", str(releases["v1"]), *args, env={"BEAMDEPLOY_TOKEN": TOKEN})


def post_garbage(server) -> httpx.Response:
    """An upload the arbiter takes over and refuses at once: proof the slot is free."""
    return httpx.post(
        server.url + "/_deploy/upgrade?wait=true",
        content=b"not an archive",
        headers={**AUTH, "Content-Type": "application/gzip"},
        timeout=60,
    )


def test_eight_parallel_uploads_one_is_read_seven_are_refused_at_once(serve, releases):
    server = upload_server(
        serve, releases, "--workers", "2", "--header-timeout", "2", "--upload-timeout", "30"
    )
    uploads = server.state_dir / "uploads"
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(8)]
    barrier = threading.Barrier(len(socks))
    answers: list[tuple[int, dict[str, str], dict, float, bool]] = []

    def upload(sock: socket.socket) -> None:
        barrier.wait()
        sock.sendall(upload_head(BIG) + LITTLE)
        sent = time.monotonic()
        status, headers, body = read_answer(sock, timeout=15)
        answers.append((status, headers, body, time.monotonic() - sent, closed_by_server(sock)))

    with UploadsWatch(uploads) as watch:
        threads = [threading.Thread(target=upload, args=(sock,)) for sock in socks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    refused = [a for a in answers if a[0] == 409]
    read = [a for a in answers if a[0] != 409]
    print("answered after", sorted(round(a[3], 3) for a in answers))
    assert len(refused) == 7 and len(read) == 1, answers
    for _, headers, body, seconds, closed in refused:
        assert body["error"] == "upload_in_progress" and body["detail"]
        assert seconds < AT_ONCE, f"a refusal waited {seconds:.2f}s"
        assert headers["connection"] == "close" and closed
    # The one upload being read stalls: cut after --header-timeout of silence.
    status, headers, body, seconds, closed = read[0]
    assert (status, body["error"]) == (408, "upload_timeout"), body
    assert "no part of the request body arrived for 2s" in body["detail"]
    assert 2 - 0.2 < seconds < 2 + 1.5 and closed
    assert watch.most == 1, "one upload on disk at a time"
    assert any(name.endswith(".partial") for name in watch.seen)
    assert os.listdir(uploads) == [], "the partial file is removed"

    garbage = post_garbage(server)
    assert garbage.status_code == 422, garbage.text
    assert "not a gzip-compressed tar archive" in garbage.json()["detail"]
    assert os.listdir(uploads) == []


def test_an_upload_during_a_deployment_is_refused_before_its_body(serve, releases, artifacts):
    server = upload_server(serve, releases, "--workers", "1")
    artifact = artifacts["1.1.0"].read_bytes()
    first: dict[str, httpx.Response] = {}

    def deploy() -> None:
        first["answer"] = httpx.post(
            server.url + "/_deploy/upgrade?wait=true",
            content=artifact,
            headers={**AUTH, "Content-Type": "application/gzip"},
            timeout=300,
        )

    thread = threading.Thread(target=deploy)
    thread.start()
    # The first upload was handed over: its deployment runs, its request waits for the outcome.
    server.wait_for(lambda s: s["upgrading"], timeout=120)
    sock = start_upload(server, declared=len(artifact))
    sent = time.monotonic()
    status, headers, body = read_answer(sock, timeout=15)
    seconds = time.monotonic() - sent
    print(f"refused after {seconds:.3f}s")
    assert (status, body["error"]) == (409, "upgrade_in_progress"), body
    assert seconds < AT_ONCE and closed_by_server(sock)
    thread.join(300)
    assert first["answer"].status_code == 200, first["answer"].text
    assert first["answer"].json()["to"]["version"] == "1.1.0"
    assert os.listdir(server.state_dir / "uploads") == []


def test_slow_bodies_are_cut_and_the_service_serves_on(serve, releases):
    server = upload_server(
        serve, releases, "--workers", "1", "--header-timeout", "2", "--upload-timeout", "4"
    )
    uploads = server.state_dir / "uploads"
    sock = start_upload(server, declared=1000, first=b"\x1f")
    started = time.monotonic()
    stop = threading.Event()

    def drip() -> None:  # a byte a second: never idle, never done
        while not stop.wait(1):
            try:
                sock.sendall(b"\0")
            except OSError:
                return

    dripping = threading.Thread(target=drip)
    dripping.start()
    # A small JSON body that stops halfway, meanwhile (not an upload: no slot needed).
    json_sock = socket.create_connection(("127.0.0.1", server.port))
    json_sock.sendall(
        (
            "POST /_deploy/rollback HTTP/1.1\r\nHost: test\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
            'Content-Length: 40\r\n\r\n{"to": '
        ).encode()
    )
    json_started = time.monotonic()
    try:
        deadline = time.monotonic() + 5
        while not any(p.suffix == ".partial" for p in uploads.iterdir()):
            assert time.monotonic() < deadline, "the upload is being written"
            time.sleep(0.01)
        status, _, body = read_answer(json_sock, timeout=10)
        json_seconds = time.monotonic() - json_started
        assert (status, body["error"]) == (408, "request_timeout"), body
        assert 2 - 0.2 < json_seconds < 2 + 1.5 and closed_by_server(json_sock)

        status, headers, body = read_answer(sock, timeout=15)
        seconds = time.monotonic() - started
    finally:
        stop.set()
        dripping.join()
    print(f"JSON body cut after {json_seconds:.3f}s, upload after {seconds:.3f}s")
    assert (status, body["error"]) == (408, "upload_timeout"), body
    assert "did not arrive within 4s" in body["detail"]
    assert 4 - 0.2 < seconds < 4 + 1.5
    assert headers["connection"] == "close" and closed_by_server(sock)
    assert list(uploads.iterdir()) == [], "no partial file is left"

    assert httpx.get(server.url).text.startswith("v1")
    garbage = post_garbage(server)
    assert garbage.status_code == 422, "the upload slot is free again"
    assert server.status()["serving"]["release"]["version"] == "v1"
