"""Which paths the admin API may deploy (only those inside --release-dir), and odd paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from beamdeploy_asgi.errors import ReleaseError
from beamdeploy_asgi.releases.confine import PathNotAllowed, confined
from beamdeploy_asgi.releases.release import Release


def test_a_relative_name_is_looked_up_in_each_release_dir(tmp_path: Path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    (second / "app-1.0").mkdir(parents=True)
    assert confined("app-1.0", [str(first), str(second)]) == second / "app-1.0"
    assert confined("app-2.0", [str(first), str(second)]) == first / "app-2.0", "the first if none"


def test_dot_dot_and_links_cannot_lead_outside(tmp_path: Path):
    root = tmp_path / "releases"
    root.mkdir()
    (root / "escape").symlink_to("/etc")
    for path in ("../x", str(tmp_path / "x"), "escape", "escape/passwd"):
        with pytest.raises(PathNotAllowed, match="is not inside a release directory"):
            confined(path, [str(root)])


def test_a_name_too_long_for_the_file_system_is_not_found_rather_than_an_error(tmp_path: Path):
    """Found by schemathesis: os.stat raised ENAMETOOLONG, a 500 over HTTP."""
    long_name = "\u1e70\u033a" * 200  # 1,000 bytes in UTF-8, past NAME_MAX
    found = confined(long_name, [str(tmp_path)])
    assert found == tmp_path / long_name


def test_no_release_dir_deploys_nothing():
    with pytest.raises(PathNotAllowed, match="no release directory is configured"):
        confined("app-1.0", [])


def test_loading_a_release_whose_name_is_too_long_is_a_release_error(tmp_path: Path):
    with pytest.raises(ReleaseError, match="cannot read release .*: File name too long"):
        Release.load(tmp_path / ("x" * 1000))
