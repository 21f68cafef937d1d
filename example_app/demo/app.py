"""The demo service: a page that shows which release and worker answered."""

from __future__ import annotations

import html
import os

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

import beamdeploy_asgi

PAGE = """<!doctype html>
<html><head><title>beamdeploy demo {version}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 3rem; background: {color}; }}
main {{ background: white; padding: 2rem; border-radius: 1rem; max-width: 40rem; }}
code {{ background: #eee; padding: 0 .3rem; }}
</style></head>
<body><main>
<h1>Release {version}</h1>
<p>generation <b>{generation}</b>, worker pid <b>{pid}</b></p>
<p>{status}</p>
<p>Ship a new version from another terminal:
<code>cd example_app &amp;&amp; ./deploy.sh 1.1.0</code>, then reload this page.
Go back with <code>.venv/bin/beamdeploy rollback --state-dir .beamdeploy</code>.</p>
</main></body></html>
"""

COLORS = ["#cde8ff", "#d7f5d0", "#ffe7c2", "#f3d6f5", "#fff6b8"]


def whoami() -> dict[str, str]:
    return {
        "version": os.environ.get("BEAMDEPLOY_RELEASE_VERSION", "not deployed"),
        "generation": os.environ.get("BEAMDEPLOY_GENERATION", "-"),
        "pid": str(os.getpid()),
    }


async def home(request: Request) -> HTMLResponse:
    me = whoami()
    if beamdeploy_asgi.enabled():
        status = await run_in_threadpool(beamdeploy_asgi.status)
        summary = describe(status)
    else:
        summary = "not running under beamdeploy"
    color = COLORS[sum(map(ord, me["version"])) % len(COLORS)]
    return HTMLResponse(PAGE.format(color=color, status=html.escape(summary), **me))


def describe(status: dict) -> str:
    """One line on the page, e.g. "2 workers serve; 1 generation draining"."""
    workers = len(status["serving"]["workers"]) if status["serving"] else 0
    serve = "worker serves" if workers == 1 else "workers serve"
    draining = len(status["draining"])
    generations = "generation" if draining == 1 else "generations"
    return f"{workers} {serve}; {draining} {generations} draining"


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True, **whoami()})


app = Starlette(routes=[Route("/", home), Route("/healthz", health)])
