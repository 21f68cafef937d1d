"""Releases: an immutable directory with a manifest and its own virtualenv.

Layout::

    <release>/
        beamdeploy-release.json   {"name": ..., "version": ..., "app": "module:attr"}
        venv/                     a virtualenv with the app and beamdeploy-asgi installed

The manifest may also name ``pythonpath``: directories inside the release
(relative paths) that are put in front of ``sys.path``, for apps that ship
their source next to the venv instead of installing it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from beamdeploy_asgi.errors import ReleaseError

MANIFEST = "beamdeploy-release.json"
MAX_MANIFEST = 1024 * 1024  # bytes: it names an app and a few paths
DIGEST_FILE = ".artifact-sha256"  # written by the store when it installs an artifact
APP_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*(\(\))?$")


@dataclass(frozen=True)
class Release:
    """What a generation runs: which interpreter, which app."""

    name: str
    version: str
    app: str
    python: str
    path: str | None = None
    pythonpath: tuple[str, ...] = field(default_factory=tuple)
    artifact_sha256: str | None = None

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Release:
        """Read and check a release directory, naming exactly what is wrong."""
        try:
            return cls._load(directory)
        except (OSError, ValueError) as exc:  # a name too long, a directory we may not read
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ReleaseError(f"cannot read release {str(directory)[:200]!r}: {detail}") from None

    @classmethod
    def _load(cls, directory: str | os.PathLike[str]) -> Release:
        root = Path(directory).expanduser()
        if not root.exists():
            raise ReleaseError(f"release {str(directory)!r} does not exist")
        if not root.is_dir():
            raise ReleaseError(
                f"release {str(directory)!r} is neither a release directory nor an artifact"
            )
        root = root.resolve()
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise ReleaseError(f"release {root} has no {MANIFEST}")
        try:
            with manifest_path.open("rb") as file:
                raw = file.read(MAX_MANIFEST + 1)
            if len(raw) > MAX_MANIFEST:
                raise ReleaseError(f"{manifest_path} is larger than {MAX_MANIFEST >> 10} KiB")
            manifest = json.loads(raw.decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ReleaseError(f"{manifest_path} is not valid JSON: {exc}") from None
        if not isinstance(manifest, dict):
            raise ReleaseError(f"{manifest_path} must hold a JSON object")
        for key in ("name", "version", "app"):
            value = manifest.get(key)
            if not isinstance(value, str) or not value.strip():
                raise ReleaseError(f"{manifest_path}: {key!r} must be a non-empty string")
        check_app_spec(manifest["app"], where=str(manifest_path))
        python = root / "venv" / "bin" / "python"
        if not os.access(python, os.X_OK):
            raise ReleaseError(f"release {root} has no executable venv/bin/python")
        extra = manifest.get("pythonpath", [])
        if not isinstance(extra, list) or not all(isinstance(p, str) for p in extra):
            raise ReleaseError(f"{manifest_path}: 'pythonpath' must be a list of strings")
        paths = []
        for entry in extra:
            resolved = (root / entry).resolve()
            if not resolved.is_relative_to(root):
                raise ReleaseError(f"{manifest_path}: pythonpath {entry!r} leaves the release")
            paths.append(str(resolved))
        return cls(
            name=manifest["name"],
            version=manifest["version"],
            app=manifest["app"],
            python=str(python),
            path=str(root),
            pythonpath=tuple(paths),
            artifact_sha256=_artifact_digest(root),
        )

    @classmethod
    def from_environment(cls, app: str, pythonpath: tuple[str, ...] = ()) -> Release:
        """The serving environment itself, for a first generation without --release."""
        check_app_spec(app, where="the command line")
        return cls(
            name=app.split(":", 1)[0],
            version="local",
            app=app,
            python=sys.executable,
            path=None,
            pythonpath=pythonpath,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "app": self.app,
            "path": self.path,
            "python": self.python,
            "artifact_sha256": self.artifact_sha256,
        }

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


def _artifact_digest(root: Path) -> str | None:
    try:
        digest = (root / DIGEST_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return digest if re.fullmatch(r"[0-9a-f]{64}", digest) else None


def check_app_spec(app: str, *, where: str) -> None:
    if not APP_SPEC.match(app):
        raise ReleaseError(f"{where}: app {app!r} must look like 'module:attribute'")
