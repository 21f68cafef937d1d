"""The `beamdeploy` command: help pages, and how status and releases read."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from beamdeploy_asgi.cli import format_releases, format_status

COMMANDS = ["upgrade", "rollback", "status", "drain", "undrain", "releases", "build"]
DIGEST = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def beamdeploy(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command for real, 80 columns wide like a plain terminal."""
    return subprocess.run(
        [sys.executable, "-m", "beamdeploy_asgi", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "80"},
    )


def flat(text: str) -> str:
    """Help text with argparse's line wrapping undone."""
    return " ".join(text.split())


# -- help pages -----------------------------------------------------------------


def test_top_level_help_lists_each_command_with_its_usage():
    shown = beamdeploy("--help")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: beamdeploy [-h] [--version] COMMAND ...\n")
    assert shown.stdout.count("usage:") == 1
    text = flat(shown.stdout)
    assert "serve run the arbiter (takes gunicorn's options: see serve --help)" in text
    assert "upgrade swap the service to a release, blue-green" in text
    assert "rollback swap back to the previous release, blue-green" in text
    assert "status show generations, workers and deployments" in text
    assert "releases list the releases kept in the store" in text
    assert "build build a release artifact from a project" in text
    assert "beamdeploy serve [GUNICORN OPTIONS] [--release DIR_OR_ARTIFACT] [APP_MODULE]" in text
    assert (
        "beamdeploy upgrade [-h] [--strategy {blue-green,rolling}] [--max-surge N] "
        "[--bake SECONDS] [--bake-max-error-rate SHARE] [--state-dir DIR] [--json] "
        "[--no-wait] [--timeout SECONDS] RELEASE" in text
    )
    assert "beamdeploy rollback [-h] [--to VERSION]" in text
    assert "beamdeploy status [-h] [--state-dir DIR] [--json] [-v]" in text
    assert "drain mark the host draining: /_deploy/health answers 503" in text
    assert "undrain remove the drain mark: /_deploy/health answers 200 again" in text
    assert "beamdeploy drain [-h] [--state-dir DIR] [--json]" in text
    assert "beamdeploy undrain [-h] [--state-dir DIR] [--json]" in text
    assert "beamdeploy COMMAND --help" in text


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_a_help_page_of_its_own(command: str):
    shown = beamdeploy(command, "--help")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"usage: beamdeploy {command} [-h]")
    assert shown.stdout.count("usage:") == 1
    for other in ["serve", *COMMANDS]:
        if other != command:
            assert f"beamdeploy {other} [" not in shown.stdout
    if command != "build":
        assert "--state-dir DIR the arbiter's state directory" in flat(shown.stdout)
        assert "(default: $BEAMDEPLOY_STATE_DIR, else .beamdeploy)" in flat(shown.stdout)


@pytest.mark.parametrize("command", ["upgrade", "rollback"])
def test_timeout_is_described_with_its_default(command: str):
    text = flat(beamdeploy(command, "--help").stdout)
    assert (
        "--timeout SECONDS give up when the arbiter has sent nothing for SECONDS: exit 1 "
        "with 'the arbiter did not answer in time'; the deployment goes on in the arbiter "
        "(default: wait as long as the deployment takes)" in text
    )
    assert "--no-wait return once the deployment has started" in text


def test_status_help_describes_verbose():
    text = flat(beamdeploy("status", "--help").stdout)
    assert "-v, --verbose also show, under each worker, the file that defines its app" in text


def test_build_help_gives_each_default():
    text = flat(beamdeploy("build", "--help").stdout)
    assert "usage: beamdeploy build [-h] [-o OUTDIR] [--app MODULE:ATTR]" in text
    assert "where to write the artifact (default: dist)" in text
    assert "(default: [tool.beamdeploy] app of pyproject.toml)" in text


