"""Installing an artifact into the release store, offline.

The arbiter runs this as a subprocess (``python -m
beamdeploy_asgi.releases.install``) so that a slow install never holds up its
loop. It prints JSON lines, ``{"progress": ...}`` as it goes and finally
``{"result": {"path": ..., "reused": ...}}`` or ``{"error": ...}``. A failed
install leaves nothing behind: everything happens in a temporary directory
inside the store that is renamed into place only when the release is whole.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from beamdeploy_asgi.errors import ReleaseError
from beamdeploy_asgi.releases.build import sha256_file
from beamdeploy_asgi.releases.collect import explanation
from beamdeploy_asgi.releases.manifest import ArtifactManifest, this_platform
from beamdeploy_asgi.releases.release import MANIFEST, Release
from beamdeploy_asgi.releases.store import ReleaseStore, mark_installed
from beamdeploy_asgi.releases.unpack import DEFAULT_LIMITS, Limits, extract


def install(
    artifact: Path,
    store: ReleaseStore,
    *,
    limits: Limits = DEFAULT_LIMITS,
    installer: str = "auto",
    python: str | None = None,
    progress: Any = print,
) -> tuple[Path, bool]:
    """Install `artifact`; return the release path and whether it was there already."""
    if not artifact.is_file():
        raise ReleaseError(f"{artifact} is not a file")
    digest = sha256_file(artifact)
    existing = store.find_by_digest(digest)
    if existing is not None:
        progress(f"artifact already installed at {existing}")
        return existing, True
    store.releases_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".installing-", dir=store.releases_dir))
    try:
        progress(f"unpacking {artifact.name}")
        extract(artifact, staging, limits)
        manifest = _manifest(staging)
        progress(f"verifying {len(manifest.files)} checksums of {manifest.name} {manifest.version}")
        _verify(staging, manifest)
        python = find_python(manifest.python, python)
        manifest.check_runs_on(manifest.python, this_platform())
        tool = _installer(installer)
        progress(f"building the venv offline from {len(manifest.wheels)} wheels with {tool}")
        _build_venv(staging, python, manifest, tool)
        shutil.rmtree(staging / "wheels", ignore_errors=True)
        Release.load(staging)  # the installed release must be loadable as it stands
        mark_installed(staging, digest)
        final = store.releases_dir / f"{manifest.name}-{manifest.version}"
        if final.exists():
            final = final.with_name(f"{final.name}-{digest[:12]}")
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    progress(f"installed {final}")
    return final, False


def _manifest(root: Path) -> ArtifactManifest:
    path = root / MANIFEST
    if not path.is_file() or path.is_symlink():
        raise ReleaseError(f"the artifact has no {MANIFEST}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReleaseError(f"{MANIFEST} is not valid JSON: {exc}") from None
    return ArtifactManifest.from_dict(data)


def _verify(root: Path, manifest: ArtifactManifest) -> None:
    present = {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_symlink() or not path.is_dir()
    }
    present.discard(MANIFEST)
    for name, expected in manifest.files.items():
        path = root / name
        if name not in present or path.is_symlink():
            raise ReleaseError(f"{name} is listed in {MANIFEST} but missing from the artifact")
        if sha256_file(path) != expected:
            raise ReleaseError(f"checksum mismatch for {name}: the artifact was altered")
    unlisted = sorted(present - set(manifest.files))
    if unlisted:
        raise ReleaseError(f"{unlisted[0]} is in the artifact but not in {MANIFEST}")


def find_python(version: str, chosen: str | None = None) -> str:
    """An interpreter of `version` (like "3.11") on this host, `chosen` if given."""
    if chosen is not None:
        return _check_python(chosen, version)
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    found = shutil.which(f"python{version}")
    if found is None:
        raise ReleaseError(f"the release was built for Python {version}, which this host lacks")
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
        raise ReleaseError(f"--release-python {python} does not run: {done.stderr.strip()}")
    if found != version:
        raise ReleaseError(
            f"the release was built for Python {version}, "
            f"but --release-python {python} is Python {found}"
        )
    return python


def _installer(choice: str) -> str:
    uv = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if choice == "auto":
        return "uv" if uv else "pip"
    if choice == "uv" and uv is None:
        raise ReleaseError("uv was asked for but is not installed")
    return choice


def _build_venv(root: Path, python: str, manifest: ArtifactManifest, tool: str) -> None:
    venv = root / "venv"
    wheels = [str(root / wheel) for wheel in manifest.wheels]
    offline = ["--no-index", "--find-links", str(root / "wheels")]
    if tool == "uv":
        uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
        _run([uv, "venv", "--quiet", "--no-config", "--python", python, str(venv)])
        _run(
            [
                uv,
                "pip",
                "install",
                "--quiet",
                "--no-config",
                "--offline",
                "--python",
                str(venv / "bin" / "python"),
                *offline,
                *wheels,
            ]
        )
    else:
        _run([python, "-m", "venv", str(venv)])
        _run(
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *offline,
                *wheels,
            ]
        )


def _run(command: list[str]) -> None:
    done = subprocess.run(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, in order: pip explains on stdout, uv on stderr
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise ReleaseError("the offline install failed:\n" + explanation(command, done))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m beamdeploy_asgi.releases.install")
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--max-bytes", type=int, default=Limits.max_bytes)
    parser.add_argument("--max-files", type=int, default=Limits.max_files)
    parser.add_argument("--installer", choices=["auto", "uv", "pip"], default="auto")
    parser.add_argument("--python", help="the interpreter to build the venv from")
    args = parser.parse_args()

    def say(message: dict[str, Any]) -> None:
        print(json.dumps(message), flush=True)

    try:
        path, reused = install(
            args.artifact,
            ReleaseStore(args.state_dir),
            limits=Limits(args.max_bytes, args.max_files),
            installer=args.installer,
            python=args.python,
            progress=lambda text: say({"progress": text}),
        )
    except ReleaseError as exc:
        say({"error": str(exc)})
        sys.exit(1)
    say({"result": {"path": str(path), "reused": reused}})


if __name__ == "__main__":
    main()
