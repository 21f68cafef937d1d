"""The demo builds new releases of itself, for the page's cards.

A build copies the demo's own source (``DEMO_HOME``: pyproject.toml and
demo/) into a scratch directory, rewrites ``demo/variant.py`` and the version
there, and runs ``beamdeploy build`` from the demo's venv into
``DEMO_HOME/.demo/builds``, the directory start.sh gave the arbiter as
``--release-dir``. A build only makes an artifact: deploying it is the page's
job, through the admin API at /_deploy, with the token the page holds. This
process never has the token (the arbiter keeps it from its workers), so what
anyone who reaches the demo can do here is make one of these few artifacts,
one at a time.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from demo import variant

LABELS = {"green": "#16a34a", "purple": "#9333ea", "orange": "#ea580c"}
GREETINGS = ["Hello", "Bonjour", "Hola", "Ciao", "Hallo", "Namaste", "Hej", "Salve"]
KEEP_BUILDS = 10  # artifacts kept in .demo/builds; the store keeps its own releases
BUILD_TIMEOUT = 300.0  # seconds; a first build may download the dependency wheels
# What makes a release that cannot import: a typo in an import, as it happens.
BROKEN_IMPORT = "from starlette.responses import HTMLRespons  # a typo: it cannot import\n"
VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")
ARTIFACT = re.compile(r"demo-(\d+)\.(\d+)\.(\d+)\.tar\.gz")


class BuildError(Exception):
    """A build that cannot be made; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Variant:
    """What one build writes into demo/variant.py."""

    kind: str  # "ship", "hot" or "broken"
    label: str
    color: str
    greeting: str

    def describe(self) -> str:
        if self.kind == "hot":
            return f'greeting "{self.greeting}", a constant, for a hot reload'
        if self.kind == "broken":
            return "an import with a typo in it"
        return f"label {self.label}"

    def module_source(self, original: str) -> str:
        """`original` (variant.py as checked in) with this build's constants."""
        text = original
        constants = {"LABEL": self.label, "COLOR": self.color, "GREETING": self.greeting}
        for name, value in constants.items():
            text, found = re.subn(
                rf"^{name} = .*$", f"{name} = {json.dumps(value)}", text, count=1, flags=re.M
            )
            if not found:
                raise BuildError(f"demo/variant.py has no line '{name} = ...' to rewrite")
        if self.kind == "broken":
            start = re.search(r"^LABEL = ", text, flags=re.M)
            assert start is not None  # rewritten above
            text = text[: start.start()] + BROKEN_IMPORT + text[start.start() :]
        return text


def home() -> Path:
    """The demo's own directory (start.sh exports it for the workers)."""
    value = os.environ.get("DEMO_HOME")
    if not value:
        raise BuildError(
            "this demo was not started by example_app/start.sh (DEMO_HOME is not set), "
            "so it cannot build itself",
            503,
        )
    return Path(value)


def builds_dir() -> Path:
    return home() / ".demo" / "builds"


def wanted(kind: object, label: object) -> Variant:
    """The build a card asks for, from what this worker serves now."""
    if kind == "ship":
        if not isinstance(label, str) or label not in LABELS:
            raise BuildError(f"label must be one of {', '.join(LABELS)}", 400)
        return Variant("ship", label, LABELS[label], variant.GREETING)
    if kind == "hot":
        return Variant("hot", variant.LABEL, variant.COLOR, next_greeting(variant.GREETING))
    if kind == "broken":
        return Variant("broken", variant.LABEL, variant.COLOR, variant.GREETING)
    raise BuildError("kind must be ship, hot or broken", 400)


def next_greeting(greeting: str) -> str:
    index = GREETINGS.index(greeting) if greeting in GREETINGS else -1
    return GREETINGS[(index + 1) % len(GREETINGS)]


def next_version(builds: Path, serving: str) -> str:
    """1.N.0, N one more than any build so far (every build gets a new version)."""
    minors = [0]
    for match in [VERSION.fullmatch(serving), *map(ARTIFACT.fullmatch, os.listdir(builds))]:
        if match:
            minors.append(int(match.group(2)))
    return f"1.{max(minors) + 1}.0"


class Claim:
    """The right to build, held until released (closing the file drops the lock)."""

    def __init__(self, lock: IO[str]) -> None:
        self.lock = lock

    def release(self) -> None:
        self.lock.close()


def claim() -> Claim:
    """One build at a time, across the workers: the others get 409 at once."""
    builds = builds_dir()
    builds.mkdir(parents=True, exist_ok=True)
    lock = open(builds / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise BuildError("another build is running; try again when it is done", 409) from None
    return Claim(lock)


def build(want: Variant, progress: Callable[[str], None]) -> dict[str, str]:
    """Build the artifact for `want` into .demo/builds, holding a claim()."""
    root, builds = home(), builds_dir()
    version = next_version(builds, os.environ.get("BEAMDEPLOY_RELEASE_VERSION", "1.0.0"))
    progress(f"building demo {version}: {want.describe()}")
    for stale in (root / ".demo").glob("build-*"):  # left by a worker that died building
        shutil.rmtree(stale, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"build-{version}-", dir=root / ".demo"))
    try:
        project = scratch / "demo-source"
        project.mkdir()
        pyproject = (root / "pyproject.toml").read_text()
        pyproject, found = re.subn(
            r'^version = ".*"$', f'version = "{version}"', pyproject, count=1, flags=re.M
        )
        if not found:
            raise BuildError("pyproject.toml has no 'version = ...' line to rewrite")
        (project / "pyproject.toml").write_text(pyproject)
        shutil.copytree(
            root / "demo", project / "demo", ignore=shutil.ignore_patterns("__pycache__")
        )
        module = project / "demo" / "variant.py"
        module.write_text(want.module_source(module.read_text()))
        command = [
            str(root / ".venv" / "bin" / "beamdeploy"),
            "build",
            str(project),
            "-o",
            str(builds),
            "--version",
            version,
        ]
        _run(command, progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    artifact = builds / f"demo-{version}.tar.gz"
    if not artifact.is_file():
        raise BuildError(f"beamdeploy build wrote no {artifact.name}")
    _prune(builds)
    return {
        "kind": want.kind,
        "version": version,
        "artifact": artifact.name,
        "label": want.label,
        "greeting": want.greeting,
    }


def _run(command: list[str], progress: Callable[[str], None]) -> None:
    """Run the build, each line of its output to `progress`; raise with its last lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEAMDEPLOY_")}
    env["PATH"] = f"{Path(command[0]).parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
        errors="replace",
    )
    timer = threading.Timer(BUILD_TIMEOUT, proc.kill)
    timer.start()
    tail: list[str] = []
    try:
        for line in _lines(proc.stdout):
            tail = [*tail[-19:], line]
            progress(line)
        code = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if code != 0:
        why = "timed out" if code == -9 else f"failed (exit code {code})"
        raise BuildError(f"beamdeploy build {why}: " + " / ".join(tail[-5:]))


def _lines(stream: IO[str] | None) -> Iterator[str]:
    if stream is None:
        return
    with stream:
        for line in stream:
            line = line.rstrip()
            if line:
                yield line[:500]


def _prune(builds: Path) -> None:
    artifacts = sorted(builds.glob("demo-*.tar.gz"), key=lambda p: p.stat().st_mtime)
    for old in artifacts[:-KEEP_BUILDS]:
        old.unlink(missing_ok=True)
