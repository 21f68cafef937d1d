"""What a deployment asks of the rest of the arbiter: the worker pool and the release side.

The deployer and its runs (rolling, hot reload) know only these, so a test
drives them with fakes; `WorkerPool` and `ReleaseSteps` are the real ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from beamdeploy_asgi.arbiter.deployment import Deployment
from beamdeploy_asgi.arbiter.generation import Generation, WorkerState
from beamdeploy_asgi.releases.release import Release


class Workers(Protocol):
    """What a deployment asks of the worker pool."""

    serving: Generation | None

    def create(self, release: Release) -> Generation: ...

    def open_private(self, generation: Generation) -> str:
        """A loopback address only this generation answers on, from READY on."""

    def close_private(self, generation: Generation) -> None: ...

    def start(self, generation: Generation) -> str | None: ...

    def count(self, generation: Generation, state: WorkerState) -> int: ...

    def live(self, generation: Generation) -> int: ...

    def still_accepting(self, generation: Generation) -> int: ...

    def serve(self, generation: Generation) -> None: ...

    def promote(self, generation: Generation) -> Generation | None: ...

    def drain(self, generation: Generation) -> None: ...

    def stop(self, generation: Generation, cause: str, keep_serving: bool = False) -> None: ...

    def releases_in_use(self) -> set[str]: ...

    # the rolling strategy
    def grow(self, generation: Generation, count: int) -> str | None: ...

    def shrink(self, generation: Generation, count: int) -> None: ...

    def restore(self, generation: Generation, size: int) -> None: ...

    # the bake window
    def pause(self, generation: Generation) -> None: ...

    def resume(self, generation: Generation) -> None: ...

    def can_pause(self, generation: Generation) -> bool: ...

    def paused(self, generation: Generation) -> int: ...

    def responses(self, generation: Generation) -> dict[str, int]: ...

    # a hot reload of the serving generation
    hold_spawns: bool

    def reload_members(self, generation: Generation) -> tuple[set[int], str | None]: ...

    def send_reload(
        self, generation: Generation, pids: set[int], message: dict[str, Any]
    ) -> None: ...

    def switch_release(self, generation: Generation, release: Release) -> None: ...

    def retire_pids(self, generation: Generation, pids: set[int]) -> None: ...


class Steps(Protocol):
    """What a deployment asks of the release side: installs, checks, hooks, the store."""

    def install(
        self,
        artifact: str,
        *,
        remove_after: bool,
        progress: Callable[[str], None],
        done: Callable[[str], None],
        failed: Callable[[str], None],
        wanted: Callable[[], bool],
    ) -> None: ...

    def open_to_workers(self, release: Release) -> str | None: ...

    def plan(
        self,
        serving: Release,
        new: Release,
        done: Callable[[dict[str, Any] | None, str | None], None],
    ) -> None:
        """A hot reload's plan: `done(plan, None)`, or `done(None, cause)`."""

    def smoke(
        self,
        url: str,
        release: Release,
        done: Callable[[str | None, dict[str, Any]], None],
    ) -> None:
        """Run the smoke command against `url`: `done(None or why it failed, report)`."""

    def has_hook(self, name: str) -> bool: ...

    def hook(
        self, name: str, record: dict[str, Any], done: Callable[[str | None], None] | None = None
    ) -> None:
        """Run the operator's hook `name`; `done` gets None, or why it failed."""

    def promoted(self, deployment: Deployment) -> None: ...

    def restored(self, release: Release) -> None:
        """A bake rolled back: `release` is the current one again."""

    def record(self, deployment: Deployment) -> None: ...

    def mark_failed(self, release: Release, phase: str, error: str) -> None: ...

    def prune(self, in_use: set[str]) -> None: ...

    def halt(self, cause: str) -> None:
        """Nothing serves and nothing will: the arbiter stops (raises)."""
