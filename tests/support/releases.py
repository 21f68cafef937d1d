"""Real release directories for tests: app source plus a real uv-built venv."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from uv import find_uv_bin

REPO = Path(__file__).resolve().parents[2]


def uv(*args: str, cwd: Path | None = None) -> None:
    subprocess.run([find_uv_bin(), *args], check=True, cwd=cwd, capture_output=True)


def build_wheel(outdir: Path) -> Path:
    """Build beamdeploy-asgi once per test run; releases install this wheel."""
    uv("build", "--wheel", "--out-dir", str(outdir), str(REPO))
    (wheel,) = outdir.glob("beamdeploy_asgi-*.whl")
    return wheel


class ReleaseFactory:
    def __init__(self, root: Path, wheel: Path) -> None:
        self.root = root
        self.wheel = wheel

    def make(
        self,
        version: str,
        app_source: str,
        *,
        name: str = "demo",
        app: str = "main:app",
        packages: tuple[str, ...] = (),
        manifest_extra: dict | None = None,
        dirname: str | None = None,
        files: dict[str, str] | None = None,
    ) -> Path:
        """A release dir whose venv is a fresh uv venv with the test wheel installed.

        `files` are more modules of the app, by path under app/.
        """
        release = self.root / (dirname or f"{name}-{version}")
        (release / "app").mkdir(parents=True)
        (release / "app" / "main.py").write_text(textwrap.dedent(app_source))
        for path, source in (files or {}).items():
            (release / "app" / path).parent.mkdir(parents=True, exist_ok=True)
            (release / "app" / path).write_text(textwrap.dedent(source))
        manifest = {"name": name, "version": version, "app": app, "pythonpath": ["app"]}
        manifest.update(manifest_extra or {})
        (release / "beamdeploy-release.json").write_text(json.dumps(manifest))
        venv = release / "venv"
        uv("venv", "--python", sys.executable, str(venv))
        install = [
            "pip",
            "install",
            "--python",
            str(venv / "bin" / "python"),
            str(self.wheel),
            "httptools",
            "websockets",
            *packages,
        ]
        try:
            uv(*install, "--offline")  # from uv's cache, once an earlier release filled it
        except subprocess.CalledProcessError:
            uv(*install)
        return release


def versioned_app(version: str, extra: str = "", lifespan: str = "", routes: str = "") -> str:
    """A Starlette app that answers its version, generation and pid.

    `extra` is module code, `lifespan` the body of a lifespan run before its
    yield, `routes` more entries for the routes list.
    """
    lifespan_code, lifespan_arg = "", ""
    if lifespan:
        body = textwrap.indent(textwrap.dedent(lifespan).strip(), "    ")
        lifespan_code = (
            f"@contextlib.asynccontextmanager\nasync def lifespan(app):\n{body}\n    yield\n"
        )
        lifespan_arg = "lifespan=lifespan, "
    return f'''
import asyncio, contextlib, os
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, JSONResponse
from starlette.routing import Route, WebSocketRoute

VERSION = "{version}"

async def home(request):
    generation = os.environ.get("BEAMDEPLOY_GENERATION", "-")
    return PlainTextResponse(f"{{VERSION}} gen={{generation}} pid={{os.getpid()}}")

IN_FLIGHT = 0

async def slow(request):
    global IN_FLIGHT
    IN_FLIGHT += 1
    try:
        await asyncio.sleep(float(request.query_params.get("s", "2")))
    finally:
        IN_FLIGHT -= 1
    return PlainTextResponse(f"slow {{VERSION}}")

async def in_flight(request):
    return PlainTextResponse(str(IN_FLIGHT))

async def health(request):
    return JSONResponse({{"ok": True}})

async def ws(websocket):
    await websocket.accept()
    await websocket.send_text(VERSION)
    while True:
        await websocket.receive_text()

{extra}

{lifespan_code}

app = Starlette({lifespan_arg}routes=[{routes}Route("/", home), Route("/slow", slow),
                        Route("/in-flight", in_flight),
                        Route("/healthz", health), WebSocketRoute("/ws", ws)])
'''
