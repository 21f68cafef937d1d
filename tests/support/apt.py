"""A Debian package a test needs, installed with apt-get when it is missing, or the test fails."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

APT_TIMEOUT = 600  # seconds, for each apt-get step


def debian_program(path: Path, package: str) -> Path:
    """`path`, installed from `package` if it is not there yet; never a skip."""
    if path.exists():
        return path
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    tried: list[str] = []
    for step in (["apt-get", "install", "-y", package], ["apt-get", "update"]) * 2:
        try:
            done = subprocess.run(
                step, capture_output=True, text=True, timeout=APT_TIMEOUT, env=env
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            tried.append(f"{' '.join(step)}: {exc}")
            continue
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        tried.append(f"{' '.join(step)}: exit {done.returncode}: " + " / ".join(tail))
        if path.exists():
            return path
    pytest.fail(f"{path} is missing and apt-get could not install it:\n" + "\n".join(tried))
