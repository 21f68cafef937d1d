"""`beamdeploy build` refuses what would fail on the host, and says why.

Every case is a real build (pip and uv for real, a real package index for the
packages that exist, a --find-links directory for the ones made here).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from beamdeploy_asgi.errors import ReleaseError
from beamdeploy_asgi.releases.collect import check_offline_install
from tests.support.artifacts import local_package, repack, wheel_bytes, write_project

REPO = Path(__file__).resolve().parents[2]


def build(project: Path, out: Path, *args: str, links: Path | None = None):
    env = dict(os.environ)
    if links is not None:
        env["PIP_FIND_LINKS"] = str(links)
    return subprocess.run(
        [sys.executable, "-m", "beamdeploy_asgi", "build", str(project), "-o", str(out), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def beamdeploy_starlette_minimum() -> str:
    text = (REPO / "pyproject.toml").read_text()
    return re.search(r'"starlette(>=[^"]+)"', text).group(1)


def test_a_direct_reference_in_pyproject_is_refused_by_name(tmp_path: Path):
    links = tmp_path / "links"
    dep = local_package(links, "beamdeploy-test-dep")
    direct = f"beamdeploy-test-dep @ {dep.as_uri()}"
    project = write_project(tmp_path, "1.0.0", ("starlette", direct))
    done = build(project, tmp_path / "out")
    assert done.returncode == 1
    assert direct in done.stderr and "pyproject.toml [project] dependencies" in done.stderr
    assert "no network and no package index" in done.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_vcs_requirement_in_requirements_txt_is_refused_before_any_download(tmp_path: Path):
    app = tmp_path / "plainapp"
    app.mkdir()
    (app / "main.py").write_text("app = None\n")
    (app / "requirements.txt").write_text(
        "starlette\n# a comment\n"
        "git+https://example.invalid/acme/toolkit.git@v1#egg=toolkit\n"
        "-e ./libs/helpers\n"
    )
    done = build(app, tmp_path / "out", "--app", "main:app", "--version", "1")
    assert done.returncode == 1
    assert "git+https://example.invalid/acme/toolkit.git@v1#egg=toolkit" in done.stderr
    assert "(requirements.txt line 3)" in done.stderr
    assert "-e ./libs/helpers   (requirements.txt line 4)" in done.stderr
    assert "collecting" not in done.stdout  # refused before pip ran


def test_a_direct_reference_in_a_dependency_wheel_is_refused_by_name(tmp_path: Path):
    links = tmp_path / "links"
    dep = local_package(links, "beamdeploy-test-dep")
    direct = f"beamdeploy-test-dep @ {dep.as_uri()}"
    local_package(links, "beamdeploy-test-wrapper", dependencies=(direct,))
    project = write_project(tmp_path, "1.0.0", ("starlette", "beamdeploy-test-wrapper"))
    done = build(project, tmp_path / "out", links=links)
    assert done.returncode == 1, done.stdout
    assert direct in done.stderr
    assert "(Requires-Dist of beamdeploy_test_wrapper-1.0-py" in done.stderr, done.stderr


def test_an_sdist_only_dependency_is_refused_by_name(tmp_path: Path):
    links = tmp_path / "links"
    local_package(links, "beamdeploy-test-sdist-only", sdist_only=True)
    project = write_project(tmp_path, "1.0.0", ("starlette", "beamdeploy-test-sdist-only"))
    done = build(project, tmp_path / "out", links=links)
    assert done.returncode == 1, done.stdout
    assert "No matching distribution found for beamdeploy-test-sdist-only" in done.stderr
    assert "only a source distribution (sdist)" in done.stderr
    assert "A release bundles published wheels only" in done.stderr


def test_a_resolver_conflict_shows_who_wants_what(tmp_path: Path):
    project = write_project(tmp_path, "1.0.0", ("starlette<0.30",))
    done = build(project, tmp_path / "out")
    assert done.returncode == 1, done.stdout
    assert "conflicting dependencies" in done.stderr
    assert "The conflict is caused by:" in done.stderr
    assert "sample 1.0.0 depends on starlette<0.30" in done.stderr
    assert f"beamdeploy-asgi 0.1.0 depends on starlette{beamdeploy_starlette_minimum()}" in (
        done.stderr
    )


def test_the_offline_check_refuses_wheels_that_do_not_resolve_alone(tmp_path: Path, artifacts):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with tarfile.open(artifacts["1.0.0"]) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if member.name.startswith("wheels/") and not name.startswith("starlette-"):
                (wheels / name).write_bytes(tar.extractfile(member).read())
    with pytest.raises(ReleaseError) as refused:
        check_offline_install(wheels, tmp_path)
    message = str(refused.value)
    assert message.startswith("the offline install check (what the host will run) failed:")
    assert "starlette" in message and "depends on starlette" in message


def without_wheel(artifact: Path, prefix: str, out: Path) -> Path:
    """The artifact minus one wheel, its manifest updated: it unpacks and verifies, then fails."""
    with tarfile.open(artifact) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar]
    with tarfile.open(out, "w:gz") as tar:
        for info, data in members:
            if info.name.startswith(f"wheels/{prefix}"):
                continue
            if info.name == "beamdeploy-release.json":
                manifest = json.loads(data)
                manifest["files"] = {
                    k: v
                    for k, v in manifest["files"].items()
                    if not k.startswith(f"wheels/{prefix}")
                }
                data = json.dumps(manifest).encode()
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out


def run_installer(artifact: Path, state: Path, installer: str, env: dict) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "beamdeploy_asgi.releases.install",
            str(artifact),
            "--state-dir",
            str(state),
            "--installer",
            installer,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    assert done.returncode == 1 and done.stdout, done.stderr
    assert not list((state / "releases").iterdir()), "nothing left in the store"
    return json.loads(done.stdout.splitlines()[-1])["error"]


def test_a_missing_wheel_on_the_host_is_named_before_any_install(
    tmp_path: Path, artifacts, offline
):
    broken = without_wheel(artifacts["1.0.0"], "starlette-", tmp_path / "sample-1.0.0.tar.gz")
    error = run_installer(broken, tmp_path / "state", "auto", offline)
    assert error.startswith("the artifact's wheels are not a complete set: ")
    assert "requires starlette" in error and "bundles no wheel of starlette" in error


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_a_failed_install_on_the_host_shows_the_installers_error(
    tmp_path: Path, artifacts, offline, installer
):
    # Metadata that checks out, for a platform this host is not.
    foreign = "wheels/oddplat-1.0-cp311-cp311-win_amd64.whl"
    wheel = wheel_bytes("oddplat", "1.0", {"oddplat/__init__.py": ""}, [])
    artifact = repack(artifacts["1.0.0"], tmp_path / "sample-1.0.0.tar.gz", {foreign: wheel})
    error = run_installer(artifact, tmp_path / "state", installer, offline)
    header, _, cause = error.partition("\n")
    assert header == "the offline install failed:"
    assert "oddplat" in cause, error  # the installer's own words, not an empty cause


def test_an_installer_failing_silently_is_named_with_its_exit_code():
    from beamdeploy_asgi.releases.install import _run

    with pytest.raises(ReleaseError) as failed:
        _run(["/bin/sh", "-c", "exit 7", "sh", "a.whl", "b.whl"])
    assert str(failed.value) == (
        "the offline install failed:\nsh -c exit 7 sh ... exited with code 7 and printed nothing"
    )