def test_serve_help_is_gunicorns_option_list_in_plain_text():
    shown = beamdeploy("serve", "--help")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: beamdeploy serve [OPTIONS] [APP_MODULE]\n")
    text = flat(shown.stdout)
    for option in ("--bind ADDRESS", "--workers INT", "--timeout INT", "--graceful-timeout"):
        assert option in text  # gunicorn's
    for option in ("--release DIR", "--state-dir DIR", "--boot-timeout SECONDS"):
        assert option in text  # beamdeploy's
    assert (
        "-k STRING, --worker-class STRING The type of workers to use. "
        "(default: beamdeploy_asgi.Worker)" in text
    )
    assert "[sync]" not in text and "(default: sync)" not in text
    assert ":ref:" not in text and "``" not in text
    assert not re.search(r":\w+:`", text), "a Sphinx role is left"
    assert "-c CONFIG, --config CONFIG The Gunicorn config file." in text
    assert "Implies check-config." in text
    # Whole first paragraphs, not sentences cut at a line break.
    assert "The exit status is 0 if the configuration is correct" in text
    assert "Defaults to $BEAMDEPLOY_STATE_DIR, else .beamdeploy" in text


def test_versions():
    assert beamdeploy("--version").stdout.startswith("beamdeploy 0.")
    served = beamdeploy("serve", "--version")
    assert re.match(r"beamdeploy serve \S+ \(gunicorn \S+\)", served.stdout), served.stdout


def test_serve_still_parses_gunicorn_options(tmp_path: Path):
    shown = beamdeploy(
        "serve",
        "--check-config",
        "--workers",
        "3",
        "--bind",
        "127.0.0.1:0",
        "--keep-releases",
        "2",
        "--state-dir",
        str(tmp_path / "state"),
        "json:dumps",
        cwd=tmp_path,
    )
    assert shown.returncode == 0, shown.stderr
    assert "first release:" in shown.stdout


def test_bad_timeout_is_refused_with_the_commands_usage():
    refused = beamdeploy("upgrade", "x.tar.gz", "--timeout", "0")
    assert refused.returncode == 2
    assert refused.stderr.startswith("usage: beamdeploy upgrade")
    assert "--timeout: must be a positive number of seconds, not 0" in refused.stderr


# -- status -----------------------------------------------------------------------


def release(version: str, digest: str | None = DIGEST) -> dict[str, Any]:
    return {
        "name": "demo",
        "version": version,
        "app": "demo.app:app",
        "path": f"/srv/state/releases/demo-{version}",
        "python": f"/srv/state/releases/demo-{version}/venv/bin/python",
        "artifact_sha256": digest,
    }


def worker(pid: int, state: str = "serving", **extra: Any) -> dict[str, Any]:
    return {"pid": pid, "state": state, **extra}


