"""`beamdeploy build` with pip, without pip (pip run by uv), and from a `uv tool` install.

Each test installs the beamdeploy-asgi wheel of this checkout into a real
environment of that kind and runs its own `beamdeploy build` with a PATH that
has uv on it or not, as a user's shell would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from uv import find_uv_bin

from tests.support.artifacts import write_project

UV = find_uv_bin()
NO_UV_PATH = "/usr/local/bin:/usr/bin:/bin"


@pytest.fixture(scope="module")
def uv_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding only uv, to put on PATH."""
    directory = tmp_path_factory.mktemp("uv-bin")
    (directory / "uv").symlink_to(UV)
    return directory


def environment(path: str, wheel: Path, **more: str) -> dict[str, str]:
    """No venv of ours active; beamdeploy-asgi==VERSION is found next to the test wheel."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return {**env, "PATH": path, "PIP_FIND_LINKS": str(wheel.parent), **more}


def uv(*args: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run([UV, *args], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr


def has_pip(python: Path) -> bool:
    return subprocess.run([str(python), "-c", "import pip"], capture_output=True).returncode == 0


def run_build(beamdeploy: Path, tmp_path: Path, env: dict[str, str]):
    project = write_project(tmp_path, "1.0.0")
    return subprocess.run(
        [str(beamdeploy), "build", str(project), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def bundled(artifact: Path) -> set[str]:
    with tarfile.open(artifact) as tar:
        return {Path(n).name.split("-")[0].lower() for n in tar.getnames() if n.endswith(".whl")}


def test_build_in_a_uv_venv_without_pip(tmp_path: Path, release_factory, uv_bin, offline):
    venv = tmp_path / "venv"
    uv("venv", "--python", sys.executable, str(venv))
    uv("pip", "install", "--python", str(venv / "bin" / "python"), str(release_factory.wheel))
    assert not has_pip(venv / "bin" / "python")
    env = environment(f"{uv_bin}:{NO_UV_PATH}", release_factory.wheel)
    done = run_build(venv / "bin" / "beamdeploy", tmp_path, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "collecting dependency wheels from the project's metadata with pip run by uv" in (
        done.stdout
    )
    assert "checking with uv that the wheels install offline" in done.stdout
    artifact = tmp_path / "out" / "sample-1.0.0.tar.gz"
    assert {"sample", "beamdeploy_asgi", "starlette", "uvicorn", "gunicorn"} <= bundled(artifact)
    # And the host installs it offline, with the tools of this venv.
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "beamdeploy_asgi.releases.install", str(artifact)]
        + ["--state-dir", str(tmp_path / "state"), "--installer", "uv"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, **offline},
    )
    assert installed.returncode == 0, installed.stdout
    assert json.loads(installed.stdout.splitlines()[-1])["result"]["reused"] is False


def test_build_from_a_uv_tool_install(tmp_path: Path, release_factory, uv_bin):
    tools, bin_dir = tmp_path / "tools", tmp_path / "bin"
    env = environment(
        f"{bin_dir}:{uv_bin}:{NO_UV_PATH}",
        release_factory.wheel,
        UV_TOOL_DIR=str(tools),
        UV_TOOL_BIN_DIR=str(bin_dir),
    )
    uv("tool", "install", "--python", sys.executable, str(release_factory.wheel), env=env)
    assert not has_pip(tools / "beamdeploy-asgi" / "bin" / "python")
    done = run_build(bin_dir / "beamdeploy", tmp_path, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "with pip run by uv" in done.stdout
    assert {"sample", "beamdeploy_asgi", "starlette"} <= bundled(
        tmp_path / "out" / "sample-1.0.0.tar.gz"
    )


def test_build_with_pip_and_no_uv(tmp_path: Path, release_factory):
    venv = tmp_path / "venv"
    uv("venv", "--seed", "--python", sys.executable, str(venv))  # --seed: with pip
    uv("pip", "install", "--python", str(venv / "bin" / "python"), str(release_factory.wheel))
    assert has_pip(venv / "bin" / "python") and not (venv / "bin" / "uv").exists()
    env = environment(NO_UV_PATH, release_factory.wheel)
    done = run_build(venv / "bin" / "beamdeploy", tmp_path, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "collecting dependency wheels from the project's metadata with pip\n" in done.stdout
    assert "checking with pip that the wheels install offline" in done.stdout
    assert {"sample", "beamdeploy_asgi", "starlette"} <= bundled(
        tmp_path / "out" / "sample-1.0.0.tar.gz"
    )


def test_build_with_neither_pip_nor_uv_says_how_to_get_one(tmp_path: Path, release_factory):
    venv = tmp_path / "venv"
    uv("venv", "--python", sys.executable, str(venv))
    uv("pip", "install", "--python", str(venv / "bin" / "python"), str(release_factory.wheel))
    done = run_build(venv / "bin" / "beamdeploy", tmp_path, environment(NO_UV_PATH, Path(".")))
    assert done.returncode == 1
    assert "has neither" in done.stderr and "pipx install uv" in done.stderr
    assert "python -m ensurepip" in done.stderr
