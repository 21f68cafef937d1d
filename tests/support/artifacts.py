"""Sample projects and the artifacts `beamdeploy build` makes of them."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import tarfile
import textwrap
import zipfile
from pathlib import Path

from uv import find_uv_bin

from beamdeploy_asgi.releases.build import build
from beamdeploy_asgi.releases.release import MANIFEST

SAMPLE_APP = """
import asyncio, os
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

async def home(request):
    generation = os.environ.get("BEAMDEPLOY_GENERATION")
    return PlainTextResponse(f"{VERSION} sample gen={generation}")

app = Starlette(routes=[Route("/", home)])
"""


def write_project(root: Path, version: str, dependencies: tuple[str, ...] = ("starlette",)) -> Path:
    """A packaged sample project: pyproject.toml with [tool.beamdeploy] app."""
    project = root / f"sample-src-{version}"
    (project / "sample").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        pyproject("sample", version, dependencies, '[tool.beamdeploy]\napp = "sample.app:app"\n')
    )
    (project / "sample" / "__init__.py").write_text("")
    (project / "sample" / "app.py").write_text(f'VERSION = "{version}"\n' + SAMPLE_APP)
    return project


def pyproject(name: str, version: str, dependencies: tuple[str, ...], extra: str = "") -> str:
    """A hatchling project's pyproject.toml (direct references allowed, for refusal tests)."""
    return (
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["hatchling"]
            build-backend = "hatchling.build"

            [project]
            name = "{name}"
            version = "{version}"
            dependencies = {json.dumps(list(dependencies))}

            [tool.hatch.metadata]
            allow-direct-references = true
            """
        )
        + extra
    )


def local_package(
    links: Path,
    name: str,
    version: str = "1.0",
    dependencies: tuple[str, ...] = (),
    *,
    sdist_only: bool = False,
) -> Path:
    """A tiny package built into `links` (a --find-links directory): a wheel, or an sdist only."""
    source = links.parent / f"{name}-{version}-src"
    module = source / "src" / name.replace("-", "_")
    module.mkdir(parents=True)
    (module / "__init__.py").write_text("")
    (source / "pyproject.toml").write_text(pyproject(name, version, dependencies))
    kind = "--sdist" if sdist_only else "--wheel"
    done = subprocess.run(
        [find_uv_bin(), "build", kind, "--out-dir", str(links), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    (built,) = links.glob(f"{name.replace('-', '_')}-{version}*")
    return built


class Artifacts:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.built: dict[str, Path] = {}

    def __getitem__(self, version: str) -> Path:
        if version not in self.built:
            project = write_project(self.root / "src", version)
            self.built[version] = build(project, self.root / "dist", progress=lambda _: None)
        return self.built[version]

    def broken(self, version: str) -> Path:
        """An artifact whose app raises at import time (a version no good one uses)."""
        key = f"broken-{version}"
        if key not in self.built:
            project = write_project(self.root / "broken-src", version)
            app = project / "sample" / "app.py"
            app.write_text(app.read_text() + '\nraise RuntimeError("broken at import")\n')
            self.built[key] = build(project, self.root / "broken-dist", progress=lambda _: None)
        return self.built[key]


def wheel_bytes(name: str, version: str, files: dict[str, str], requires: list[str]) -> bytes:
    """A minimal, valid pure-Python wheel with `files` and Requires-Dist `requires`."""
    info = f"{name}-{version}.dist-info"
    contents = dict(files)
    contents[f"{info}/METADATA"] = (
        "\n".join(
            ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
            + [f"Requires-Dist: {r}" for r in requires]
        )
        + "\n"
    )
    contents[f"{info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = []
    for path, text in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    contents[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, text in contents.items():
            archive.writestr(path, text)
    return buffer.getvalue()


def repack(artifact: Path, out: Path, extra: dict[str, bytes]) -> Path:
    """`artifact` with `extra` files added and listed in its manifest, manifest first."""
    with tarfile.open(artifact) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    manifest = json.loads(files.pop(MANIFEST))
    files.update(extra)
    manifest["files"] = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tar:
        _add(tar, MANIFEST, json.dumps(manifest).encode())
        made: set[str] = set()
        for name in sorted(files):
            parts = name.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                folder = "/".join(parts[:depth])
                if folder not in made:
                    made.add(folder)
                    info = tarfile.TarInfo(folder)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            _add(tar, name, files[name])
    return out


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))
