"""docs/python-api.md, run as written against a real server.

The page's python blocks are of three kinds:

- a signature, `def NAME(...) -> ...: ...` alone: it must be the real one;
- an app, titled `main.py`: served as a release, and by plain uvicorn;
- anything else: one step of a script; every step runs, in order, in one
  namespace, against an arbiter started as the page says. A `print(...)`
  line's trailing comment (up to its first ": ") is a line that step prints,
  and so is a whole comment line right after a `print(...)` statement.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

import beamdeploy_asgi
from tests.support.releases import ReleaseFactory, versioned_app
from tests.support.server import plain_uvicorn

DOC = Path(__file__).resolve().parents[2] / "docs" / "python-api.md"
FENCE = re.compile(r'^```(\w+)(?: title="([^"]*)")?\n(.*?)^```$', re.S | re.M)
BROKEN = 'raise RuntimeError("missing setting DATABASE_URL")'
STEP = "=== step {} ==="


def blocks(language: str) -> list[tuple[str | None, str]]:
    found = FENCE.findall(DOC.read_text())
    return [(title or None, body) for lang, title, body in found if lang == language]


def is_signature(body: str) -> bool:
    return body.startswith("def ") and body.rstrip().endswith(": ...")


def signatures() -> list[str]:
    return [body for title, body in blocks("python") if is_signature(body)]


def apps() -> list[str]:
    return [body for title, body in blocks("python") if title == "main.py"]


def steps() -> list[str]:
    return [body for title, body in blocks("python") if title is None and not is_signature(body)]


def expected_lines(step: str) -> list[str]:
    lines = step.splitlines()
    expected = []
    for number, line in enumerate(lines):
        if not line.lstrip().startswith("print("):
            continue
        trailing = re.search(r"\)  # (.*)$", line)
        if trailing:
            expected.append(trailing.group(1).split(": ")[0])
        elif number + 1 < len(lines) and lines[number + 1].startswith("# "):
            expected.append(lines[number + 1][2:])
    return expected


def test_the_documented_signatures_are_the_real_ones():
    documented = signatures()
    names = [re.match(r"def (\w+)", source).group(1) for source in documented]
    assert sorted(names) == sorted(
        [
            "enabled",
            "status",
            "current_release",
            "upgrading",
            "upgrade",
            "hot_reload",
            "rollback",
            "reexec",
            "drain",
            "undrain",
            "admin_app",
        ]
    )
    for name, source in zip(names, documented, strict=True):
        namespace: dict = {}
        exec("from __future__ import annotations\n" + source, namespace)
        real = inspect.signature(getattr(beamdeploy_asgi, name))
        assert str(inspect.signature(namespace[name])) == str(real), name


def test_the_script_examples_run(serve, release_factory: ReleaseFactory, tmp_path):
    releases = tmp_path / "releases"
    factory = ReleaseFactory(releases, release_factory.wheel)
    for version in ("1.4.0", "1.5.0", "1.5.1"):
        factory.make(version, versioned_app(version), name="myapp", dirname=version)
    factory.make(
        "1.6.0", versioned_app("1.6.0", extra=BROKEN), name="myapp", dirname="1.6.0-broken"
    )
    server = serve("--workers", "2", "--release", str(releases / "1.4.0"))

    script = [
        step.replace("/srv/myapp/releases", str(releases)).replace(
            "/srv/myapp/.beamdeploy", str(server.state_dir)
        )
        for step in steps()
    ]
    runner = (
        "import json, sys\n"
        "namespace = {'__name__': '__main__'}\n"
        "for number, step in enumerate(json.loads(sys.argv[1])):\n"
        f"    print({STEP!r}.format(number), flush=True)\n"
        "    exec(compile(step, f'python-api.md step {number}', 'exec'), namespace)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEAMDEPLOY")}
    done = subprocess.run(
        [sys.executable, "-c", runner, json.dumps(script)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    outputs = re.split(r"^=== step \d+ ===\n", done.stdout, flags=re.M)[1:]
    assert len(outputs) == len(script), done.stdout
    for step, output in zip(steps(), outputs, strict=True):
        for line in expected_lines(step):
            assert line in output.splitlines(), f"{line!r} not printed by\n{step}\n{output}"

    # The sample output after the upgrade example is what it printed.
    upgrade_step = next(i for i, step in enumerate(steps()) if "on_event=show" in step)
    (sample,) = [body for title, body in blocks("text") if "0/2 ready" in body]
    assert outputs[upgrade_step] == sample
    assert "this app is not running under beamdeploy" in outputs[-1]

    status = server.wait_for(lambda s: not s["upgrading"])
    assert status["serving"]["release"]["version"] == "1.4.0"  # the last example's upgrade
    kinds = [(d["kind"], d["to"]["version"], d["outcome"]) for d in status["deployments"]]
    assert kinds[:9] == [
        ("upgrade", "1.4.0", "succeeded"),
        ("upgrade", "1.6.0", "failed"),
        ("upgrade", "1.5.0", "succeeded"),
        ("rollback", "1.4.0", "succeeded"),
        ("rollback", "1.5.0", "succeeded"),
        ("hot-reload", "1.5.1", "succeeded"),
        ("hot-reload", "1.5.1", "succeeded"),  # the dry run
        ("upgrade", "1.5.0", "succeeded"),
        ("boot", "1.4.0", "succeeded"),
    ]


def test_the_app_examples_serve(serve, release_factory: ReleaseFactory, tmp_path):
    about, mounted = apps()
    releases = tmp_path / "releases"
    factory = ReleaseFactory(releases, release_factory.wheel)
    first = factory.make("2.0.0", about, name="myapp", packages=("fastapi",))
    second = factory.make("2.1.0", mounted, name="myapp", packages=("fastapi",))
    server = serve("--workers", "1", "--release", str(first))
    assert httpx.get(server.url + "/about").json() == {"release": "2.0.0", "upgrading": False}
    assert httpx.get(server.url + "/_deploy/health").json() == {
        "status": "serving",
        "release": "2.0.0",
    }
    beamdeploy_asgi.upgrade(second, state_dir=server.state_dir)
    # The app's own mount answers; without a token, /health alone.
    assert httpx.get(server.url + "/_deploy/health").json() == {
        "status": "serving",
        "release": "2.1.0",
    }
    assert httpx.get(server.url + "/_deploy/status").status_code == 404
    with plain_uvicorn(first / "app", "main:app") as url:
        assert httpx.get(url + "/about").json() == {"release": None, "upgrading": False}
