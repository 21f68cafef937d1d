"""The admin HTTP API over real HTTP, against a real arbiter and workers."""

from __future__ import annotations

import json
import os
import threading

import httpx
import pytest

import beamdeploy_asgi
from tests.support.load import Load
from tests.support.tokens import AUTH, TOKEN


@pytest.fixture
def admin(serve, releases, tmp_path):
    """An arbiter with a token and the test releases' directory as release dir."""
    release_dir = releases["v1"].parent
    releases["v2"]  # built before the server starts
    server = serve(
        "--workers",
        "2",
        "--release",
        str(releases["v1"]),
        "--release-dir",
        str(release_dir),
        env={"BEAMDEPLOY_TOKEN": TOKEN},
    )
    server.admin = server.url + "/_deploy"
    return server


def post_upgrade(server, release, *, wait=False, **kwargs):
    return httpx.post(
        server.admin + "/upgrade" + ("?wait=true" if wait else ""),
        json={"release": str(release)},
        headers=AUTH,
        timeout=120,
        **kwargs,
    )


def test_health_is_public_and_reveals_nothing(admin):
    answer = httpx.get(admin.admin + "/health")
    assert answer.status_code == 200 and answer.json() == {"status": "serving", "release": "v1"}


def test_without_a_token_only_health_exists(serve, releases):
    server = serve("--workers", "1", "--release", str(releases["v1"]))
    assert httpx.get(server.url + "/_deploy/health").status_code == 200
    for method, path in [
        ("GET", "/status"),
        ("POST", "/upgrade"),
        ("GET", "/deployments"),
        ("GET", "/openapi.json"),
    ]:
        answer = httpx.request(method, server.url + "/_deploy" + path, headers=AUTH)
        assert answer.status_code == 404, path
        assert answer.json()["error"] == "not_found"


