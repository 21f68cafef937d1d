"""systemd_notify: the watchdog's interval and owner, a full queue, failures logged once."""

from __future__ import annotations

import logging
import os
import socket

from beamdeploy_asgi.arbiter import systemd_notify
from beamdeploy_asgi.arbiter.systemd_notify import ServiceNotifier, watchdog_interval


def test_the_watchdog_is_ours_when_its_pid_is_unset_or_ours():
    assert watchdog_interval({"WATCHDOG_USEC": "500000"}, {7}) == 0.25
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "7"}, {7}) == 0.25
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "8"}, {7}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, {7}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, {7}) is None
    assert watchdog_interval({}, {7}) is None


def test_a_full_queue_drops_messages_without_blocking_and_says_so_once(
    tmp_path, monkeypatch, caplog
):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        service = ServiceNotifier(logging.getLogger("test"))
        with caplog.at_level(logging.WARNING):
            for _ in range(100):  # never read: the queue fills, nothing waits
                service.send("STATUS=busy")
        assert len([r for r in caplog.records if "cannot notify" in r.message]) == 1
        assert listener.recv(100) == b"STATUS=busy"


def test_nothing_is_said_after_stopping_or_handing_over(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        listener.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        service = ServiceNotifier(logging.getLogger("test"))
        service.handed_over(42, "serving x " * 50)
        message = listener.recv(4096).decode().splitlines()
        assert message[:2] == ["MAINPID=42", "READY=1"]
        assert len(message[2]) <= len("STATUS=") + systemd_notify.STATUS_MAX
        service.stopping()
        service.tick()
        try:
            extra = listener.recv(4096)
        except BlockingIOError:
            extra = b""
        assert extra == b""


def test_the_watchdog_passes_from_one_reexec_to_the_next(tmp_path, monkeypatch):
    """systemd's WATCHDOG_PID names the first arbiter; each successor takes it over."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.setenv("WATCHDOG_USEC", "500000")
        monkeypatch.setenv("WATCHDOG_PID", "1111")  # the first arbiter, our parent
        second = ServiceNotifier(logging.getLogger("test"), silent=True, parent=1111)
        second.took_over()
        assert second.watchdog == 0.25
        assert os.environ["WATCHDOG_PID"] == str(os.getpid()), "what our successor inherits"
        # Our successor: started by us, with our environment.
        third = ServiceNotifier(logging.getLogger("test"), silent=True, parent=os.getpid())
        third.took_over()
        assert third.watchdog == 0.25
