"""The release store's bookkeeping, on release directories made on the spot."""

from __future__ import annotations

import json
from pathlib import Path

from beamdeploy_asgi.releases.store import ReleaseStore, mark_installed


def install_fake(store: ReleaseStore, version: str, at: float) -> str:
    """A release directory as the installer leaves it (the venv's python is a stub)."""
    path = store.releases_dir / f"demo-{version}"
    (path / "venv" / "bin").mkdir(parents=True)
    python = path / "venv" / "bin" / "python"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    manifest = {"name": "demo", "version": version, "app": "main:app"}
    (path / "beamdeploy-release.json").write_text(json.dumps(manifest))
    mark_installed(path, "0" * 64)
    (path / ".installed-at").write_text(f"{at}\n")
    return str(path)


def test_failed_releases_take_no_slot_of_the_good_ones(tmp_path: Path):
    store = ReleaseStore(tmp_path)
    paths = {v: install_fake(store, v, at) for at, v in enumerate(["1", "2", "3", "4", "5"])}
    store.mark_failed(paths["3"], "preflight", "preflight: could not import main\ntraceback")
    store.mark_failed(paths["5"], "boot", "worker 12 exited")

    removed = store.prune(keep=2, protected=set())

    assert [path for path, _ in removed] == [paths["1"]], "good 1, 2, 4: the oldest goes"
    left = {r["version"]: r["failed"] for r in store.releases()}
    assert set(left) == {"2", "3", "4", "5"}
    assert left["3"]["phase"] == "preflight"
    assert left["3"]["error"] == "preflight: could not import main"
    assert left["4"] is None


def test_failed_releases_are_bounded_too(tmp_path: Path):
    store = ReleaseStore(tmp_path)
    paths = [install_fake(store, str(v), v) for v in range(4)]
    for path in paths:
        store.mark_failed(path, "boot", "boom")
    removed = store.prune(keep=2, protected={paths[0]})
    assert [path for path, _ in removed] == [paths[1], paths[2]]
    assert [r["path"] for r in store.releases()] == [paths[0], paths[3]]


def test_a_release_that_served_is_no_longer_failed(tmp_path: Path):
    store = ReleaseStore(tmp_path)
    path = install_fake(store, "1", 1.0)
    store.mark_failed(path, "boot", "boom")
    store.clear_failed(path)
    assert store.releases()[0]["failed"] is None


def test_marks_stay_out_of_releases_outside_the_store(tmp_path: Path):
    store = ReleaseStore(tmp_path / "state")
    outside = ReleaseStore(tmp_path / "elsewhere")
    path = install_fake(outside, "1", 1.0)
    store.mark_failed(path, "boot", "boom")
    assert not (Path(path) / ".failed").exists()