def deployment(id: str, kind: str, to: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    return {
        "id": id,
        "kind": kind,
        "to": to,
        "phase": "done",
        "outcome": "succeeded",
        "error": None,
        **extra,
    }


def status_of(**changes: Any) -> dict[str, Any]:
    """A status as the arbiter reports it: generation 2 serves, 1 drains."""
    app_file = "/srv/state/releases/demo-1.1.0/venv/lib/python3.11/site-packages/demo/app.py"
    status = {
        "arbiter": {
            "pid": 5707,
            "listeners": ["http://127.0.0.1:4000"],
            "state_dir": "/srv/state",
        },
        "serving": {
            "generation": 2,
            "state": "serving",
            "release": release("1.1.0"),
            "workers": [
                worker(5902, app_file=app_file, artifact_sha256=DIGEST),
                worker(5903, app_file=app_file, artifact_sha256=DIGEST),
            ],
        },
        "booting": [],
        "draining": [
            {
                "generation": 1,
                "state": "draining",
                # An older arbiter: neither the release nor the worker has the new keys.
                "release": {k: v for k, v in release("1.0.0").items() if k != "artifact_sha256"},
                "workers": [worker(5801, "draining")],
            }
        ],
        "upgrading": False,
        "deployment": None,
        "deployments": [
            deployment(
                "c0ffee000001",
                "upgrade",
                {"artifact": "/srv/state/uploads/demo-1.2.0.tar.gz"},
                phase="failed",
                outcome="failed",
                error="demo-1.2.0.tar.gz: not a gzip file\nTraceback ...",
            ),
            deployment("b4bd13c0fefd", "upgrade", release("1.1.0")),
            deployment("e1a0c2a6d3f9", "boot", release("1.0.0")),
        ],
    }
    status.update(changes)
    return status


def test_status_lists_generations_workers_and_deployments():
    assert format_status(status_of()).splitlines() == [
        "arbiter pid 5707 on http://127.0.0.1:4000",
        "state dir /srv/state",
        "serving: generation 2, demo 1.1.0 (/srv/state/releases/demo-1.1.0)",
        "  worker    5902  serving",
        "  worker    5903  serving",
        "draining: generation 1, demo 1.0.0 (/srv/state/releases/demo-1.0.0)",
        "  worker    5801  draining",
        "recent deployments:",
        "  c0ffee000001  upgrade    demo-1.2.0.tar.gz failed: demo-1.2.0.tar.gz: not a gzip file",
        "  b4bd13c0fefd  upgrade    demo 1.1.0      succeeded",
        "  e1a0c2a6d3f9  boot       demo 1.0.0      succeeded",
    ]


def test_status_says_whether_the_host_is_marked_draining():
    since = time.mktime((2026, 11, 27, 10, 5, 12, 0, 0, -1))
    drained = format_status(status_of(host={"draining": True, "since": since}))
    assert drained.splitlines()[2] == (
        "host: draining since 2026-11-27 10:05:12 (health answers 503; the workers still serve)"
    )
    serving = format_status(status_of(host={"draining": False, "since": None}))
    assert serving.splitlines()[2] == "host: serving (health answers 200)"


def test_status_verbose_shows_each_workers_app_file_and_artifact_digest():
    lines = format_status(status_of(), verbose=True).splitlines()
    app_file = "/srv/state/releases/demo-1.1.0/venv/lib/python3.11/site-packages/demo/app.py"
    at = lines.index("  worker    5902  serving")
    assert lines[at + 1 : at + 4] == [
        f"    app file         {app_file}",
        f"    artifact sha256  {DIGEST}",
        "  worker    5903  serving",
    ]
    # Keys an older arbiter does not send read as "-".
    at = lines.index("  worker    5801  draining")
    assert lines[at + 1 : at + 3] == ["    app file         -", "    artifact sha256  -"]


def test_status_verbose_takes_the_releases_digest_when_the_worker_has_none():
    serving = {"generation": 3, "release": release("1.2.0"), "workers": [worker(6001)]}
    lines = format_status(status_of(serving=serving, draining=[]), verbose=True).splitlines()
    assert f"    artifact sha256  {DIGEST}" in lines
    assert "    app file         -" in lines


def test_status_verbose_prints_a_dash_for_a_release_not_installed_from_an_artifact():
    plain_release = release("1.2.0", digest=None)
    serving = {
        "generation": 3,
        "release": plain_release,
        "workers": [worker(6001, app_file="/srv/app/demo/app.py", artifact_sha256=None)],
    }
    lines = format_status(status_of(serving=serving), verbose=True).splitlines()
    assert lines[3:6] == [
        "  worker    6001  serving",
        "    app file         /srv/app/demo/app.py",
        "    artifact sha256  -",
    ]


def test_status_names_the_artifact_of_a_deployment_still_installing():
    installing = deployment(
        "d00d00000002",
        "upgrade",
        {"artifact": "/home/me/dist/demo-1.3.0.tar.gz"},
        phase="installing",
        outcome=None,
    )
    text = format_status(status_of(deployment=installing, deployments=[installing], upgrading=True))
    assert "upgrade in progress: d00d00000002 (installing) to demo-1.3.0.tar.gz" in text
    assert "  d00d00000002  upgrade    demo-1.3.0.tar.gz installing" in text


def test_status_without_a_serving_generation():
    text = format_status(status_of(serving=None, draining=[], deployments=[]))
    assert text.splitlines()[2:] == ["serving: nothing"]


# -- releases -------------------------------------------------------------------


def listed(
    version: str, installed_at: float, current: bool = False, **extra: Any
) -> dict[str, Any]:
    return {
        **release(version),
        "installed_at": installed_at,
        "current": current,
        "serving": current,
        **extra,
    }


def when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch))


