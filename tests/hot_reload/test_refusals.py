"""Every refusal rule of the hot reload, end to end: real releases, real workers.

One arbiter with two workers serves release 1.0 for the whole module; each test
tries to hot-reload a release that differs from it by one change a hot reload
cannot apply (plus an allowed one: `color()` answers "green"), and checks that it
is refused with `FILE:LINE: RULE:` pointing at that change, and that nothing
changed: the same processes serve the old code and the old release.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import beamdeploy_asgi
from beamdeploy_asgi.errors import DeploymentFailed
from tests.support.releases import ReleaseFactory
from tests.support.server import ServerProcess

MAIN = '''\
"""The app each refused release tries to change."""

import enum
import functools
import os
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import helpers
from labels import WORD

VERSION = "1.0"
BANNER = f"v{VERSION}"
HANDLERS = {}


def register(function):
    HANDLERS[function.__name__] = function
    return function


@register
def legacy():
    return "legacy"


def color():
    return "blue"


def compute():
    return 1


def make_greeter():
    def greet():
        return "hi"

    return greet


class Base:
    pass


class Service:
    def run(self):
        return "run"


@dataclass
class Point:
    x: int = 0


class Color(enum.Enum):
    RED = 1


async def home(request):
    return PlainTextResponse(f"{VERSION} {color()} {WORD} {helpers.NAME} pid={os.getpid()}")


app = Starlette(routes=[Route("/", home)])
application = app
'''

FILES = {"labels.py": 'WORD = "sky"\n', "helpers.py": 'NAME = "helper"\n'}
OLD_ANSWER = "1.0 blue sky helper pid="  # what 1.0 answers; a patched worker would say green
ALLOWED = ('    return "blue"\n', '    return "green"\n')  # a body change: fine on its own

STATIC_PHASES = {"starting", "planning", "failed"}
WORKER_RULES = {"route-signature", "removed-referenced", "constant-captured", "constant-imported"}


def edit(source: str, *replacements: tuple[str, str]) -> str:
    """`source` with each `old` (which occurs exactly once) replaced by `new`."""
    for old, new in replacements:
        assert source.count(old) == 1, f"{old!r} occurs {source.count(old)} times"
        source = source.replace(old, new)
    return source


def line_of(source: str, text: str) -> int:
    """The 1-based number of the one line of `source` that starts with `text`."""
    found = [n for n, line in enumerate(source.splitlines(), 1) if line.startswith(text)]
    assert len(found) == 1, f"{text!r} starts lines {found}"
    return found[0]


class Releases:
    """Release 1.0, and each refused release built once, by key (its version)."""

    def __init__(self, factory: ReleaseFactory) -> None:
        self.factory = factory
        self.built: dict[str, Path] = {}

    def make(
        self,
        key: str,
        main: str = MAIN,
        files: dict[str, str | None] | None = None,
        **kwargs: Any,
    ) -> Path:
        """`files` override FILES; None drops one."""
        if key not in self.built:
            assert textwrap.dedent(main) == main  # the factory dedents: lines would move
            merged = {**FILES, **(files or {})}
            present = {path: text for path, text in merged.items() if text is not None}
            release = self.factory.make(key, main, files=present, **kwargs)
            self.built[key] = release.resolve()  # as the arbiter names its files
        return self.built[key]

    @property
    def v1(self) -> Path:
        return self.make("1.0")


@pytest.fixture(scope="module")
def releases(release_factory, tmp_path_factory) -> Releases:
    return Releases(ReleaseFactory(tmp_path_factory.mktemp("refused"), release_factory.wheel))


@dataclass
class Serving:
    """The module's arbiter, the release it serves and the pids of its two workers."""

    server: ServerProcess
    release: Path
    pids: list[int]


@pytest.fixture(scope="module")
def serving(releases: Releases, tmp_path_factory) -> Iterator[Serving]:
    """One arbiter, two workers, release 1.0, for every test here: each attempt is refused."""
    workdir = tmp_path_factory.mktemp("refusals-server")
    server = ServerProcess(workdir, ["--workers", "2", "--release", str(releases.v1)])
    try:
        server.start()
        pids = sorted(server.serving_pids())
        assert len(pids) == 2
        yield Serving(server, releases.v1, pids)
    finally:
        server.stop()
        print(f"--- {server.log_path} (last 60 lines) ---")
        print("\n".join(server.log().splitlines()[-60:]))


REFUSAL = re.compile(r"^(?P<file>/\S+):(?P<line>\d+): (?P<rule>[a-z-]+): ", re.MULTILINE)


