"""Taking a built release over: never through a link, never someone else's file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from beamdeploy_asgi.errors import ReleaseError
from beamdeploy_asgi.releases.seal import seal


def built(tmp_path: Path) -> Path:
    root = tmp_path / "staging"
    (root / "venv" / "bin").mkdir(parents=True)
    (root / "venv" / "bin" / "python").symlink_to("/usr/bin/python3")
    (root / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (root / "beamdeploy-release.json").write_text("{}")
    return root


def test_a_release_is_taken_over_with_its_venv_links(tmp_path: Path):
    root = built(tmp_path)
    seal(root, os.getuid(), 4242)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    cfg = (root / "venv" / "pyvenv.cfg").stat()
    assert (cfg.st_gid, stat.S_IMODE(cfg.st_mode)) == (4242, 0o640)
    assert (root / "venv" / "bin" / "python").is_symlink()


def test_a_link_outside_the_venv_is_refused(tmp_path: Path):
    root = built(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("root's")
    (root / ".artifact-sha256.123.tmp").symlink_to(victim)
    with pytest.raises(ReleaseError, match="a link outside the release's venv"):
        seal(root, os.getuid(), 4242)
    assert victim.read_text() == "root's"


def test_a_hard_link_is_refused(tmp_path: Path):
    root = built(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("root's")
    os.link(victim, root / "venv" / "stolen")
    with pytest.raises(ReleaseError, match="a hard link"):
        seal(root, os.getuid(), 4242)
    assert victim.stat().st_gid != 4242
