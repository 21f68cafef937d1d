"""Installing an artifact into the release store, offline, in three steps.

1. ``prepare``, as the arbiter's user: an artifact installed already is reused;
   otherwise it is unpacked (bounded, checked member by member) into a staging
   directory of the store, and its wheels are checked to be a complete set
   that names no direct reference. Nothing of the artifact runs here.
2. the venv is built from exactly the bundled wheels, ``--no-deps``, no index,
   no network, wheels only, as the workers' user: the arbiter runs the two
   commands ``prepare`` hands it (``venv`` and ``install``).
3. ``seal``, as the arbiter's user: the release becomes the arbiter's,
   read-only to the workers' group, and is renamed into the store.

The arbiter runs each step as a subprocess, so a slow install never holds up
its loop. ``python -m beamdeploy_asgi.releases.install ARTIFACT --state-dir
DIR`` runs all three at once, as the caller. Each step prints JSON lines:
``{"progress": ...}`` as it goes, then ``{"result": ...}`` or ``{"error": ...}``.
A failed install leaves nothing behind in the store.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from beamdeploy_asgi.errors import ReleaseError
from beamdeploy_asgi.releases.collect import explanation
from beamdeploy_asgi.releases.disk import disk_full
from beamdeploy_asgi.releases.manifest import SAFE_NAME, ArtifactManifest, this_platform
from beamdeploy_asgi.releases.release import Release
from beamdeploy_asgi.releases.seal import seal
from beamdeploy_asgi.releases.store import ReleaseStore, mark_installed
from beamdeploy_asgi.releases.unpack import DEFAULT_LIMITS, Limits, extract
from beamdeploy_asgi.releases.wheelset import check_wheel_set

Progress = Callable[[str], None]


def install(
    artifact: Path,
    store: ReleaseStore,
    *,
    limits: Limits = DEFAULT_LIMITS,
    installer: str = "auto",
    python: str | None = None,
    progress: Progress = print,
) -> tuple[Path, bool]:
    """All three steps as the caller; return the release path and whether it was there."""
    prepared = prepare(
        artifact, store, limits=limits, installer=installer, python=python, progress=progress
    )
    if "path" in prepared:
        return Path(prepared["path"]), True
    staging = Path(prepared["staging"])
    try:
        for command in prepared["commands"]:
            run_installer(command, staging)
        final = seal_release(staging, store, prepared["digest"], os.geteuid(), os.getegid())
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    progress(f"installed {final}")
    return final, False


def prepare(
    artifact: Path,
    store: ReleaseStore,
    *,
    limits: Limits = DEFAULT_LIMITS,
    installer: str = "auto",
    python: str | None = None,
    owner: tuple[int, int] | None = None,
    progress: Progress = print,
) -> dict[str, Any]:
    """``{"path": ...}`` of the same artifact installed before, or a staging dir to build in.

    For a new release: ``{"staging", "digest", "commands"}``, the commands
    being what builds the venv from the bundled wheels, to be run (as `owner`,
    when given) before `seal_release`.
    """
    store.releases_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Hashed and unpacked from one private copy: the file given (an upload
    # the workers' user owns) may change after we looked at it.
    copy, digest = _private_copy(artifact, store.releases_dir, limits)
    try:
        existing = store.find_by_digest(digest)
        if existing is not None:
            progress(f"artifact already installed at {existing}")
            return {"path": str(existing)}
        return _unpack(
            copy, artifact.name, digest, store, limits, installer, python, owner, progress
        )
    finally:
        copy.unlink(missing_ok=True)


def _unpack(
    copy: Path,
    name: str,
    digest: str,
    store: ReleaseStore,
    limits: Limits,
    installer: str,
    python: str | None,
    owner: tuple[int, int] | None,
    progress: Progress,
) -> dict[str, Any]:
    staging = Path(tempfile.mkdtemp(prefix=".installing-", dir=store.releases_dir))
    chosen: dict[str, str] = {}
    try:

        def check_host(manifest: ArtifactManifest) -> None:
            manifest.check_runs_on(manifest.python, this_platform())
            chosen["python"] = find_python(manifest.python, python)
            progress(f"unpacking {manifest.name} {manifest.version} ({len(manifest.files)} files)")

        manifest = _extract(copy, name, staging, limits, check_host)
        wheels = [staging / wheel for wheel in manifest.wheels]
        progress(f"checking that the {len(wheels)} bundled wheels need nothing else")
        try:
            check_wheel_set(wheels, manifest.python)
        except ValueError as exc:
            raise ReleaseError(f"the artifact's wheels are not a complete set: {exc}") from None
        tool = _installer(installer, owner)
        progress(f"building the venv offline from {len(wheels)} wheels with {tool}")
        commands = venv_commands(staging, chosen["python"], wheels, tool)
        # The builder may write the venv and nothing else of the release.
        venv = staging / "venv"
        venv.mkdir(mode=0o755)
        if owner is not None:
            os.chown(venv, *owner)
        os.chmod(staging, 0o711)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"staging": str(staging), "digest": digest, "commands": commands}


def _extract(
    copy: Path,
    name: str,
    staging: Path,
    limits: Limits,
    check: Callable[[ArtifactManifest], None],
) -> ArtifactManifest:
    try:
        return extract(copy, staging, limits, on_manifest=check)
    except OSError as exc:
        raise ReleaseError(_os_error(exc, staging)) from None
    except ReleaseError as exc:
        raise ReleaseError(str(exc).replace(copy.name, name)) from None


def _private_copy(artifact: Path, where: Path, limits: Limits) -> tuple[Path, str]:
    """Copy a regular file (never through a link) into `where`; return the copy and its sha256."""
    try:
        fd = os.open(artifact, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ReleaseError(f"{artifact} does not exist") from None
    except OSError as exc:
        raise ReleaseError(f"cannot open {artifact}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as source:
        info = os.fstat(source.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ReleaseError(f"{artifact} is not a regular file")
        if info.st_size > limits.max_compressed:
            raise ReleaseError(f"{artifact.name} is over {limits.max_compressed} bytes; refused")
        out_fd, out_name = tempfile.mkstemp(prefix=".artifact-", suffix=".tar.gz", dir=where)
        digest = hashlib.sha256()
        copied = 0
        try:
            with os.fdopen(out_fd, "wb") as out:
                while block := source.read(1 << 20):
                    copied += len(block)
                    if copied > limits.max_compressed:
                        raise ReleaseError(
                            f"{artifact.name} grew past {limits.max_compressed} bytes"
                        )
                    digest.update(block)
                    out.write(block)
        except OSError as exc:
            Path(out_name).unlink(missing_ok=True)
            raise ReleaseError(_os_error(exc, where)) from None
        except BaseException:
            Path(out_name).unlink(missing_ok=True)
            raise
    return Path(out_name), digest.hexdigest()


def venv_commands(staging: Path, python: str, wheels: list[Path], tool: str) -> list[list[str]]:
    """Make the venv, then install exactly these wheels into it: no index, no dependencies.

    The bytecode is compiled now, as the builder: once sealed, the venv is
    read-only to the workers, who would otherwise compile every module again
    at each boot. pip does it in its own process; for uv, compileall runs
    with ``-S``, so no ``.pth`` file of the artifact runs at install.
    """
    venv = staging / "venv"
    files = [str(wheel) for wheel in wheels]
    if tool == "uv":
        uv = _uv() or "uv"
        return [
            [uv, "venv", "--quiet", "--no-config", "--no-cache", "--python", python, str(venv)],
            [
                uv, "pip", "install", "--quiet", "--no-config", "--no-cache", "--offline",
                "--no-index", "--no-deps", "--no-build", "--python", str(venv / "bin" / "python"),
                *files,
            ],
            [str(venv / "bin" / "python"), "-I", "-S", "-m", "compileall", "-q", str(venv / "lib")],
        ]  # fmt: skip
    return [
        [python, "-m", "venv", str(venv)],
        [
            str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--isolated",
            "--disable-pip-version-check", "--no-cache-dir", "--no-index", "--no-deps",
            "--only-binary", ":all:", *files,
        ],
    ]  # fmt: skip


def seal_release(staging: Path, store: ReleaseStore, digest: str, uid: int, gid: int) -> Path:
    """Take the built release over and put it into the store; return its path."""
    try:
        seal(staging, uid, gid)
        shutil.rmtree(staging / "wheels", ignore_errors=True)
        release = Release.load(staging)  # loadable as it stands, as the arbiter sees it
        for value in (release.name, release.version):
            if not SAFE_NAME.match(value):
                raise ReleaseError(f"the built release's manifest names {value!r}: refused")
        mark_installed(staging, digest, gid)
        final = store.releases_dir / f"{release.name}-{release.version}"
        if final.exists():
            final = final.with_name(f"{final.name}-{digest[:12]}")
        staging.rename(final)
    except OSError as exc:
        raise ReleaseError(_os_error(exc, staging)) from None
    return final


def run_installer(command: list[str], where: Path | None = None) -> None:
    done = subprocess.run(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, in order: pip explains on stdout, uv on stderr
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        full = disk_full(where) if where is not None else None
        lead = f"the offline install failed: {full}" if full else "the offline install failed:"
        raise ReleaseError(lead + "\n" + explanation(command, done))


_run = run_installer  # the name build's tests know


def find_python(version: str, chosen: str | None = None) -> str:
    """An interpreter of `version` (like "3.11") on this host, `chosen` if given."""
    if chosen is not None:
        return _check_python(chosen, version)
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    found = shutil.which(f"python{version}")
    lacking = f"the release was built for Python {version}, which this host lacks"
    if found is None:
        raise ReleaseError(lacking)
    try:  # a pyenv shim, say, is on PATH for versions it does not have
        _check_python(found, version)
    except ReleaseError:
        raise ReleaseError(f"{lacking} ({found} is on PATH, but does not run)") from None
    return found


def _check_python(python: str, version: str) -> str:
    try:
        done = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReleaseError(f"--release-python {python} does not run: {exc}") from None
    found = done.stdout.strip()
    if done.returncode != 0 or not found:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ReleaseError(f"--release-python {python} does not run: {why}")
    if found != version:
        raise ReleaseError(
            f"the release was built for Python {version}, "
            f"but --release-python {python} is Python {found}"
        )
    return python


def _uv() -> str | None:
    return shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))


def _installer(choice: str, owner: tuple[int, int] | None) -> str:
    uv = _uv()
    if choice == "uv" and uv is None:
        raise ReleaseError("uv was asked for but is not installed")
    if choice != "auto":
        return choice
    return "uv" if uv is not None and _runs_as(uv, owner) else "pip"


def _runs_as(program: str, owner: tuple[int, int] | None) -> bool:
    """Whether `owner` (None: we) can run `program`, which may lie where only we can go."""
    if owner is None:
        return True
    try:
        done = subprocess.run(
            [program, "--version"],
            user=owner[0],
            group=owner[1],
            extra_groups=[],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            cwd="/",
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _os_error(exc: OSError, where: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return f"no space left on device for {where}"
    return f"{where}: {exc.strerror or exc}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m beamdeploy_asgi.releases.install")
    parser.add_argument("artifact", type=Path, nargs="?")
    parser.add_argument("--step", choices=["all", "prepare", "seal"], default="all")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--max-bytes", type=int, default=Limits.max_bytes)
    parser.add_argument("--max-files", type=int, default=Limits.max_files)
    parser.add_argument("--installer", choices=["auto", "uv", "pip"], default="auto")
    parser.add_argument("--python", help="the interpreter to build the venv from")
    parser.add_argument("--owner", help="UID:GID who builds the venv (prepare)")
    parser.add_argument("--staging", type=Path, help="the staging dir (seal)")
    parser.add_argument("--digest", help="the artifact's sha256 (seal)")
    parser.add_argument("--group", type=int, help="the workers' group (seal)")
    args = parser.parse_args()

    def say(message: dict[str, Any]) -> None:
        print(json.dumps(message), flush=True)

    store = ReleaseStore(args.state_dir)
    limits = Limits(args.max_bytes, args.max_files)
    try:
        if args.step == "seal":
            gid = args.group if args.group is not None else os.getegid()
            final = seal_release(args.staging, store, args.digest, os.geteuid(), gid)
            say({"result": {"path": str(final), "reused": False}})
            return
        if args.artifact is None:
            parser.error("give the artifact")
        if args.step == "prepare":
            owner = None
            if args.owner:
                uid, _, gid = args.owner.partition(":")
                owner = (int(uid), int(gid))
            prepared = prepare(
                args.artifact, store, limits=limits, installer=args.installer,
                python=args.python, owner=owner, progress=lambda text: say({"progress": text}),
            )  # fmt: skip
            say({"result": prepared})
            return
        path, reused = install(
            args.artifact, store, limits=limits, installer=args.installer, python=args.python,
            progress=lambda text: say({"progress": text}),
        )  # fmt: skip
        say({"result": {"path": str(path), "reused": reused}})
    except ReleaseError as exc:
        say({"error": str(exc)})
        sys.exit(1)


if __name__ == "__main__":
    main()
