"""docs/strategies.md's examples, run as written against real servers."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.support.releases import ReleaseFactory, versioned_app

DOC = Path(__file__).resolve().parents[2] / "docs" / "strategies.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)


def serve_args(block: str) -> list[str]:
    """The options of the page's `beamdeploy serve` command, as a shell would split them."""
    command = block.replace("\\\n", " ").strip()
    return shlex.split(command)[2:]


def test_the_rolling_bake_smoke_and_hook_examples_run(
    serve, release_factory: ReleaseFactory, tmp_path: Path
):
    releases = tmp_path / "releases"
    factory = ReleaseFactory(releases, release_factory.wheel)
    for version in ("1.5.0", "1.6.0"):
        factory.make(version, versioned_app(version), dirname=version)
    frozen = tmp_path / "FREEZE"

    def local(text: str) -> str:
        return text.replace("/srv/myapp/releases", str(releases)).replace(
            "/srv/myapp/FREEZE", str(frozen)
        )

    python, bash = blocks("python"), blocks("bash")
    smoke_test, config = python[0], python[1]
    rolling, serve_smoke, serve_hooks, bake = bash

    # The smoke test, next to where `beamdeploy serve` starts, and the serve command.
    server = serve(*map(local, serve_args(serve_smoke)[:-2]), launch=False)
    server.workdir.mkdir(parents=True)
    (server.workdir / "smoke").mkdir()
    (server.workdir / "smoke" / "test_smoke.py").write_text(smoke_test)
    server.command += serve_args(serve_smoke)[-2:]
    server.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    server.start()
    env = {**server.env, "BEAMDEPLOY_STATE_DIR": str(server.state_dir)}

    def run(block: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", local(block)],
            capture_output=True,
            text=True,
            env=env,
        )

    done = run(rolling)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " rolling " in done.stdout and "checking" in done.stdout
    assert "2 passed" in server.status()["deployments"][0]["smoke"]["output"]
    # Back to 1.5.0, baked for a second rather than two minutes.
    done = run(bake.replace("1.6.0", "1.5.0").replace("--bake 120", "--bake 1"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert " baking " in done.stdout
    assert server.status()["serving"]["release"]["version"] == "1.5.0"

    # The hooks: a config file, the serve command, a frozen deploy.
    hooks = serve(*map(local, serve_args(serve_hooks)), launch=False)
    hooks.workdir.mkdir(parents=True)
    (hooks.workdir / "gunicorn.conf.py").write_text(local(config))
    hooks.start()
    env["BEAMDEPLOY_STATE_DIR"] = str(hooks.state_dir)
    frozen.touch()
    done = run(rolling)
    assert done.returncode == 1
    expected = (
        "upgrade failed: beamdeploy_before_promote vetoed the promotion: "
        f"RuntimeError: deploys are frozen: {frozen} exists"
    )
    assert expected in done.stderr
    frozen.unlink()
    done = run(rolling)
    assert done.returncode == 0, done.stdout + done.stderr
    hooks.wait_for(lambda s: "now serving 1.6.0" in hooks.log())
