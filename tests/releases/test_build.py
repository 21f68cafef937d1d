"""`beamdeploy build`: one artifact with the app and every wheel it needs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.support.artifacts import write_project


def run_build(outdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`beamdeploy build ARGS -o OUTDIR`, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "beamdeploy_asgi", "build", *args, "-o", str(outdir)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def read_artifact(artifact: Path) -> tuple[dict, dict[str, bytes]]:
    with tarfile.open(artifact) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    return json.loads(files.pop("beamdeploy-release.json")), files


def test_build_a_packaged_project(tmp_path: Path):
    project = write_project(tmp_path, "2.0.0")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "beamdeploy_asgi",
            "build",
            str(project),
            "-o",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for step in (
        "building the wheel of sample 2.0.0",
        "collecting dependency wheels",
        "bundling beamdeploy-asgi",
        "built ",
    ):
        assert step in done.stdout
    manifest, files = read_artifact(tmp_path / "out" / "sample-2.0.0.tar.gz")
    assert manifest["name"] == "sample" and manifest["version"] == "2.0.0"
    assert manifest["app"] == "sample.app:app"
    assert manifest["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert manifest["platform"] == "any"  # every wheel is pure Python
    assert manifest["built_at"]
    wheels = {name.split("/")[1].split("-")[0].lower() for name in files}
    assert {"sample", "starlette", "beamdeploy_asgi", "uvicorn", "gunicorn"} <= wheels
    assert set(manifest["files"]) == set(files)
    for name, data in files.items():
        assert manifest["files"][name] == hashlib.sha256(data).hexdigest()


def test_build_an_unpackaged_app_honours_requirements_txt(tmp_path: Path):
    app = tmp_path / "plainapp"
    app.mkdir()
    (app / "main.py").write_text(
        "from starlette.applications import Starlette\napp = Starlette()\n"
    )
    (app / "requirements.txt").write_text("starlette==0.46.2\n")
    (app / ".venv").mkdir()
    (app / ".venv" / "junk").write_text("not shipped")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "beamdeploy_asgi",
            "build",
            str(app),
            "-o",
            str(tmp_path / "out"),
            "--app",
            "main:app",
            "--version",
            "0.3.0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    manifest, files = read_artifact(tmp_path / "out" / "plainapp-0.3.0.tar.gz")
    assert manifest["pythonpath"] == ["app"] and "app/main.py" in files
    assert not [n for n in files if ".venv" in n]
    assert "wheels/starlette-0.46.2-py3-none-any.whl" in files


def test_build_refuses_what_it_cannot_build(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ([str(empty)], "neither pyproject.toml nor requirements.txt"),
        ([str(tmp_path / "missing")], "is not a directory"),
    ]
    project = write_project(tmp_path, "1.0.0")
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('app = "sample.app:app"', ""))
    cases.append(([str(project)], "no app for the release (give it in [tool.beamdeploy] app"))
    for args, message in cases:
        done = run_build(tmp_path / "o", *args)
        assert done.returncode == 1 and message in done.stderr, done.stderr


def test_build_honours_uv_lock(tmp_path: Path):
    project = write_project(tmp_path, "3.0.0")
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('["starlette"]', '["starlette<0.47"]'))
    uv = Path(sys.executable).parent / "uv"
    locked = subprocess.run(
        [str(uv), "lock"], cwd=project, capture_output=True, text=True, timeout=300
    )
    assert locked.returncode == 0, locked.stderr
    # Loosen the requirement without re-locking: the lock, not the metadata, decides.
    pyproject.write_text(pyproject.read_text().replace('["starlette<0.47"]', '["starlette"]'))
    done = run_build(tmp_path / "o", str(project))
    assert done.returncode == 0, done.stderr
    assert "from uv-lock-requirements.txt" in done.stdout
    _, files = read_artifact(tmp_path / "o" / "sample-3.0.0.tar.gz")
    starlette = [name for name in files if name.startswith("wheels/starlette-")]
    assert len(starlette) == 1 and starlette[0].startswith("wheels/starlette-0.46.")


def test_install_with_pip_offline(tmp_path: Path, artifacts, offline):
    state = tmp_path / "state"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "beamdeploy_asgi.releases.install",
            str(artifacts["1.0.0"]),
            "--state-dir",
            str(state),
            "--installer",
            "pip",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **offline},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.splitlines()[-1])["result"]
    release = Path(result["path"])
    assert release == state / "releases" / "sample-1.0.0" and result["reused"] is False
    imported = subprocess.run(
        [
            str(release / "venv" / "bin" / "python"),
            "-c",
            "import sample.app, beamdeploy_asgi, uvicorn; print('ok')",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imported.stdout.strip() == "ok", imported.stderr


def test_a_requirements_txt_naming_the_project_itself_builds(tmp_path: Path):
    """`-e .` is the project, built from source like always, not a direct reference."""
    project = write_project(tmp_path, "4.0.0")
    (project / "requirements.txt").write_text("starlette==0.46.2\n-e .\n")
    done = run_build(tmp_path / "o", str(project))
    assert done.returncode == 0, done.stderr
    _, files = read_artifact(tmp_path / "o" / "sample-4.0.0.tar.gz")
    assert [n for n in files if n.startswith("wheels/sample-4.0.0-")]
    assert "wheels/starlette-0.46.2-py3-none-any.whl" in files
