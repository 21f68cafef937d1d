"""The host's drain mark in the arbiter: kept in a file, told to every worker."""

from __future__ import annotations

import logging
import stat
from pathlib import Path
from typing import Any

from beamdeploy_asgi.admin.health import health_answer, host_command
from beamdeploy_asgi.arbiter.host_state import HostState

LOG = logging.getLogger("test")


def test_the_mark_is_kept_in_the_state_dir_and_told_to_workers(tmp_path: Path):
    told: list[dict[str, Any]] = []
    host = HostState(tmp_path, LOG, told.append)
    assert told == [{"cmd": "host", "draining": False, "reason": None}]
    assert host.describe() == {"draining": False, "since": None}

    marked = host.drain()
    assert marked["draining"] is True and isinstance(marked["since"], float)
    assert stat.S_IMODE((tmp_path / "drained").stat().st_mode) == 0o600
    assert told[-1]["draining"] is True
    assert told[-1]["reason"].startswith("marked draining by the operator at ")
    assert host.drain() == marked and len(told) == 2  # again: nothing changes

    restarted = HostState(tmp_path, LOG, told.append)  # an arbiter restart reads it back
    assert restarted.describe() == marked

    assert restarted.undrain() == {"draining": False, "since": None}
    assert not (tmp_path / "drained").exists()
    assert told[-1] == {"cmd": "host", "draining": False, "reason": None}


def test_a_hand_made_mark_counts(tmp_path: Path):
    (tmp_path / "drained").write_text("by hand\n")
    assert HostState(tmp_path, LOG, lambda _: None).draining


class Runtime:
    release = {"name": "app", "version": "1.2.0", "path": "/srv/secret/releases/1.2.0"}
    draining = False
    host: dict[str, Any] = {}


def test_health_says_why_and_nothing_more():
    runtime = Runtime()
    assert health_answer(runtime) == (200, {"status": "serving", "release": "1.2.0"})
    host_command(runtime, {"cmd": "host", "draining": True, "reason": "marked at noon"})
    assert health_answer(runtime) == (
        503,
        {"status": "draining", "reason": "marked at noon", "release": "1.2.0"},
    )
    host_command(runtime, {"cmd": "host", "draining": False, "reason": None})
    runtime.draining = True
    code, body = health_answer(runtime)
    assert code == 503 and body["reason"].startswith("this worker is stopping")
    assert health_answer(None)[0] == 503
