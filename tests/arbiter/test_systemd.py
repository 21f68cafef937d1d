"""Under systemd: the notify protocol as systemd reads it, the watchdog, socket activation."""

from __future__ import annotations

import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.notify import NotifySocket
from tests.support.releases import versioned_app
from tests.support.server import ServerProcess

LIFESPAN_RAISES = versioned_app("bad", lifespan='raise ConnectionError("no database")')

# What systemd does for a socket-activated service: the socket as fd 3,
# LISTEN_FDS=1, LISTEN_PID (and WATCHDOG_PID) naming the process it execs.
LAUNCHER = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), WATCHDOG_PID=str(os.getpid()))
os.execv(sys.argv[2], sys.argv[2:])
"""


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def monotonic_usec() -> int:
    return time.monotonic_ns() // 1000


def has(*lines: str):
    return lambda n: all(line in n for line in lines)


def test_start_deploy_failed_deploy_and_stop_are_told_to_systemd(serve, releases, notify):
    server = serve(
        "--workers", "2", "--release", str(releases["v1"]),
        env={"NOTIFY_SOCKET": str(notify.path)},
    )  # fmt: skip
    arbiter = server.proc.pid
    ready = notify.wait_for(has("READY=1"))
    start = notify.received[: ready + 1]
    assert {n.pid for n in start} == {arbiter}, "only the arbiter speaks"
    assert not [n for n in start if "RELOADING" in n.fields], "a first boot is no reload"
    assert any("booting generation 1" in s for s in notify.statuses(0, ready))
    assert notify.received[ready].fields["STATUS"] == "serving demo v1 (generation 1)"
    for pid in server.serving_pids():  # systemd's variables are the arbiter's alone
        assert b"NOTIFY_SOCKET=" not in Path(f"/proc/{pid}/environ").read_bytes()

    # An upgrade: RELOADING=1 with the time it started, its phases, READY=1 when it ends.
    before = monotonic_usec()
    done = server.cli("upgrade", str(releases["v2"]))
    assert done.returncode == 0, done.stderr
    reloading = notify.wait_for(has("RELOADING=1"), after=ready + 1)
    stamp = int(notify.received[reloading].fields["MONOTONIC_USEC"])
    assert before <= stamp <= monotonic_usec()
    ready = notify.wait_for(has("READY=1"), after=reloading)
    statuses = notify.statuses(reloading, ready)
    assert statuses[0].startswith("upgrade ") and " to demo v2: " in statuses[0]
    assert any(re.search(r": booting generation 2: ./2 ready$", s) for s in statuses), statuses
    assert any("draining generation 1" in s for s in statuses), statuses
    assert notify.received[ready].fields["STATUS"] == "serving demo v2 (generation 2)"
    assert not [n for n in notify.received[reloading + 1 : ready] if "READY" in n.fields]

    # A failed one: reloading all the same, then ready again, on the release that served.
    before = monotonic_usec()
    failed = server.cli("upgrade", str(releases.custom("bad", LIFESPAN_RAISES)))
    assert failed.returncode != 0
    reloading = notify.wait_for(has("RELOADING=1"), after=ready + 1)
    assert before <= int(notify.received[reloading].fields["MONOTONIC_USEC"]) <= monotonic_usec()
    ready = notify.wait_for(has("READY=1"), after=reloading)
    statuses = notify.statuses(reloading, ready)
    assert any("stopping generation 3" in s for s in statuses), statuses
    status = notify.received[ready].fields["STATUS"]
    assert status.startswith("serving demo v2 (generation 2); upgrade "), status
    assert status.endswith(" failed")

    server.stop()
    stopping = notify.wait_for(has("STOPPING=1"), after=ready + 1)
    assert not [n for n in notify.received[stopping:] if "READY" in n.fields]
    assert {n.pid for n in notify.received} == {arbiter}


def test_watchdog_pings_at_half_its_interval(serve, releases, notify):
    server = serve(
        "--workers", "1", "--release", str(releases["v1"]),
        env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "500000"},
    )  # fmt: skip
    first = notify.wait_for(has("WATCHDOG=1"), timeout=5)
    pings = [notify.received[first]]
    while len(pings) < 8:  # an idle loop waits 1 s at most: it must wake for each ping
        index = notify.wait_for(
            has("WATCHDOG=1"), timeout=2, after=notify.received.index(pings[-1]) + 1
        )
        pings.append(notify.received[index])
    gaps = [b.at - a.at for a, b in zip(pings, pings[1:], strict=False)]
    assert max(gaps) < 0.5, gaps  # systemd's limit is WATCHDOG_USEC
    assert {n.pid for n in pings} == {server.proc.pid}


def launched(server: ServerProcess, listener: socket.socket) -> ServerProcess:
    """Start `server` as systemd would a socket-activated service, on `listener`."""
    fd = listener.fileno()
    server.pass_fds = (fd,)
    server.command = [sys.executable, "-c", LAUNCHER, str(fd), *server.command]
    return server.start()


def test_socket_activation_serves_upgrades_and_reexecs_on_the_passed_socket(
    serve, releases, notify, tmp_path
):
    server = serve(
        "--workers", "2", "--release", str(releases["v1"]),
        env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"},
        launch=False,
    )  # fmt: skip
    # Held by the test as by systemd: if the arbiter bound --bind itself, the
    # address would be in use.
    listener = socket.socket()
    listener.bind(("127.0.0.1", server.port))
    listener.listen(64)
    try:
        launched(server, listener)
        arbiter = server.proc.pid
        assert httpx.get(server.url).text.startswith("v1 ")
        assert server.status()["arbiter"]["listeners"] == [server.url]
        for pid in server.serving_pids():
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert b"LISTEN_PID=" not in environ and b"WATCHDOG_PID=" not in environ
        notify.wait_for(has("WATCHDOG=1"), timeout=5)  # WATCHDOG_PID is its own

        done = server.cli("upgrade", str(releases["v2"]))
        assert done.returncode == 0, done.stderr
        assert httpx.get(server.url).text.startswith("v2 ")

        # A reexec: the old arbiter hands the service over in one message, then
        # is silent; the new one says nothing before it, its watchdog after.
        mark = len(notify.received)
        reexec = server.cli("reexec")
        assert reexec.returncode == 0, reexec.stderr
        assert server.proc.wait(60) == 0
        new = server.status()["arbiter"]["pid"]
        handed = notify.wait_for(has(f"MAINPID={new}"), after=mark)
        message = notify.received[handed]
        assert message.pid == arbiter and "READY=1" in message
        assert notify.received[notify.wait_for(has("RELOADING=1"), after=mark)].pid == arbiter
        assert all(n.pid == arbiter for n in notify.received[mark:handed])
        notify.wait_for(lambda n: "WATCHDOG=1" in n and n.pid == new, after=handed, timeout=5)
        assert all(n.pid == new for n in notify.received[handed + 1 :])
        assert httpx.get(server.url).text.startswith("v2 ")
        upgrade = server.cli("upgrade", str(releases["v1"]))
        assert upgrade.returncode == 0, upgrade.stderr
        after = notify.wait_for(lambda n: "READY=1" in n and n.pid == new, after=handed + 1)
        assert notify.received[after].fields["STATUS"].startswith("serving demo v1 (generation ")
    finally:
        server.stop()
        listener.close()
