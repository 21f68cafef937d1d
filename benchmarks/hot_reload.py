"""A hot reload under load vs the same change deployed blue-green, in one run.

A FastAPI app of 11 modules (main, a services module, a routers package of 8
route modules included into the app) runs with 2 workers on 127.0.0.1 under
a bounded load (keep-alive and Connection: close clients) spread over GET
routes of every route module. Release v2 changes 10 of its modules the way a
hot reload allows: endpoint and helper bodies, literal constants and one new
helper function in each, no endpoint signature and no module-level statement
changed.

1. `beamdeploy_asgi.hot_reload(v2)` on a server running v1: failed requests,
   requests the workers held and the longest hold, p50/p99 latency before
   and during the reload, its wall time and each step's timing; the workers
   are the same processes before and after.
2. `beamdeploy_asgi.upgrade(v2)` on a fresh server running v1, same load:
   failed requests, p50/p99 before and during, wall time to done.

Prints one table comparing both, then the hold figures of each worker.
"During" is the requests sent from the call until it returned. "v1 sent
after a v2 came" counts v1 answers to requests sent once a v2 answer had
arrived, "v1 sent after done" those sent after the call returned: both must
be 0 for a hot reload (all workers or none). Exits with 1 if a request
failed or a check of the outcome did not hold; a hold over the 50 ms target
is printed as MISSED.

    .venv/bin/python benchmarks/hot_reload.py [--clients 20] [--close-clients 4]
                                              [--before 4] [--after 2]
"""

from __future__ import annotations

import argparse
import itertools
import socket
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import beamdeploy_asgi  # noqa: E402
from benchmarks.common import add_load_arguments  # noqa: E402
from tests.support.load import Load, LoadResult  # noqa: E402
from tests.support.releases import ReleaseFactory, build_wheel  # noqa: E402
from tests.support.server import ServerProcess  # noqa: E402

HOLD_TARGET = 0.050  # seconds: the longest a worker should hold new requests
MAX_REQUESTS = 400_000  # a bound on each load, far above what it sends in its time
ROUTERS = ("users", "orders", "items", "carts", "reviews", "search", "stock", "reports")
RELOAD_STEPS = ("plan", "prepare", "suspend", "commit", "resume")
UPGRADE_STEPS = ("preflight", "boot", "promotion", "drain")

# -- the app: v1 and v2 ---------------------------------------------------------
# Every answer starts with its module's VERSION ("v1 users"), so that the load
# counts which release answered. Sources are templates (__NAME__ and __PAGE__
# are replaced), not f-strings, so that the app's braces read as in the release.
# Each module's VERSION names the module, so answers show which code served.

MAIN_V1 = """
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from routers import carts, items, orders, reports, reviews, search, stock, users

VERSION = "v1 home"
TITLE = "shop"

app = FastAPI()
for module in (users, orders, items, carts, reviews, search, stock, reports):
    app.include_router(module.router)


def banner() -> str:
    return TITLE.upper()


@app.get("/", response_class=PlainTextResponse)
async def home() -> str:
    return f"{VERSION} {banner()}"
"""

MAIN_V2 = """
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from routers import carts, items, orders, reports, reviews, search, stock, users

VERSION = "v2 home"
TITLE = "shop-2"

app = FastAPI()
for module in (users, orders, items, carts, reviews, search, stock, reports):
    app.include_router(module.router)


def banner() -> str:
    return f"[{TITLE.upper()}]"


def routes_note() -> str:
    return f"{len(app.routes)} routes"


@app.get("/", response_class=PlainTextResponse)
async def home() -> str:
    return f"{VERSION} {banner()} {routes_note()}"
"""

SERVICES_V1 = """
VERSION = "v1 services"
TAX = 0.20
REGION = "eu-central"


def settings() -> dict:
    return {"region": REGION, "version": VERSION}


def price(cents: int) -> float:
    return round(cents * (1 + TAX) / 100, 2)


def label(kind: str, ident: int) -> str:
    return f"{kind}:{ident}"
"""

SERVICES_V2 = """
VERSION = "v2 services"
TAX = 0.25
REGION = "eu-west"


def settings() -> dict:
    return {"region": REGION, "version": VERSION, "tax": TAX}


def price(cents: int) -> float:
    return round(cents * (1 + TAX) / 100 + 0.001, 2)


def label(kind: str, ident: int) -> str:
    return f"{kind}#{ident}/{checksum(kind, ident)}"


def checksum(kind: str, ident: int) -> int:
    return (sum(map(ord, kind)) + ident) % 97
"""

