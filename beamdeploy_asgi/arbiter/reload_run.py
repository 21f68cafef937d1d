"""A hot reload of the serving generation, step by step, all workers or none.

    planning    the plan is computed in a subprocess (`Steps.plan`); any refusal ends it
    preparing   every worker compiles the new code, checks it, and votes
    suspending  every worker holds new requests and lets the running ones finish
    committing  every worker patches its code and runs the code-change hooks
    resuming    held requests go on; the generation now runs the new release
    undoing     after a no: every worker that changed puts the old code back

Each step goes to every worker that took part and waits for all answers (or
its deadline). A no (or no answer) at prepare or suspend aborts, with
nothing applied; at commit, every worker undoes. The deployer owns the run
and hands it the pool's events.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import Logger
from typing import Any

from beamdeploy_asgi.arbiter.deployment import Deployment, Phase
from beamdeploy_asgi.arbiter.generation import Generation
from beamdeploy_asgi.arbiter.reload_plan import BadPlan, ReloadPlan, check_plan
from beamdeploy_asgi.protocol import ReloadStep
from beamdeploy_asgi.releases.release import Release

PREPARE_LIMIT = 60.0  # compiling and checking a large change
COMMIT_LIMIT = 30.0  # patching plus the code-change hooks
SHORT_LIMIT = 10.0  # resume, undo, abort: nothing to wait for but the loop
BACKSTOP = 2.0
MAX_REPORTED = 20  # refusals or errors quoted in the deployment's error
MAX_REASON = 1000  # characters of one worker's reason: it comes from a process running app code

_ids = itertools.count(1)


@dataclass
class Round:
    """One step sent to a set of workers, and what they answered."""

    step: ReloadStep
    pids: set[int]
    deadline: float
    answers: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.pids <= self.answers.keys()

    def missing(self) -> set[int]:
        return self.pids - self.answers.keys()

    def noes(self) -> list[str]:
        """Why each worker that said no said it, most telling first."""
        reasons: list[str] = []
        for pid, answer in sorted(self.answers.items()):
            if answer.get("ok"):
                continue
            refusals = answer.get("refusals")
            if isinstance(refusals, list) and refusals:
                for refusal in refusals[:MAX_REPORTED]:
                    text = str(refusal)[:MAX_REASON]
                    if text not in reasons:
                        reasons.append(text)
            else:
                reasons.append(
                    f"worker {pid}: {str(answer.get('error') or 'said no')[:MAX_REASON]}"
                )
        return reasons


class ReloadRun:
    def __init__(
        self,
        deployment: Deployment,
        generation: Generation,
        release: Release,
        *,
        workers: Any,
        steps: Any,
        log: Logger,
        clock: Callable[[], float],
        suspend_timeout: float,
        dry_run: bool,
        finish: Callable[[str], None],
        fail: Callable[[str], None],
    ) -> None:
        """`workers` and `steps` are the deployer's Workers and Steps; `finish` and
        `fail` end the deployment."""
        self.deployment = deployment
        self.generation = generation
        self.release = release
        self.workers = workers
        self.steps = steps
        self.log = log
        self.clock = clock
        self.suspend_timeout = suspend_timeout
        self.dry_run = dry_run
        self.finish = finish
        self.fail = fail
        self.id = next(_ids)
        self.round: Round | None = None
        self.members: set[int] = set()
        self.cause: str | None = None  # why it is being undone or aborted
        self.since: dict[str, float] = {}
        self.results: dict[str, dict[str, Any]] = {}  # per worker pid
        self.plan: ReloadPlan | None = None
        self.broken = False

    # -- planning -----------------------------------------------------------------

    def start(self) -> None:
        old = self.generation.release
        self.deployment.record(Phase.PLANNING, f"comparing {old} with {self.release}")
        self.since["plan"] = self.clock()
        self.steps.plan(old, self.release, self._planned)

    def _planned(self, data: dict[str, Any] | None, cause: str | None) -> None:
        if self.deployment.ended:
            return
        self._took("plan")
        if data is None:
            self.fail(f"hot reload planning failed: {cause}")
            return
        try:
            plan = check_plan(data, self.generation.release, self.release)
        except BadPlan as exc:
            self.fail(f"hot reload planning failed: the plan is malformed: {exc}")
            return
        self.plan = plan
        self.deployment.details["plan"] = plan.summary
        if plan.refused:
            listed = "\n".join(plan.refusals[:MAX_REPORTED])
            self.fail(
                f"hot reload refused ({plan.refused} reasons); deploy it with "
                f"`beamdeploy upgrade`:\n{listed}"
            )
            return
        summary = f"{len(plan.modules)} modules, {plan.functions} functions change"
        self.deployment.record(Phase.PLANNING, summary)
        if self.dry_run:
            self.deployment.details["dry_run"] = True
            self.finish(f"dry run: {summary}; nothing was applied")
            return
        pids, problem = self.workers.reload_members(self.generation)
        if problem is not None:
            self.fail(f"hot reload cannot start: {problem}")
            return
        self.members = pids
        self.workers.hold_spawns = True
        self._send(
            ReloadStep.PREPARE,
            Phase.PREPARING,
            f"{len(pids)} workers compile and check the new code",
            PREPARE_LIMIT,
            modules=plan.modules,
            old_paths=plan.old_paths,
            new_paths=plan.new_paths,
        )

    # -- rounds -------------------------------------------------------------------

    def _send(
        self, step: ReloadStep, phase: Phase, message: str, limit: float, **fields: Any
    ) -> None:
        pids = set(self.members)
        self.round = Round(step, pids, self.clock() + limit + BACKSTOP)
        self.since[step.value] = self.clock()
        self.deployment.record(phase, message)
        command = {"id": self.id, "step": step.value, **fields}
        self.workers.send_reload(self.generation, pids, command)
        self._check_round()  # no worker left to ask

    def answered(self, pid: int, answer: dict[str, Any]) -> None:
        current = self.round
        if current is None or answer.get("id") != self.id or answer.get("step") != current.step:
            return
        if pid in current.pids:
            current.answers[pid] = answer
            self._check_round()

    def exited(self, pid: int) -> None:
        self.members.discard(pid)  # later steps do not wait for it
        current = self.round
        if current is not None and pid in current.pids and pid not in current.answers:
            gone = current.step in (ReloadStep.UNDO, ReloadStep.ABORT)  # no code left to undo
            current.answers[pid] = {"ok": gone, "error": f"worker {pid} exited"}
            self._check_round()

    def tick(self) -> None:
        current = self.round
        if current is None or self.clock() <= current.deadline:
            return
        missing = current.missing()
        for pid in missing:
            current.answers[pid] = {"ok": False, "error": f"worker {pid} did not answer in time"}
        self._check_round()

    def _check_round(self) -> None:
        """Go on once every worker answered; a fault here fails the reload, not the arbiter."""
        try:
            self._advance()
        except Exception as exc:
            self._broke(exc)

    def _broke(self, exc: Exception) -> None:
        self.log.exception("deployment %s: the hot reload broke", self.deployment.id)
        self.round = None
        self.workers.hold_spawns = False
        what = f"an internal error ({type(exc).__name__}: {exc})"
        if self.members and not self.broken:
            self.broken = True  # every worker goes back to the old code, and resumes
            self._back_out(ReloadStep.UNDO, what, [])
        else:
            self.fail(f"hot reload failed: {what}")

    def _advance(self) -> None:
        current = self.round
        if current is None or not current.complete:
            return
        self.round = None
        self._took(current.step.value)
        noes = current.noes()
        step = current.step
        if step in (ReloadStep.RESUME, ReloadStep.UNDO, ReloadStep.ABORT):
            # A worker that could not go back (or on) may run the other code, or
            # hold its requests: it goes, and is replaced from the release the
            # generation runs now.
            failed = {pid for pid, answer in current.answers.items() if not answer.get("ok")}
            self.workers.retire_pids(self.generation, failed)
        if step is ReloadStep.PREPARE:
            if noes:
                self._back_out(ReloadStep.ABORT, "the workers refused the new code", noes)
                return
            self._record_results(current, "prepare")
            self._send(
                ReloadStep.SUSPEND,
                Phase.SUSPENDING,
                f"holding new requests; waiting up to {self.suspend_timeout:g}s for running ones",
                self.suspend_timeout,
                timeout=self.suspend_timeout,
            )
        elif step is ReloadStep.SUSPEND:
            if noes:
                self._back_out(ReloadStep.ABORT, "requests did not finish in time", noes)
                return
            old = self.generation.release
            self._send(
                ReloadStep.COMMIT,
                Phase.COMMITTING,
                "patching the code and running the code-change hooks",
                COMMIT_LIMIT,
                old_version=old.version,
                new_version=self.release.version,
                release=self.release.describe(),
            )
        elif step is ReloadStep.COMMIT:
            if noes:
                self._back_out(ReloadStep.UNDO, "a worker could not apply the new code", noes)
                return
            self._record_results(current, "commit")
            self.workers.switch_release(self.generation, self.release)
            self.steps.promoted(self.deployment)
            self._send(ReloadStep.RESUME, Phase.RESUMING, "held requests go on", SHORT_LIMIT)
        elif step is ReloadStep.RESUME:
            self._record_results(current, "resume")
            self.workers.hold_spawns = False
            self.finish(f"{self.generation} runs {self.release}")
        else:  # undone or aborted: the failure is reported now that all is back
            self.workers.hold_spawns = False
            self.fail(self.cause or "hot reload failed")

    def _back_out(self, step: ReloadStep, what: str, noes: list[str]) -> None:
        listed = "\n".join(noes[:MAX_REPORTED])
        self.cause = f"hot reload failed: {what}; nothing was changed:\n{listed}"
        self.log.error("deployment %s: %s", self.deployment.id, self.cause.splitlines()[0])
        undo = step is ReloadStep.UNDO
        self._send(
            step,
            Phase.UNDOING,
            f"{'undoing' if undo else 'aborting'}: {what}",
            SHORT_LIMIT,
        )

    def _record_results(self, done: Round, step: str) -> None:
        for pid, answer in done.answers.items():
            self.results.setdefault(str(pid), {})[step] = worker_report(step, answer)
        self.deployment.details["workers"] = self.results

    def _took(self, step: str) -> None:
        if step in self.since:
            self.deployment.timings[step] = self.clock() - self.since[step]


def worker_report(step: str, answer: dict[str, Any]) -> dict[str, Any]:
    """What the deployment keeps of a worker's answer: known fields, bounded.

    The answer comes from a process that runs app code, and the record goes
    to the status and the history file.
    """
    if step == "prepare":
        patches = [p for p in _items(answer.get("patches")) if isinstance(p, dict)]
        return {
            "modules": [str(p.get("module"))[:200] for p in patches if not p.get("skipped")],
            "function_objects": sum(_number(p.get("function_objects")) for p in patches),
        }
    if step == "commit":
        hooks = [h for h in _items(answer.get("hooks")) if isinstance(h, dict)]
        return {
            "hooks": [
                {
                    "module": str(h.get("module"))[:200],
                    "result": str(h.get("result"))[:200],
                    "seconds": _number(h.get("seconds")),
                }
                for h in hooks
            ],
            "commit_seconds": _number(answer.get("commit_seconds")),
        }
    return {"held": int(_number(answer.get("held"))), "held_for": _number(answer.get("held_for"))}


def _items(value: Any) -> list[Any]:
    return value[:MAX_REPORTED] if isinstance(value, list) else []


def _number(value: Any) -> float:
    """A finite, non-negative number of a worker's answer; 0 for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    try:
        number = float(value)
    except OverflowError:  # an int past a float's range
        return 0.0
    return number if math.isfinite(number) and 0 <= number < 1e12 else 0.0
