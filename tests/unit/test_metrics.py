"""The arbiter's metrics without processes: what a recorded deployment adds."""

from __future__ import annotations

import types

from prometheus_client.parser import text_string_to_metric_families

from beamdeploy_asgi.arbiter.deployment import Deployment
from beamdeploy_asgi.arbiter.metrics import Metrics


def arbiter() -> types.SimpleNamespace:
    pool = types.SimpleNamespace(generations=[], serving=None, events={"heartbeat_timeouts": 2})
    return types.SimpleNamespace(
        pool=pool, deployer=types.SimpleNamespace(current=None), started_at=0.0
    )


def samples(metrics: Metrics) -> dict[str, float]:
    text = metrics.render()
    return {
        s.name + str(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_a_hot_reload_counts_held_requests_and_hold_times_once():
    metrics = Metrics(arbiter())
    deployment = Deployment(kind="hot-reload", previous=None)
    metrics.deployment_recorded(deployment)  # its start: nothing counted yet
    deployment.timings = {"suspend": 0.02, "commit": 0.01}
    deployment.details["workers"] = {
        "11": {"resume": {"held": 3, "held_for": 0.02}},
        "12": {"resume": {"held": 4, "held_for": 0.03}},
        "13": "nonsense",
    }
    deployment.finish("succeeded", "done")
    metrics.deployment_recorded(deployment)
    metrics.deployment_recorded(deployment)  # recorded twice: counted once
    got = samples(metrics)
    assert (
        got["beamdeploy_deployments_total[('kind', 'hot-reload'), ('outcome', 'succeeded')]"] == 1
    )
    assert got["beamdeploy_hot_reload_requests_held_total[]"] == 7
    assert got["beamdeploy_hot_reload_hold_seconds_count[]"] == 2
    assert got["beamdeploy_deployment_phase_duration_seconds_count[('phase', 'suspend')]"] == 1
    assert got["beamdeploy_heartbeat_timeouts_total[]"] == 2
    assert got["beamdeploy_worker_restarts_total[]"] == 0
