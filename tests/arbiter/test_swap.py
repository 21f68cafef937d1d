"""Blue-green swaps under continuous load: no request may fail."""

from __future__ import annotations

import json
import os
import socket

import httpx

import beamdeploy_asgi
from tests.support.load import Load
from tests.support.server import alive


def listening_inodes(port: int) -> list[int]:
    """Inodes of the sockets listening on 127.0.0.1:port, from /proc/net/tcp."""
    found = []
    with open("/proc/net/tcp") as table:
        for row in table.readlines()[1:]:
            fields = row.split()
            if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
                found.append(int(fields[9]))
    return found


def test_v1_v2_v3_swaps_under_load_lose_nothing(serve, releases):
    v1, v2, v3 = releases["v1"], releases["v2"], releases["v3"]
    server = serve("--workers", "2", "--release", str(v1))
    first_pids = server.serving_pids()
    listeners = listening_inodes(server.port)
    assert len(listeners) == 1, "one listening socket, shared by every worker"

    with Load(server.url, keepalive_clients=6, close_clients=3, max_seconds=90) as load:
        load.wait_requests(200)
        upgrade = server.cli("upgrade", str(v2))
        assert upgrade.returncode == 0, upgrade.stderr
        for phase in ("booting", "promoting", "promoted", "draining", "done"):
            assert f" {phase} " in upgrade.stdout, upgrade.stdout
        load.wait_requests(300)
        second_pids = server.serving_pids()
        deployment = beamdeploy_asgi.upgrade(v3, state_dir=server.state_dir)
        assert deployment["outcome"] == "succeeded"
        assert deployment["to"]["version"] == "v3"
        load.wait_requests(300)
    result = load.result

    assert result.failures == []
    # Old and new answer side by side only while the old generation drains.
    assert list(dict.fromkeys(result.sequence)) == ["v1", "v2", "v3"]
    assert result.sequence[-1] == "v3"
    assert result.rate >= 20, f"only {result.rate:.0f} requests/s"  # a sanity floor only
    status = server.wait_for(lambda s: not s["draining"])
    assert status["serving"]["release"]["version"] == "v3"
    assert len(status["serving"]["workers"]) == 2
    old = first_pids + second_pids
    assert not [pid for pid in old if alive(pid)], "an old generation's process is left"
    assert listening_inodes(server.port) == listeners, "the listening socket never changed"
    after = Load(server.url, max_requests=200, max_seconds=30).run()
    assert after.failures == [] and set(after.bodies) == {"v3"}


def test_second_server_on_a_served_address_is_refused(serve, releases):
    first = serve("--workers", "2", "--release", str(releases["v1"]))
    with Load(first.url, keepalive_clients=2, close_clients=2, max_seconds=60) as load:
        load.wait_requests(50)
        second = serve("--workers", "1", "--release", str(releases["v2"]), launch=False)
        second.port = first.port
        second.command[second.command.index("--bind") + 1] = f"127.0.0.1:{first.port}"
        second.start(expect_serving=False)
        assert second.proc.wait(30) == 1
        load.wait_requests(50)
    log = second.log()
    assert f"cannot listen on 127.0.0.1:{first.port}: the address is already in use" in log
    assert f"pid {first.proc.pid} (" in log, "the holder is named"
    assert "and 2 other processes" in log, "its two workers share the socket"
    assert "Traceback" not in log
    assert load.result.failures == []
    assert set(load.result.bodies) == {"v1"}, "every request went to the first server"
    assert len(listening_inodes(first.port)) == 1


def test_port_held_by_another_program_is_refused_with_its_pid(serve, tmp_path):
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # would let us share, were it set
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        server = serve("--workers", "1", "app:app", launch=False)
        server.command[server.command.index("--bind") + 1] = f"127.0.0.1:{port}"
        server.start(expect_serving=False)
        assert server.proc.wait(30) == 1
    finally:
        holder.close()
    log = server.log()
    assert (
        f"cannot listen on 127.0.0.1:{port}: the address is already in use by pid {os.getpid()}"
        in log
    )
    assert "Traceback" not in log and "Unhandled exception" not in log


def over_unix(path) -> str:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path))) as client:
        return client.get("http://app/").text


def test_unix_socket_in_use_is_refused_and_a_stale_one_replaced(serve, releases, tmp_path):
    path = tmp_path / "app.sock"
    first = serve("--workers", "1", "--release", str(releases["v1"]), "--bind", f"unix:{path}")
    second = serve(
        "--workers", "1", "--release", str(releases["v1"]), "--bind", f"unix:{path}", launch=False
    )
    second.start(expect_serving=False)
    assert second.proc.wait(30) == 1
    assert f"cannot listen on unix:{path}: another server listens there" in second.log()
    assert over_unix(path).startswith("v1 "), "the first server still has its socket"
    first.stop()

    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # a socket file nobody listens on any more
    stale.close()
    third = serve("--workers", "1", "--release", str(releases["v2"]), "--bind", f"unix:{path}")
    assert over_unix(path).startswith("v2 ") and third.status()["serving"]


def test_status_json_describes_generations(serve, releases):
    server = serve("--workers", "2", "--release", str(releases["v1"]))
    shown = server.cli("status", "--json")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    serving = status["serving"]
    assert serving["state"] == "serving"
    assert serving["release"]["version"] == "v1"
    assert [w["state"] for w in serving["workers"]] == ["serving", "serving"]
    assert status["upgrading"] is False
    assert status["deployments"][0]["kind"] == "boot"
    human = server.cli("status")
    assert "serving: generation 1, demo v1" in human.stdout