def test_token_is_required_and_checked(admin):
    missing = httpx.get(admin.admin + "/status")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["error"] == "unauthorized"
    wrong = httpx.get(admin.admin + "/status", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    basic = httpx.get(admin.admin + "/status", headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    assert httpx.get(admin.admin + "/status", headers=AUTH).status_code == 200
    log = admin.log()
    assert "admin: refused GET /status from 127.0.0.1 (wrong token)" in log
    assert "admin: refused GET /status from 127.0.0.1 (no token)" in log
    assert "nope" not in log and TOKEN not in log


def test_admin_allow_restricts_addresses(serve, releases):
    server = serve(
        "--workers",
        "1",
        "--release",
        str(releases["v1"]),
        "--admin-allow",
        "10.0.0.0/8",
        env={"BEAMDEPLOY_TOKEN": TOKEN},
    )
    refused = httpx.get(server.url + "/_deploy/status", headers=AUTH)
    assert refused.status_code == 403 and refused.json()["error"] == "address_not_allowed"
    assert httpx.get(server.url + "/_deploy/health").status_code == 200


def test_status_is_what_the_python_api_returns(admin):
    import beamdeploy_asgi

    over_http = httpx.get(admin.admin + "/status", headers=AUTH).json()
    direct = beamdeploy_asgi.status(state_dir=admin.state_dir)
    assert over_http["serving"] == direct["serving"]
    assert over_http["deployments"] == direct["deployments"]
    assert over_http["serving"]["release"]["version"] == "v1"


def test_async_upgrade_answers_202_and_location(admin, releases):
    started = post_upgrade(admin, releases["v2"])
    assert started.status_code == 202, started.text
    location = started.headers["location"]
    assert location == f"/_deploy/deployments/{started.json()['id']}"
    record = admin.wait_for(lambda s: not s["upgrading"])["deployments"][0]
    one = httpx.get(admin.url + location, headers=AUTH).json()
    assert one["id"] == record["id"] and one["outcome"] == "succeeded"
    assert one["from"]["version"] == "v1" and one["to"]["version"] == "v2"
    listed = httpx.get(admin.admin + "/deployments", headers=AUTH).json()["deployments"]
    assert [d["id"] for d in listed][:2] == [one["id"], listed[1]["id"]]
    assert listed[1]["kind"] == "boot"
    assert httpx.get(admin.url).text.startswith("v2")


def test_wait_true_answers_with_the_outcome_from_the_old_generation(admin, releases):
    old_pids = admin.serving_pids()
    with Load(admin.url, keepalive_clients=4, close_clients=2, max_seconds=60) as load:
        load.wait_requests(100)
        answer = post_upgrade(admin, releases["v2"], wait=True)
        load.wait_requests(100)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["outcome"] == "succeeded" and body["to"]["version"] == "v2"
    assert answer.headers["connection"] == "close", "answered by a draining worker"
    assert load.result.failures == []
    assert set(admin.serving_pids()).isdisjoint(old_pids)


def test_wait_true_on_a_broken_release_is_422_with_the_cause(admin, releases):
    broken = releases.custom("admin-broken", "raise RuntimeError('broken on purpose')\n")
    answer = post_upgrade(admin, broken, wait=True)
    assert answer.status_code == 422
    body = answer.json()
    assert body["error"] == "deployment_failed"
    assert "RuntimeError: broken on purpose" in body["detail"]
    assert body["deployment"]["outcome"] == "failed"
    assert admin.status()["serving"]["release"]["version"] == "v1"


def test_events_stream_the_phases_in_order(admin, releases):
    started = post_upgrade(admin, releases["v2"]).json()
    events = []
    with httpx.stream(
        "GET", f"{admin.admin}/deployments/{started['id']}/events", headers=AUTH, timeout=60
    ) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: ") :])))
    names = [name for name, _ in events]
    assert names[0] == "preflight"
    order = [n for n in dict.fromkeys(names)]
    assert order == ["preflight", "booting", "promoting", "promoted", "draining", "done", "end"]
    assert events[-1][1]["outcome"] == "succeeded"


def test_a_second_upgrade_meanwhile_is_409(admin, releases):
    slow = releases.custom(
        "admin-slow",
        """
import asyncio, contextlib
from starlette.applications import Starlette

@contextlib.asynccontextmanager
async def lifespan(app):
    await asyncio.sleep(3)
    yield

app = Starlette(lifespan=lifespan)
""",
    )
    assert post_upgrade(admin, slow).status_code == 202
    second = post_upgrade(admin, releases["v2"])
    assert second.status_code == 409
    assert second.json()["error"] == "upgrade_in_progress"
    admin.wait_for(lambda s: not s["upgrading"])


def test_error_statuses(admin, releases, tmp_path):
    upgrade = admin.admin + "/upgrade"
    release_dir = releases["v1"].parent

    def post(**kwargs):
        return httpx.post(upgrade, headers={**AUTH, **kwargs.pop("headers", {})}, **kwargs)

    cases = [
        (
            post(content=b"{not json", headers={"Content-Type": "application/json"}),
            400,
            "bad_request",
        ),
        (post(json=["release"]), 400, "bad_request"),
        (post(json={"release": 7}), 400, "bad_request"),
        (
            httpx.post(upgrade + "?wait=maybe", json={"release": "x"}, headers=AUTH),
            400,
            "bad_request",
        ),
        (post(json={"release": "/etc"}), 403, "path_not_allowed"),
        (post(json={"release": f"{release_dir}/../../etc"}), 403, "path_not_allowed"),
        (httpx.get(admin.admin + "/deployments/nope", headers=AUTH), 404, "not_found"),
        (httpx.get(admin.admin + "/deployments/nope/events", headers=AUTH), 404, "not_found"),
        (httpx.get(admin.admin + "/no-such-route", headers=AUTH), 404, "not_found"),
        (httpx.delete(admin.admin + "/status", headers=AUTH), 405, "method_not_allowed"),
        (httpx.get(upgrade, headers=AUTH), 405, "method_not_allowed"),
        (post(json={"release": "x" * 70_000}), 413, "payload_too_large"),
        (
            post(content=b"release=x", headers={"Content-Type": "text/plain"}),
            415,
            "unsupported_media_type",
        ),
        (post(json={"release": str(release_dir / "no-such-release")}), 422, "invalid_release"),
    ]
    for answer, status, code in cases:
        assert answer.status_code == status, (answer.request.url, answer.text)
        body = answer.json()
        assert body["error"] == code and body["detail"], body

    # A symlink inside a release directory that points outside is refused.
    link = release_dir / "escape-link"
    if not link.exists():
        os.symlink(tmp_path, link)
    answer = post(json={"release": str(link)})
    assert answer.status_code == 403 and answer.json()["error"] == "path_not_allowed"
    assert admin.status()["deployments"][0]["kind"] == "boot", "nothing was deployed"


def test_relative_release_is_looked_up_in_the_release_dirs(admin, releases):
    answer = post_upgrade(admin, releases["v2"].name, wait=True)
    assert answer.status_code == 200, answer.text
    assert answer.json()["to"]["path"] == str(releases["v2"])


def test_prefix_is_configurable(serve, releases):
    server = serve(
        "--workers",
        "1",
        "--release",
        str(releases["v1"]),
        "--admin-prefix",
        "/ops",
        env={"BEAMDEPLOY_TOKEN": TOKEN},
    )
    assert httpx.get(server.url + "/ops/status", headers=AUTH).status_code == 200
    assert httpx.get(server.url + "/ops/openapi.json", headers=AUTH).json()["servers"] == [
        {"url": "/ops"}
    ]
    assert httpx.get(server.url + "/_deploy/status", headers=AUTH).status_code == 404
    off = serve(
        "--workers",
        "1",
        "--release",
        str(releases["v1"]),
        "--admin-prefix",
        "off",
        env={"BEAMDEPLOY_TOKEN": TOKEN},
    )
    assert httpx.get(off.url + "/_deploy/health").status_code == 404  # the app's own 404


def test_health_answers_503_while_the_worker_drains(serve, releases):
    releases["v2"]  # built before the server starts
    # Long keep-alive and drain grace: the health connection must outlive the swap.
    server = serve(
        "--workers", "1", "--release", str(releases["v1"]),
        "--keep-alive", "60", "--drain-grace", "30",
        env={"BEAMDEPLOY_TOKEN": TOKEN},
    )  # fmt: skip
    health = server.url + "/_deploy/health"
    results = {}

    with httpx.Client() as client:
        assert client.get(health).status_code == 200

        def slow():
            results["slow"] = httpx.get(server.url + "/slow?s=3", timeout=30).text

        thread = threading.Thread(target=slow)
        thread.start()
        beamdeploy_asgi.upgrade(releases["v2"], state_dir=server.state_dir)
        # The same keep-alive connection still reaches the old, draining worker.
        drained = client.get(health)
        thread.join()
    assert drained.status_code == 503 and drained.json()["status"] == "draining"
    assert drained.json()["reason"].startswith("this worker is stopping")
    assert results["slow"] == "slow v1"


def test_strategy_options_come_in_the_body_or_the_query(admin, releases):
    body = {"release": str(releases["v2"]), "strategy": "rolling", "max_surge": 2}
    answer = httpx.post(admin.admin + "/upgrade?wait=true", json=body, headers=AUTH, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["strategy"] == "rolling"
    assert answer.json()["rolling"]["max_surge"] == 2
    answer = httpx.post(
        admin.admin + "/rollback?wait=true&strategy=blue-green&bake=0.5", headers=AUTH, timeout=120
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["strategy"] == "blue-green" and answer.json()["bake"]["seconds"] == 0.5
    assert admin.status()["serving"]["release"]["version"] == "v1"


BAD_OPTIONS = [
    ("?strategy=canary", {}, "query parameter 'strategy' must be one of blue-green, rolling"),
    ("?max_surge=lots", {}, "query parameter 'max_surge' must be a number, not 'lots'"),
    ("", {"max_surge": 0}, "'max_surge' must be a whole number from 1 to 64, not 0"),
    ("", {"bake": -1}, "'bake' must be seconds, from 0 to 86400, not -1"),
    ("", {"bake_max_error_rate": 1.5}, "'bake_max_error_rate' must be a share"),
    ("", {"canary": True}, "unknown option 'canary'"),
    ("", {"strategy": "rolling", "bake": 5}, "bake with the blue-green strategy"),
]


def test_bad_strategy_options_are_400_and_start_nothing(admin, releases):
    for query, fields, detail in BAD_OPTIONS:
        body = {"release": str(releases["v2"]), **fields}
        answer = httpx.post(admin.admin + "/upgrade" + query, json=body, headers=AUTH, timeout=60)
        assert answer.status_code == 400, (query, fields, answer.text)
        assert detail in answer.json()["detail"]
    assert not admin.status()["upgrading"]
    assert admin.status()["deployments"][0]["kind"] == "boot", "nothing was started"