def refused(serving: Serving, release: Path, file: Path, line: int, rule: str) -> dict[str, Any]:
    """Try the hot reload; check it was refused for exactly `file:line: rule:`, and by whom.

    Static and release-level rules refuse at planning, before any worker is
    asked; the worker-side ones at prepare, after which every worker aborts.
    """
    with pytest.raises(DeploymentFailed) as failed:
        beamdeploy_asgi.hot_reload(release, state_dir=serving.server.state_dir)
    deployment = failed.value.deployment
    error = deployment["error"]
    assert deployment["kind"] == "hot-reload" and deployment["outcome"] == "failed"
    found = [(m["file"], int(m["line"]), m["rule"]) for m in REFUSAL.finditer(error)]
    assert found == [(str(file), line, rule)], error
    assert f"\n{file}:{line}: {rule}: " in error, error
    assert "beamdeploy upgrade" in error, "the refusal says what to do instead"

    events = deployment["events"]
    phases = list(dict.fromkeys(event["phase"] for event in events))
    if rule in WORKER_RULES:
        assert deployment["plan"]["refused"] == 0, deployment["plan"]["refusals"]
        assert error.startswith("hot reload failed: the workers refused the new code; nothing")
        assert "preparing" in phases and "undoing" in phases, phases
        assert phases.index("preparing") < phases.index("undoing"), phases
        messages = {event["phase"]: event["message"] for event in events}
        assert messages["preparing"] == "2 workers compile and check the new code"
        assert messages["undoing"] == "aborting: the workers refused the new code"
        assert not {"suspending", "committing", "resuming", "done"} & set(phases), phases
    else:
        assert deployment["plan"]["refused"] == 1, deployment["plan"]["refusals"]
        assert error.startswith("hot reload refused (1 reasons); deploy it with"), error
        assert set(phases) <= STATIC_PHASES and "planning" in phases, phases
    assert_unchanged(serving)
    return deployment


def assert_unchanged(serving: Serving) -> None:
    """The same two workers serve release 1.0, answering with its code."""
    server, pids = serving.server, serving.pids
    status = server.status()
    assert not status["upgrading"]
    assert status["serving"]["release"]["version"] == "1.0"
    assert status["serving"]["release"]["path"] == str(serving.release)
    assert sorted(server.serving_pids()) == pids
    assert all(w["state"] == "serving" for w in status["serving"]["workers"])
    for _ in range(6):  # a new connection each: either worker may answer
        answer = httpx.get(server.url, headers={"Connection": "close"}).text
        assert answer.startswith(OLD_ANSWER), answer
        assert int(answer.rsplit("pid=", 1)[1]) in pids


def main_file(release: Path) -> Path:
    return release / "app" / "main.py"


# --- Refused when the plan is made: the classifier's rules -------------------------


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(
            (
                'app = Starlette(routes=[Route("/", home)])',
                'app = Starlette(debug=True, routes=[Route("/", home)])',
            ),
            id="changed-app-line",
        ),
        pytest.param(
            ("HANDLERS = {}\n", 'HANDLERS = {}\nprint("imported")\n'),
            id="new-module-level-call",
        ),
    ],
)
def test_module_statement(serving, releases, change, request):
    main = edit(MAIN, ALLOWED, change)
    release = releases.make(f"module-statement-{request.node.callspec.id}", main)
    line = line_of(main, change[1].splitlines()[-1])
    deployment = refused(serving, release, main_file(release), line, "module-statement")
    assert "module code runs once, at import" in deployment["error"]


def test_import(serving, releases):
    main = edit(MAIN, ALLOWED, ("import functools\n", "import functools\nimport json\n"))
    release = releases.make("import", main)
    refused(serving, release, main_file(release), line_of(main, "import json"), "import")


@pytest.mark.parametrize(
    "change, def_line",
    [
        pytest.param(
            ("def color():", "@functools.lru_cache(maxsize=None)\ndef color():"),
            "def color():",
            id="lru-cache-on-existing",
        ),
        pytest.param(
            ("def color():", '@register\ndef fresh():\n    return "fresh"\n\n\ndef color():'),
            "def fresh():",
            id="new-decorated-function",
        ),
    ],
)
def test_decorator(serving, releases, change, def_line, request):
    main = edit(MAIN, ALLOWED, change)
    release = releases.make(f"decorator-{request.node.callspec.id}", main)
    # A decorated def's line is its `def` line, not its first decorator's.
    refused(serving, release, main_file(release), line_of(main, def_line), "decorator")


def test_class_header(serving, releases):
    main = edit(MAIN, ALLOWED, ("class Service:", "class Service(Base):"))
    release = releases.make("class-header", main)
    line = line_of(main, "class Service(Base):")
    deployment = refused(serving, release, main_file(release), line, "class-header")
    assert "the bases or keywords of class `Service` changed" in deployment["error"]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(
            ("    x: int = 0\n", "    x: int = 0\n    y: int = 0\n"), id="dataclass-field"
        ),
        pytest.param(("    RED = 1\n", "    RED = 1\n    GREEN = 2\n"), id="enum-member"),
    ],
)
def test_class_body(serving, releases, change, request):
    main = edit(MAIN, ALLOWED, change)
    release = releases.make(f"class-body-{request.node.callspec.id}", main)
    line = line_of(main, change[1].splitlines()[-1])
    deployment = refused(serving, release, main_file(release), line, "class-body")
    assert "are fixed when the class is created" in deployment["error"]


