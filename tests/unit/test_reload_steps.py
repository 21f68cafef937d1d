"""A worker's answers to the reload steps, with a stand-in runtime and channel."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from beamdeploy_asgi.reload import engine
from beamdeploy_asgi.worker.reloading import ReloadSteps, RequestGate


class Channel:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, event: Any, **fields: Any) -> None:
        self.sent.append({"event": str(event.value), **fields})


class Runtime:
    def __init__(self) -> None:
        self.name = "worker 1"
        self.log = logging.getLogger("test.reload_steps")
        self.channel = Channel()
        self.gate = RequestGate(None, None)
        self.release = {"name": "demo", "version": "1.0", "app": "main:app"}

    def set_release(self, release: dict[str, Any]) -> None:
        self.release = release


async def step(steps: ReloadSteps, runtime: Runtime, **command: Any) -> dict[str, Any]:
    """Send one command; its answer, once the worker gave it."""
    steps.on_command(command)
    while True:
        for answer in runtime.channel.sent:
            if (answer["id"], answer["step"]) == (command["id"], command["step"]):
                runtime.channel.sent.remove(answer)
                return answer
        await asyncio.sleep(0.001)


def test_a_prepare_aborted_while_it_runs_is_dropped_not_committed_later(monkeypatch):
    release_prepare = threading.Event()

    def slow_prepare(self: engine.Reload) -> list[Any]:
        release_prepare.wait(10)  # the new code's defaults run here, maybe for long
        return []

    monkeypatch.setattr(engine.Reload, "prepare", slow_prepare)

    async def test() -> None:
        runtime = Runtime()
        steps = ReloadSteps(runtime)
        prepared = asyncio.ensure_future(
            step(steps, runtime, id=1, step="prepare", modules=[], old_paths=[], new_paths=[])
        )
        await asyncio.sleep(0)
        aborted = await step(steps, runtime, id=1, step="abort")
        assert aborted["ok"] is True
        release_prepare.set()
        late = await prepared
        assert late == {
            "event": "reload",
            "id": 1,
            "step": "prepare",
            "ok": False,
            "error": "this reload was aborted while it was prepared",
        }
        assert steps.reload is None
        commit = await step(steps, runtime, id=2, step="commit", old_version="1", new_version="2")
        assert commit["ok"] is False and commit["error"] == "nothing prepared for this reload"

    asyncio.run(asyncio.wait_for(test(), 10))


def test_undo_opens_the_gate_even_when_undoing_fails():
    async def test() -> None:
        runtime = Runtime()
        steps = ReloadSteps(runtime)
        assert await runtime.gate.shut(1)

        class Broken:
            committed = True

            def undo(self) -> None:
                raise RuntimeError("cannot")

        steps.reload = Broken()  # type: ignore[assignment]
        answer = await step(steps, runtime, id=3, step="undo")
        assert answer["ok"] is False and "RuntimeError: cannot" in answer["error"]
        assert runtime.gate.opened.is_set(), "requests are not held for ever"

    asyncio.run(asyncio.wait_for(test(), 10))


@pytest.mark.parametrize("step_name", ["prepare", "commit"])
def test_steps_out_of_order_say_no(step_name):
    async def test() -> None:
        runtime = Runtime()
        answer = await step(ReloadSteps(runtime), runtime, id=9, step=step_name, modules="x")
        assert answer["ok"] is False

    asyncio.run(asyncio.wait_for(test(), 10))
