"""Prometheus metrics against a real arbiter: /_deploy/metrics and --metrics-bind."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.server import free_port
from tests.support.tokens import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}
DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`; 0 if none."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def scrape(url: str, **kwargs) -> dict:
    answer = httpx.get(url, timeout=10, **kwargs)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(answer.text)


def release_version(samples: dict) -> str:
    (labels,) = [dict(ls) for (n, ls), _ in samples.items() if n == "beamdeploy_release_info"]
    return labels["version"]


def test_metrics_move_with_a_deploy_and_a_failed_one(serve, releases):
    port = free_port()
    server = serve(
        "--workers",
        "2",
        "--release",
        str(releases["v1"]),
        "--metrics-bind",
        f"127.0.0.1:{port}",
        env={"BEAMDEPLOY_TOKEN": TOKEN},
    )
    admin = server.url + "/_deploy/metrics"
    before = scrape(admin, headers=AUTH)
    assert value(before, "beamdeploy_deployments_total", kind="boot", outcome="succeeded") == 1
    assert value(before, "beamdeploy_deployments_total", kind="upgrade") == 0
    assert release_version(before) == "v1"
    assert value(before, "beamdeploy_workers", state="serving") == 2
    assert value(before, "beamdeploy_arbiter_uptime_seconds") > 0
    assert value(before, "beamdeploy_arbiter_resident_memory_bytes") > 1_000_000
    assert value(before, "beamdeploy_hot_reload_requests_held_total") == 0

    upgraded = server.cli("upgrade", str(releases["v2"]))
    assert upgraded.returncode == 0, upgraded.stderr
    server.wait_for(lambda s: not s["upgrading"] and not s["draining"])
    after = scrape(admin, headers=AUTH)
    assert value(after, "beamdeploy_deployments_total", kind="upgrade", outcome="succeeded") == 1
    assert value(after, "beamdeploy_deployment_duration_seconds_count", kind="upgrade") == 1
    assert value(after, "beamdeploy_deployment_duration_seconds_sum", kind="upgrade") > 0
    assert value(after, "beamdeploy_deployment_phase_duration_seconds_count", phase="boot") == 2
    assert value(after, "beamdeploy_deployment_phase_duration_seconds_count", phase="drain") == 1
    assert release_version(after) == "v2"
    assert value(after, "beamdeploy_workers", state="serving") == 2

    broken = releases.custom("broken-metrics", "raise RuntimeError('x')\n")
    failed = server.cli("upgrade", str(broken))
    assert failed.returncode != 0
    server.wait_for(lambda s: not s["upgrading"] and not s["booting"])
    last = scrape(admin, headers=AUTH)
    assert value(last, "beamdeploy_deployments_total", kind="upgrade", outcome="failed") == 1
    assert value(last, "beamdeploy_deployments_total", kind="upgrade", outcome="succeeded") == 1
    assert value(last, "beamdeploy_deployment_duration_seconds_count", kind="upgrade") == 2
    assert release_version(last) == "v2"  # the broken one never served

    # The arbiter's own listener says the same, and the dashboard asks only for what exists.
    direct = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert direct.status_code == 200
    families = {f.name for f in text_string_to_metric_families(direct.text)}
    names = families | {n for n, _ in parse(direct.text)}
    dashboard = json.loads(DASHBOARD.read_text())
    used = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            used.update(re.findall(r"\bbeamdeploy_[a-z_]+", target["expr"]))
    assert used and used <= names, used - names
    assert {
        "beamdeploy_deployments_total",
        "beamdeploy_workers",
        "beamdeploy_release_info",
        "beamdeploy_worker_restarts_total",
        "beamdeploy_worker_boot_failures_total",
        "beamdeploy_heartbeat_timeouts_total",
        "beamdeploy_hot_reload_hold_seconds_bucket",
        "beamdeploy_arbiter_uptime_seconds",
    } <= names


def test_the_token_gate_and_the_allow_list(serve, releases):
    gated = serve(
        "--workers",
        "1",
        "--release",
        str(releases["v1"]),
        "--metrics-allow",
        "10.0.0.0/8",
        env={"BEAMDEPLOY_TOKEN": TOKEN},
    )
    refused = httpx.get(gated.url + "/_deploy/metrics")
    assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
    wrong = httpx.get(gated.url + "/_deploy/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert httpx.get(gated.url + "/_deploy/metrics", headers=AUTH).status_code == 200

    allowed = serve(
        "--workers",
        "1",
        "--release",
        str(releases["v1"]),
        "--metrics-allow",
        "127.0.0.0/8",
        env={"BEAMDEPLOY_TOKEN": TOKEN},
    )
    samples = scrape(allowed.url + "/_deploy/metrics")
    assert release_version(samples) == "v1"
    # Only the metrics: every other admin route still wants the token.
    assert httpx.get(allowed.url + "/_deploy/status").status_code == 401


def until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def raw(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_metrics_bind_is_served_by_the_arbiter_itself(serve, releases):
    port = free_port()
    server = serve(
        "--workers",
        "1",
        "--release",
        str(releases["v1"]),
        "--metrics-bind",
        f"127.0.0.1:{port}",
    )  # no admin token: /_deploy is absent, the arbiter's listener is not
    url = f"http://127.0.0.1:{port}/metrics"
    assert httpx.get(server.url + "/_deploy/metrics").status_code == 404
    (worker,) = server.serving_pids()
    os.kill(worker, signal.SIGSTOP)  # the app answers nothing now
    try:
        samples = scrape(url)
        assert value(samples, "beamdeploy_workers", state="serving") == 1
    finally:
        os.kill(worker, signal.SIGCONT)
    os.kill(worker, signal.SIGKILL)  # a crash: the pool replaces the worker
    until(lambda: value(scrape(url), "beamdeploy_worker_restarts_total") == 1)
    server.wait_for(lambda s: worker not in [w["pid"] for w in s["serving"]["workers"]])

    assert raw(port, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 404")
    assert raw(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 404")
    assert raw(port, b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400")
    huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n"
    assert raw(port, huge).startswith(b"HTTP/1.1 431")
    # A client that never ends its request is cut off after the read timeout.
    with socket.create_connection(("127.0.0.1", port), timeout=15) as slow:
        slow.sendall(b"GET /metrics HTTP/1.1\r\n")
        started = time.monotonic()
        assert slow.recv(100) == b""
        assert time.monotonic() - started < 10
    assert httpx.get(url).status_code == 200  # still serving
