"""A release's workers run the release's code, never a checkout lying around."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import httpx
import pytest

import beamdeploy_asgi
from beamdeploy_asgi.errors import DeploymentFailed
from tests.support.artifacts import write_project
from tests.support.load import Load
from tests.support.tokens import AUTH, TOKEN

GUNICORN = [sys.executable, "-m", "gunicorn"]
CHECKOUT_VERSION = "0.9.0-checkout"


def checkout(where: Path) -> Path:
    """An old checkout of the sample app: `where/sample/app.py` says 0.9.0-checkout."""
    project = write_project(where / "src", CHECKOUT_VERSION)
    shutil.copytree(project / "sample", where / "sample")
    return where


def served_versions(url: str, count: int = 20) -> set[str]:
    with httpx.Client() as client:
        return {client.get(url).text.split(" ", 1)[0] for _ in range(count)}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_upgrade_serves_the_release(server, artifact: Path, version: str) -> None:
    with Load(server.url, keepalive_clients=2, close_clients=1, max_seconds=90) as load:
        load.wait_requests(50)
        upgrade = server.cli("upgrade", str(artifact))
        assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
        load.wait_requests(50)
    assert load.result.failures == []
    assert list(dict.fromkeys(load.result.sequence)) == [CHECKOUT_VERSION, version]
    server.wait_for(lambda s: not s["draining"])
    assert served_versions(server.url) == {version}

    status = server.status()
    release = status["serving"]["release"]
    assert release["version"] == version
    installed = Path(release["path"])
    assert installed.parent == server.state_dir / "releases"
    for worker in status["serving"]["workers"]:
        app_file = Path(worker["app_file"])
        assert app_file.is_relative_to(installed / "venv"), app_file
        assert app_file.name == "app.py" and app_file.parent.name == "sample"
        assert worker["artifact_sha256"] == sha256(artifact)
    assert release["artifact_sha256"] == sha256(artifact)
    shown = server.cli("status", "-v")
    assert shown.returncode == 0, shown.stderr
    for worker in status["serving"]["workers"]:
        assert worker["app_file"] in shown.stdout
    assert sha256(artifact) in shown.stdout


def test_checkout_in_the_working_directory_does_not_shadow_a_release(serve, artifacts, offline):
    artifact = artifacts["1.1.0"]
    server = serve("--workers", "2", "sample.app:app", launch=False, env=offline)
    # PYTHONPATH naming the checkout must not reach a release's workers either.
    server.env["PYTHONPATH"] = str(server.workdir)
    checkout(server.workdir)
    server.start()
    assert served_versions(server.url) == {CHECKOUT_VERSION}
    first = server.status()["serving"]["workers"]
    assert {w["app_file"] for w in first} == {str(server.workdir / "sample" / "app.py")}
    assert {w["artifact_sha256"] for w in first} == {None}

    check_upgrade_serves_the_release(server, artifact, "1.1.0")


def test_gunicorn_chdir_checkout_does_not_shadow_a_release(serve, artifacts, offline, tmp_path):
    artifact = artifacts["1.1.0"]
    app_dir = checkout(tmp_path / "app-checkout")
    server = serve(
        "-k",
        "beamdeploy_asgi.Worker",
        "--workers",
        "2",
        "--chdir",
        str(app_dir),
        "sample.app:app",
        command=GUNICORN,
        env=offline,
    )
    assert served_versions(server.url) == {CHECKOUT_VERSION}
    check_upgrade_serves_the_release(server, artifact, "1.1.0")


def shadowed_release(releases, tmp_path: Path) -> tuple[Path, Path]:
    """A release whose venv has a .pth file pointing at an old checkout (an editable install)."""
    where = checkout(tmp_path / "editable-checkout")
    release = releases.custom(
        "shadowed",
        "",
        app="sample.app:app",
        manifest_extra={"pythonpath": []},
    )
    (site,) = (release / "venv" / "lib").glob("python*/site-packages")
    (site / "editable_sample.pth").write_text(str(where) + "\n")
    return release, where / "sample" / "app.py"


def test_app_imported_from_outside_its_release_is_refused(serve, releases, tmp_path):
    release, outside = shadowed_release(releases, tmp_path)
    expected = f"sample.app was imported from {outside}, outside release {release}"

    server = serve("--workers", "2", "--release", str(releases["v1"]))
    with pytest.raises(DeploymentFailed) as failed:
        beamdeploy_asgi.upgrade(release, state_dir=server.state_dir)
    assert failed.value.deployment["phase"] == "failed"
    assert expected in failed.value.deployment["error"]
    assert served_versions(server.url) == {"v1"}

    # Booted without a preflight, each worker checks for itself.
    first = serve("--workers", "1", "--release", str(release), launch=False)
    first.start(expect_serving=False)
    assert first.proc.wait(60) == 3
    assert expected in first.log()


def test_admin_status_shows_each_workers_app_file(serve, releases):
    server = serve(
        "--workers", "2", "--release", str(releases["v1"]), env={"BEAMDEPLOY_TOKEN": TOKEN}
    )
    answer = httpx.get(server.url + "/_deploy/status", headers=AUTH)
    assert answer.status_code == 200
    workers = answer.json()["serving"]["workers"]
    assert [w["app_file"] for w in workers] == [str(releases["v1"] / "app" / "main.py")] * 2
    assert [w["artifact_sha256"] for w in workers] == [None, None]
