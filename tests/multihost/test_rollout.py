"""A rollout across two hosts behind HAProxy, by the Ansible playbook, under load.

Two arbiters on 127.0.0.1 stand for two hosts, each with its own state dir.
HAProxy (Debian's, installed with apt-get when missing) runs the configuration
of docs/multi-host.md in front of them, and the load goes through it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.apt import debian_program
from tests.support.load import Load
from tests.support.server import ServerProcess, free_port

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "multi-host.md"
PLAYBOOK = REPO / "deploy" / "ansible" / "rollout.yml"
SERVER_STATE = (
    REPO
    / "deploy"
    / "ansible"
    / "roles"
    / "beamdeploy_rollout"
    / "files"
    / "haproxy_server_state.py"
)
HAPROXY = Path("/usr/sbin/haproxy")
NAMES = ("web1", "web2")


def haproxy() -> Path:
    """Debian's haproxy; installed with apt-get when it is missing, or the test fails."""
    return debian_program(HAPROXY, "haproxy")


def documented_config() -> str:
    """The HAProxy configuration docs/multi-host.md shows."""
    blocks = re.findall(r"```text\n(global\n.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1, "docs/multi-host.md shows one HAProxy configuration"
    return blocks[0]


def replaced(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} once in the documented configuration"
    return text.replace(old, new)


@dataclass
class Balancer:
    port: int
    socket: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def server(self, name: str) -> dict[str, object]:
        done = subprocess.run(
            [sys.executable, str(SERVER_STATE), str(self.socket), "app", name],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def wait_up(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            states = [self.server(name)["status"] for name in NAMES]
            if states == ["UP", "UP"]:
                return
            assert time.monotonic() < deadline, f"HAProxy servers {states}"
            time.sleep(0.1)


@pytest.fixture
def balancer_for(tmp_path: Path) -> Iterator[object]:
    """HAProxy with the documented configuration in front of two hosts; always stopped."""
    started: list[Balancer] = []

    def start(hosts: list[ServerProcess]) -> Balancer:
        config = documented_config()
        port = free_port()
        sock = tmp_path / "haproxy.sock"
        config = replaced(config, "/run/haproxy/admin.sock", str(sock))
        config = replaced(config, "bind :80", f"bind 127.0.0.1:{port}")
        config = replaced(config, "10.0.0.11:8000", f"127.0.0.1:{hosts[0].port}")
        config = replaced(config, "10.0.0.12:8000", f"127.0.0.1:{hosts[1].port}")
        path = tmp_path / "haproxy.cfg"
        path.write_text(config)
        log = tmp_path / "haproxy.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [str(haproxy()), "-f", str(path), "-db"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        balancer = Balancer(port, sock, proc, log)
        started.append(balancer)
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "HAProxy opened no stats socket"
            time.sleep(0.05)
        balancer.wait_up()
        return balancer

    yield start
    for balancer in started:
        if balancer.proc.poll() is None:
            os.killpg(balancer.proc.pid, signal.SIGTERM)
            try:
                balancer.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(balancer.proc.pid, signal.SIGKILL)
                balancer.proc.wait()
        print(f"--- {balancer.log} ---\n{balancer.log.read_text()[-3000:]}")


def inventory(tmp_path: Path, hosts: list[ServerProcess], balancer: Balancer) -> Path:
    """Both hosts, reached with ansible_connection=local, each with its own state dir."""
    python = sys.executable
    members = {}
    for name, host in zip(NAMES, hosts, strict=True):
        incoming = host.workdir / "incoming"
        incoming.mkdir(exist_ok=True)
        members[name] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": python,
            "beamdeploy_state_dir": str(host.state_dir),
            "health_url": f"{host.url}/_deploy/health",
            "haproxy_server": name,
            "artifact_dir": str(incoming),
        }
    document = {
        "beamdeploy": {
            "vars": {
                "beamdeploy": f"{python} -m beamdeploy_asgi",
                "lb_host": "localhost",
                "lb_python": python,
                "haproxy_socket": str(balancer.socket),
                "haproxy_backend": "app",
                "lb_poll": 0.2,
                "lb_timeout": 60,
            },
            "hosts": members,
        }
    }
    path = tmp_path / "inventory.yml"
    path.write_text(json.dumps(document, indent=2))  # JSON is YAML
    return path


def rollout(tmp_path: Path, inventory: Path, artifact: Path, version: str) -> str:
    """Run the playbook; its output, and whether it succeeded."""
    home = tmp_path / "ansible"
    env = {
        **os.environ,
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_REMOTE_TEMP": str(home / "remote-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
    }
    env.pop("BEAMDEPLOY_CONTROL", None)
    env.pop("BEAMDEPLOY_STATE_DIR", None)
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(inventory),
            str(PLAYBOOK),
            "-e",
            f"artifact={artifact}",
            "-e",
            f"release_version={version}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(done.stdout[-6000:], done.stderr[-3000:])
    return ("ok\n" if done.returncode == 0 else f"failed {done.returncode}\n") + done.stdout


def serving_version(host: ServerProcess) -> str:
    return host.status()["serving"]["release"]["version"]


def test_the_playbook_rolls_out_host_by_host_under_load(
    serve, artifacts, balancer_for, tmp_path: Path
):
    old, new, broken = artifacts["1.0.0"], artifacts["2.0.0"], artifacts.broken("3.0.0")
    hosts = [serve("--workers", "2", "--release", str(old)) for _ in NAMES]
    balancer = balancer_for(hosts)
    hosts_file = inventory(tmp_path, hosts, balancer)

    with Load(balancer.url, keepalive_clients=3, close_clients=1, max_seconds=400) as load:
        load.wait_requests(50)
        output = rollout(tmp_path, hosts_file, new, "2.0.0")
        load.wait_requests(50)
    first = load.result
    assert output.startswith("ok"), output
    assert first.failures == [], first.failures[:10]
    assert [serving_version(h) for h in hosts] == ["2.0.0", "2.0.0"]
    assert [h.status()["host"]["draining"] for h in hosts] == [False, False]
    served = {body.split(" ")[0] for body in first.bodies}
    assert served == {"1.0.0", "2.0.0"}, first.bodies
    balancer.wait_up()
    log = balancer.log.read_text()
    assert "Server app/web1 is DOWN" in log and "Server app/web2 is DOWN" in log
    print(f"good rollout: {first.ok} requests through HAProxy, {len(first.failures)} failed")

    # A release that cannot boot: the rollout stops at the first host, which
    # serves the old release again, back in the balancer; the second is untouched.
    untouched = len(hosts[1].status()["deployments"])
    with Load(balancer.url, keepalive_clients=3, close_clients=1, max_seconds=400) as load:
        load.wait_requests(50)
        output = rollout(tmp_path, hosts_file, broken, "3.0.0")
        load.wait_requests(50)
    second = load.result
    assert output.startswith("failed"), output
    assert "web1: the upgrade to 3.0.0 failed" in output
    recap = output.split("PLAY RECAP")[-1]
    assert re.search(r"^web1 .* failed=1 ", recap, re.M), recap
    assert not re.search(r"^web2 ", recap, re.M), "the rollout went on to web2"
    assert second.failures == [], second.failures[:10]
    assert {body.split(" ")[0] for body in second.bodies} == {"2.0.0"}
    first_host, second_host = (h.status() for h in hosts)
    assert first_host["serving"]["release"]["version"] == "2.0.0"
    assert first_host["host"]["draining"] is False
    assert first_host["deployments"][0]["outcome"] == "failed"
    assert second_host["serving"]["release"]["version"] == "2.0.0"
    assert second_host["host"]["draining"] is False
    assert len(second_host["deployments"]) == untouched
    assert not (hosts[1].state_dir / "drained").exists()
    balancer.wait_up()
    print(f"failed rollout: {second.ok} requests through HAProxy, {len(second.failures)} failed")
