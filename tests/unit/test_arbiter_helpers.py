"""Pure pieces of the arbiter: crash back-off and the rollback target."""

from __future__ import annotations

from pathlib import Path

import pytest

from beamdeploy_asgi.arbiter.pool import MAX_BACKOFF, backoff
from beamdeploy_asgi.arbiter.rollback import rollback_target


def test_backoff_respawns_at_once_then_doubles_up_to_a_cap():
    assert [backoff(n) for n in range(1, 6)] == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert backoff(0) == 0.0
    assert backoff(50) == MAX_BACKOFF


class FakeArbiter:
    """What a rollback reads: the serving release, the history, the store's releases."""

    def __init__(self, serving: str, history: list[dict], kept: list[dict]) -> None:
        self.serving = serving
        self.history = history
        self.kept = kept

    def rollback_target(self, version: str | None) -> str:
        return rollback_target(version, serving=self.serving, records=self.history, kept=self.kept)


def deployment(kind: str, frm: str | None, to: str, outcome: str = "succeeded") -> dict:
    return {
        "kind": kind,
        "outcome": outcome,
        "from": {"path": frm} if frm else None,
        "to": {"path": to, "version": Path(to).name},
    }


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, str]:
    made = {}
    for version in ("1.0", "1.1", "1.2"):
        (tmp_path / version).mkdir()
        made[version] = str(tmp_path / version)
    return made


def test_rollback_goes_to_what_served_before(paths):
    history = [  # newest first
        deployment("upgrade", paths["1.1"], paths["1.2"]),
        deployment("upgrade", paths["1.0"], paths["1.1"]),
        deployment("boot", None, paths["1.0"]),
    ]
    arbiter = FakeArbiter(paths["1.2"], history, [])
    assert arbiter.rollback_target(None) == paths["1.1"]


def test_a_restart_or_a_failed_deployment_is_not_a_step_to_go_back_to(paths):
    history = [
        deployment("upgrade", paths["1.1"], paths["1.2"], outcome="failed"),
        deployment("restart", paths["1.1"], paths["1.1"]),
        deployment("upgrade", paths["1.0"], paths["1.1"]),
    ]
    arbiter = FakeArbiter(paths["1.1"], history, [])
    assert arbiter.rollback_target(None) == paths["1.0"]


def test_nothing_to_go_back_to_says_so(paths):
    arbiter = FakeArbiter(paths["1.0"], [deployment("boot", None, paths["1.0"])], [])
    with pytest.raises(LookupError, match="no previous release to roll back to"):
        arbiter.rollback_target(None)


def test_a_removed_previous_release_is_not_offered(paths, tmp_path):
    gone = str(tmp_path / "0.9")
    arbiter = FakeArbiter(paths["1.0"], [deployment("upgrade", gone, paths["1.0"])], [])
    with pytest.raises(LookupError):
        arbiter.rollback_target(None)


def test_rollback_to_a_version_skips_failed_releases(paths):
    kept = [
        {"version": "1.1", "path": paths["1.1"], "failed": None},
        {"version": "1.2", "path": paths["1.2"], "failed": {"phase": "boot", "error": "boom"}},
    ]
    arbiter = FakeArbiter(paths["1.0"], [], kept)
    assert arbiter.rollback_target("1.1") == paths["1.1"]
    with pytest.raises(
        LookupError, match=r"release 1.2 failed at boot when last deployed \(boom\)"
    ):
        arbiter.rollback_target("1.2")
    with pytest.raises(LookupError, match="no kept release has version '9.9'"):
        arbiter.rollback_target("9.9")


def test_install_progress_names_the_command_that_runs():
    from beamdeploy_asgi.arbiter.artifact_install import describe_command

    assert describe_command(["/usr/bin/uv", "venv", "--quiet", "/s/venv"]) == "uv venv"
    assert describe_command(["/s/venv/bin/python", "-m", "pip", "install"]) == "python -m pip"
    compile_ = ["/s/venv/bin/python", "-I", "-S", "-m", "compileall", "-q", "/s/venv/lib"]
    assert describe_command(compile_) == "python -m compileall"


def test_an_interpreter_on_path_that_does_not_run_is_lacking(tmp_path, monkeypatch):
    """pyenv puts shims on PATH for versions it does not have."""
    from beamdeploy_asgi.errors import ReleaseError
    from beamdeploy_asgi.releases.install import find_python

    shim = tmp_path / "python3.99"
    shim.write_text("#!/bin/sh\necho 'pyenv: python3.99: command not found' >&2\nexit 127\n")
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ReleaseError, match=r"built for Python 3.99, which this host lacks \("):
        find_python("3.99")


def test_a_failed_install_is_headed_by_the_installers_error_line():
    from types import SimpleNamespace

    from beamdeploy_asgi.arbiter.artifact_install import died

    output = "Using CPython 3.13\nerror: No interpreter found for Python 3.13\nhint: try uv python"
    task = SimpleNamespace(failure=None, returncode=2, output_tail=lambda: output)
    headline = died(task, "uv venv").splitlines()[0]  # type: ignore[arg-type]
    assert headline == "uv venv exited with code 2: error: No interpreter found for Python 3.13"
