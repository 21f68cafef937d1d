"""The Python API from inside the app: an app that deploys itself."""

from __future__ import annotations

import httpx

from tests.support.releases import versioned_app

SELF_DEPLOYING = versioned_app(
    "self",
    extra="""
import beamdeploy_asgi
from starlette.concurrency import run_in_threadpool

async def deploy(request):
    target = request.query_params["release"]
    before = await run_in_threadpool(beamdeploy_asgi.current_release)
    done = await run_in_threadpool(beamdeploy_asgi.upgrade, target)
    return JSONResponse({"enabled": beamdeploy_asgi.enabled(), "before": before,
                         "outcome": done["outcome"], "to": done["to"]["version"]})
""",
    routes='Route("/deploy", deploy), ',
)


def test_app_upgrades_itself_and_gets_the_answer(serve, releases):
    server = serve("--workers", "2", "--release", str(releases.custom("self", SELF_DEPLOYING)))
    answer = httpx.get(server.url + "/deploy", params={"release": str(releases["v2"])}, timeout=60)
    assert answer.status_code == 200
    body = answer.json()
    assert body == {
        "enabled": True,
        "before": body["before"],
        "outcome": "succeeded",
        "to": "v2",
    }
    assert body["before"]["version"] == "self"
    assert httpx.get(server.url).text.startswith("v2")
    status = server.wait_for(lambda s: not s["draining"])
    assert status["serving"]["release"]["version"] == "v2"