ROUTER_V1 = """
from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from services import label, price, settings

VERSION = "v1 __NAME__"
PAGE = __PAGE__

router = APIRouter(prefix="/__NAME__", default_response_class=PlainTextResponse)


def describe(ident: int) -> str:
    return f"{label('__NAME__', ident)} {price(ident * 100)}"


@router.get("/{ident}")
async def get_one(ident: int, config: dict = Depends(settings)) -> str:
    return f"{VERSION} {describe(ident)} {config['region']}"


@router.get("")
def list_all(limit: int = 3) -> str:
    shown = [label("__NAME__", i) for i in range(min(limit, PAGE))]
    return f"{VERSION} " + ",".join(shown)
"""

ROUTER_V2 = """
from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from services import label, price, settings

VERSION = "v2 __NAME__"
PAGE = __PAGE__

router = APIRouter(prefix="/__NAME__", default_response_class=PlainTextResponse)


def describe(ident: int) -> str:
    return f"{label('__NAME__', ident)} {price(ident * 100)} {parity(ident)}"


def parity(ident: int) -> str:
    return "even" if ident % 2 == 0 else "odd"


@router.get("/{ident}")
async def get_one(ident: int, config: dict = Depends(settings)) -> str:
    return f"{VERSION} {describe(ident)} {config['region']} tax={config['tax']}"


@router.get("")
def list_all(limit: int = 3) -> str:
    shown = [label("__NAME__", i) for i in range(min(limit, PAGE))]
    return f"{VERSION} " + ";".join(shown) + f" page={PAGE}"
"""


def app_files(version: str) -> tuple[str, dict[str, str]]:
    """main.py's source and the other modules of the app, by path under app/."""
    v2 = version == "v2"
    files = {"routers/__init__.py": "", "services.py": SERVICES_V2 if v2 else SERVICES_V1}
    for n, name in enumerate(ROUTERS):
        source = (ROUTER_V2 if v2 else ROUTER_V1).replace("__NAME__", name)
        files[f"routers/{name}.py"] = source.replace("__PAGE__", str(n + (20 if v2 else 30)))
    return (MAIN_V2 if v2 else MAIN_V1), files


def load_paths() -> list[str]:
    """GET routes of every module: both endpoints of each router, and the home page."""
    paths = ["/"]
    for n, name in enumerate(ROUTERS):
        paths += [f"/{name}/{n + 1}", f"/{name}?limit={n % 4 + 2}"]
    return paths


def v2_marker(path: str) -> str:
    """What only v2's code puts in the answer to `path` (its new helpers' output)."""
    if path == "/":
        return " routes"
    return "tax=" if "?" not in path else "page="


# -- load and windows -------------------------------------------------------------


class SpreadLoad(Load):
    """A Load whose requests go round the given paths, one path per request.

    Load reads `self.url` for each request, so the property hands out the
    next path each time (the clients all run on the load's one event loop).
    Each answer is also kept as (sent at, received at, version), so that the
    order of versions can be judged by when requests were sent, not by when
    the load's busy event loop got round to reading them.
    """

    def __init__(self, url: str, paths: Iterable[str], **kwargs: Any) -> None:
        self._paths = itertools.cycle(list(paths))
        self._sent: dict[int, float] = {}
        self.answers: list[tuple[float, float, str]] = []
        super().__init__(url, path="", **kwargs)

    def _client(self, keepalive: bool) -> httpx.AsyncClient:
        client = super()._client(keepalive)
        client.event_hooks = {"request": [self._on_request], "response": [self._on_response]}
        return client

    async def _on_request(self, request: httpx.Request) -> None:
        self._sent[id(request)] = time.monotonic()

    async def _on_response(self, response: httpx.Response) -> None:
        sent = self._sent.pop(id(response.request), float("nan"))
        if response.status_code == 200:
            text = (await response.aread()).decode(errors="replace")
            self.answers.append((sent, time.monotonic(), text.split(" ", 1)[0]))

    @property  # type: ignore[override]
    def url(self) -> str:
        return self._base + next(self._paths)

    @url.setter
    def url(self, value: str) -> None:
        self._base = value


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def window(result: LoadResult, start: float, end: float) -> list[float]:
    return [latency * 1000 for sent, latency in result.latencies if start <= sent < end]


def start_load(url: str, args: argparse.Namespace) -> SpreadLoad:
    load = SpreadLoad(
        url,
        load_paths(),
        keepalive_clients=args.clients,
        close_clients=args.close_clients,
        max_seconds=args.before + args.after + 60,
        max_requests=MAX_REQUESTS,
    )
    load.start()
    return load


def warm_up(url: str) -> None:
    """Every route answered a few times on new connections, so both workers ran it once."""
    for path in load_paths() * 3:
        answer = httpx.get(url + path, headers={"Connection": "close"}, timeout=10)
        answer.raise_for_status()


