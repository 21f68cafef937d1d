"""Workers run release code: what they send on their status channel is read bounded."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

import beamdeploy_asgi
from beamdeploy_asgi.errors import DeploymentFailed
from tests.support.releases import versioned_app

FLOOD = 64 * 1024 * 1024  # far past the 1 MiB cap

# Sent from lifespan startup, while the new generation boots.
CHANNEL_FLOOD = versioned_app(
    "channel-flood",
    lifespan=f"""
    from beamdeploy_asgi.worker import runtime
    runtime.current().channel.sock.sendall(b"x" * {FLOOD})
    """,
)
CHANNEL_JUNK = versioned_app(
    "channel-junk",
    routes='Route("/junk", junk), ',
    extra="""
async def junk(request):
    from beamdeploy_asgi.worker import runtime
    runtime.current().channel.sock.sendall(b"this is not json\\n")
    return PlainTextResponse("sent")
""",
)


def rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1))


def deploy_fails(server, release: Path) -> str:
    with pytest.raises(DeploymentFailed) as failed:
        beamdeploy_asgi.upgrade(release, state_dir=server.state_dir, timeout=120)
    return failed.value.deployment["error"]


def test_oversized_status_line_fails_the_boot_and_memory_stays_flat(serve, releases):
    flood = releases.custom("channel-flood", CHANNEL_FLOOD)
    server = serve("--workers", "2", "--release", str(releases["v1"]))
    arbiter = server.proc.pid
    before = rss_kib(arbiter)
    error = deploy_fails(server, flood)
    after = rss_kib(arbiter)
    assert re.search(r"worker \d+ sent a line longer than 1024 KiB on its status channel", error)
    print(f"arbiter RSS {before} KiB -> {after} KiB while a worker sent {FLOOD >> 20} MiB")
    assert after - before < 16 * 1024, "the arbiter buffered the flood"
    assert httpx.get(server.url).text.startswith("v1 "), "the serving generation never noticed"
    status = server.wait_for(lambda s: not s["booting"])
    assert status["serving"]["release"]["version"] == "v1"


def test_malformed_status_line_stops_a_serving_worker_and_it_is_replaced(serve, releases):
    junk = releases.custom("channel-junk", CHANNEL_JUNK)
    server = serve("--workers", "2", "--release", str(junk))
    before = server.serving_pids()
    with httpx.Client() as client:
        assert client.get(server.url + "/junk").text == "sent"
    status = server.wait_for(
        lambda s: (
            len([w for w in s["serving"]["workers"] if w["pid"] not in before]) == 1
            and len(s["serving"]["workers"]) == 2
            and all(w["state"] == "serving" for w in s["serving"]["workers"])
        )
    )
    replaced = set(before) - {w["pid"] for w in status["serving"]["workers"]}
    assert len(replaced) == 1
    (pid,) = replaced
    assert f"worker {pid} sent a status line that is not a JSON object; stopping it" in server.log()
    assert httpx.get(server.url).text.startswith("channel-junk ")
