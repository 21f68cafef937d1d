"""docs/getting-started.md, run as a reader would run it.

Every bash, toml and python block on the page has a title, and the title
says what to do with it:

- `Terminal N`: commands, run in terminal N. A terminal is one bash session
  (so `cd` and `source .venv/bin/activate` last), started in the directory the
  reader starts in, with `set -euo pipefail`. A block runs to its end, unless
  the line before it is `<!-- test: keeps running -->` (the server, the curl
  loop: they run until Ctrl-C, sent at the end) or `<!-- test: exits 1 -->`.
- anything else: a file, written at that point, relative to the project
  directory `hello/`.

`~/beamdeploy-asgi` (the clone) is this checkout, port 8000 a free port. PATH
starts with this checkout's .venv/bin, as for a developer of this repository;
the page's own venv comes first once a terminal activates it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from itertools import count
from pathlib import Path

import httpx
import pytest

from beamdeploy_asgi import status as api_status
from beamdeploy_asgi.errors import ControlError
from tests.support.server import alive, free_port

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "getting-started.md"
PROJECT = "hello"
FENCE = re.compile(
    r"^(?:<!-- test: (?P<mark>[^>]*?) -->\n\n)?"
    r"```(?P<lang>\w+)(?P<attrs>[^\n]*)\n(?P<body>.*?)^```$",
    re.S | re.M,
)
RUN = ("bash", "toml", "python")
MARKS = {None, "keeps running", "exits 1"}


def page_blocks() -> list[dict]:
    found = []
    for match in FENCE.finditer(DOC.read_text()):
        title = re.search(r'title="([^"]*)"', match["attrs"])
        found.append(
            {
                "lang": match["lang"],
                "title": title.group(1) if title else None,
                "mark": match["mark"],
                "body": match["body"],
            }
        )
    return found


def runnable() -> list[dict]:
    return [block for block in page_blocks() if block["lang"] in RUN]


def test_every_command_and_file_on_the_page_has_a_title():
    blocks = runnable()
    assert len(blocks) >= 15
    for block in blocks:
        assert block["title"], f"a {block['lang']} block without a title:\n{block['body']}"
        assert block["mark"] in MARKS, block["mark"]
        if block["lang"] == "bash":
            assert re.fullmatch(r"Terminal \d", block["title"]), block["title"]
        else:
            assert not block["title"].startswith("Terminal"), block["title"]
    assert not [b for b in page_blocks() if b["lang"] not in (*RUN, "text")]


class Terminal:
    """One bash session fed the blocks of one terminal; its screen is a log file."""

    sentinels = count()

    def __init__(self, name: str, cwd: Path, env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log = logs / f"{name.replace(' ', '-').lower()}.log"
        with open(self.log, "wb") as screen:
            self.proc = subprocess.Popen(
                ["bash", "--noprofile", "--norc"],
                stdin=subprocess.PIPE,
                stdout=screen,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
                text=True,
            )
        self.send("set -euo pipefail")

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def screen(self) -> str:
        return self.log.read_bytes().decode(errors="replace")  # "\r" kept

    def run(self, body: str, *, status: int = 0, timeout: float = 240) -> str:
        """The block's output, once it ended with `status`."""
        sentinel = f"__block_{next(self.sentinels)}_done__"
        start = len(self.screen())
        if status:
            self.send("set +e")
        self.send(f"{{\n{body}\n}} </dev/null")
        self.send(f"printf '\\n{sentinel} %d\\n' \"$?\"")
        if status:
            self.send("set -e")
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            found = re.search(rf"{sentinel} (\d+)", screen[start:])
            if found:
                output = screen[start:][: found.start()]
                assert int(found.group(1)) == status, f"{self.name} exited {found[1]}:\n{output}"
                return output
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} failed on\n{body}\n---\n{screen[start:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no end within {timeout}s:\n{screen[start:]}")
            time.sleep(0.05)

    def start(self, body: str) -> None:
        """A block that keeps running until Ctrl-C."""
        self.send(f"{{\n{body}\n}} </dev/null")

    def ctrl_c(self, timeout: float = 30) -> bool:
        """SIGINT to the process group, as a terminal's Ctrl-C, and close the terminal.

        The shell outlives a command that handled the SIGINT (the server
        stops and exits 0), so it ends at the end of its input, after it.
        Whether it ended by itself; it is killed otherwise.
        """
        ended = True
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                ended = False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        return ended


def substitute(text: str, port: int) -> str:
    return text.replace("~/beamdeploy-asgi", str(REPO)).replace(
        "127.0.0.1:8000", f"127.0.0.1:{port}"
    )


def wait_until_serving(url: str, terminal: Terminal, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if terminal.proc.poll() is not None:
            raise AssertionError(f"the server stopped:\n{terminal.screen()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=5).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"the server did not answer within {timeout}s:\n{terminal.screen()}")


def wait_for_screen(terminal: Terminal, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in terminal.screen():
        if terminal.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{terminal.name} never showed {text!r}:\n{terminal.screen()}")
        time.sleep(0.05)


def loop_lines(screen: str) -> list[tuple[dict | None, int, int]]:
    """The curl loop's lines, oldest first: (answer, or None after a failure, ok, failed)."""
    lines = []
    for line in re.split(r"[\r\n]", screen):
        found = re.fullmatch(r"(\{.*\})?  ok=(\d+) failed=(\d+)", line.strip())
        if found:
            answer = json.loads(found[1]) if found[1] else None
            lines.append((answer, int(found[2]), int(found[3])))
    return lines


@pytest.mark.timeout(420)
def test_the_page_runs_as_written(tmp_path: Path):
    start_dir = tmp_path / "start"
    start_dir.mkdir()
    project = start_dir / PROJECT
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME") and not k.startswith("BEAMDEPLOY")
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    terminals: dict[str, Terminal] = {}
    outputs: list[tuple[str, str]] = []
    took: list[str] = []
    stuck: list[str] = []
    try:
        for block in runnable():
            body = substitute(block["body"], port)
            title = block["title"]
            if not title.startswith("Terminal"):
                path = project / title
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(body)
                continue
            if title not in terminals:
                terminals[title] = Terminal(title, start_dir, env, tmp_path)
            terminal = terminals[title]
            began = time.monotonic()
            if block["mark"] == "keeps running":
                terminal.start(body)
                if "beamdeploy serve" in body:
                    wait_until_serving(url + "/", terminal)
                else:
                    wait_for_screen(terminal, "ok=")
            else:
                status = 1 if block["mark"] == "exits 1" else 0
                outputs.append((body, terminal.run(body, status=status)))
            took.append(f"{time.monotonic() - began:6.1f}s  {title}: {body.splitlines()[0]}")
        time.sleep(0.5)  # a few more requests of the loop, on the rolled-back release
        state = api_status(state_dir=project / ".beamdeploy")
    finally:
        pids = []
        with contextlib.suppress(ControlError, OSError):
            status_now = api_status(state_dir=project / ".beamdeploy")
            for generation in [status_now["serving"], *status_now["draining"]]:
                pids += [w["pid"] for w in (generation or {}).get("workers", [])]
        for name in sorted(terminals, reverse=True):  # the loop before the server
            stopping = time.monotonic()
            if not terminals[name].ctrl_c():
                stuck.append(name)
            took.append(f"{time.monotonic() - stopping:6.1f}s  {name}: Ctrl-C")
        print("\n".join(took))
        leftovers = [pid for pid in pids if alive(pid)]
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for terminal in terminals.values():  # shown by pytest when the test failed
            print(f"--- {terminal.name} ---\n{terminal.screen()[-6000:]}")
    assert not leftovers, f"workers outlived Ctrl-C: {leftovers}"
    assert not stuck, f"Ctrl-C did not stop what ran in {stuck}"

    def output_of(command: str) -> str:
        return next(out for body, out in outputs if command in body)

    assert "beamdeploy 0.1.0" in output_of("beamdeploy --version")
    assert "built " in output_of("beamdeploy build")
    refused = output_of("hello-1.1.0.tar.gz --dry-run")
    assert "decorator: the new function `hello` has decorators" in refused
    upgraded = output_of("beamdeploy upgrade")
    assert "done      generation 2 (hello 1.1.0) serves" in upgraded
    assert '{"message":"Hello, beamdeploy"}' in upgraded
    reloaded = output_of("hello-1.1.1.tar.gz --dry-run")
    assert "dry run: 1 modules, 1 functions change; nothing was applied" in reloaded
    assert "done      generation 2 (hello 1.1.1) runs hello 1.1.1" in reloaded
    assert "plan: 1.1.0 -> 1.1.1\n  hello: home()" in reloaded
    assert "serving: generation 2, hello 1.1.1" in output_of("beamdeploy status")
    assert "done      generation 3 (hello 1.1.0) serves" in output_of("beamdeploy rollback")

    assert state["serving"]["release"]["version"] == "1.1.0"
    kinds = [(d["kind"], d["to"]["version"], d["outcome"]) for d in state["deployments"]]
    assert kinds[:6] == [
        ("rollback", "1.1.0", "succeeded"),
        ("hot-reload", "1.1.1", "succeeded"),
        ("hot-reload", "1.1.1", "succeeded"),  # the dry run
        ("upgrade", "1.1.0", "succeeded"),
        ("hot-reload", "1.1.0", "failed"),  # the refused dry run
        ("boot", "1.0.0", "succeeded"),
    ]

    # What the curl loop saw: no failure, every release, the same workers across
    # the hot reload and new ones after the rollback.
    lines = loop_lines(terminals["Terminal 2"].screen())
    assert lines, terminals["Terminal 2"].screen()
    assert max(failed for _, _, failed in lines) == 0, [line for line in lines if line[2]][:3]
    answers = [answer for answer, _, _ in lines if answer is not None]
    assert len(answers) >= 20
    assert answers[0]["release"] == "1.0.0"
    assert (answers[-1]["release"], answers[-1]["message"]) == ("1.1.0", "Hello, world")
    releases = [answer["release"] for answer in answers]
    assert set(releases) == {"1.0.0", "1.1.0", "1.1.1"}
    for answer in answers:
        assert (answer["message"] == "Hello again") == (answer["release"] == "1.1.1"), answer
    first_hot = releases.index("1.1.1")
    last_hot = len(releases) - 1 - releases[::-1].index("1.1.1")
    pids = {
        "1.1.0 before": {a["pid"] for a in answers[:first_hot] if a["release"] == "1.1.0"},
        "1.1.1": {a["pid"] for a in answers if a["release"] == "1.1.1"},
        "1.1.0 after": {a["pid"] for a in answers[last_hot:] if a["release"] == "1.1.0"},
    }
    assert pids["1.1.1"] <= pids["1.1.0 before"], pids
    assert pids["1.1.0 after"] and not pids["1.1.0 after"] & pids["1.1.1"], pids