def check_serves_v2(url: str) -> list[str]:
    """Problems with the answers after the deploy: each route, on new connections."""
    problems = []
    for path in load_paths() * 3:
        text = httpx.get(url + path, headers={"Connection": "close"}, timeout=10).text
        if not text.startswith("v2 ") or v2_marker(path) not in text:
            problems.append(f"GET {path} answered {text[:80]!r} after the deploy")
    return problems


# -- the measurements -------------------------------------------------------------


class Measurement:
    def __init__(self, name: str) -> None:
        self.name = name
        self.result = LoadResult()
        self.start = self.end = 0.0
        self.record: dict[str, Any] = {}
        self.steps: dict[str, float] = {}
        self.pids_before: list[int] = []
        self.pids_after: list[int] = []
        self.drained: float | None = None  # seconds from the call until the old workers left
        self.answers: list[tuple[float, float, str]] = []  # (sent at, received at, version)
        self.problems: list[str] = []

    def rows(self) -> dict[str, str]:
        before = window(self.result, 0, self.start)
        during = window(self.result, self.start, self.end)
        bodies = self.result.bodies
        kept = self.pids_before == self.pids_after
        rows = {
            "requests answered": f"{self.result.ok}",
            "failed requests": f"{len(self.result.failures)}",
            "throughput (req/s)": f"{self.result.rate:.0f}",
            "answers v1 / v2": f"{bodies.get('v1', 0)} / {bodies.get('v2', 0)}",
            "version switches (arrival)": f"{max(0, len(self.result.sequence) - 1)}",
            "v1 sent after a v2 came": f"{self.v1_after_v2()}",
            "v1 sent after done": f"{self.v1_sent_after(self.end)}",
            "p50 before (ms)": f"{percentile(before, 0.50):.1f}",
            "p99 before (ms)": f"{percentile(before, 0.99):.1f}",
            "requests sent during": f"{len(during)}",
            "p50 during (ms)": f"{percentile(during, 0.50):.1f}",
            "p99 during (ms)": f"{percentile(during, 0.99):.1f}",
            "max during (ms)": f"{max(during, default=float('nan')):.1f}",
            "wall time to done (s)": f"{self.end - self.start:.3f}",
            "first v2 answer (s)": self.first_v2(),
            "old workers gone (s)": f"{self.drained:.3f}" if self.drained is not None else "n/a",
            "same worker pids": "yes" if kept else "no",
        }
        return rows

    def first_v2(self) -> str:
        """Seconds from the call until the load received its first v2 answer."""
        first = min((got for _, got, version in self.answers if version == "v2"), default=None)
        return f"{first - self.start:.3f}" if first is not None else "n/a"

    def v1_after_v2(self) -> int:
        """v1 answers to requests sent after the first v2 answer had arrived."""
        first = min((got for _, got, version in self.answers if version == "v2"), default=None)
        return self.v1_sent_after(first) if first is not None else 0

    def v1_sent_after(self, moment: float) -> int:
        return sum(1 for sent, _, version in self.answers if version == "v1" and sent >= moment)


def measure_hot_reload(work: Path, v1: Path, v2: Path, args: argparse.Namespace) -> Measurement:
    m = Measurement("hot reload")
    server = ServerProcess(work / "hot-reload", ["--workers", "2", "--release", str(v1)])
    load: SpreadLoad | None = None
    try:
        server.start()
        warm_up(server.url)
        m.pids_before = sorted(server.serving_pids())
        load = start_load(server.url, args)
        time.sleep(args.before)
        m.start = time.monotonic()
        m.record = beamdeploy_asgi.hot_reload(
            v2, state_dir=server.state_dir, suspend_timeout=3.0, timeout=120
        )
        m.end = time.monotonic()
        time.sleep(args.after)
        m.result = load.stop()
        m.answers = list(load.answers)
        m.steps = dict(m.record.get("timings") or {})
        m.pids_after = sorted(server.serving_pids())
        m.problems += check_serves_v2(server.url)
    finally:
        if load is not None:
            load.stop()
        server.stop()
    if m.pids_after != m.pids_before:
        m.problems.append(f"worker pids {m.pids_before} before, {m.pids_after} after")
    if m.result.bodies.get("v2", 0) == 0:
        m.problems.append("the load never got an answer from v2")
    if m.result.sequence[-1:] != ["v2"]:
        m.problems.append(f"the load's last answers were not v2: {m.result.sequence[-5:]}")
    if m.v1_after_v2() or m.v1_sent_after(m.end):
        m.problems.append(
            f"v1 answered {m.v1_after_v2()} requests sent after a v2 answer had come,"
            f" {m.v1_sent_after(m.end)} sent after hot_reload() returned"
        )
    if len(m.answers) != m.result.ok:
        m.problems.append(f"{len(m.answers)} answers recorded for {m.result.ok} answered")
    return m


