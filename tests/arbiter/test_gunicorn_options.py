"""gunicorn's config file, hooks, pidfile and logs keep their meaning."""

from __future__ import annotations

import json
import os
import signal

import httpx

HOOKS = """
import json, os

def _note(name, **extra):
    with open(os.path.join(os.environ["HOOK_DIR"], "hooks.jsonl"), "a") as out:
        out.write(json.dumps({"hook": name, "pid": os.getpid(), **extra}) + "\\n")

def on_starting(server): _note("on_starting")
def when_ready(server): _note("when_ready")
def pre_fork(server, worker): _note("pre_fork")
def post_fork(server, worker): _note("post_fork", generation=worker.generation)
def post_worker_init(worker): _note("post_worker_init", version=worker.release["version"])
def worker_exit(server, worker): _note("worker_exit")
def child_exit(server, worker): _note("child_exit", child=worker.pid)
def on_exit(server): _note("on_exit")
def nworkers_changed(server, new, old): _note("nworkers_changed", new=new, old=old)

workers = 2
accesslog = os.path.join(os.environ["HOOK_DIR"], "access.log")
pidfile = os.path.join(os.environ["HOOK_DIR"], "arbiter.pid")
raw_env = ["GREETING=from-config"]
"""

GREETING_APP = """
import os
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

async def home(request):
    return PlainTextResponse(os.environ.get("GREETING", "none"))

app = Starlette(routes=[Route("/", home)])
"""


def test_config_file_hooks_pidfile_access_log_and_env(serve, releases):
    release = releases.custom("greeting", GREETING_APP)
    server = serve("-c", "conf.py", "--release", str(release), launch=False)
    server.workdir.mkdir(parents=True)
    (server.workdir / "conf.py").write_text(HOOKS)
    server.env["HOOK_DIR"] = str(server.workdir)
    server.start()
    arbiter = server.proc.pid
    assert (server.workdir / "arbiter.pid").read_text().strip() == str(arbiter)
    assert httpx.get(server.url).text == "from-config"
    os.kill(arbiter, signal.SIGTTIN)
    server.wait_for(lambda s: [w["state"] for w in s["serving"]["workers"]] == ["serving"] * 3)
    server.stop()

    notes = [json.loads(line) for line in (server.workdir / "hooks.jsonl").read_text().splitlines()]
    by_hook: dict[str, list[dict]] = {}
    for note in notes:
        by_hook.setdefault(note["hook"], []).append(note)
    for name in ("on_starting", "when_ready", "on_exit"):
        assert [n["pid"] for n in by_hook[name]] == [arbiter]
    assert len(by_hook["pre_fork"]) == 3 and {n["pid"] for n in by_hook["pre_fork"]} == {arbiter}
    assert [(n["old"], n["new"]) for n in by_hook["nworkers_changed"]] == [(None, 2), (2, 3)]
    workers = {n["pid"] for n in by_hook["post_worker_init"]}
    assert len(workers) == 3 and arbiter not in workers
    assert {n["version"] for n in by_hook["post_worker_init"]} == {"greeting"}
    assert {n["generation"] for n in by_hook["post_fork"]} == {1}
    assert {n["pid"] for n in by_hook["worker_exit"]} == workers
    assert {n["child"] for n in by_hook["child_exit"]} == workers
    access = (server.workdir / "access.log").read_text()
    assert '"GET / HTTP/1.1" 200' in access
    assert not (server.workdir / "arbiter.pid").exists(), "the pidfile is removed at exit"
