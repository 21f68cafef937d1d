"""Artifacts deployed into the store offline, rolled back, remembered across restarts."""

from __future__ import annotations

import json
import os
import sys

import httpx

import beamdeploy_asgi
from tests.support.load import Load
from tests.support.tokens import AUTH, TOKEN


def versions(load) -> list[str]:
    return list(dict.fromkeys(load.result.sequence))


def test_artifacts_offline_upgrade_rollback_restart(serve, artifacts, offline):
    a1, a2 = artifacts["1.0.0"], artifacts["1.1.0"]
    server = serve("--workers", "2", "--release", str(a1), env=offline)
    status = server.status()
    store = server.state_dir / "releases"
    assert status["serving"]["release"]["path"] == str(store / "sample-1.0.0")
    boot = status["deployments"][0]
    assert boot["kind"] == "boot" and "install" in boot["timings"]
    # Compiled at install: the sealed venv is read-only to the workers.
    assert list((store / "sample-1.0.0" / "venv").rglob("uvicorn/__pycache__/main.*.pyc"))

    with Load(server.url, keepalive_clients=4, close_clients=2, max_seconds=120) as load:
        load.wait_requests(100)
        upgrade = server.cli("upgrade", str(a2))
        assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
        for phase in ("installing", "preflight", "booting", "promoted", "done"):
            assert f" {phase} " in upgrade.stdout
        load.wait_requests(100)
        rollback = server.cli("rollback")
        assert rollback.returncode == 0, rollback.stdout + rollback.stderr
        load.wait_requests(100)
    assert load.result.failures == []
    assert versions(load) == ["1.0.0", "1.1.0"]
    assert load.result.sequence[-1] == "1.0.0", "rolled back"
    assert server.status()["serving"]["release"]["version"] == "1.0.0"
    assert (server.state_dir / "current").resolve() == store / "sample-1.0.0"

    listed = json.loads(server.cli("releases", "--json").stdout)
    assert [(r["version"], r["current"]) for r in listed["releases"]] == [
        ("1.1.0", False),
        ("1.0.0", True),
    ], "newest first"
    human = server.cli("releases").stdout
    assert "* sample 1.0.0" in human and "  sample 1.1.0" in human

    # The same artifact again reuses the installed release.
    again = beamdeploy_asgi.upgrade(a2, state_dir=server.state_dir)
    assert any("already installed" in e["message"] for e in again["events"])
    assert sorted(p.name for p in store.iterdir()) == ["sample-1.0.0", "sample-1.1.0"]
    back = beamdeploy_asgi.rollback(to="1.0.0", state_dir=server.state_dir)
    assert back["kind"] == "rollback" and back["to"]["version"] == "1.0.0"

    ids = [d["id"] for d in server.status()["deployments"]]
    server.stop()
    restarted = serve("--workers", "1", launch=False, env=offline)
    restarted.state_dir = server.state_dir
    index = restarted.command.index("--state-dir")
    restarted.command[index + 1] = str(server.state_dir)
    restarted.start()
    status = restarted.status()
    assert status["serving"]["release"]["version"] == "1.0.0", "the deployed release is booted"
    assert httpx.get(restarted.url).text.startswith("1.0.0 sample")
    history = [d["id"] for d in status["deployments"]]
    assert history[1 : 1 + len(ids)] == ids[: len(history) - 1], "history survived the restart"
    kinds = [d["kind"] for d in status["deployments"]]
    assert kinds[:5] == ["boot", "rollback", "upgrade", "rollback", "upgrade"]
    assert all(d["outcome"] == "succeeded" for d in status["deployments"])


