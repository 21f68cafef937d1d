"""The deployment history: bounded, never torn, and it remembers interrupted deployments."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from beamdeploy_asgi.releases import history as history_module
from beamdeploy_asgi.releases.history import History
from tests.support.releases import versioned_app


def record(n: int, **extra: object) -> dict:
    return {"id": f"d{n}", "kind": "upgrade", "outcome": "succeeded", **extra}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB filesystem, to fill up."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_torn_last_line_costs_no_other_record(tmp_path: Path):
    history = History(tmp_path / "history.jsonl")
    history.append(record(1))
    with open(history.path, "ab") as torn:  # a crash in the middle of a write
        torn.write(b'{"id": "d2", "kind": "upgr')
    history.append(record(3))
    assert [r["id"] for r in history.records()] == ["d3", "d1"]


def test_the_last_line_of_an_id_wins(tmp_path: Path):
    history = History(tmp_path / "history.jsonl")
    history.append(record(1, outcome=None, phase="starting"))
    history.append(record(2))
    history.append(record(1, phase="done"))
    records = history.records()
    assert [(r["id"], r["outcome"]) for r in records] == [("d1", "succeeded"), ("d2", "succeeded")]


def test_the_file_is_compacted_to_a_bound(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(history_module, "COMPACT_AT", 20_000)
    monkeypatch.setattr(history_module, "KEEP", 50)
    history = History(tmp_path / "history.jsonl")
    for n in range(2000):
        history.append(record(n, padding="x" * 100))
    size = history.path.stat().st_size
    assert size <= 20_000 + 200, size
    ids = [r["id"] for r in history.records(limit=1000)]
    assert ids[0] == "d1999" and len(ids) >= 50
    assert stat.S_IMODE(history.path.stat().st_mode) == 0o600


def test_a_full_disk_leaves_the_file_as_it_was(small_disk: Path):
    history = History(small_disk / "history.jsonl")
    history.append(record(1))
    before = history.path.read_bytes()
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as fill:
        try:
            while True:
                fill.write(b"\0" * 512)
        except OSError as full:
            assert full.errno == errno.ENOSPC
    with pytest.raises(OSError) as failed:
        history.append(record(2, padding="y" * 8000))
    assert failed.value.errno == errno.ENOSPC
    assert "No space left on device" in str(failed.value)
    assert history.path.read_bytes() == before, "nothing half-written stays behind"
    filler.unlink()
    history.append(record(3))
    assert [r["id"] for r in history.records()] == ["d3", "d1"]


SLOW_BOOT = versioned_app("slow-boot", lifespan="await asyncio.sleep(60)")


def test_an_upgrade_the_arbiters_death_interrupted_is_in_history(serve, releases):
    slow = releases.custom("slow-boot", SLOW_BOOT)
    server = serve("--workers", "1", "--release", str(releases["v1"]))
    started = server.cli("upgrade", str(slow), "--no-wait")
    assert started.returncode == 0, started.stderr
    server.wait_for(lambda s: s["deployment"] and s["deployment"]["phase"] == "booting")
    deployment_id = server.status()["deployment"]["id"]
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait()

    again = serve("--workers", "1", launch=False)
    again.state_dir = server.state_dir
    again.command[again.command.index("--state-dir") + 1] = str(server.state_dir)
    again.start()
    records = {d["id"]: d for d in again.status()["deployments"]}
    assert records[deployment_id]["outcome"] == "interrupted"
    assert records[deployment_id]["error"] == "the arbiter stopped before this deployment ended"
    assert again.status()["serving"]["release"]["version"] == "v1", "the last promoted release"
    listed = again.cli("status")
    assert f"{deployment_id}  upgrade" in listed.stdout and "interrupted" in listed.stdout


def test_loose_state_dir_modes_are_tightened_and_stale_uploads_removed(serve, releases):
    server = serve("--workers", "1", "--release", str(releases["v1"]), launch=False)
    state = server.state_dir
    (state / "uploads").mkdir(parents=True)
    (state / "uploads" / "upload-0123.tar.gz.partial").write_bytes(b"half an upload")
    (state / "history.jsonl").write_text(json.dumps(record(1)) + "\n")
    state.chmod(0o777)
    (state / "history.jsonl").chmod(0o666)
    server.start()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "history.jsonl").stat().st_mode) == 0o600
    assert list((state / "uploads").iterdir()) == []
    log = server.log()
    assert f"{state} was mode 777; tightened to 700" in log
    assert "removing stale upload" in log


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_an_install_on_a_full_disk_says_so(artifacts, tmp_path: Path, installer: str):
    mount = tmp_path / "three-mb-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "beamdeploy_asgi.releases.install", str(artifacts["1.0.0"]),
             "--state-dir", str(mount / "state"), "--installer", installer],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 1
        error = json.loads(done.stdout.splitlines()[-1])["error"]
        assert error.startswith("the offline install failed: no space left on device for "), error
        assert list((mount / "state" / "releases").iterdir()) == [], "nothing left behind"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
