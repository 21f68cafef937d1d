"""The rolling strategy: replace the serving workers a few at a time.

Blue-green needs memory for two whole generations. Here the new generation
grows while the old one shrinks: at most ``max_surge`` workers beyond the
generation's size live at once (draining ones count, since they still hold
their memory). Each new worker that serves lets one old worker drain. Until
the last old worker has stopped accepting, both releases answer requests.

The first new workers are checked (smoke command, before_promote hook)
before any of them serves. If a new worker fails, the rollout stops: the new
workers drain and the old generation is given back its size, which the pool
fills from the old release.
"""

from __future__ import annotations

from collections.abc import Callable

from beamdeploy_asgi.arbiter.deployment import Deployment, Phase
from beamdeploy_asgi.arbiter.generation import Generation, WorkerState
from beamdeploy_asgi.arbiter.interfaces import Workers


class RollingRun:
    def __init__(
        self,
        deployment: Deployment,
        old: Generation,
        new: Generation,
        *,
        workers: Workers,
        surge: int,
        gate: Callable[[Callable[[], None]], None],
        finish: Callable[[], None],
        fail: Callable[[str], None],
        progressed: Callable[[], None],
    ) -> None:
        """`gate(then)` checks the first new workers and calls `then` if they pass;
        `progressed` is told whenever a worker moved (the deployer's deadline)."""
        self.deployment = deployment
        self.old = old
        self.new = new
        self.workers = workers
        self.surge = surge
        self.size = new.size
        self.gate = gate
        self.finish = finish
        self.fail = fail
        self.progressed = progressed
        self.checked = False  # the gate passed: new workers may serve
        self.checking = False
        self.retired = 0  # old workers told to drain
        self.peak = 0  # the most workers of both generations alive at once
        self.stopped: str | None = None  # why the rollout stopped, once it has
        self.shown: tuple[int, int] | None = None

    def start(self) -> None:
        self.deployment.record(
            Phase.ROLLING,
            f"rolling {self.size} workers from {self.old} to {self.new}, {self.surge} at a time",
            **self._counts(),
        )
        self._spawn()

    # -- driven by the deployer's events -----------------------------------

    def step(self) -> None:
        if self.stopped is not None:
            self._step_back()
            return
        w = self.workers
        if not self.checked:
            first_batch = min(self.surge, self.size)
            if w.count(self.new, WorkerState.READY) >= first_batch and not self.checking:
                self.checking = True
                self.gate(self._checked)
            return
        w.serve(self.new)
        serving = w.count(self.new, WorkerState.SERVING)
        if serving > self.retired:
            count = min(serving - self.retired, w.still_accepting(self.old))
            if count:
                w.shrink(self.old, count)
                self.retired += count
        self._show()
        if serving == self.size and w.still_accepting(self.old) == 0:
            self.finish()
            return
        self._spawn()

    def _checked(self) -> None:
        self.checked = True
        self.step()

    def _spawn(self) -> None:
        w = self.workers
        active = len(self.new.in_state(WorkerState.BOOTING, WorkerState.READY, WorkerState.SERVING))
        room = self.size + self.surge - w.live(self.old) - w.live(self.new)
        wanted = self.size - active
        if not self.checked:
            wanted = min(self.size, self.surge) - active  # only the first batch, until checked
        count = min(room, wanted)
        if count > 0:
            cause = w.grow(self.new, count)
            if cause is not None:
                self.fail(cause)
                return
        self.peak = max(self.peak, w.live(self.old) + w.live(self.new))
        self.deployment.details["rolling"] = self.describe()

    def _show(self) -> None:
        counts = self._counts()
        shown = (counts["new_serving"], counts["old_serving"])
        if shown != self.shown:
            self.shown = shown
            self.progressed()
            self.deployment.record(
                Phase.ROLLING,
                f"{shown[0]}/{self.size} workers on {self.new.release}, "
                f"{shown[1]} still on {self.old.release}",
                **counts,
            )

    def _counts(self) -> dict[str, int]:
        w = self.workers
        return {
            "new_serving": w.count(self.new, WorkerState.SERVING),
            "old_serving": w.still_accepting(self.old),
            "size": self.size,
        }

    # -- a failure: back to the old release at full size ---------------------------

    def stop(self, cause: str) -> None:
        """Stop the rollout: the old generation gets its size back, the new workers go.

        New workers that serve stay until as many old ones serve again, so
        that the service never has fewer workers accepting than it had.
        """
        if self.stopped is not None:
            return
        self.stopped = cause
        replaced = self.workers.count(self.new, WorkerState.SERVING)
        self.deployment.details["rolling"] = {
            **self.describe(),
            "replaced": replaced,
            "stopped": cause.splitlines()[0],
        }
        self.deployment.record(
            Phase.STOPPING,
            f"rollout stopped with {replaced}/{self.size} workers replaced: "
            f"{cause.splitlines()[0]}; {self.old} goes back to {self.size} workers",
        )
        self.workers.stop(self.new, cause, keep_serving=True)
        self.workers.restore(self.old, self.size)
        self._step_back()

    def _step_back(self) -> None:
        """Drain new workers as old ones serve again, one for one."""
        w = self.workers
        serving_new = w.count(self.new, WorkerState.SERVING)
        missing_old = max(self.size - w.count(self.old, WorkerState.SERVING), 0)
        if serving_new > missing_old:
            w.shrink(self.new, serving_new - missing_old)

    def describe(self) -> dict[str, object]:
        return {
            "size": self.size,
            "max_surge": self.surge,
            "retired": self.retired,
            "peak_workers": self.peak,
        }
