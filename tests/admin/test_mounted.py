"""An app that mounts admin_app() itself: FastAPI end to end, and plain uvicorn."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.server import plain_uvicorn
from tests.support.tokens import AUTH, TOKEN

FASTAPI_APP = """
import os
from fastapi import FastAPI
import beamdeploy_asgi

app = FastAPI()

@app.middleware("http")
async def mark(request, call_next):
    response = await call_next(request)
    response.headers["x-served-by"] = "the-app"
    return response

app.mount("/_deploy", beamdeploy_asgi.admin_app())

@app.get("/")
async def home():
    return {"version": "{VERSION}", "generation": os.environ.get("BEAMDEPLOY_GENERATION")}
"""


def fastapi_release(releases, version: str):
    source = FASTAPI_APP.replace("{VERSION}", version)
    return releases.custom(f"fastapi-{version}", source, packages=("fastapi",))


def test_fastapi_app_mounting_the_admin_deploys_itself(serve, releases):
    v1, v2 = fastapi_release(releases, "f1"), fastapi_release(releases, "f2")
    server = serve(
        "--workers",
        "2",
        "--release",
        str(v1),
        "--release-dir",
        str(v1.parent),
        env={"BEAMDEPLOY_TOKEN": TOKEN},
    )
    status = httpx.get(server.url + "/_deploy/status", headers=AUTH)
    assert status.status_code == 200
    # The app's own middleware ran: the worker did not put a second admin in front.
    assert status.headers["x-served-by"] == "the-app"
    assert httpx.get(server.url + "/_deploy/status").status_code == 401
    answer = httpx.post(
        server.url + "/_deploy/upgrade?wait=true",
        json={"release": str(v2)},
        headers=AUTH,
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["to"]["version"] == "fastapi-f2"
    assert httpx.get(server.url + "/").json() == {"version": "f2", "generation": "2"}
    openapi = httpx.get(server.url + "/_deploy/openapi.json", headers=AUTH).json()
    assert "/upgrade" in openapi["paths"]


def test_mounted_admin_outside_the_runtime_answers_503(tmp_path: Path):
    (tmp_path / "outside.py").write_text(FASTAPI_APP.replace("{VERSION}", "plain"))
    with plain_uvicorn(tmp_path, "outside:app", {"BEAMDEPLOY_TOKEN": TOKEN}) as url:
        answer = httpx.get(f"{url}/_deploy/status", headers=AUTH)
        assert answer.status_code == 503
        assert answer.json()["error"] == "not_enabled"
        assert "not running under beamdeploy" in answer.json()["detail"]
        assert httpx.get(f"{url}/_deploy/health").status_code == 503
        assert httpx.get(f"{url}/").json()["version"] == "plain"
