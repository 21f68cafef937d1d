"""Prometheus metrics of the arbiter: what it runs, what it deployed, how it fares.

Only the arbiter imports this module, and only when prometheus-client is
installed (the ``metrics`` extra): releases install beamdeploy-asgi into
their own venvs, which need none of it. Workers forward ``/_deploy/metrics``
as the ``metrics`` control operation and pass the text on unchanged.

Two sources, both read in the arbiter's loop thread:

- a collector that reads the pool and the deployer at scrape time (workers by
  generation and state, the serving release, uptime, memory, the pool's event
  counts);
- counters and histograms updated when a deployment ends (the arbiter records
  every deployment through ``ReleaseSteps.record``, at its start and its end).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from beamdeploy_asgi.arbiter.deployment import Deployment

# What generate_latest writes (newer prometheus-clients call 1.0.0 "latest").
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, float("inf"))
PHASE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, float("inf"))
HOLD_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, float("inf"))
MAX_REMEMBERED = 1000  # ids of ended deployments already counted
RENDER_EVERY = 0.25  # seconds an exposition is answered again before it is rendered anew
POOL_EVENTS = {  # the pool's event counts: metric name, help
    "worker_restarts": (
        "beamdeploy_worker_restarts",
        "Workers of the serving generation that died and were replaced",
    ),
    "worker_boot_failures": (
        "beamdeploy_worker_boot_failures",
        "Workers that failed before they were ready: crashed, reported a failure or timed out",
    ),
    "heartbeat_timeouts": (
        "beamdeploy_heartbeat_timeouts",
        "Serving workers aborted for a missed heartbeat (--timeout)",
    ),
}


class ArbiterCollector(Collector):
    """Reads the arbiter's state when scraped; in the loop thread, like everything else."""

    def __init__(self, arbiter: Any, clock: Callable[[], float] = time.time) -> None:
        self.arbiter = arbiter
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        arbiter = self.arbiter
        pool, deployer = arbiter.pool, arbiter.deployer

        workers = GaugeMetricFamily(
            "beamdeploy_workers",
            "Worker processes by generation, release and state",
            labels=["generation", "release", "state"],
        )
        generations = GaugeMetricFamily(
            "beamdeploy_generations", "Generations by state", labels=["state"]
        )
        by_state: dict[str, int] = {}
        for generation in list(pool.generations):
            by_state[generation.state.value] = by_state.get(generation.state.value, 0) + 1
            counts: dict[str, int] = {}
            for worker in list(generation.workers.values()):
                counts[worker.state.value] = counts.get(worker.state.value, 0) + 1
            release = f"{generation.release.name}-{generation.release.version}"
            for state, count in sorted(counts.items()):
                workers.add_metric([str(generation.number), release, state], count)
        for state, count in sorted(by_state.items()):
            generations.add_metric([state], count)
        yield workers
        yield generations

        info = InfoMetricFamily(
            "beamdeploy_release", "The release the serving generation runs", labels=[]
        )
        serving = pool.serving
        if serving is not None:
            release = serving.release
            info.add_metric(
                [],
                {
                    "name": str(release.name),
                    "version": str(release.version),
                    "generation": str(serving.number),
                },
            )
        yield info

        running = GaugeMetricFamily(
            "beamdeploy_deployment_running", "1 while a deployment runs", labels=["kind"]
        )
        current = deployer.current
        if current is not None:
            running.add_metric([current.kind], 1)
        yield running

        for key, (name, doc) in POOL_EVENTS.items():
            yield CounterMetricFamily(name, doc, value=pool.events.get(key, 0))

        yield GaugeMetricFamily(
            "beamdeploy_arbiter_uptime_seconds",
            "Seconds since this arbiter started",
            value=max(0.0, self.clock() - arbiter.started_at),
        )
        rss = resident_memory()
        if rss is not None:
            yield GaugeMetricFamily(
                "beamdeploy_arbiter_resident_memory_bytes",
                "Resident memory of the arbiter process",
                value=rss,
            )


def resident_memory() -> int | None:
    """This process's resident set size in bytes, from /proc (Linux), else None."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class Metrics:
    """The arbiter's registry: the collector, and the instruments deployments update."""

    content_type = CONTENT_TYPE

    def __init__(self, arbiter: Any) -> None:
        self.arbiter = arbiter
        self._rendered: tuple[float, str] | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(ArbiterCollector(arbiter))
        self.deployments = Counter(
            "beamdeploy_deployments",
            "Deployments that ended, by kind and outcome",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "beamdeploy_deployment_duration_seconds",
            "How long deployments took, start to end",
            ["kind"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.phase_duration = Histogram(
            "beamdeploy_deployment_phase_duration_seconds",
            "How long each timed step of a deployment took (install, boot, drain, ...)",
            ["phase"],
            buckets=PHASE_BUCKETS,
            registry=self.registry,
        )
        self.held = Counter(
            "beamdeploy_hot_reload_requests_held",
            "Requests held while hot reloads changed the code, summed over workers",
            registry=self.registry,
        )
        self.hold = Histogram(
            "beamdeploy_hot_reload_hold_seconds",
            "How long a worker held new requests during a hot reload",
            buckets=HOLD_BUCKETS,
            registry=self.registry,
        )
        # Ended deployments' ids, oldest first, with the timings already observed.
        self._counted: dict[str, set[str]] = {}

    def deployment_recorded(self, deployment: Deployment) -> None:
        """Called at every record of a deployment; counts each ended one once."""
        self._rendered = None  # a deployment started or ended: render anew
        if not deployment.ended or deployment.id in self._counted:
            return
        self._counted[deployment.id] = set()
        if len(self._counted) > MAX_REMEMBERED:
            del self._counted[next(iter(self._counted))]
        kind, outcome = deployment.kind, str(deployment.outcome)
        self.deployments.labels(kind, outcome).inc()
        if deployment.ended_at is not None:
            self.duration.labels(kind).observe(
                max(0.0, deployment.ended_at - deployment.started_at)
            )
        self._phases(deployment)
        if kind == "hot-reload":
            self._hot_reload(deployment)

    def _phases(self, deployment: Deployment) -> None:
        observed = self._counted.get(deployment.id)
        if observed is None:
            return
        for phase, seconds in dict(deployment.timings).items():
            if phase not in observed and isinstance(seconds, (int, float)) and seconds >= 0:
                observed.add(phase)
                self.phase_duration.labels(str(phase)).observe(seconds)

    def _late_phases(self) -> None:
        """Timings that come after a deployment's end: the old generation's drain."""
        for deployment in list(getattr(self.arbiter.deployer, "deployments", ())):
            if deployment.ended:
                self._phases(deployment)

    def _hot_reload(self, deployment: Deployment) -> None:
        workers = deployment.details.get("workers")
        if not isinstance(workers, dict):
            return
        for report in workers.values():
            resumed = report.get("resume") if isinstance(report, dict) else None
            if not isinstance(resumed, dict):
                continue
            held, held_for = resumed.get("held", 0), resumed.get("held_for", 0.0)
            if isinstance(held, (int, float)) and held > 0:
                self.held.inc(held)
            if isinstance(held_for, (int, float)) and held_for >= 0:
                self.hold.observe(held_for)

    def render(self) -> str:
        """The exposition, rendered at most every RENDER_EVERY seconds: whoever asks
        for it (app code on its channel, a scraper) cannot keep the arbiter's loop busy."""
        now = time.monotonic()
        if self._rendered is None or now - self._rendered[0] >= RENDER_EVERY:
            self._late_phases()
            self._rendered = (now, generate_latest(self.registry).decode("utf-8"))
        return self._rendered[1]
