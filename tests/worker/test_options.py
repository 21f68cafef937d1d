"""uvicorn options reach the workers, named the gunicorn way or beamdeploy's."""

from __future__ import annotations

import asyncio
import sys

import httpx
import pytest

import beamdeploy_asgi
from beamdeploy_asgi.errors import DeploymentFailed
from tests.support.releases import versioned_app
from tests.support.server import wait_in_flight
from tests.worker.test_drain import raw_get

ECHO = versioned_app(
    "echo",
    extra="""
async def echo(request):
    return JSONResponse({
        "root_path": request.scope.get("root_path"),
        "client": request.scope["client"][0],
        "scheme": request.scope["scheme"],
        "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
    })
""",
    routes='Route("/echo", echo), ',
)

FORWARDED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}


def test_root_path_proxy_headers_and_loop(serve, releases):
    server = serve(
        "--workers",
        "1",
        "--release",
        str(releases.custom("echo", ECHO)),
        "--root-path",
        "/api",
        "--forwarded-allow-ips",
        "127.0.0.1",
        "--asgi-loop",
        "asyncio",
    )
    body = httpx.get(server.url + "/echo", headers=FORWARDED).json()
    assert body == {
        "root_path": "/api",
        "client": "203.0.113.7",
        "scheme": "https",
        "loop": "asyncio",
    }


def test_no_proxy_headers(serve, releases):
    server = serve(
        "--workers",
        "1",
        "--release",
        str(releases.custom("echo", ECHO)),
        "--forwarded-allow-ips",
        "127.0.0.1",
        "--no-proxy-headers",
    )
    body = httpx.get(server.url + "/echo", headers=FORWARDED).json()
    assert body["client"] == "127.0.0.1" and body["scheme"] == "http"


def test_limit_concurrency_answers_503(serve, releases):
    server = serve("--workers", "1", "--release", str(releases["v1"]), "--limit-concurrency", "3")

    async def burst() -> tuple[int, list[int]]:
        async with httpx.AsyncClient(timeout=30) as first, httpx.AsyncClient(timeout=30) as more:
            slow = asyncio.ensure_future(first.get(server.url + "/slow?s=4"))
            await asyncio.to_thread(wait_in_flight, server.url)
            answers = await asyncio.gather(*(more.get(server.url) for _ in range(4)))
            return (await slow).status_code, [a.status_code for a in answers]

    first, others = asyncio.run(burst())
    assert first == 200
    assert 503 in others


def test_keepalive_setting_closes_idle_connections(serve, releases):
    server = serve("--workers", "1", "--release", str(releases["v1"]), "--keep-alive", "1")
    import socket
    import time

    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(10)
    head, body = raw_get(sock)
    assert head.startswith("http/1.1 200") and body.startswith("v1")
    started = time.monotonic()
    assert sock.recv(10) == b""
    assert time.monotonic() - started < 4


def test_a_release_with_an_older_beamdeploy_ignores_options_it_does_not_know(serve, releases):
    """Workers re-read the arbiter's options with their release's own beamdeploy-asgi."""
    release = releases.custom("older", versioned_app("older"))
    (settings,) = (release / "venv").glob("lib/python*/site-packages/beamdeploy_asgi/settings.py")
    source = settings.read_text()
    start = source.index("class MaxUploadSize(")
    end = source.index("\n\n\n", start)  # the end of that class
    settings.unlink()  # a new file: the old one may be a hard link into uv's cache
    settings.write_text(source[:start] + source[end:])  # as before that option existed

    server = serve(
        "--workers", "1", "--release", str(release),
        "--max-upload-size", "1000", "--release-python", sys.executable,
    )  # fmt: skip
    assert httpx.get(server.url).text.startswith("older")
    assert "does not know --max-upload-size; ignored here" in server.log()
    # Options only the arbiter uses never reach the workers.
    assert "--release-python" not in server.log()


def test_a_release_speaking_another_protocol_fails_its_boot_saying_so(serve, releases):
    release = releases.custom("protocol-99", versioned_app("protocol-99"))
    (protocol,) = (release / "venv").glob("lib/python*/site-packages/beamdeploy_asgi/protocol.py")
    source = protocol.read_text()
    protocol.unlink()  # a new file: the old one may be a hard link into uv's cache
    protocol.write_text(source.replace("PROTOCOL_VERSION = 1\n", "PROTOCOL_VERSION = 99\n"))

    server = serve("--workers", "1", "--release", str(releases["v1"]))
    with pytest.raises(DeploymentFailed) as failed:
        beamdeploy_asgi.upgrade(release, state_dir=server.state_dir)
    error = failed.value.deployment["error"]
    assert "the arbiter speaks beamdeploy protocol 1" in error, error
    assert "here speaks 99" in error
    assert httpx.get(server.url).text.startswith("v1 ")