def test_new_class(serving, releases):
    main = edit(MAIN, ALLOWED, ("class Service:", "class Extra:\n    pass\n\n\nclass Service:"))
    release = releases.make("new-class", main)
    line = line_of(main, "class Extra:")
    deployment = refused(serving, release, main_file(release), line, "new-class")
    assert "class `Extra` is new" in deployment["error"]


def test_closure(serving, releases):
    before = '    def greet():\n        return "hi"\n'
    after = '    name = "hi"\n\n    def greet():\n        return name\n'
    main = edit(MAIN, ALLOWED, (before, after))
    release = releases.make("closure", main)
    line = line_of(main, "    def greet():")  # the nested def whose free variables changed
    deployment = refused(serving, release, main_file(release), line, "closure")
    assert "`make_greeter.<locals>.greet` now closes over `name`" in deployment["error"]


def test_function_kind(serving, releases):
    main = edit(MAIN, ALLOWED, ("def compute():", "async def compute():"))
    release = releases.make("function-kind", main)
    line = line_of(main, "async def compute():")
    deployment = refused(serving, release, main_file(release), line, "function-kind")
    assert "from a plain function to a coroutine function" in deployment["error"]


def test_syntax(serving, releases):
    main = edit(MAIN, ALLOWED, ("def compute():", "def broken(:\n    pass\n\n\ndef compute():"))
    release = releases.make("syntax", main)
    line = line_of(main, "def broken(:")
    deployment = refused(serving, release, main_file(release), line, "syntax")
    assert "the new source does not compile" in deployment["error"]


# --- Refused when the plan is made: the release-level rules ---------------------------


def test_removed_module(serving, releases):
    release = releases.make("removed-module", edit(MAIN, ALLOWED), files={"helpers.py": None})
    old_file = releases.v1 / "app" / "helpers.py"  # named in the serving release: it is gone
    deployment = refused(serving, release, old_file, 0, "removed-module")
    assert "module helpers is gone from the new release" in deployment["error"]


def test_distribution(serving, releases):
    release = releases.make("distribution", edit(MAIN, ALLOWED), packages=("iniconfig",))
    (dist_info,) = (release / "venv" / "lib").glob("python*/site-packages/iniconfig-*.dist-info")
    deployment = refused(serving, release, dist_info, 0, "distribution")
    assert "is installed in the new release, not in the serving one" in deployment["error"]


def test_manifest_app(serving, releases):
    release = releases.make("manifest-app", edit(MAIN, ALLOWED), app="main:application")
    manifest = release / "beamdeploy-release.json"
    error = refused(serving, release, manifest, 0, "manifest-app")["error"]
    assert "the app is main:app in the serving release and main:application in the new" in error


# --- Refused by the workers, against what they run ------------------------------------


def test_route_signature(serving, releases):
    change = ("async def home(request):", "async def home(request, extra=None):")
    main = edit(MAIN, ALLOWED, change)
    release = releases.make("route-signature", main)
    line = line_of(main, "async def home(request, extra=None):")
    deployment = refused(serving, release, main_file(release), line, "route-signature")
    assert "a starlette.routing.Route holds it" in deployment["error"]


def test_removed_referenced(serving, releases):
    removed = '@register\ndef legacy():\n    return "legacy"\n\n\n'
    release = releases.make("removed-referenced", edit(MAIN, ALLOWED, (removed, "")))
    # The function is gone from the new source: the refusal names where the running
    # process got it, the serving release's file, at its first decorator (its code's line).
    line = line_of(MAIN, "@register")
    error = refused(serving, release, main_file(releases.v1), line, "removed-referenced")["error"]
    assert "`legacy` is gone from the new source, but the running process still holds it" in error


def test_constant_captured(serving, releases):
    main = edit(MAIN, ALLOWED, ('VERSION = "1.0"', 'VERSION = "1.1"'))
    release = releases.make("constant-captured", main)
    line = line_of(main, "BANNER = ")  # read at import, into BANNER
    deployment = refused(serving, release, main_file(release), line, "constant-captured")
    assert "`VERSION` is also read while the module is imported" in deployment["error"]


def test_constant_imported(serving, releases):
    labels = 'WORD = "sea"\n'
    release = releases.make("constant-imported", edit(MAIN, ALLOWED), files={"labels.py": labels})
    file = release / "app" / "labels.py"
    deployment = refused(serving, release, file, 1, "constant-imported")
    assert "module `main` binds `WORD` to the same object" in deployment["error"]


def test_the_allowed_change_alone_is_not_refused(serving, releases):
    """Each release above also changes `color()`'s body: not what they were refused for."""
    allowed = releases.make("allowed", edit(MAIN, ALLOWED))
    done = beamdeploy_asgi.hot_reload(allowed, state_dir=serving.server.state_dir, dry_run=True)
    assert done["outcome"] == "succeeded" and done["plan"]["refused"] == 0
    assert_unchanged(serving)
