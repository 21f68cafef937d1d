"""A worker's part in a hot reload: hold requests, and run each step the arbiter sends.

The arbiter sends the same step to every worker of the serving generation
and goes on only when all of them answered yes, so the reload is applied
everywhere or nowhere. Requests that arrive while the code changes wait at
the gate (they are not refused); requests already running finish first.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

from beamdeploy_asgi.protocol import RELEASE_VERSION_ENV, Event, ReloadStep

if TYPE_CHECKING:
    from beamdeploy_asgi.reload.engine import Reload

MAX_MODULES = 10_000


class RequestGate:
    """In front of the app: counts HTTP requests in flight, and holds new ones when shut.

    A request counts as in flight until its response starts, so a long
    stream or a websocket never keeps a reload waiting. Requests under the
    admin prefix pass: the one asking for the reload is among them.
    """

    def __init__(self, app: Any, admin_prefix: str | None) -> None:
        self.app = app
        self.admin_prefix = (admin_prefix or "").rstrip("/") or None
        self.in_flight = 0
        self.opened = asyncio.Event()
        self.opened.set()
        self.idle = asyncio.Event()
        self.idle.set()
        self.held = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self._admin(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        if not self.opened.is_set():
            self.held += 1
            await self.opened.wait()
        self._enter()
        counted = True  # in flight: until its response starts, but not while it awaits its body
        started = False

        async def receiving() -> Any:
            # A client sending its body slowly would otherwise hold every
            # reload off; a handler waiting here runs no code.
            nonlocal counted
            if not counted:
                return await receive()
            counted = False
            self._leave()
            try:
                return await receive()
            finally:
                if not started:
                    counted = True
                    self._enter()

        async def watching(message: Any) -> None:
            nonlocal started, counted
            if not started and message["type"] == "http.response.start":
                started = True
                if counted:
                    counted = False
                    self._leave()
            await send(message)

        try:
            await self.app(scope, receiving, watching)
        finally:
            if counted:
                self._leave()

    def _admin(self, path: str) -> bool:
        prefix = self.admin_prefix
        return prefix is not None and (path == prefix or path.startswith(prefix + "/"))

    def _enter(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def _leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    async def shut(self, timeout: float) -> bool:
        """Hold new requests; True once none is in flight, False at `timeout`."""
        self.opened.clear()
        self.held = 0
        try:
            await asyncio.wait_for(self.idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def open(self) -> dict[str, Any]:
        """Let held requests go on; how many were held."""
        self.opened.set()
        return {"held": self.held, "in_flight": self.in_flight}


class ReloadSteps:
    """Runs each reload step the arbiter sends and answers it on the channel."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.reload: Reload | None = None
        self.reload_id: Any = None  # the reload the prepared code belongs to
        self.shut_at: float | None = None
        self.release_before: dict[str, Any] | None = None

    def on_command(self, command: dict[str, Any]) -> None:
        asyncio.ensure_future(self._run(command))

    async def _run(self, command: dict[str, Any]) -> None:
        step, reload_id = command.get("step"), command.get("id")
        try:
            answer = await self._step(step, command)
        except Exception as exc:  # anything a step raises is a no from this worker
            self.runtime.log.exception("%s: hot reload %s failed", self.runtime.name, step)
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        self.runtime.channel.send(Event.RELOAD, id=reload_id, step=step, **answer)

    async def _step(self, step: Any, command: dict[str, Any]) -> dict[str, Any]:
        if step == ReloadStep.PREPARE:
            return await self._prepare(command)
        if step == ReloadStep.SUSPEND:
            return await self._suspend(float(command.get("timeout", 3.0)))
        if step == ReloadStep.COMMIT:
            if command.get("id") != self.reload_id:
                return {"ok": False, "error": "nothing prepared for this reload"}
            return self._commit(command)
        if step == ReloadStep.RESUME:
            self.reload, self.release_before, self.reload_id = None, None, None  # done
            return self._resume()
        if step == ReloadStep.UNDO:
            return self._undo()
        if step == ReloadStep.ABORT:
            self.reload, self.reload_id = None, None  # a prepare still running is dropped
            self._resume()
            return {"ok": True}
        return {"ok": False, "error": f"unknown reload step {step!r}"}

    async def _prepare(self, command: dict[str, Any]) -> dict[str, Any]:
        from beamdeploy_asgi.reload.engine import ModuleFiles, Reload  # not at every boot

        modules = command.get("modules") or []
        if not isinstance(modules, list) or len(modules) > MAX_MODULES:
            return {"ok": False, "error": "malformed reload plan"}
        reload = Reload(
            [ModuleFiles.from_dict(m) for m in modules],
            [str(p) for p in command.get("old_paths") or []],
            [str(p) for p in command.get("new_paths") or []],
        )
        reload_id = self.reload_id = command.get("id")
        # Compiling and scanning take a while: off the loop, so requests go on.
        refusals = await asyncio.to_thread(reload.prepare)
        if self.reload_id != reload_id:
            return {"ok": False, "error": "this reload was aborted while it was prepared"}
        if refusals:
            return {"ok": False, "refusals": [str(r)[:1000] for r in refusals[:50]]}
        self.reload = reload
        patches = [
            {
                "module": p.module,
                "skipped": p.skipped,
                "function_objects": p.describe().get("function_objects", 0),
            }
            for p in reload.patches[:50]
        ]
        return {"ok": True, "patches": patches}

    async def _suspend(self, timeout: float) -> dict[str, Any]:
        gate = self.runtime.gate
        self.shut_at = time.perf_counter()
        if await gate.shut(timeout):
            return {"ok": True}
        return {
            "ok": False,
            "error": f"{gate.in_flight} requests still running after {timeout:g}s "
            "(--suspend-timeout)",
        }

    def _commit(self, command: dict[str, Any]) -> dict[str, Any]:
        """On the event loop thread: no request code runs while the code changes."""
        from beamdeploy_asgi.reload.engine import HookFailed

        reload = self.reload
        if reload is None:
            return {"ok": False, "error": "nothing prepared"}
        started = time.perf_counter()
        reload.commit()
        try:
            hooks = reload.run_hooks(
                str(command.get("old_version")), str(command.get("new_version"))
            )
        except HookFailed as exc:
            return {"ok": False, "error": str(exc)}
        release = command.get("release")
        if isinstance(release, dict):
            self.release_before = self.runtime.release
            self.runtime.set_release(release)
            os.environ[RELEASE_VERSION_ENV] = str(release.get("version"))
        return {
            "ok": True,
            "hooks": hooks,
            "commit_seconds": round(time.perf_counter() - started, 6),
            "app_file": self.runtime.app_file,
        }

    def _resume(self) -> dict[str, Any]:
        held = self.runtime.gate.open()
        hold = time.perf_counter() - self.shut_at if self.shut_at is not None else 0.0
        self.shut_at = None
        return {"ok": True, **held, "held_for": round(hold, 6)}

    def _undo(self) -> dict[str, Any]:
        """Put the old code back; the gate opens whatever happens."""
        try:
            if self.reload is not None and self.reload.committed:
                self.reload.undo()
            if self.release_before is not None:
                self.runtime.set_release(self.release_before)
                os.environ[RELEASE_VERSION_ENV] = str(self.release_before.get("version"))
                self.release_before = None
        finally:
            self.reload, self.reload_id = None, None
            answer = self._resume()
        return answer
