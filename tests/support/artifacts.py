"""Sample projects and the artifacts `beamdeploy build` makes of them."""

from __future__ import annotations

import textwrap
from pathlib import Path

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


def write_project(root: Path, version: str) -> Path:
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
            dependencies = ["starlette"]

            [tool.beamdeploy]
            app = "sample.app:app"
            """
        )
    )
    (project / "sample" / "__init__.py").write_text("")
    (project / "sample" / "app.py").write_text(f'VERSION = "{version}"\n' + SAMPLE_APP)
    return project


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
        """An artifact whose app raises at import time."""
        if version not in self.built:
            project = write_project(self.root / "src", version)
            app = project / "sample" / "app.py"
            app.write_text(app.read_text() + '\nraise RuntimeError("broken at import")\n')
            self.built[version] = build(project, self.root / "dist", progress=lambda _: None)
        return self.built[version]
