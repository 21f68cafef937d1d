"""The admin token lives in the arbiter alone; app code never finds it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.releases import versioned_app

TOKEN = "s3cret-admin-token-4b7e0c9d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# The app looks for the token everywhere app code could: its environment, the
# process's environ block, module namespaces (the config file's among them)
# and every string held in a container the garbage collector knows. It gets
# the token's sha256 only, so the probe itself does not bring the token in.
LEAK_PROBE = versioned_app(
    "probe",
    routes='Route("/leak", leak), Route("/forge", forge), ',
    extra="""
import gc, hashlib, sys
from beamdeploy_asgi.worker import runtime as beam_runtime

def strings_in(obj):
    if isinstance(obj, dict):
        for key, value in list(obj.items()):
            yield key
            yield value
    elif isinstance(obj, (list, tuple, set, frozenset)):
        yield from list(obj)
    else:
        try:
            attributes = object.__getattribute__(obj, "__dict__")
        except Exception:
            return
        if isinstance(attributes, dict):
            yield from strings_in(attributes)

async def leak(request):
    digest = request.query_params["sha256"]
    size = int(request.query_params["len"])
    def is_token(value):
        return (
            isinstance(value, str) and len(value) == size
            and hashlib.sha256(value.encode()).hexdigest() == digest
        )
    found = []
    if any(is_token(v) for v in os.environ.values()):
        found.append("os.environ")
    with open("/proc/self/environ", "rb") as environ:
        if any(is_token(part.decode(errors="replace").partition("=")[2])
               for part in environ.read().split(b"\\0")):
            found.append("/proc/self/environ")
    for name, module in list(sys.modules.items()):
        if is_token(getattr(module, "admin_token", None)):
            found.append(f"module {name}")
    if any(is_token(item) for obj in gc.get_objects() for item in strings_in(obj)):
        found.append("gc")
    return JSONResponse({"found": found})

async def forge(request):
    # App code writing an admin request on its own worker's channel.
    requests = beam_runtime.current().requests
    message = {"op": request.query_params.get("op", "status")}
    if "release" in request.query_params:
        message.update(release=request.query_params["release"], follow=False)
    try:
        result = await requests.request(message, request.query_params["token"])
    except Exception as exc:
        return JSONResponse({"refused": getattr(exc, "code", type(exc).__name__)})
    return JSONResponse({"result": sorted(result)})
""",
)


def probe(server, secret: str = TOKEN) -> list[str]:
    digest = hashlib.sha256(secret.encode()).hexdigest()
    answer = httpx.get(server.url + "/leak", params={"sha256": digest, "len": len(secret)})
    assert answer.status_code == 200, answer.text
    return answer.json()["found"]


@pytest.mark.parametrize("where", ["environment", "config file"])
def test_app_code_finds_no_token(serve, releases, tmp_path: Path, where: str):
    release = releases.custom("probe", LEAK_PROBE)
    args = ["--workers", "1", "--release", str(release), "--log-level", "debug"]
    env = {}
    if where == "environment":
        env["BEAMDEPLOY_TOKEN"] = TOKEN
    else:
        config = tmp_path / "beam.conf.py"
        config.write_text(f'admin_token = "{TOKEN}"\nloglevel = "debug"\n')
        args += ["-c", str(config)]
    server = serve(*args, env=env)
    assert "gc" in probe(server, "/healthz"), "the probe finds strings the app holds"
    assert probe(server) == [], "the token reached the app"
    assert httpx.get(server.url + "/_deploy/status", headers=AUTH).status_code == 200
    assert TOKEN not in server.log(), "the token was logged"
    (worker,) = server.serving_pids()
    assert TOKEN.encode() not in Path(f"/proc/{worker}/environ").read_bytes()


def test_app_code_cannot_use_its_channel_without_the_token(serve, releases):
    release = releases.custom("probe", LEAK_PROBE)
    server = serve("--workers", "1", "--release", str(release), env={"BEAMDEPLOY_TOKEN": TOKEN})
    forged = httpx.get(server.url + "/forge", params={"token": "guess-" + "x" * 20})
    assert forged.json() == {"refused": "unauthorized"}
    assert "admin: refused 'status' forwarded by worker" in server.log()
    # The same call with the right token is what the admin API does.
    allowed = httpx.get(server.url + "/forge", params={"token": TOKEN})
    assert allowed.json()["result"][:2] == ["arbiter", "booting"]


@pytest.mark.parametrize("token", ["short", "fifteen-chars-x"])
def test_short_tokens_are_refused_at_start(serve, releases, token: str):
    server = serve("--release", str(releases["v1"]), launch=False, env={"BEAMDEPLOY_TOKEN": token})
    server.start(expect_serving=False)
    assert server.proc.wait(30) == 1
    assert f"the admin token has {len(token)} characters; it needs at least 16" in server.log()


def test_a_utf8_token_matches_byte_for_byte(serve, releases):
    token = "clé-secrète-été-0123456789"
    server = serve("--release", str(releases["v1"]), env={"BEAMDEPLOY_TOKEN": token})
    header = b"Bearer " + token.encode("utf-8")
    right = httpx.get(server.url + "/_deploy/status", headers={"Authorization": header})
    assert right.status_code == 200, right.text
    wrong = b"Bearer " + token.encode("latin-1")  # the same text, other bytes
    assert (
        httpx.get(server.url + "/_deploy/status", headers={"Authorization": wrong}).status_code
        == 401
    )


def test_print_config_masks_the_token(tmp_path: Path):
    config = tmp_path / "beam.conf.py"
    config.write_text(f'admin_token = "{TOKEN}"\n')
    shown = subprocess.run(
        [sys.executable, "-m", "beamdeploy_asgi", "serve", "-c", str(config), "--print-config",
         "--state-dir", str(tmp_path / "state"), "app:app"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "admin_token" in shown.stdout and "********" in shown.stdout
    assert TOKEN not in shown.stdout + shown.stderr


def test_the_arbiter_confines_paths_even_when_a_worker_does_not(serve, releases, tmp_path):
    release = releases.custom("probe", LEAK_PROBE)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    server = serve(
        "--workers", "1", "--release", str(release), "--release-dir", str(allowed),
        env={"BEAMDEPLOY_TOKEN": TOKEN},
    )  # fmt: skip
    # With the token (say, seen on a request it served), app code skips the
    # worker's own check; the arbiter checks again.
    outside = str(releases["v2"])
    for op in ("upgrade", "hot_reload"):
        forged = httpx.get(
            server.url + "/forge", params={"token": TOKEN, "op": op, "release": outside}
        )
        assert forged.json() == {"refused": "path_not_allowed"}, op
    assert server.status()["deployments"][0]["kind"] == "boot", "nothing was deployed"
