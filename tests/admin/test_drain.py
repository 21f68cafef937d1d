"""The host's drain mark: health answers 503 for the load balancer, the app serves on."""

from __future__ import annotations

import httpx

import beamdeploy_asgi

TOKEN = "drain-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def health(server):
    return httpx.get(server.url + "/_deploy/health")


def test_drain_is_a_host_state_kept_across_deploys_and_restarts(serve, releases):
    releases["v2"]  # built before the server starts
    server = serve("--workers", "2", "--release", str(releases["v1"]))
    answer = health(server)
    assert answer.status_code == 200
    assert answer.json() == {"status": "serving", "release": "v1"}
    assert server.status()["host"] == {"draining": False, "since": None}

    drained = server.cli("drain")
    assert drained.returncode == 0, drained.stderr
    assert "host: draining since" in drained.stdout
    answer = health(server)
    assert answer.status_code == 503
    body = answer.json()
    assert body["status"] == "draining" and body["release"] == "v1"
    assert body["reason"].startswith("marked draining by the operator at ")
    assert set(body) == {"status", "reason", "release"}  # public: nothing more
    assert httpx.get(server.url + "/").text.startswith("v1 ")  # the workers still serve
    since = server.status()["host"]["since"]
    assert isinstance(since, float)
    assert "host: draining since" in server.cli("status").stdout
    assert (server.state_dir / "drained").stat().st_mode & 0o777 == 0o600

    # Workers started by a deploy learn the mark before they serve.
    beamdeploy_asgi.upgrade(releases["v2"], state_dir=server.state_dir)
    answer = health(server)
    assert answer.status_code == 503 and answer.json()["release"] == "v2"
    assert httpx.get(server.url + "/").text.startswith("v2 ")

    # A restarted arbiter reads it back from the state dir.
    server.stop()
    server.start()
    assert server.status()["host"] == {"draining": True, "since": since}
    assert health(server).status_code == 503

    assert beamdeploy_asgi.undrain(state_dir=server.state_dir) == {
        "draining": False,
        "since": None,
    }
    assert health(server).json()["status"] == "serving"
    assert not (server.state_dir / "drained").exists()
    undrained = server.cli("undrain", "--json")
    assert undrained.returncode == 0 and '"draining": false' in undrained.stdout
    # Twice is fine, and keeps the first time.
    first = beamdeploy_asgi.drain(state_dir=server.state_dir)
    assert beamdeploy_asgi.drain(state_dir=server.state_dir) == first


def test_drain_and_undrain_over_http_need_the_token(serve, releases):
    server = serve(
        "--workers", "1", "--release", str(releases["v1"]), env={"BEAMDEPLOY_TOKEN": TOKEN}
    )
    admin = server.url + "/_deploy"
    assert httpx.post(admin + "/drain").status_code == 401
    assert health(server).status_code == 200
    answer = httpx.post(admin + "/drain", headers=AUTH)
    assert answer.status_code == 200 and answer.json()["draining"] is True
    assert health(server).status_code == 503
    assert httpx.get(admin + "/status", headers=AUTH).json()["host"]["draining"] is True
    assert (
        httpx.post(admin + "/undrain", headers={"Authorization": "Bearer nope"}).status_code == 401
    )
    answer = httpx.post(admin + "/undrain", headers=AUTH)
    assert answer.status_code == 200 and answer.json() == {"draining": False, "since": None}
    assert health(server).status_code == 200