def test_releases_in_the_order_given_with_current_and_failed_marks():
    reply = {
        "releases": [
            listed(
                "1.2.0",
                1795766400.0,
                failed={
                    "phase": "preflight",
                    "error": "ModuleNotFoundError: No module named 'demo.ap'",
                    "at": 1795766410.0,
                },
            ),
            listed("1.1.0", 1795766220.0, current=True, failed=None),
            listed("1.0.0", 1795766160.0),  # an older arbiter: no "failed" key
        ],
        "current": "/srv/state/releases/demo-1.1.0",
        "keep": 5,
    }
    assert format_releases(reply).splitlines() == [
        f"! demo 1.2.0        {when(1795766400.0)}  /srv/state/releases/demo-1.2.0"
        "  failed at preflight: ModuleNotFoundError: No module named 'demo.ap'",
        f"* demo 1.1.0        {when(1795766220.0)}  /srv/state/releases/demo-1.1.0",
        f"  demo 1.0.0        {when(1795766160.0)}  /srv/state/releases/demo-1.0.0",
    ]


def test_a_failed_release_shows_the_first_line_of_its_error_once_prefixed():
    failed = {"phase": "boot", "error": "boot: RuntimeError: no\n  more", "at": 1795766410.0}
    reply = {"releases": [listed("1.2.0", 1795766400.0, failed=failed)], "current": None}
    assert format_releases(reply).endswith("  failed at boot: RuntimeError: no")


def test_a_current_release_outside_the_store_is_shown():
    outside = "/srv/myapp/releases/1.4.0"
    alone = {"releases": [], "current": outside, "keep": 5}
    assert format_releases(alone) == f"* {outside}  (current, not in the store)"
    beside = {"releases": [listed("1.0.0", 1795766160.0)], "current": outside, "keep": 5}
    assert format_releases(beside).splitlines() == [
        f"* {outside}  (current, not in the store)",
        f"  demo 1.0.0        {when(1795766160.0)}  /srv/state/releases/demo-1.0.0",
    ]


def test_an_empty_store_says_so():
    assert format_releases({"releases": [], "current": None, "keep": 5}) == (
        "no releases in the store"
    )


# -- the commands against an arbiter's control socket ------------------------------


@pytest.fixture
def fake_arbiter(tmp_path: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A control socket answering each op with a canned reply, as the arbiter would."""
    replies: dict[str, Any] = {}
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "control.sock"))
    server.listen()
    server.settimeout(0.2)
    done = threading.Event()

    def answer() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                request = json.loads(conn.makefile().readline())
                conn.sendall(json.dumps({"result": replies[request["op"]]}).encode() + b"\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield tmp_path, replies
    done.set()
    thread.join()
    server.close()


def test_status_verbose_and_json_for_real(fake_arbiter: tuple[Path, dict[str, Any]]):
    state, replies = fake_arbiter
    replies["status"] = status_of()
    shown = beamdeploy("status", "-v", "--state-dir", str(state))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == format_status(status_of(), verbose=True) + "\n"
    assert f"    artifact sha256  {DIGEST}" in shown.stdout
    as_json = beamdeploy("status", "--json", "--state-dir", str(state))
    assert json.loads(as_json.stdout) == status_of()


def test_releases_and_json_for_real(fake_arbiter: tuple[Path, dict[str, Any]]):
    state, replies = fake_arbiter
    failed = {"phase": "boot", "error": "RuntimeError: boom", "at": 1795766410.0}
    replies["releases"] = {
        "releases": [
            listed("1.1.0", 1795766220.0, failed=failed),
            listed("1.0.0", 1795766160.0, current=True, failed=None),
        ],
        "current": "/srv/state/releases/demo-1.0.0",
        "keep": 5,
    }
    shown = beamdeploy("releases", "--state-dir", str(state))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("! demo 1.1.0 ")
    assert lines[0].endswith("failed at boot: RuntimeError: boom")
    assert lines[1].startswith("* demo 1.0.0 ")
    as_json = beamdeploy("releases", "--json", "--state-dir", str(state))
    assert json.loads(as_json.stdout) == replies["releases"]
