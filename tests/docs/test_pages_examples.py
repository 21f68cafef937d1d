"""The examples of docs/cli.md, releases.md, configuration.md, runtime.md and security.md, run.

Each page's code blocks are read from the page itself, and:

- a command block (bash) is run as written, by bash with `set -euo pipefail`,
  in a temporary directory laid out as the page says, with the page's paths
  and ports replaced by that directory's and a free port's (`subs`);
- a sample of what a command prints (a plain block whose first line is
  `$ COMMAND`) is run the same way, and what it printed is compared with the
  sample line by line on its stable parts (`shape`: clock times, dates, pids,
  deployment ids, digests and counts of files are left out);
- a file (a manifest, a gunicorn config file) is written and used for real.

PATH starts with this checkout's .venv/bin, as for a developer of this
repository: `beamdeploy`, `gunicorn` and `uv` are those.
"""

from __future__ import annotations

import contextlib
import grp
import io
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from beamdeploy_asgi.releases.release import Release
from tests.arbiter.test_user import python_nobody_can_run
from tests.support.artifacts import repack, wheel_bytes
from tests.support.releases import ReleaseFactory, versioned_app
from tests.support.server import ServerProcess

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
BIN = Path(sys.executable).parent
FENCE = re.compile(r"^```(?P<lang>\w*)(?P<attrs>[^\n]*)\n(?P<body>.*?)^```$", re.S | re.M)


# -- reading the pages -----------------------------------------------------------------


def blocks(page: str, lang: str | None = None) -> list[str]:
    """The bodies of `page`'s code blocks, of language `lang` ("" for plain ones)."""
    found = FENCE.finditer((DOCS / page).read_text())
    return [m["body"] for m in found if lang is None or m["lang"] == lang]


def samples(page: str, command: str) -> list[str]:
    """The plain blocks of `page` that show what `$ COMMAND` prints."""
    return [body for body in blocks(page, "") if body.startswith(f"$ {command}\n")]


def sample(page: str, command: str) -> str:
    (found,) = samples(page, command)
    return found


def substitute(text: str, subs: dict[str, str]) -> str:
    for documented, real in subs.items():
        text = text.replace(documented, real)
    return text


SHAPES = [
    (r"\b\d\d:\d\d:\d\d\b", "HH:MM:SS"),
    (r"\b\d{4}-\d\d-\d\d \d\d:\d\d\b", "YYYY-MM-DD HH:MM"),
    (r"\b[0-9a-f]{64}\b", "SHA256"),
    (r"\b[0-9a-f]{12}\b", "ID"),
    (r"\bpid \d+", "pid N"),
    (r"\bworker +\d+ ", "worker N "),
    (r"\bpython3\.\d+\b", "python3.X"),
    (r"\b\d+ (files|wheels|bundled wheels)\b", r"N \1"),
    (r"\[ *\d+\.\ds\]", "[T]"),
    (r"\(\d+\.\d MB, N wheels, \d+\.\ds\)", "(SIZE, N wheels, T)"),
]


def shape(text: str) -> list[str]:
    """`text`'s lines, without what differs from one run to the next."""
    for pattern, replacement in SHAPES:
        text = re.sub(pattern, replacement, text)
    return text.rstrip("\n").splitlines()


def assert_same_shape(documented: str, printed: str) -> None:
    """What a command printed is the sample, but for its variable parts.

    A sample's last line `  ...` stands for any further lines.
    """
    want, got = shape(documented), shape(printed)
    if want[-1].strip() == "...":
        want = want[:-1]
        got = got[: len(want)]
    assert got == want, "\n".join(["documented:", *want, "printed:", *got])


# -- running commands ------------------------------------------------------------------


def doc_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME") and not k.startswith("BEAMDEPLOY")
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "80"
    env.update(extra)
    return env