def test_upload_over_http_and_its_limits(serve, artifacts, releases, tmp_path):
    server = serve(
        "--workers",
        "1",
        "--release",
        str(releases["v1"]),
        "--max-upload-size",
        str(50 * 1024 * 1024),
        env={"BEAMDEPLOY_TOKEN": TOKEN},
    )
    body = artifacts["1.1.0"].read_bytes()
    answer = httpx.post(
        server.url + "/_deploy/upgrade?wait=true",
        content=body,
        headers={**AUTH, "Content-Type": "application/gzip"},
        timeout=300,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["to"]["version"] == "1.1.0"
    assert httpx.get(server.url).text.startswith("1.1.0 sample")
    uploads = server.state_dir / "uploads"
    assert list(uploads.iterdir()) == [], "the upload is removed once installed"

    small = serve(
        "--workers",
        "1",
        "--release",
        str(releases["v1"]),
        "--max-upload-size",
        "1000",
        env={"BEAMDEPLOY_TOKEN": TOKEN},
    )
    refused = httpx.post(
        small.url + "/_deploy/upgrade",
        content=body,
        headers={**AUTH, "Content-Type": "application/gzip"},
    )
    assert refused.status_code == 413 and refused.json()["error"] == "payload_too_large"

    def chunks():
        yield body[:500]
        yield body[500:3000]

    streamed = httpx.post(
        small.url + "/_deploy/upgrade",
        content=chunks(),
        headers={**AUTH, "Content-Type": "application/gzip"},
    )
    assert streamed.status_code == 413
    assert list((small.state_dir / "uploads").iterdir()) == []
    garbage = httpx.post(
        server.url + "/_deploy/upgrade?wait=true",
        content=b"not an archive",
        headers={**AUTH, "Content-Type": "application/gzip"},
        timeout=60,
    )
    assert garbage.status_code == 422
    assert "not a gzip-compressed tar archive" in garbage.json()["detail"]
    assert list(uploads.iterdir()) == []
    assert server.status()["serving"]["release"]["version"] == "1.1.0"


def test_keep_releases_prunes_the_oldest_but_never_current_or_previous(serve, artifacts):
    server = serve("--workers", "1", "--keep-releases", "2", "--release", str(artifacts["1.0.0"]))
    for version in ("1.1.0", "1.2.0"):
        beamdeploy_asgi.upgrade(artifacts[version], state_dir=server.state_dir)
    server.wait_for(lambda s: not s["draining"])  # a draining generation keeps its release
    # Pruning renames a release to a hidden name, then removes it in the background.
    names = sorted(
        p.name for p in (server.state_dir / "releases").iterdir() if not p.name.startswith(".")
    )
    assert names == ["sample-1.1.0", "sample-1.2.0"]
    assert "removed old release" in server.log()
    back = beamdeploy_asgi.rollback(state_dir=server.state_dir)
    assert back["to"]["version"] == "1.1.0"


def test_rollback_without_a_previous_release_says_so(serve, artifacts):
    server = serve("--workers", "1", "--release", str(artifacts["1.0.0"]))
    done = server.cli("rollback")
    assert done.returncode == 1 and "no previous release to roll back to" in done.stderr
    done = server.cli("rollback", "--to", "9.9.9")
    assert done.returncode == 1 and "no kept release has version '9.9.9'" in done.stderr


def test_preflight_refuses_a_broken_release_and_none_of_its_workers_serves(serve, releases):
    server = serve("--workers", "2", "--release", str(releases["v1"]))
    broken = releases.custom("preflight-broken", "import no_such_module_anywhere\n")
    done = server.cli("upgrade", str(broken))
    assert done.returncode == 1
    # The workers boot beside the preflight, fail the same import, and are
    # stopped; the preflight's verdict is the one reported.
    assert "preflight: could not import main:app: ModuleNotFoundError" in done.stderr
    assert " stopping " in done.stdout and " promoting " not in done.stdout
    status = server.status()
    assert status["serving"]["release"]["version"] == "v1" and status["booting"] == []
    assert httpx.get(server.url).text.startswith("v1 gen=1 ")
    failed = status["deployments"][0]
    assert failed["outcome"] == "failed" and failed["error"].startswith("preflight: could not")


def test_http_path_to_an_artifact_in_a_release_dir(serve, artifacts, releases):
    artifact = artifacts["1.2.0"]
    server = serve(
        "--workers",
        "1",
        "--release",
        str(releases["v1"]),
        "--release-dir",
        str(artifact.parent),
        env={"BEAMDEPLOY_TOKEN": TOKEN},
    )
    answer = httpx.post(
        server.url + "/_deploy/upgrade?wait=true",
        json={"release": artifact.name},
        headers=AUTH,
        timeout=300,
    )
    assert answer.status_code == 200, answer.text
    phases = [e["phase"] for e in answer.json()["events"]]
    assert phases[0] == "installing" and "preflight" in phases
    assert httpx.get(server.url).text.startswith("1.2.0 sample")
    assert artifact.exists(), "an artifact from a release dir is the operator's; it stays"


def test_release_python_builds_the_venv_and_is_checked(serve, artifacts, releases, tmp_path):
    not_python = tmp_path / "not-python"
    not_python.write_text("#!/bin/sh\necho 2.7\n")
    not_python.chmod(0o755)
    server = serve(
        "--workers", "1", "--release", str(releases["v1"]), "--release-python", str(not_python)
    )  # fmt: skip
    refused = server.cli("upgrade", str(artifacts["1.0.0"]))
    assert refused.returncode == 1
    built_for = f"{sys.version_info.major}.{sys.version_info.minor}"  # built by this Python
    assert (
        f"the release was built for Python {built_for}, but --release-python {not_python} "
        "is Python 2.7"
    ) in refused.stderr
    assert server.status()["serving"]["release"]["version"] == "v1"
    assert list((server.state_dir / "releases").iterdir()) == []

    chosen = serve("--workers", "1", "--release", str(artifacts["1.0.0"]), "--release-python",
                   sys.executable)  # fmt: skip
    venv = chosen.state_dir / "releases" / "sample-1.0.0" / "venv"
    assert os.path.realpath(venv / "bin" / "python") == os.path.realpath(sys.executable)


def test_failed_releases_are_marked_skipped_by_rollback_and_take_no_slot(serve, artifacts, offline):
    good1, good2, bad = artifacts["1.0.0"], artifacts["1.1.0"], artifacts.broken("6.6.6")
    server = serve("--workers", "1", "--keep-releases", "2", "--release", str(good1), env=offline)
    upgrade = server.cli("upgrade", str(good2))
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    failed = server.cli("upgrade", str(bad))
    assert failed.returncode == 1 and "RuntimeError: broken at import" in failed.stderr

    listed = json.loads(server.cli("releases", "--json").stdout)["releases"]
    assert [r["version"] for r in listed] == ["6.6.6", "1.1.0", "1.0.0"], "newest first"
    assert [bool(r["failed"]) for r in listed] == [True, False, False], "it takes no slot"
    assert listed[0]["failed"]["phase"] == "preflight"
    assert "RuntimeError: broken at import" in listed[0]["failed"]["error"]
    human = server.cli("releases").stdout.splitlines()
    assert human[0].startswith("! sample 6.6.6") and "failed at preflight" in human[0]

    refused = server.cli("rollback", "--to", "6.6.6")
    assert refused.returncode == 1
    assert "release 6.6.6 failed at preflight when last deployed" in refused.stderr
    assert server.status()["serving"]["release"]["version"] == "1.1.0"
    back = server.cli("rollback", "--to", "1.0.0")
    assert back.returncode == 0, back.stdout + back.stderr
    assert httpx.get(server.url).text.startswith("1.0.0 sample")
