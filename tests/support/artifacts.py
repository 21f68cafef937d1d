"""Sample projects and the artifacts `beamdeploy build` makes of them."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

from uv import find_uv_bin

from beamdeploy_asgi.releases.build import build

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
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["hatchling"]
            build-backend = "hatchling.build"

            [project]
            name = "sample"
            version = "{version}"
            dependencies = {json.dumps(list(dependencies))}

            [tool.beamdeploy]
            app = "sample.app:app"

            [tool.hatch.metadata]
            allow-direct-references = true
            """
        )
    )
    (project / "sample" / "__init__.py").write_text("")
    (project / "sample" / "app.py").write_text(f'VERSION = "{version}"\n' + SAMPLE_APP)
    return project


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
    (source / "pyproject.toml").write_text(
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
    )
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