def measure_upgrade(work: Path, v1: Path, v2: Path, args: argparse.Namespace) -> Measurement:
    m = Measurement("blue-green upgrade")
    server = ServerProcess(work / "upgrade", ["--workers", "2", "--release", str(v1)])
    load: SpreadLoad | None = None
    try:
        server.start()
        warm_up(server.url)
        m.pids_before = sorted(server.serving_pids())
        load = start_load(server.url, args)
        time.sleep(args.before)
        m.start = time.monotonic()
        deployment = beamdeploy_asgi.upgrade(v2, state_dir=server.state_dir, timeout=120)
        m.end = time.monotonic()
        status = server.wait_for(lambda s: not s["draining"], timeout=120)
        m.drained = time.monotonic() - m.start
        time.sleep(args.after)
        m.result = load.stop()
        m.answers = list(load.answers)
        m.record = next(d for d in status["deployments"] if d["id"] == deployment["id"])
        m.steps = dict(m.record.get("timings") or {})
        m.pids_after = sorted(server.serving_pids())
        m.problems += check_serves_v2(server.url)
    finally:
        if load is not None:
            load.stop()
        server.stop()
    if m.result.bodies.get("v2", 0) == 0:
        m.problems.append("the load never got an answer from v2")
    return m


# -- the report -------------------------------------------------------------------


def print_comparison(hot: Measurement, blue: Measurement, args: argparse.Namespace) -> None:
    print(
        f"v1 -> v2 (10 modules changed), FastAPI, 2 workers, {args.clients} keep-alive + "
        f"{args.close_clients} close clients over {len(load_paths())} GET routes"
    )
    print(f"{'':26}{hot.name:>14}{blue.name:>22}")
    blue_rows = blue.rows()
    for key, value in hot.rows().items():
        print(f"{key:26}{value:>14}{blue_rows[key]:>22}")
    print("steps (s), from the deployment records:")
    for hot_step, blue_step in itertools.zip_longest(RELOAD_STEPS, UPGRADE_STEPS):
        left = f"  {hot_step:10}{_seconds(hot.steps.get(hot_step)):>14}" if hot_step else ""
        right = f"{blue_step:>12}{_seconds(blue.steps.get(blue_step)):>10}" if blue_step else ""
        print(f"{left:40}{right}")


def _seconds(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "n/a"


def print_holds(hot: Measurement) -> None:
    plan = hot.record.get("plan") or {}
    modules = plan.get("modules") or []
    print(f"hot reload plan: {len(modules)} modules, {plan.get('functions', '?')} functions")
    workers: dict[str, Any] = hot.record.get("workers") or {}
    print(f"{'worker':>10}{'held':>8}{'held for (ms)':>16}{'commit (ms)':>14}{'fn objects':>13}")
    holds, held = [], 0
    for pid, report in sorted(workers.items()):
        resume = report.get("resume") or {}
        commit = report.get("commit") or {}
        prepare = report.get("prepare") or {}
        holds.append(float(resume.get("held_for", 0.0)))
        held += int(resume.get("held", 0))
        print(
            f"{pid:>10}{int(resume.get('held', 0)):>8}"
            f"{float(resume.get('held_for', 0.0)) * 1000:>16.2f}"
            f"{float(commit.get('commit_seconds', 0.0)) * 1000:>14.2f}"
            f"{int(prepare.get('function_objects', 0)):>13}"
        )
    longest = max(holds, default=float("nan"))
    verdict = "met" if longest < HOLD_TARGET else "MISSED"
    print(f"requests held (all workers): {held}")
    print(
        f"longest hold: {longest * 1000:.2f} ms (target < {HOLD_TARGET * 1000:.0f} ms: {verdict})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_arguments(parser)
    args = parser.parse_args()
    socket.setdefaulttimeout(30)
    with tempfile.TemporaryDirectory(prefix="beamdeploy-bench-") as tmp:
        work = Path(tmp)
        print("building FastAPI releases v1 and v2 ...", flush=True)
        factory = ReleaseFactory(work / "releases", build_wheel(work / "wheel"))
        releases = {}
        for version in ("v1", "v2"):
            main_source, files = app_files(version)
            releases[version] = factory.make(
                version, main_source, files=files, packages=("fastapi",)
            )
        v1, v2 = releases["v1"], releases["v2"]
        print("measuring hot reload under load ...", flush=True)
        hot = measure_hot_reload(work, v1, v2, args)
        print("measuring blue-green upgrade under load ...", flush=True)
        blue = measure_upgrade(work, v1, v2, args)
    print()
    print_comparison(hot, blue, args)
    print()
    print_holds(hot)
    failed = False
    for m in (hot, blue):
        if m.result.failures:
            failed = True
            print(f"\n{m.name}: {len(m.result.failures)} failed, first: {m.result.failures[:3]}")
        if m.problems:
            failed = True
            print(f"\n{m.name}: checks failed:\n  " + "\n  ".join(m.problems[:10]))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
