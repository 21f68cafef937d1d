"""docs/hot-reload.md's examples, run as written against a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.releases import ReleaseFactory, versioned_app

DOC = Path(__file__).resolve().parents[2] / "docs" / "hot-reload.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)


def test_the_command_and_python_examples_run(serve, release_factory: ReleaseFactory, tmp_path):
    releases = tmp_path / "releases"
    factory = ReleaseFactory(releases, release_factory.wheel)
    for version in ("1.5.0", "1.5.1", "1.5.2", "1.5.3"):
        factory.make(version, versioned_app(version), dirname=version)
    server = serve("--workers", "2", "--release", str(releases / "1.5.0"))
    pids = sorted(server.serving_pids())
    env = {
        **os.environ,
        "BEAMDEPLOY_STATE_DIR": str(server.state_dir),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }

    def run(command: list[str], source: str) -> str:
        source = source.replace("/srv/myapp/releases", str(releases))
        source = source.replace("/srv/myapp/.beamdeploy", str(server.state_dir))
        done = subprocess.run([*command, source], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    out = run(["bash", "-euo", "pipefail", "-c"], blocks("bash")[0])
    assert "plan: 1.5.0 -> 1.5.1" in out and "  main: VERSION =" in out
    assert '"kind": "hot-reload"' in out
    out = run([sys.executable, "-c"], blocks("python")[0])
    assert out.startswith("succeeded {'functions': [], 'constants': ['VERSION']")
    assert sorted(server.serving_pids()) == pids, "the same workers all along"
    assert server.status()["serving"]["release"]["version"] == "1.5.3"


def test_the_code_change_hook_example_migrates_its_state():
    namespace: dict = {}
    exec(blocks("python")[1], namespace)
    namespace["CACHE"].update(a=("alice", 3), b=("bob", 1, 9.5))
    namespace["beamdeploy_code_change"]("1.4.0", "1.5.0")
    namespace["beamdeploy_code_change"]("1.4.0", "1.5.0")  # harmless twice, as advised
    assert namespace["CACHE"] == {"a": ("alice", 3, 0.0), "b": ("bob", 1, 9.5)}
