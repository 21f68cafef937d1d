"""Before a new generation takes traffic: the smoke command, then the operator's veto.

The smoke command runs against the new generation's private loopback port,
where its workers answer from the moment they are ready; no user request
has reached it yet. Then `beamdeploy_before_promote` may say no. Either
failure stops the deployment with the reason as its cause, and the serving
generation stays as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from beamdeploy_asgi.arbiter.deployment import Deployment, Phase
from beamdeploy_asgi.arbiter.generation import Generation

BEFORE_PROMOTE = "beamdeploy_before_promote"


class PromotionGate:
    def __init__(
        self,
        deployment: Deployment,
        generation: Generation,
        *,
        steps: Any,
        smoke_url: str | None,
        passed: Callable[[], None],
        failed: Callable[[str], None],
    ) -> None:
        self.deployment = deployment
        self.generation = generation
        self.steps = steps
        self.smoke_url = smoke_url
        self.passed = passed
        self.failed = failed
        self.closed = False  # the deployment moved on (failed elsewhere): answers are dropped

    @staticmethod
    def needed(steps: Any, smoke_url: str | None) -> bool:
        return smoke_url is not None or steps.has_hook(BEFORE_PROMOTE)

    def start(self) -> None:
        if self.smoke_url is not None:
            self.deployment.record(
                Phase.CHECKING, f"running the smoke command against {self.generation}"
            )
            self.steps.smoke(self.smoke_url, self.generation.release, self._smoked)
        else:
            self._ask()

    def _smoked(self, failure: str | None, report: dict[str, Any]) -> None:
        if self.closed:
            return
        self.deployment.details["smoke"] = report
        if failure is not None:
            self.failed(f"smoke command failed: {failure}")
        else:
            self._ask()

    def _ask(self) -> None:
        if not self.steps.has_hook(BEFORE_PROMOTE):
            self.passed()
            return
        self.deployment.record(Phase.CHECKING, f"asking {BEFORE_PROMOTE}")
        self.steps.hook(BEFORE_PROMOTE, self.deployment.describe(), self._answered)

    def _answered(self, failure: str | None) -> None:
        if self.closed:
            return
        if failure is not None:
            self.failed(f"{BEFORE_PROMOTE} vetoed the promotion: {failure}")
        else:
            self.passed()