def sh(
    script: str, cwd: Path, *, status: int = 0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`script` run by bash as a reader runs it; it must end with `status`."""
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env or doc_env(),
    )
    assert done.returncode == status, (
        f"{script}\nexited {done.returncode}:\n{done.stdout}{done.stderr}"
    )
    return done


def check_sample(text: str, cwd: Path, subs: dict[str, str]) -> str:
    """Run the `$ COMMAND` of a sample, compare what it printed with the sample; return it."""
    command, documented = substitute(text, subs).split("\n", 1)
    printed = sh(command.removeprefix("$ "), cwd).stdout
    assert_same_shape(documented, printed)
    return printed


@contextlib.contextmanager
def arbiter(
    cwd: Path, *args: str, env: dict[str, str] | None = None, state_dir: Path | None = None
) -> Iterator[ServerProcess]:
    """`beamdeploy serve ARGS --bind 127.0.0.1:PORT` in `cwd`, with the state dir in `cwd`
    (`.beamdeploy`, the default) unless given; always stopped."""
    server = ServerProcess(cwd, list(args), command=[str(BIN / "beamdeploy"), "serve"], env=env)
    server.env = doc_env(**(env or {}))
    server.state_dir = state_dir or cwd / ".beamdeploy"
    server.log_path = cwd.parent / f"{cwd.name}-server.log"
    try:
        server.start()
        yield server
    finally:
        server.stop()
        print(f"--- {server.log_path} (last 60 lines) ---")
        print("\n".join(server.log().splitlines()[-60:]))


@pytest.fixture
def short_tmp(tmp_path_factory: pytest.TempPathFactory):
    """A new directory by a short path: a control socket's path has at most 107 bytes."""
    return tmp_path_factory.mktemp


# -- the demo project of cli.md --------------------------------------------------------

DEMO_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "demo"
version = "1.0.0"
dependencies = ["starlette"]

[tool.beamdeploy]
app = "demo.app:app"
"""

DEMO_APP = """\
{imports}
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


VERSION = "{version}"


async def home(request):
    return PlainTextResponse(f"demo {{VERSION}}")


app = Starlette(routes=[Route("/", home)])
"""


def retarget(artifact: Path, python: str) -> None:
    """Say in `artifact`'s manifest that it was built for `python` (the manifest stays first)."""
    with tarfile.open(artifact) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar]
    with tarfile.open(artifact, "w:gz") as tar:
        for member, data in members:
            if member.name == "beamdeploy-release.json":
                manifest = json.loads(data)
                manifest["python"] = python
                data = json.dumps(manifest).encode()
                member.size = len(data)
            tar.addfile(member, None if data is None else io.BytesIO(data))


