"""The demo service: a page that deploys the demo itself, and shows it happen.

Routes:

- ``/``: the page (demo/page.html, its script demo/static/demo.js);
- ``/api/whoami``: which release, label and worker answered; the page asks
  every 100 ms and counts the answers that failed;
- ``POST /api/builds``: build a new release of the demo (see builds.py), its
  progress streamed as JSON lines;
- ``/healthz``: the arbiter's health check for new generations.

Deploying is not here: the page calls beamdeploy's own admin API at
/_deploy with the token it was given in its address (``#token=...``). This
process never holds the token.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from demo import builds, variant

SERVED = 0  # requests this process answered at /api/whoami: state a hot reload keeps
NO_STORE = {"Cache-Control": "no-store"}
STATIC = {"demo.js": "text/javascript; charset=utf-8"}


def whoami() -> dict[str, Any]:
    return {
        "version": os.environ.get("BEAMDEPLOY_RELEASE_VERSION", "not deployed"),
        "generation": os.environ.get("BEAMDEPLOY_GENERATION", "-"),
        "pid": os.getpid(),
        "label": variant.LABEL,
        "color": variant.COLOR,
        "greeting": variant.GREETING,
    }


async def home(request: Request) -> HTMLResponse:
    page = resources.files("demo").joinpath("page.html").read_text(encoding="utf-8")
    return HTMLResponse(page, headers=NO_STORE)


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC:
        return JSONResponse({"error": "not_found"}, 404)
    body = resources.files("demo").joinpath("static").joinpath(name).read_bytes()
    return Response(body, media_type=STATIC[name], headers=NO_STORE)


async def who(request: Request) -> JSONResponse:
    global SERVED
    SERVED += 1
    return JSONResponse({**whoami(), "served": SERVED}, headers=NO_STORE)


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True, **whoami()})


async def start_build(request: Request) -> Response:
    """Build one of the few releases the cards offer; JSON lines: {"line"}..., {"done"|"error"}.

    Only a JSON body is taken: a page of another site cannot send one here
    without the browser asking this server first (which says no).
    """
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return JSONResponse({"error": "send a JSON body"}, 415)
    try:
        body = json.loads(await request.body())
    except ValueError:
        return JSONResponse({"error": "the body is not JSON"}, 400)
    if not isinstance(body, dict):
        return JSONResponse({"error": 'send {"kind": ..., "label": ...}'}, 400)
    try:
        want = builds.wanted(body.get("kind"), body.get("label"))
        claim = builds.claim()
    except builds.BuildError as exc:
        return JSONResponse({"error": str(exc)}, exc.status)

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def put(message: dict[str, Any]) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, message)
        except RuntimeError:  # the loop has closed: this worker is gone
            pass

    def work() -> None:
        try:
            message: dict[str, Any] = {"done": builds.build(want, lambda line: put({"line": line}))}
        except builds.BuildError as exc:
            message = {"error": str(exc)}
        except Exception as exc:  # shown on the page, whatever it was
            message = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            claim.release()
        put(message)

    threading.Thread(target=work, name="demo-build", daemon=True).start()

    async def lines() -> AsyncIterator[bytes]:
        while True:
            message = await queue.get()
            yield (json.dumps(message) + "\n").encode()
            if "line" not in message:
                return

    return StreamingResponse(lines(), media_type="application/x-ndjson", headers=NO_STORE)


app = Starlette(
    routes=[
        Route("/", home),
        Route("/static/{name}", static),
        Route("/api/whoami", who),
        Route("/api/builds", start_build, methods=["POST"]),
        Route("/healthz", health),
    ]
)
