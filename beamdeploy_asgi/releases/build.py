"""`beamdeploy build`: one artifact holding the app and every wheel it needs.

The artifact installs with no network: the release store builds the venv
from the bundled wheels alone.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from beamdeploy_asgi.errors import ReleaseError
from beamdeploy_asgi.releases.collect import (
    check_offline_install,
    describe_pip,
    find_uv,
    pip_wheel,
    refuse_non_wheels,
    run,
)
from beamdeploy_asgi.releases.manifest import (
    SAFE_NAME,
    ArtifactManifest,
    this_platform,
    this_python,
)
from beamdeploy_asgi.releases.release import MANIFEST, check_app_spec
from beamdeploy_asgi.releases.requirements import (
    Requirement,
    names_project,
    refuse_direct_references,
    requirements_file,
    wheel_requirements,
)
from beamdeploy_asgi.version import __version__

Progress = Callable[[str], None]
REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
SKIPPED = shutil.ignore_patterns(
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    "*.pyc",
    ".beamdeploy",
    "dist",
    "build",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
)


def build(
    project_dir: str | os.PathLike[str],
    outdir: str | os.PathLike[str] = "dist",
    *,
    app: str | None = None,
    name: str | None = None,
    version: str | None = None,
    progress: Progress = print,
) -> Path:
    """Build NAME-VERSION.tar.gz from a project and return its path."""
    project = Path(project_dir).resolve()
    if not project.is_dir():
        raise ReleaseError(f"{project_dir} is not a directory")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="beamdeploy-build-") as tmp:
        scratch = Path(tmp)
        staging = scratch / "release"
        wheels = staging / "wheels"
        wheels.mkdir(parents=True)
        own = scratch / "own-wheels"  # built here from source, then collected with the rest
        own.mkdir()
        packaged = (project / "pyproject.toml").is_file()
        if packaged:
            meta = _pyproject(project, app, name, version)
            pythonpath: list[str] = []
            refuse_direct_references(_declared_requirements(project))
            progress(f"building the wheel of {meta['name']} {meta['version']}")
            wanted = [_build_own_wheel(project, own, f"building the wheel of {meta['name']}")]
            requirements = _locked_requirements(project, scratch, progress)
            source = requirements.name if requirements else "the project's metadata"
            found = wheel_requirements(Path(wanted[0]))
        else:
            meta = _unpackaged(project, app, name, version)
            pythonpath = ["app"]
            progress(f"copying the app source of {meta['name']} {meta['version']}")
            shutil.copytree(project, staging / "app", ignore=SKIPPED)
            requirements = project / "requirements.txt"
            wanted, source, found = [], "requirements.txt", []
        if requirements is not None:
            if packaged and names_project(requirements, project):
                wanted = []  # pip builds the project from the requirements' own line
            wanted = ["-r", str(requirements), *wanted]
            found += requirements_file(requirements, project if packaged else None)
        refuse_direct_references(found)
        if not _mentions_beamdeploy(project, requirements):
            # Resolved together with the app's requirements, so versions agree.
            progress(f"bundling beamdeploy-asgi {__version__} (the worker side)")
            wanted.append(_beamdeploy_requirement(own))
        progress(f"collecting dependency wheels from {source} with {describe_pip()}")
        pip_wheel(
            wheels, wanted, binary_only=True, what="collecting the dependency wheels", cwd=project
        )
        _check_collected(wheels, scratch, progress)
        progress("writing the manifest with the checksum of every file")
        manifest = ArtifactManifest(
            name=meta["name"],
            version=meta["version"],
            app=meta["app"],
            python=this_python(),
            platform=_platform(wheels),
            built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            files=_checksums(staging),
            pythonpath=pythonpath,
        )
        (staging / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2))
        out = Path(outdir).resolve()
        out.mkdir(parents=True, exist_ok=True)
        artifact = out / f"{manifest.name}-{manifest.version}.tar.gz"
        _pack(staging, artifact)
    size = artifact.stat().st_size / 1e6
    progress(
        f"built {artifact} ({size:.1f} MB, {len(manifest.wheels)} wheels, "
        f"{time.monotonic() - started:.1f}s)"
    )
    return artifact


def _pyproject(project: Path, app: str | None, name: str | None, version: str | None) -> dict:
    try:
        data = tomllib.loads((project / "pyproject.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ReleaseError(f"{project / 'pyproject.toml'} cannot be read: {exc}") from None
    table = data.get("project", {})
    meta = {
        "name": name or table.get("name"),
        "version": version or table.get("version"),
        "app": app or data.get("tool", {}).get("beamdeploy", {}).get("app"),
    }
    return _checked(
        meta,
        project,
        "[project] or --name",
        "[project] or --version",
        "[tool.beamdeploy] app or --app",
    )


def _unpackaged(project: Path, app: str | None, name: str | None, version: str | None) -> dict:
    if not (project / "requirements.txt").is_file():
        raise ReleaseError(
            f"{project} has neither pyproject.toml nor requirements.txt: nothing says what "
            "the app needs"
        )
    meta = {"name": name or project.name, "version": version, "app": app}
    return _checked(meta, project, "--name", "--version", "--app")


def _checked(meta: dict, project: Path, *where: str) -> dict:
    for (key, value), source in zip(meta.items(), where, strict=True):
        if not isinstance(value, str) or not value:
            raise ReleaseError(f"{project}: no {key} for the release (give it in {source})")
    for key in ("name", "version"):
        if not SAFE_NAME.match(meta[key]):
            raise ReleaseError(f"{key} {meta[key]!r} must be letters, digits and ._+-")
    check_app_spec(meta["app"], where=str(project))
    return meta


def _declared_requirements(project: Path) -> list[Requirement]:
    """[project] dependencies as written, checked before a build backend sees them."""
    table = tomllib.loads((project / "pyproject.toml").read_text()).get("project", {})
    origin = "pyproject.toml [project] dependencies"
    return [Requirement(str(text), origin) for text in table.get("dependencies", [])]


def _locked_requirements(project: Path, tmp: Path, progress: Progress) -> Path | None:
    """uv.lock (exported), else requirements.txt, else None (resolve from metadata)."""
    if (project / "uv.lock").is_file():
        uv = find_uv()
        if uv is None:
            raise ReleaseError(f"{project} has uv.lock; install uv to honour it")
        exported = tmp / "uv-lock-requirements.txt"
        progress("exporting uv.lock")
        run(
            [
                uv,
                "export",
                "--frozen",
                "--no-hashes",
                "--no-emit-project",
                "--no-dev",
                "-o",
                str(exported),
            ],
            "exporting uv.lock",
            cwd=project,
        )
        return exported
    if (project / "requirements.txt").is_file():
        return project / "requirements.txt"
    return None


def _build_own_wheel(source: Path, own: Path, what: str) -> str:
    """The wheel of a source tree (the project, or beamdeploy-asgi), for this Python.

    uv builds it when it is there (its cached build environments make this
    seconds faster than pip's).
    """
    out = own / str(len(list(own.iterdir())))
    uv = find_uv()
    if uv is not None:
        command = [uv, "build", "--wheel", "--python", sys.executable, "--out-dir", str(out)]
        run([*command, str(source)], what)
    else:
        pip_wheel(out, ["--no-deps", str(source)], binary_only=False, what=what)
    (wheel,) = out.glob("*.whl")
    return str(wheel)


def _check_collected(wheels: Path, scratch: Path, progress: Progress) -> None:
    """Refuse what the host could not install: non-wheels, direct references, conflicts."""
    refuse_non_wheels(wheels)
    found = [r for wheel in sorted(wheels.glob("*.whl")) for r in wheel_requirements(wheel)]
    refuse_direct_references(found)
    tool = "uv" if find_uv() else "pip"
    progress(f"checking with {tool} that the wheels install offline, as on the host")
    check_offline_install(wheels, scratch)


def _mentions_beamdeploy(project: Path, requirements: Path | None) -> bool:
    """Whether the app's own requirements already name beamdeploy-asgi."""
    if requirements is not None:
        wanted = requirements.read_text().splitlines()
    else:
        table = tomllib.loads((project / "pyproject.toml").read_text()).get("project", {})
        wanted = list(table.get("dependencies", []))
    return any(_requirement_name(line) == "beamdeploy-asgi" for line in wanted)


def _requirement_name(line: str) -> str | None:
    match = REQUIREMENT_NAME.match(line)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else None


def _beamdeploy_requirement(own: Path) -> str:
    """This beamdeploy-asgi: a wheel of its source tree when it runs from one, else the index."""
    source = Path(__file__).resolve().parents[2]
    pyproject = source / "pyproject.toml"
    if pyproject.is_file() and 'name = "beamdeploy-asgi"' in pyproject.read_text():
        return _build_own_wheel(source, own, "building the wheel of beamdeploy-asgi")
    return f"beamdeploy-asgi=={__version__}"


def _platform(wheels: Path) -> str:
    """'any' when every wheel is pure Python, else this machine's platform."""
    pure = all(w.name.endswith("-none-any.whl") for w in wheels.glob("*.whl"))
    return "any" if pure else this_platform()


def _checksums(root: Path) -> dict[str, str]:
    sums = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            sums[path.relative_to(root).as_posix()] = sha256_file(path)
    return sums


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pack(staging: Path, artifact: Path) -> None:
    """Regular files and directories only, owned by nobody in particular.

    The manifest goes first: a host reads and checks it before it takes in
    anything else.
    """

    def clean(info: tarfile.TarInfo) -> Any:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    partial = artifact.with_name(artifact.name + ".partial")
    manifest = staging / MANIFEST
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(manifest, arcname=MANIFEST, recursive=False, filter=clean)
        for path in sorted(staging.rglob("*")):
            if path.is_symlink() or path == manifest:
                continue
            tar.add(
                path, arcname=path.relative_to(staging).as_posix(), recursive=False, filter=clean
            )
    partial.replace(artifact)
