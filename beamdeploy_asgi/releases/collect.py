"""Collecting a release's wheels with pip, and checking that they install offline.

Build runs pip for the interpreter it runs in, so the wheels fit that Python:
its own pip when it has one, else pip run by uv for the same interpreter (a
venv made by uv, or a ``uv tool``/``pipx`` install, has no pip). The check
resolves the bundled wheels the way the host will install them: no index, no
network, nothing but the artifact's ``wheels/``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

from beamdeploy_asgi.errors import ReleaseError
from beamdeploy_asgi.releases.manifest import this_platform, this_python

# Where an installer's explanation starts: pip's "ERROR: ..." and "error: ...",
# uv's "error: ..." and "× ...".
EXPLANATION = re.compile(r"^\s*(ERROR:|error:|×)")
NOT_FOUND = re.compile(r"No matching distribution found for (\S+)")
SHOWN = 40
CONTEXT = 5


def find_uv() -> str | None:
    """uv on PATH, else next to this interpreter (installed into its venv)."""
    return shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))


def pip_command() -> list[str]:
    """pip for this interpreter: its own, else pip run through uv with the same Python."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    uv = find_uv()
    if uv is not None:
        return [uv, "tool", "run", "--python", sys.executable, "pip"]
    raise ReleaseError(
        f"beamdeploy build collects wheels with pip or uv, and {sys.executable} has neither: "
        "install uv (`pipx install uv`, or see https://docs.astral.sh/uv/) or give this "
        "Python pip (`python -m ensurepip`), then build again"
    )


def describe_pip() -> str:
    """Which pip collects the wheels, for the progress lines."""
    return "pip" if pip_command()[0] == sys.executable else "pip run by uv"


def pip_wheel(
    wheels: Path, args: list[str], *, binary_only: bool, what: str, cwd: Path | None = None
) -> None:
    """`pip wheel` into `wheels`; `binary_only` takes published wheels, never sdists.

    `cwd` is the project: pip reads relative paths in requirements files from there.
    """
    command = [
        *pip_command(),
        "wheel",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        "--wheel-dir",
        str(wheels),
    ]
    if not binary_only:
        run([*command, *args], what, cwd)
        return
    try:
        run([*command, "--only-binary", ":all:", *args], what, cwd)
    except ReleaseError as exc:
        raise ReleaseError(str(exc) + _sdist_hint(str(exc))) from None


def run(command: list[str], what: str, cwd: Path | None = None) -> str:
    """Run an installer; on failure raise with its own explanation, never an empty one."""
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # one stream, in order: pip explains on stdout
            stdin=subprocess.DEVNULL,
            text=True,
        )
    except OSError as exc:
        raise ReleaseError(f"{what} failed: {command[0]} does not run: {exc}") from None
    if done.returncode != 0:
        raise ReleaseError(f"{what} failed:\n" + explanation(command, done))
    return done.stdout


def explanation(command: list[str], done: subprocess.CompletedProcess[str]) -> str:
    """The installer's error and what it says caused it, from its first error line on."""
    lines = [line.rstrip() for line in (done.stdout or "").splitlines() if line.strip()]
    if not lines:
        return f"{_shown(command)} exited with code {done.returncode} and printed nothing"
    first = next((i for i, line in enumerate(lines) if EXPLANATION.match(line)), None)
    # A few lines before the first error line: a build backend's exception comes there.
    start = max(len(lines) - 15, 0) if first is None else max(first - CONTEXT, 0)
    shown = lines[start:]
    if len(shown) > SHOWN:
        shown = [*shown[: SHOWN - 10], "  ...", *shown[-10:]]
    return "\n".join(shown)


def _shown(command: list[str]) -> str:
    """The program and its first arguments: enough to tell which step it was."""
    words = [Path(command[0]).name, *command[1:4]]
    return " ".join(words) + (" ..." if len(command) > 4 else "")


def _sdist_hint(error: str) -> str:
    """A requirement pip found no wheel of may be one with an sdist only."""
    missing = NOT_FOUND.findall(error)
    if not missing:
        return ""
    names = ", ".join(dict.fromkeys(missing))
    return (
        f"\n{names}: if it exists, no version that fits has a wheel for Python "
        f"{this_python()} on {this_platform()}, only a source distribution (sdist). "
        "A release bundles published wheels only (pip --only-binary :all:): a wheel built "
        "from an sdist here would be built for this machine, and its compiled code may not "
        "run on the host. Build the wheel yourself (pip wheel --no-deps NAME), put it in a "
        "directory named by PIP_FIND_LINKS, and build again, or require a version that "
        "publishes wheels."
    )


def refuse_non_wheels(wheels: Path) -> None:
    """Only wheels install offline without building anything on the host."""
    other = sorted(p.name for p in wheels.iterdir() if not p.name.endswith(".whl"))
    if other:
        raise ReleaseError(
            f"{', '.join(other)} in the collected wheels is not a wheel: the host installs "
            "wheels only, with nothing to build them with"
        )


def check_offline_install(wheels: Path, scratch: Path) -> None:
    """Resolve every bundled wheel with no index, as the host will (uv, else pip)."""
    files = sorted(str(p) for p in wheels.glob("*.whl"))
    offline = ["--no-index", "--find-links", str(wheels)]
    what = "the offline install check (what the host will run)"
    uv = find_uv()
    if uv is not None:
        venv = scratch / "offline-check-venv"
        run([uv, "venv", "--quiet", "--no-config", "--python", sys.executable, str(venv)], what)
        python = str(venv / "bin" / "python")
        run(
            [uv, "pip", "install", "--dry-run", "--no-config", "--offline", "--python", python]
            + offline
            + files,
            what,
        )
        return
    pip = [sys.executable, "-m", "pip", "install", "--isolated", "--disable-pip-version-check"]
    if _pip_has_dry_run():
        run([*pip, "--dry-run", "--ignore-installed", *offline, *files], what)
    else:  # pip before 22.2: install for real, into a throwaway directory
        run([*pip, "--target", str(scratch / "offline-check"), *offline, *files], what)


def _pip_has_dry_run() -> bool:
    try:
        version = importlib.metadata.version("pip")
    except importlib.metadata.PackageNotFoundError:
        return False
    major, minor = (int(part) for part in re.findall(r"\d+", version)[:2])
    return (major, minor) >= (22, 2)
