"""The bundled wheel set is checked from metadata alone, before any venv is made."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from beamdeploy_asgi.releases.wheelset import check_wheel_set, read_wheel


def wheel(where: Path, name: str, version: str, *requires: str, metadata_name: str = "") -> Path:
    path = where / f"{name}-{version}-py3-none-any.whl"
    lines = ["Metadata-Version: 2.1", f"Name: {metadata_name or name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}-{version}.dist-info/METADATA", "\n".join(lines) + "\n")
        archive.writestr(f"{name}/__init__.py", "")
    return path


def test_a_complete_set_passes(tmp_path: Path):
    wheels = [
        wheel(
            tmp_path, "app", "1.0", "starlette>=0.33", "uvicorn[standard]; python_version >= '3'"
        ),
        wheel(tmp_path, "starlette", "0.40", "anyio>=3.4"),
        wheel(tmp_path, "anyio", "4.0"),
        wheel(tmp_path, "uvicorn", "0.30", "h11", "httptools>=0.5; extra == 'standard'"),
        wheel(tmp_path, "h11", "0.14"),
        wheel(tmp_path, "httptools", "0.6"),
        wheel(tmp_path, "tomli", "2.0", "never-installed; python_version < '3.0'"),
    ]
    check_wheel_set(wheels, "3.11")


@pytest.mark.parametrize(
    ("requires", "message"),
    [
        (
            "missing>=1",
            "app-1.0-py3-none-any.whl requires missing>=1, and the artifact bundles no wheel "
            "of missing",
        ),
        ("dep<1", "requires dep<1, and the artifact bundles dep-2.0-py3-none-any.whl"),
        (
            "evilpkg @ http://127.0.0.1:9/evilpkg-1.0.tar.gz",
            "a direct reference, which the host never follows",
        ),
        (
            "dep[fast]",
            'requires fastdep; extra == "fast", and the artifact bundles no wheel of fastdep',
        ),
    ],
)
def test_what_the_set_lacks_is_named(tmp_path: Path, requires: str, message: str):
    wheels = [
        wheel(tmp_path, "app", "1.0", requires),
        wheel(tmp_path, "dep", "2.0", 'fastdep; extra == "fast"'),
    ]
    with pytest.raises(ValueError) as refused:
        check_wheel_set(wheels, "3.11")
    assert message in str(refused.value)


def test_two_wheels_of_one_project_are_refused(tmp_path: Path):
    (tmp_path / "a").mkdir()
    wheels = [wheel(tmp_path, "dep", "1.0"), wheel(tmp_path / "a", "dep", "2.0")]
    with pytest.raises(ValueError, match="two wheels of dep"):
        check_wheel_set(wheels, "3.11")


def test_metadata_that_names_another_project_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="its metadata names 'other'"):
        read_wheel(wheel(tmp_path, "dep", "1.0", metadata_name="other"))


def test_a_file_that_is_not_a_zip_is_refused(tmp_path: Path):
    bogus = tmp_path / "dep-1.0-py3-none-any.whl"
    bogus.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="is not a readable wheel"):
        read_wheel(bogus)
