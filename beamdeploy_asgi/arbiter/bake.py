"""The bake window: after a promotion, go back at once if the new generation fails.

`BakeWatch` is the verdict, pure arithmetic over the response counts the new
generation's workers report, so the threshold is tested on its own;
`BakeRun` is the window itself, as a deployment runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from logging import Logger

from beamdeploy_asgi.arbiter.deployment import Deployment, Phase
from beamdeploy_asgi.arbiter.generation import Generation, GenerationState, WorkerState
from beamdeploy_asgi.arbiter.interfaces import Steps, Workers

CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
MIN_RESPONSES = 20  # below this many answers, a share of errors says little


@dataclass
class BakeWatch:
    """What the new generation answered since its promotion, against the limits."""

    seconds: float
    max_error_rate: float
    baseline: dict[str, int]  # its counts at promotion (smoke checks use another port)
    crashes: int  # its crash count at promotion
    counts: dict[str, int] = field(default_factory=dict)

    def update(self, totals: dict[str, int]) -> None:
        self.counts = {c: max(totals.get(c, 0) - self.baseline.get(c, 0), 0) for c in CLASSES}

    @property
    def responses(self) -> int:
        return sum(self.counts.values())

    @property
    def errors(self) -> int:
        return self.counts.get("5xx", 0)

    def verdict(self, crashes: int) -> str | None:
        """Why to roll back now, or None."""
        if crashes > self.crashes:
            died = crashes - self.crashes
            return f"{died} worker{'s' if died > 1 else ''} of the new generation crashed"
        total, errors = self.responses, self.errors
        if total >= MIN_RESPONSES and errors > self.max_error_rate * total:
            return (
                f"{errors} of {total} responses were 5xx ({errors / total:.0%}), above "
                f"the {self.max_error_rate:.0%} the bake allows"
            )
        return None

    def describe(self) -> dict[str, object]:
        return {
            "seconds": self.seconds,
            "max_error_rate": self.max_error_rate,
            "responses": self.responses,
            "errors": self.errors,
            "counts": dict(self.counts),
        }


class BakeRun:
    """After a blue-green promotion: the old generation waits, paused, while the
    new one's answers are counted; too many 5xx or a crash and the old one
    serves again at once.

        baking        the old generation paused (booted, not accepting)
        [rolling-back] the old one accepts again; once it does, the new one drains

    The deployer drives it with the pool's events and its clock; it acts
    through the `Workers` and `Steps` interfaces and tells the deployer how
    it ended: `baked()` (the old generation may drain), `tripped(cause)` (the
    deployment's cause) and `rolled_back()` (the new generation is gone).
    """

    def __init__(
        self,
        deployment: Deployment,
        old: Generation,
        new: Generation,
        *,
        workers: Workers,
        steps: Steps,
        log: Logger,
        clock: Callable[[], float],
        seconds: float,
        max_error_rate: float,
        limit: float,
        baked: Callable[[], None],
        tripped: Callable[[str], None],
        rolled_back: Callable[[], None],
    ) -> None:
        """`limit`: how long a rollback may take: the old generation back, the new one drained."""
        self.deployment = deployment
        self.old = old
        self.new = new
        self.workers = workers
        self.steps = steps
        self.log = log
        self.clock = clock
        self.seconds = seconds
        self.max_error_rate = max_error_rate
        self.limit = limit
        self.baked = baked
        self.tripped = tripped
        self.rolled_back = rolled_back
        self.watch: BakeWatch | None = None
        self.started = 0.0
        self.deadline = 0.0
        self.rolling_back = False
        self.draining_new = False

    def start(self) -> bool:
        """Pause the old generation instead of draining it; False if it cannot pause."""
        old, new, deployment = self.old, self.new, self.deployment
        if not self.workers.can_pause(old):
            deployment.record(
                Phase.PROMOTED,
                f"no bake: the workers of {old} run a beamdeploy-asgi that cannot wait "
                "paused; it drains now",
            )
            return False
        self.workers.pause(old)
        old.state = GenerationState.STANDBY
        self.watch = BakeWatch(
            seconds=self.seconds,
            max_error_rate=self.max_error_rate,
            baseline=self.workers.responses(new),
            crashes=new.crashes,
        )
        deployment.details["bake"] = self.watch.describe()
        self.started = self.clock()
        self.deadline = self.started + self.seconds
        deployment.record(
            Phase.BAKING,
            f"baking {new} for {self.seconds:g}s; {old} waits, booted, to serve again",
        )
        self.log.info("deployment %s: baking %s, keeping %s warm", deployment.id, new, old)
        return True

    # -- driven by the deployer ------------------------------------------------

    def observe(self) -> None:
        """The new generation answered or lost a worker: judge it again."""
        if self.rolling_back or self.watch is None:
            return
        self.watch.update(self.workers.responses(self.new))
        self.deployment.details["bake"] = self.watch.describe()
        cause = self.watch.verdict(self.new.crashes)
        if cause is not None:
            self.roll_back(cause)

    def step(self) -> None:
        """A worker of either generation changed: a rollback may go on."""
        if not self.rolling_back:
            return
        if not self.draining_new:
            old = self.old
            accepting = self.workers.count(old, WorkerState.SERVING) - self.workers.paused(old)
            if accepting <= 0:
                return
            self.draining_new = True
            self.workers.drain(self.new)
            self.deployment.record(Phase.ROLLING_BACK, f"draining {self.new}")
        # Not before its last worker exited: until then, it may still answer
        # requests already sent on its connections, with the code that failed.
        if self.workers.live(self.new) == 0:
            self.rolled_back()

    def expired(self) -> None:
        """The deadline passed: the window ended clean, or a rollback took too long."""
        if self.rolling_back:
            if not self.draining_new:
                self.log.error(
                    "deployment %s: %s did not accept again in time; draining %s anyway",
                    self.deployment.id,
                    self.old,
                    self.new,
                )
                self.workers.drain(self.new)
            self.rolled_back()
            return
        watch = self.watch
        assert watch is not None
        watch.update(self.workers.responses(self.new))
        cause = watch.verdict(self.new.crashes)
        if cause is not None:
            self.roll_back(cause)
            return
        self.deployment.timings["bake"] = self.clock() - self.started
        self.deployment.details["bake"] = watch.describe()
        self.deployment.record(
            Phase.PROMOTED,
            f"baked {watch.seconds:g}s: {watch.errors} of {watch.responses} responses were 5xx",
        )
        self.baked()

    def roll_back(self, cause: str) -> None:
        """The old generation, still booted, serves again at once; the new one drains."""
        if self.rolling_back:
            return
        old, deployment = self.old, self.deployment
        self.rolling_back = True
        deployment.timings["bake"] = self.clock() - self.started
        watch = self.watch.describe() if self.watch else {}
        deployment.details["bake"] = {**watch, "verdict": cause}
        self.deadline = self.clock() + self.limit
        self.tripped(cause)
        self.log.error("deployment %s: rolling back to %s: %s", deployment.id, old, cause)
        self.workers.resume(old)
        self.workers.serve(old)  # a replacement that was booting during the bake
        self.workers.promote(old)  # the pool fills it up again if some of it died meanwhile
        self.steps.restored(old.release)
        deployment.record(Phase.ROLLING_BACK, f"{old} serves again ({cause})")
        self.step()
