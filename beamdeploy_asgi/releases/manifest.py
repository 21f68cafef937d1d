"""The manifest of a release artifact, as `beamdeploy build` writes it.

An artifact's ``beamdeploy-release.json`` is a superset of a release
directory's: besides name, version and app it says which Python and platform
the bundled wheels were built for, when, and the sha256 of every other file.
"""

from __future__ import annotations

import re
import sys
import sysconfig
from dataclasses import dataclass, field
from typing import Any

from beamdeploy_asgi.errors import ReleaseError
from beamdeploy_asgi.releases.release import MANIFEST, check_app_spec

FORMAT = 1
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def this_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def this_platform() -> str:
    return sysconfig.get_platform()


@dataclass
class ArtifactManifest:
    name: str
    version: str
    app: str
    python: str
    platform: str
    built_at: str
    files: dict[str, str]
    pythonpath: list[str] = field(default_factory=list)

    @property
    def wheels(self) -> list[str]:
        return sorted(path for path in self.files if path.endswith(".whl"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "app": self.app,
            "python": self.python,
            "platform": self.platform,
            "built_at": self.built_at,
            "pythonpath": self.pythonpath,
            "files": self.files,
        }

    @classmethod
    def from_dict(cls, data: Any) -> ArtifactManifest:
        """Check every field, naming the first one that is wrong."""
        if not isinstance(data, dict):
            raise ReleaseError(f"{MANIFEST} must hold a JSON object")
        if data.get("format") != FORMAT:
            raise ReleaseError(f"{MANIFEST}: unknown artifact format {data.get('format')!r}")
        for key in ("name", "version", "app", "python", "platform", "built_at"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ReleaseError(f"{MANIFEST}: {key!r} must be a non-empty string")
        for key in ("name", "version"):
            if not SAFE_NAME.match(data[key]):
                raise ReleaseError(f"{MANIFEST}: {key} {data[key]!r} has unsafe characters")
        check_app_spec(data["app"], where=MANIFEST)
        files = data.get("files")
        if not isinstance(files, dict) or not files:
            raise ReleaseError(f"{MANIFEST}: 'files' must map every file to its sha256")
        for path, digest in files.items():
            if not isinstance(path, str) or not isinstance(digest, str) or not SHA256.match(digest):
                raise ReleaseError(f"{MANIFEST}: bad checksum entry for {path!r}")
        pythonpath = data.get("pythonpath", [])
        if not isinstance(pythonpath, list) or not all(isinstance(p, str) for p in pythonpath):
            raise ReleaseError(f"{MANIFEST}: 'pythonpath' must be a list of strings")
        manifest = cls(
            name=data["name"],
            version=data["version"],
            app=data["app"],
            python=data["python"],
            platform=data["platform"],
            built_at=data["built_at"],
            files=dict(files),
            pythonpath=list(pythonpath),
        )
        if not manifest.wheels:
            raise ReleaseError(f"{MANIFEST}: the artifact bundles no wheels")
        return manifest

    def check_runs_on(self, python: str, platform: str) -> None:
        if self.python != python:
            raise ReleaseError(
                f"release {self.name} {self.version} was built for Python {self.python}; "
                f"this host installs with Python {python}"
            )
        if self.platform not in ("any", platform):
            raise ReleaseError(
                f"release {self.name} {self.version} was built for {self.platform}; "
                f"this host is {platform}"
            )
