"""Hot reload of a real FastAPI app, and of a process under plain uvicorn (no arbiter)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import beamdeploy_asgi
from beamdeploy_asgi.errors import DeploymentFailed
from tests.support.releases import ReleaseFactory
from tests.support.server import free_port
from tests.support.tokens import AUTH, TOKEN

FASTAPI_APP = """
import os
from fastapi import Depends, FastAPI
from pydantic import BaseModel

app = FastAPI()
HITS = {{"n": 0}}


class Item(BaseModel):
    name: str{item_extra}


def settings():
    return {{"greeting": "hello"}}


@app.get("/")
async def home({home_params}s: dict = Depends(settings)):
    HITS["n"] += 1
    answer = {{"version": "{version}", "greeting": s["greeting"], "hits": HITS["n"]}}
    return {{**answer, "pid": os.getpid()}}


@app.post("/items")
async def create(item: Item):
    return item
"""


@pytest.fixture(scope="module")
def fastapi_releases(release_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("fastapi")
    factory = ReleaseFactory(root, release_factory.wheel)

    def make(version: str, *, home_params: str = "", item_extra: str = "") -> Path:
        source = FASTAPI_APP.format(version=version, home_params=home_params, item_extra=item_extra)
        return factory.make(version, source, packages=("fastapi",))

    return {
        "1": make("1"),
        "2": make("2"),
        "param": make("3", home_params='q: str = "x", '),
        "field": make("4", item_extra="\n    price: float = 0.0"),
    }


def test_fastapi_endpoint_body_applied_parameter_and_model_field_refused(serve, fastapi_releases):
    server = serve("--workers", "2", "--release", str(fastapi_releases["1"]))
    pids = sorted(server.serving_pids())
    before = answers_from_each(server.url, pids)

    done = beamdeploy_asgi.hot_reload(fastapi_releases["2"], state_dir=server.state_dir)
    assert done["outcome"] == "succeeded"
    after = answers_from_each(server.url, pids)
    for pid in pids:
        assert after[pid]["version"] == "2" and after[pid]["greeting"] == "hello"
        assert after[pid]["hits"] > before[pid]["hits"], "the module's state was kept"
    assert sorted(server.serving_pids()) == pids
    assert httpx.post(server.url + "/items", json={"name": "x"}).json() == {"name": "x"}

    with pytest.raises(DeploymentFailed) as refused:
        beamdeploy_asgi.hot_reload(fastapi_releases["param"], state_dir=server.state_dir)
    error = refused.value.deployment["error"]
    assert re.search(r"/app/main.py:\d+: route-signature: ", error), error
    assert httpx.get(server.url + "/?q=y").json()["version"] == "2", "nothing changed"

    with pytest.raises(DeploymentFailed) as refused:
        beamdeploy_asgi.hot_reload(fastapi_releases["field"], state_dir=server.state_dir)
    error = refused.value.deployment["error"]
    assert re.search(r"/app/main.py:1[12]: class-body: ", error), error
    assert httpx.post(server.url + "/items", json={"name": "x", "price": 2}).json() == {
        "name": "x"
    }, "the old model still validates"
    assert sorted(server.serving_pids()) == pids


LOCAL_APP = """
import os
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

import beamdeploy_asgi

VERSION = "{version}"
COUNT = {{"n": 0}}


async def home(request):
    COUNT["n"] += 1
    return PlainTextResponse(f"{{VERSION}} count={{COUNT['n']}} pid={{os.getpid()}}")


app = Starlette(routes=[Route("/", home), Mount("/_deploy", beamdeploy_asgi.admin_app())])
"""


def test_plain_uvicorn_with_the_admin_app_reloads_itself(release_factory, tmp_path):
    releases = tmp_path / "releases"
    factory = ReleaseFactory(releases, release_factory.wheel)
    v1 = factory.make("1.0", LOCAL_APP.format(version="1.0"))
    v2 = factory.make("2.0", LOCAL_APP.format(version="2.0"))
    port = free_port()
    log = open(tmp_path / "uvicorn.log", "wb")
    env = {
        **os.environ,
        "BEAMDEPLOY_TOKEN": TOKEN,
        "BEAMDEPLOY_RELEASE_DIRS": str(releases),
    }
    env.pop("BEAMDEPLOY_STATE_DIR", None)
    proc = subprocess.Popen(
        [
            str(v1 / "venv" / "bin" / "python"), "-m", "uvicorn", "main:app",
            "--app-dir", str(v1 / "app"), "--host", "127.0.0.1", "--port", str(port),
        ],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url, proc)
        before = httpx.get(url).text
        assert before.startswith("1.0 count=1 ")
        refused = httpx.post(url + "/_deploy/hot-reload", json={"release": str(v2)})
        assert refused.status_code == 401
        assert httpx.get(url + "/_deploy/status", headers=AUTH).status_code == 503
        dry = httpx.post(
            url + "/_deploy/hot-reload?dry_run=true", json={"release": "demo-2.0"}, headers=AUTH
        )
        assert dry.status_code == 200, dry.text
        assert httpx.get(url).text.startswith("1.0 count=2 ")
        outside = httpx.post(
            url + "/_deploy/hot-reload", json={"release": str(tmp_path)}, headers=AUTH
        )
        assert outside.status_code == 403
        done = httpx.post(url + "/_deploy/hot-reload", json={"release": "demo-2.0"}, headers=AUTH)
        assert done.status_code == 200, done.text
        record = done.json()
        assert record["kind"] == "hot-reload" and record["to"]["version"] == "2.0"
        after = httpx.get(url).text
        assert after.startswith("2.0 count=3 "), after
        assert after.split("pid=")[1] == before.split("pid=")[1], "the same process"
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        print((tmp_path / "uvicorn.log").read_text()[-3000:])


def answers_from_each(url: str, pids: list[int]) -> dict[int, dict]:
    """The app's answer from every worker: new connections until each has answered."""
    seen: dict[int, dict] = {}
    for _ in range(500):
        answer = httpx.get(url, headers={"Connection": "close"}).json()
        seen[answer["pid"]] = answer
        if sorted(seen) == pids:
            return seen
    raise AssertionError(f"only workers {sorted(seen)} of {pids} answered")


def wait_up(url: str, proc: subprocess.Popen) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise AssertionError(f"uvicorn exited with {proc.returncode}")
        try:
            httpx.get(url + "/_deploy/health", timeout=1)
            return
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"{url} never answered")


def test_outside_a_release_the_python_api_says_so():
    """This test process does not run from a release: nothing to compare with."""
    import beamdeploy_asgi.reload.local  # noqa: F401  (the package must not shadow the function)

    assert beamdeploy_asgi.hot_reload.__module__ == "beamdeploy_asgi.api"
    assert not Path(sys.prefix).parent.joinpath("beamdeploy-release.json").exists()
    with pytest.raises(beamdeploy_asgi.ReleaseError, match="does not run from a release"):
        beamdeploy_asgi.hot_reload("/nonexistent")