@pytest.fixture(scope="module")
def demo_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cli.md's project (the repository's example_app, in short) with dist/ built:

    demo 1.0.0 and 1.1.0; 1.2.0, whose app imports redis, which it does not
    depend on; 1.3.0, built for Python 3.13.
    """
    project = tmp_path_factory.mktemp("demo") / "example_app"
    (project / "demo").mkdir(parents=True)
    (project / "pyproject.toml").write_text(DEMO_PYPROJECT)
    (project / "demo" / "__init__.py").write_text("")
    app = project / "demo" / "app.py"
    for version in ("1.0.0", "1.1.0", "1.2.0", "1.3.0"):
        imports = "import redis\n" if version == "1.2.0" else ""
        app.write_text(DEMO_APP.format(imports=imports, version=version))
        sh(f"beamdeploy build . --version {version}", project)
    retarget(project / "dist" / "demo-1.3.0.tar.gz", "3.13")
    return project


def copy_project(project: Path, home: Path) -> Path:
    """The project at the same place as on the page: /home/me/beamdeploy-asgi/example_app."""
    copy = home / "beamdeploy-asgi" / "example_app"
    shutil.copytree(project, copy)
    return copy


def without_python(version: str) -> str:
    """PATH without the directories that have a `pythonX.Y` (pyenv's shims, say)."""
    keep = [
        d
        for d in doc_env()["PATH"].split(os.pathsep)
        if not (Path(d) / f"python{version}").exists()
    ]
    return os.pathsep.join(keep)


# Every code block of the pages, by page and language, and where it is run. A
# block added to a page fails this count until a test here runs it.
ACCOUNTED = {
    "cli.md": {
        # the synopsis, upgrade, hot-reload --dry-run, a refused hot reload,
        # status, status -v, drain, releases, releases with a current release outside the store
        "": 9,
        "json": 1,  # upgrade --json
    },
    "releases.md": {
        # a release's layout, build's progress, the state directory, releases
        "": 4,
        "bash": 2,  # build, rollback
    },
    "configuration.md": {"python": 1, "bash": 1},  # gunicorn.conf.py, plain gunicorn
    "runtime.md": {
        # The drawing of an arbiter and its generations is the one block not
        # run: it shows no command, output or file. Then the refused address,
        # and an app imported from outside its release.
        "": 3,
    },
    "security.md": {"bash": 1},  # serve --user
}


def test_every_block_of_the_pages_is_accounted_for():
    for page, languages in ACCOUNTED.items():
        found: dict[str, int] = {}
        for match in FENCE.finditer((DOCS / page).read_text()):
            found[match["lang"]] = found.get(match["lang"], 0) + 1
        assert found == languages, page


# -- cli.md ----------------------------------------------------------------------------


def usage_parts(line: str) -> tuple[str, set[str]]:
    command = line.split()[1]
    rest = re.sub(r"\[[^\[\]]*\]", "", line)
    return command, {*re.findall(r"\[[^\[\]]*\]", line), *rest.split()[2:]} - {"[-h]"}


def test_cli_synopsis_is_each_commands_usage():
    """The page's first block: every command, with every option it takes."""
    synopsis = blocks("cli.md", "")[0]
    done = sh("beamdeploy --help", REPO)
    epilog = done.stdout.split("usage of each command", 1)[1].split("\n", 1)[1]
    real = re.split(r"\n(?=  beamdeploy )", epilog.rstrip())
    real_usage = dict(usage_parts(" ".join(usage.split())) for usage in real)
    documented = dict(usage_parts(line) for line in synopsis.splitlines())
    assert documented == real_usage


def test_cli_upgrade_status_and_releases_samples(demo_project: Path, short_tmp):
    project = copy_project(demo_project, short_tmp("cli"))
    # A host without Python 3.13, as the page's (pyenv's shims here answer for every version).
    env = {"PATH": without_python("3.13")}
    with arbiter(
        project, "--workers", "2", "--release", "dist/demo-1.0.0.tar.gz", env=env
    ) as server:
        subs = {
            "/home/me/beamdeploy-asgi/example_app": str(project),
            "http://127.0.0.1:4000": server.url,
        }
        upgrade = sample("cli.md", "beamdeploy upgrade dist/demo-1.1.0.tar.gz")
        printed = check_sample(upgrade, project, subs)
        # Its phases are the ones runtime.md's table describes, in that order.
        phases = list(dict.fromkeys(line.split()[1] for line in printed.splitlines()))
        runtime = (DOCS / "runtime.md").read_text()
        assert phases == re.findall(r"^\| `([a-z]+)` \| ", runtime, re.M)
        assert httpx.get(server.url).text == "demo 1.1.0"

        # The failures the status sample shows.
        failed = sh("beamdeploy upgrade dist/demo-1.2.0.tar.gz", project, status=1)
        assert "upgrade failed: preflight: could not import demo.app:app" in failed.stderr
        assert "Traceback" in failed.stderr  # with the worker's traceback
        sh("beamdeploy upgrade dist/demo-1.3.0.tar.gz", project, status=1)
        assert httpx.get(server.url).text == "demo 1.1.0", "the serving generation is unchanged"
        server.wait_for(lambda s: not s["draining"])

        check_sample(sample("cli.md", "beamdeploy status"), project, subs)
        printed = check_sample(sample("cli.md", "beamdeploy status -v"), project, subs)
        # "the same as `sha256sum dist/demo-1.1.0.tar.gz`"
        digest = sh("sha256sum dist/demo-1.1.0.tar.gz", project).stdout.split()[0]
        assert printed.count(f"artifact sha256  {digest}") == 2
        check_sample(sample("cli.md", "beamdeploy drain"), project, subs)
        assert httpx.get(server.url + "/_deploy/health").status_code == 503
        sh("beamdeploy undrain", project)
        assert httpx.get(server.url + "/_deploy/health").status_code == 200

        check_sample(samples("cli.md", "beamdeploy releases")[0], project, subs)


def test_cli_json_outputs_and_a_current_release_outside_the_store(
    demo_project: Path, short_tmp, release_factory: ReleaseFactory
):
    home = short_tmp("clijson")
    project = copy_project(demo_project, home)
    releases = home / "srv" / "myapp" / "releases"
    ReleaseFactory(releases, release_factory.wheel).make(
        "1.4.0", versioned_app("1.4.0"), dirname="1.4.0"
    )
    subs = {
        "/home/me/beamdeploy-asgi/example_app": str(project),
        "/srv/myapp/releases": str(releases),
    }
    with arbiter(project, "--workers", "2", "--release", "dist/demo-1.0.0.tar.gz") as server:
        done = sh("beamdeploy upgrade dist/demo-1.1.0.tar.gz --json", project)
        record, documented = json.loads(done.stdout), json.loads(blocks("cli.md", "json")[0])
        assert record.keys() == documented.keys()
        for side in ("from", "to"):
            assert record[side].keys() == documented[side].keys()
            for key in ("name", "version", "app"):
                assert record[side][key] == documented[side][key]
        for key in ("kind", "generation", "phase", "drained_at", "outcome", "error"):
            assert record[key] == documented[key], key
        assert record["timings"].keys() == documented["timings"].keys()
        (event,) = documented["events"]
        assert {k: v for k, v in record["events"][0].items() if k != "at"} == {
            k: v for k, v in event.items() if k != "at"
        }
        assert all(e.keys() >= event.keys() for e in record["events"])

        # "`timings` gains `drain` once the old generation has stopped"
        server.wait_for(lambda s: not s["draining"])
        status = json.loads(sh("beamdeploy status --json", project).stdout)
        assert list(status) == [
            "arbiter", "host", "serving", "booting", "standby", "draining", "upgrading",
            "deployment", "reexec",
            "deployments",
        ]  # fmt: skip
        assert status["deployments"][0]["id"] == record["id"]
        assert status["deployments"][0]["timings"].keys() == {*documented["timings"], "drain"}
        serving = status["serving"]
        assert serving["release"]["artifact_sha256"] == record["to"]["artifact_sha256"]
        for worker in serving["workers"]:
            assert {"pid", "state", "app_file", "artifact_sha256"} <= worker.keys()
        listing = json.loads(sh("beamdeploy releases --json", project).stdout)
        assert "keep" in listing
        for kept in listing["releases"]:
            assert {"installed_at", "current", "serving", "failed"} <= kept.keys()

        sh(substitute("beamdeploy upgrade /srv/myapp/releases/1.4.0", subs), project)
        # The page's sample shows the line of the current release and one of the store's.
        command, lines = substitute(samples("cli.md", "beamdeploy releases")[1], subs).split(
            "\n", 1
        )
        printed = shape(sh(command.removeprefix("$ "), project).stdout)
        want = shape(lines)
        assert printed[0] == want[0]
        assert [line for line in printed if line in want] == want, printed

        # --timeout bounds the silence between two lines (here the preflight's
        # import); the deployment goes on. --no-wait prints the id and returns.
        late = sh("beamdeploy upgrade dist/demo-1.0.0.tar.gz --timeout 0.05", project, status=1)
        assert late.stderr == "error: the arbiter did not answer in time\n"
        server.wait_for(lambda s: not s["upgrading"])
        assert server.status()["deployments"][0]["outcome"] == "succeeded"
        assert httpx.get(server.url).text == "demo 1.0.0"
        started = sh("beamdeploy rollback --no-wait", project).stdout
        assert re.fullmatch(r"deployment [0-9a-f]{12} started\n", started), started
        server.wait_for(lambda s: not s["upgrading"])
        assert server.status()["serving"]["release"]["version"] == "1.4.0"


MYAPP_MAIN = """\
from fastapi import FastAPI

from myapp import routes

app = FastAPI()
app.include_router(routes.router)
"""

MYAPP_ROUTES = '''\
"""The items API."""

from fastapi import APIRouter

from myapp.text import slugify

router = APIRouter()
ITEMS: list[dict] = []
PAGE_SIZE = {page_size}


# One page of the items, oldest first.
@router.get("{items}")
def list_items(page: int = 0) -> list[dict]:
    start = page * PAGE_SIZE
    return ITEMS[start : start + PAGE_SIZE]{list_extra}


@router.post("/items")
def create_item(name: str) -> dict:
    item = {{"name": name, "slug": slugify(name){create_extra}}}
    ITEMS.append(item)
    return item
'''

MYAPP_TEXT = """\
def slugify(text: str) -> str:
    return "-".join(text.lower().split()){slug_extra}
"""


def myapp_files(version: str, *, items: str = "/items") -> dict[str, str]:
    """myapp as a package (app/myapp/), its code changing between 1.5.0 and 1.5.1."""
    changed = version != "1.5.0"
    return {
        "myapp/__init__.py": "",
        "myapp/main.py": MYAPP_MAIN,
        "myapp/routes.py": MYAPP_ROUTES.format(
            page_size=50 if changed else 20,
            items=items,
            list_extra=" or []" if changed else "",
            create_extra=', "v": 2' if changed else "",
        ),
        "myapp/text.py": MYAPP_TEXT.format(slug_extra='.strip("-")' if changed else ""),
    }


def test_cli_hot_reload_samples(short_tmp, release_factory: ReleaseFactory):
    home = short_tmp("clihot")
    releases = home / "srv" / "myapp" / "releases"
    refused = home / "refused" / "srv" / "myapp" / "releases"
    for root, version, items in [
        (releases, "1.5.0", "/items"),
        (releases, "1.5.1", "/items"),
        (refused, "1.5.1", "/items/"),  # a decorator changed: refused
    ]:
        ReleaseFactory(root, release_factory.wheel).make(
            version,
            "",
            name="myapp",
            app="myapp.main:app",
            packages=("fastapi",),
            dirname=version,
            files=myapp_files(version, items=items),
        )
    with arbiter(home, "--workers", "2", "--release", str(releases / "1.5.0")) as server:
        pids = sorted(server.serving_pids())
        subs = {"/srv/myapp/releases": str(releases)}
        dry_run = sample("cli.md", "beamdeploy hot-reload /srv/myapp/releases/1.5.1 --dry-run")
        check_sample(dry_run, home, subs)

        (documented,) = [b for b in blocks("cli.md", "") if b.startswith("hot-reload failed")]
        subs = {"/srv/myapp/releases": str(refused)}
        done = sh(
            substitute("beamdeploy hot-reload /srv/myapp/releases/1.5.1", subs), home, status=1
        )
        want, got = substitute(documented, subs).splitlines(), done.stderr.splitlines()
        assert got[0] == want[0]
        # The page cuts the reason short at "; ...".
        assert want[1].endswith("; ...") and got[1].startswith(want[1].removesuffix("..."))
        assert len(got) == len(want)
        assert sorted(server.serving_pids()) == pids
        assert server.status()["serving"]["release"]["version"] == "1.5.0"
        # status -v: "`-` for a release that was not installed from an artifact"
        assert sh("beamdeploy status -v", home).stdout.count("    artifact sha256  -\n") == 2


# -- releases.md -----------------------------------------------------------------------

MYAPP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "myapp"
version = "{version}"
dependencies = ["starlette"]

[tool.beamdeploy]
app = "myapp.main:app"
"""

MYAPP_APP = """\
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
{fail}
VERSION = "{version}"


async def home(request):
    return PlainTextResponse(f"myapp {{VERSION}}")


app = Starlette(routes=[Route("/", home)])
"""


def write_myapp(project: Path, version: str, fail: str = "") -> Path:
    """releases.md's project: myapp, packaged, its app at myapp.main:app."""
    (project / "myapp").mkdir(parents=True, exist_ok=True)
    (project / "pyproject.toml").write_text(MYAPP_PYPROJECT.format(version=version))
    (project / "myapp" / "__init__.py").write_text("")
    (project / "myapp" / "main.py").write_text(MYAPP_APP.format(version=version, fail=fail))
    return project


@pytest.fixture(scope="module")
def myapp_dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dist/ of releases.md's project with myapp 1.4.0, and 1.6.0, which cannot import."""
    project = tmp_path_factory.mktemp("myapp-builds") / "myapp"
    write_myapp(project, "1.4.0")
    sh("beamdeploy build", project)
    write_myapp(project, "1.6.0", fail='\nraise RuntimeError("boom")\n')
    sh("beamdeploy build", project)
    return project / "dist"


def tree(block: str, root: Path) -> list[tuple[Path, str, str]]:
    """The entries of a directory drawn on a page: (path, what it is, its comment).

    Four spaces of indentation per level; `NAME/` a directory, `NAME -> TARGET`
    a link, anything else a file.
    """
    entries: list[tuple[Path, str, str]] = []
    parents = [root]
    for line in block.splitlines():
        found = re.match(r"^( *)(\S+(?: -> \S+)?)(?:\s+(.*))?$", line)
        assert found, line
        depth = len(found[1]) // 4
        name, comment = found[2], found[3] or ""
        if depth == 0:  # the top directory itself
            entries.append((root, "dir", comment))
            continue
        parents = parents[:depth]
        if " -> " in name:
            name, target = name.split(" -> ")
            entries.append((parents[-1] / name, f"link {target}", comment))
        elif name.endswith("/"):
            entries.append((parents[-1] / name.rstrip("/"), "dir", comment))
            parents.append(parents[-1] / name.rstrip("/"))
        else:
            entries.append((parents[-1] / name, "file", comment))
    return entries


def assert_tree(block: str, root: Path) -> None:
    """Every entry of the drawing is there, as what it is, with the mode it names."""
    for path, kind, comment in tree(block, root):
        if kind.startswith("link "):
            assert path.is_symlink(), path
            assert path.resolve() == (root / kind.removeprefix("link ")).resolve(), path
        elif kind == "dir":
            assert path.is_dir() and not path.is_symlink(), path
        else:
            assert path.exists() and not path.is_dir(), path
        mode = re.search(r"\((0\d{3})\)", comment)
        if mode:
            assert oct(path.stat().st_mode & 0o777) == oct(int(mode[1], 8)), path


# What the page says an artifact's manifest holds.
BUILT_MANIFEST = {"name", "version", "app", "python", "platform", "built_at", "files"}


def test_releases_page(short_tmp, release_factory: ReleaseFactory, myapp_dist: Path):
    (layout, build_sample, state_layout, listing) = blocks("releases.md", "")
    (build_commands, rollback_commands) = blocks("releases.md", "bash")
    home = short_tmp("rel")
    project = write_myapp(home / "myapp", "1.5.0")
    write_myapp(project / "path" / "to" / "project", "0.1.0")
    sh("uv lock", project)  # the lock build exports when there is one
    srv = home / "srv" / "myapp"
    srv.mkdir(parents=True)
    subs = {"/home/me/myapp": str(project), "/srv/myapp": str(srv)}

    # Building: the commands as written, the first printing the page's sample.
    done = sh(build_commands, project)
    first = done.stdout[: done.stdout.index("\n", done.stdout.index("] built ")) + 1]
    assert_same_shape(substitute(build_sample, subs), first)
    for artifact in (
        project / "dist" / "myapp-1.5.0.tar.gz",
        project / "out" / "myapp-1.5.0.tar.gz",
    ):
        with tarfile.open(artifact) as tar:
            names = tar.getnames()
            manifest = json.load(tar.extractfile(names[0]))
        assert names[0] == "beamdeploy-release.json"
        assert BUILT_MANIFEST <= manifest.keys()
        assert (manifest["name"], manifest["version"]) == ("myapp", "1.5.0")
        assert manifest["platform"] == "any"  # every wheel is pure Python
        assert set(manifest["files"]) == {n for n in names[1:] if n != "wheels"}
        assert all(n.startswith("wheels/") for n in manifest["files"])
    dist = project / "dist"
    for other in myapp_dist.iterdir():  # 1.4.0, and 1.6.0, which cannot import
        shutil.copy(other, dist)

    # A release directory drawn as on the page: its manifest, a venv with the app
    # and beamdeploy-asgi (the wheels of the artifact's app).
    wheels = home / "wheels"
    with tarfile.open(dist / "myapp-1.5.0.tar.gz") as tar:
        tar.extractall(wheels, filter="data")
    (app_wheel,) = (wheels / "wheels").glob("myapp-*.whl")
    by_hand = ReleaseFactory(home / "by-hand", release_factory.wheel).make(
        "1.5.0", "", name="myapp", packages=(str(app_wheel),), dirname="myapp-1.5.0"
    )
    shutil.rmtree(by_hand / "app")
    entries = tree(layout, by_hand)
    (manifest_comment,) = [c for path, kind, c in entries if path.name == "beamdeploy-release.json"]
    (by_hand / "beamdeploy-release.json").write_text(manifest_comment)
    assert sorted(p.name for p in by_hand.iterdir()) == sorted(p.name for p, _, _ in entries[1:])
    assert_tree(layout, by_hand)
    loaded = Release.load(by_hand)
    assert (loaded.name, loaded.version, loaded.app) == ("myapp", "1.5.0", "myapp.main:app")

    with arbiter(srv, "--workers", "2", "--release", str(dist / "myapp-1.4.0.tar.gz")) as server:
        sh(f"beamdeploy upgrade {dist}/myapp-1.5.0.tar.gz", srv)
        failed = sh(f"beamdeploy upgrade {dist}/myapp-1.6.0.tar.gz", srv, status=1)
        assert "RuntimeError: boom" in failed.stderr
        server.wait_for(lambda s: not s["draining"])

        state = srv / ".beamdeploy"
        assert_tree(state_layout, state)
        assert (state / "releases" / "myapp-1.5.0").is_dir()
        assert sorted(p.name for p in state.iterdir()) == sorted(
            p.name for p, _, _ in tree(state_layout, state)[1:] if p.parent == state
        )
        # history.jsonl: a line when each deployment starts and one when it ends
        lines = [json.loads(line) for line in (state / "history.jsonl").read_text().splitlines()]
        ids = [line["id"] for line in lines]
        assert len(set(ids)) == 3 and all(ids.count(i) == 2 for i in ids)
        assert [line["outcome"] for line in lines[1::2]] == ["succeeded", "succeeded", "failed"]

        printed = sh("beamdeploy releases", srv).stdout
        assert_same_shape(substitute(listing, subs), printed)

        # The release drawn on the page serves; then the page's rollbacks.
        sh(f"beamdeploy upgrade {by_hand}", srv)
        assert httpx.get(server.url).text == "myapp 1.5.0"
        assert server.status()["serving"]["release"]["path"] == str(by_hand)
        sh(rollback_commands, srv)
        deployments = server.status()["deployments"]
        assert [(d["kind"], d["to"]["path"]) for d in deployments[:3]] == [
            ("rollback", str(state / "releases" / "myapp-1.4.0")),
            ("rollback", str(state / "releases" / "myapp-1.5.0")),  # what served before
            ("upgrade", str(by_hand)),
        ]
        assert httpx.get(server.url).text == "myapp 1.4.0"
        # A failed release is skipped, saying so.
        skipped = sh("beamdeploy rollback --to 1.6.0", srv, status=1)
        assert "failed at preflight" in skipped.stderr
        assert "rollback skips it (use upgrade to try it again)" in skipped.stderr


# -- configuration.md ------------------------------------------------------------------


def test_configuration_plain_gunicorn_with_the_config_file(
    short_tmp, release_factory: ReleaseFactory
):
    """The config file, used by each `gunicorn` command of the page and by `beamdeploy serve -c`.

    Each runs until stopped, as a server does: it is started, must serve the
    config file's release from its state dir, and is stopped with TERM.
    """
    home = short_tmp("conf")
    srv = home / "srv" / "myapp"
    ReleaseFactory(srv / "releases", release_factory.wheel).make(
        "1.4.0",
        "",
        name="myapp",
        app="myapp.main:app",
        dirname="1.4.0",
        files={"myapp/__init__.py": "", "myapp/main.py": versioned_app("1.4.0")},
    )
    (config,) = blocks("configuration.md", "python")
    (commands,) = blocks("configuration.md", "bash")
    workdir = home / "work"
    workdir.mkdir()
    for command in [*commands.splitlines(), "beamdeploy serve -c gunicorn.conf.py"]:
        server = ServerProcess(workdir, [], command=[])
        subs = {"127.0.0.1:8000": f"127.0.0.1:{server.port}", "/srv/myapp": str(srv)}
        (workdir / "gunicorn.conf.py").write_text(substitute(config, subs))
        server.command = ["bash", "-c", f"exec {command}"]
        server.env = doc_env()
        server.state_dir = srv / ".beamdeploy"
        server.log_path = home / f"{command.split()[0]}-{command.split()[2][:3]}.log"
        try:
            status = server.start().status()
            # The same process all along: gunicorn's, re-executed as beamdeploy's arbiter.
            assert status["arbiter"]["pid"] == server.proc.pid, command
            assert status["serving"]["release"]["path"] == str(srv / "releases" / "1.4.0")
            assert len(status["serving"]["workers"]) == 2
            assert httpx.get(server.url + "/").text.startswith("1.4.0 gen=1 ")
            assert httpx.get(server.url + "/healthz").status_code == 200
        finally:
            assert server.stop() == 0, server.log()


# -- runtime.md ------------------------------------------------------------------------


def test_runtime_an_address_in_use_is_refused_naming_who_holds_it(short_tmp, releases):
    (documented,) = [b for b in blocks("runtime.md", "") if "[ERROR] Reason:" in b]
    home = short_tmp("addr")
    (home / "first").mkdir()
    (home / "second").mkdir()
    with arbiter(home / "first", "--workers", "2", "--release", str(releases["v1"])) as server:
        line = substitute(
            documented,
            {"127.0.0.1:8000": f"127.0.0.1:{server.port}", "/srv/venv/bin": str(BIN)},
        ).strip()
        command = f"beamdeploy serve --bind 127.0.0.1:{server.port} --release {releases['v1']}"
        done = sh(command, home / "second", status=1)
        output = done.stdout + done.stderr
        printed = [line for line in output.splitlines() if "Reason:" in line]
        assert printed, output
        (want,) = shape(line)
        pattern = re.escape(want).replace(re.escape("..."), ".*")
        assert re.search(pattern, shape(printed[0])[0]), (want, printed)
        assert f"by pid {server.proc.pid} (" in printed[0]


def test_runtime_an_app_shadowed_from_outside_its_release_is_refused(short_tmp, artifacts):
    """The page's error, from an artifact whose wheels include an editable install's .pth
    pointing at a checkout of the app (/home/me/app)."""
    (documented,) = [b for b in blocks("runtime.md", "") if "outside release" in b]
    home = short_tmp("prov")
    checkout = home / "home" / "me" / "app"
    (checkout / "sample").mkdir(parents=True)
    (checkout / "sample" / "__init__.py").write_text("")
    (checkout / "sample" / "app.py").write_text("app = None  # an old checkout\n")
    editable = f"import sys; sys.path.insert(0, {str(checkout)!r})\n"
    wheel = wheel_bytes("editable_sample", "0.1", {"editable_sample.pth": editable}, [])
    shadowed = repack(
        artifacts["2.0.0"],
        home / "dist" / "sample-2.0.0.tar.gz",
        {"wheels/editable_sample-0.1-py3-none-any.whl": wheel},
    )
    srv = home / "srv" / "app"
    srv.mkdir(parents=True)
    with arbiter(srv, "--workers", "2", "--release", str(artifacts["1.0.0"])) as server:
        done = sh(f"beamdeploy upgrade {shadowed}", srv, status=1)
        subs = {"/home/me/app": str(checkout), "/srv/app": str(srv)}
        assert " ".join(substitute(documented, subs).split()) in " ".join(done.stderr.split())
        assert "upgrade failed: preflight: " in done.stderr
        assert server.status()["serving"]["release"]["version"] == "1.0.0"


# -- security.md -----------------------------------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A root-owned directory `nobody` can traverse (pytest's temp dirs are 0700)."""
    assert os.geteuid() == 0, "workers as another user need root"
    path = Path(tempfile.mkdtemp(prefix="beamdeploy-docs-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_security_running_with_user(shared_dir: Path, myapp_dist: Path):
    """The page's command, run as root with `nobody` for `app`.

    Not run as written: `sudo` (this machine has none, and runs as root, which
    is what sudo gives); the user and group `app` (nobody and nogroup stand for
    them); 0.0.0.0:8000 (127.0.0.1 and a free port). Added: `--release-python`,
    as the page says to, since this Python lies under /root where nobody cannot
    run it.
    """
    (command,) = blocks("security.md", "bash")
    (make_token,) = re.findall(r"`(python -c '[^`]*')`", (DOCS / "security.md").read_text())
    token = sh(make_token, shared_dir).stdout.strip()
    assert len(token) >= 16
    srv = shared_dir / "srv" / "myapp"
    (srv / "dist").mkdir(parents=True)
    srv.parent.chmod(0o755)
    srv.chmod(0o755)
    shutil.copy(myapp_dist / "myapp-1.4.0.tar.gz", srv / "dist")
    work = shared_dir / "work"
    work.mkdir(mode=0o755)

    server = ServerProcess(work, [], command=[])
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    script = substitute(
        command,
        {
            "sudo --preserve-env=BEAMDEPLOY_TOKEN ": "",
            "--user app --group app": f"--user nobody --group {group}",
            "/srv/myapp": str(srv),
            "0.0.0.0:8000": f"127.0.0.1:{server.port}",
        },
    ).rstrip()
    assert script.startswith("beamdeploy serve ") and f"--user nobody --group {group}" in script
    server.command = [
        "bash", "-c", f"exec {script} --release-python {python_nobody_can_run()}"
    ]  # fmt: skip
    server.env = doc_env(BEAMDEPLOY_TOKEN=token)
    server.state_dir = srv / ".beamdeploy"
    server.log_path = shared_dir / "server.log"
    try:
        status = server.start(timeout=120).status()
        assert status["serving"]["release"]["version"] == "1.4.0"
        workers = status["serving"]["workers"]
        assert len(workers) == 4
        for worker in workers:
            ids = {
                key: [int(v) for v in value.split()]
                for key, _, value in (
                    line.partition(":")
                    for line in Path(f"/proc/{worker['pid']}/status").read_text().splitlines()
                )
                if key in ("Uid", "Gid", "Groups")
            }
            assert set(ids["Uid"]) == {nobody.pw_uid} and set(ids["Gid"]) == {nobody.pw_gid}
            assert ids["Groups"] == [nobody.pw_gid]
        assert httpx.get(server.url + "/").text == "myapp 1.4.0"
        assert httpx.get(server.url + "/_deploy/health").json() == {
            "status": "serving",
            "release": "1.4.0",
        }
        # The token reached the arbiter: the admin API answers its holders alone.
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.get(server.url + "/_deploy/status").status_code == 401
        assert httpx.get(server.url + "/_deploy/status", headers=auth).status_code == 200
        state = server.state_dir.stat()
        assert state.st_uid == 0
        sock = (server.state_dir / "control.sock").stat()
        assert sock.st_uid == 0 and stat.S_IMODE(sock.st_mode) == 0o600
    finally:
        server.stop()
        print(server.log()[-6000:])
