"""The worker pool: every generation's processes, from spawn to reap.

The pool turns what the operating system and the workers' channels say
(a status line, an exit, a missed deadline) into worker states, keeps the
serving generation at its size, and tells its listener, the deployer, what
changed. It calls the listener only from those events, never from a method
the deployer called, so a deployment never sees itself re-entered.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from logging import Logger
from typing import Any, Protocol

from beamdeploy_asgi.arbiter.generation import (
    Generation,
    GenerationState,
    WorkerProcess,
    WorkerState,
)
from beamdeploy_asgi.arbiter.spawn import owner_problem, spawn_worker
from beamdeploy_asgi.lines import LineTooLong, parse_object
from beamdeploy_asgi.protocol import (
    DEPLOY_VERSION,
    HOT_RELOAD_VERSION,
    PROTOCOL_VERSION,
    RESPONSE_CLASSES,
    Command,
    Event,
    mismatch,
)
from beamdeploy_asgi.releases.release import Release

STOP_TIMEOUT = 5.0  # a worker told to stop before it served gets this long
ABORT_GRACE = 2.0  # a worker sent SIGABRT for a missed heartbeat gets this long to exit
KILL_MARGIN = 2.0  # past graceful_timeout, a draining worker is killed
STABLE_AFTER = 10.0  # a worker serving this long ends a crash streak
MAX_BACKOFF = 30.0
MAX_PATH = 4096
MAX_COUNT = 2**53  # a count past this is no count a worker made (JSON's exact integers)
PRIVATE_BACKLOG = 128  # the private listener takes smoke checks, not traffic


def backoff(streak: int) -> float:
    """Respawn at once after a first crash, then back off exponentially."""
    if streak <= 1:
        return 0.0
    return min(0.5 * 2 ** (streak - 2), MAX_BACKOFF)


class PoolListener(Protocol):
    """What the pool reports about its generations' workers."""

    def worker_changed(self, generation: Generation) -> None:
        """A worker became ready or serving, stopped accepting, or exited.

        Also, for any generation, the serving one included: a worker paused
        or resumed.
        """

    def worker_imported(self, generation: Generation) -> None:
        """A worker imported the app, from inside its release."""

    def worker_failed(self, generation: Generation, cause: str, phase: str) -> None:
        """A worker of a generation that was never promoted could not boot.

        `phase` is where: ``import`` for the app's import, else ``boot``.
        """

    def generation_ended(self, generation: Generation) -> None:
        """The last worker of a draining or failed generation exited."""

    def worker_reloaded(self, generation: Generation, pid: int, answer: dict[str, Any]) -> None:
        """A worker answered a hot reload step."""

    def worker_exited(self, generation: Generation, pid: int) -> None:
        """A worker of any generation exited."""

    def worker_responses(self, generation: Generation) -> None:
        """A worker of any generation reported its response counts."""


@dataclass
class SpawnContext:
    """What every worker is started with, besides its generation."""

    cfg: Any
    argv: list[str]
    cwd: str
    listeners: list[socket.socket]
    control_path: str
    admin: bool


class WorkerPool:
    def __init__(
        self,
        *,
        context: SpawnContext,
        selector: selectors.BaseSelector,
        log: Logger,
        hooks_arg: Any,
        on_admin_request: Callable[[WorkerProcess, dict[str, Any]], None],
        size: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`hooks_arg` is what gunicorn's server hooks get as their first argument."""
        self.context = context
        self.cfg = context.cfg
        self.selector = selector
        self.log = log
        self.hooks_arg = hooks_arg
        self.on_admin_request = on_admin_request
        self.size = size
        self.clock = clock
        self.listener: PoolListener | None = None
        self.generations: list[Generation] = []
        self.serving: Generation | None = None
        self.stopping = False
        self.hold_spawns = False  # during a hot reload: no worker of the old code starts
        self.counter = 0
        self.worker_age = 0
        # Since the arbiter started, for metrics: worker_restarts, worker_boot_failures,
        # heartbeat_timeouts.
        self.events: dict[str, int] = {}
        self.host_command: dict[str, Any] | None = None  # the drain mark: see host_state.py

    # -- what the deployer asks ---------------------------------------------

    def create(self, release: Release) -> Generation:
        self.counter += 1
        generation = Generation(self.counter, release, self.size)
        self.generations.append(generation)
        return generation

    def start(self, generation: Generation) -> str | None:
        """Spawn every worker of a new generation; the cause if one could not start."""
        return self.grow(generation, generation.size)

    def grow(self, generation: Generation, count: int) -> str | None:
        """Spawn `count` more workers of a generation; the cause if one could not start."""
        for _ in range(count):
            if self.spawn(generation) is None:
                return generation.failure
        return None

    def shrink(self, generation: Generation, count: int) -> None:
        """Drain `count` serving workers, the oldest first; the generation stays smaller."""
        generation.size = max(generation.size - count, 0)
        # The oldest first, but last those answering an admin request that waits
        # for the deployment's end: draining, they would hold it open.
        serving = generation.in_state(WorkerState.SERVING)
        for worker in sorted(serving, key=lambda w: (w.open_requests > 0, w.age))[:count]:
            self.retire(worker)

    def restore(self, generation: Generation, size: int) -> None:
        """Give the serving generation back its size; manage() starts what is missing."""
        generation.size = size

    def count(self, generation: Generation, state: WorkerState) -> int:
        return len(generation.in_state(state))

    def live(self, generation: Generation) -> int:
        return len(generation.workers)

    def still_accepting(self, generation: Generation) -> int:
        return sum(
            1
            for w in generation.workers.values()
            if not w.stopped_accepting and w.state is not WorkerState.STOPPING
        )

    def serve(self, generation: Generation) -> None:
        """Tell every ready worker to start accepting."""
        for worker in generation.in_state(WorkerState.READY):
            worker.send({"cmd": Command.SERVE})

    def open_private(self, generation: Generation) -> str:
        """A loopback listener the generation's workers serve from READY on; its URL.

        A smoke check reaches the new generation there before any user
        request does. Call it before `start`: workers get it at spawn.
        """
        if generation.workers:
            raise RuntimeError(f"{generation} has workers already; open its listener first")
        if generation.private_listener is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", 0))
                sock.listen(PRIVATE_BACKLOG)
            except OSError:
                sock.close()
                raise
            generation.private_listener = sock
        host, port = generation.private_listener.getsockname()[:2]
        return f"http://{host}:{port}"

    def close_private(self, generation: Generation) -> None:
        """Close the arbiter's end: workers still running keep serving their copy."""
        if generation.private_listener is not None:
            generation.private_listener.close()
            generation.private_listener = None

    def pause(self, generation: Generation) -> None:
        """Tell every serving worker to stop accepting, and to stay booted."""
        for worker in generation.in_state(WorkerState.SERVING):
            worker.send({"cmd": Command.PAUSE})

    def resume(self, generation: Generation) -> None:
        """Tell every serving worker to accept again."""
        for worker in generation.in_state(WorkerState.SERVING):
            worker.send({"cmd": Command.RESUME})

    def can_pause(self, generation: Generation) -> bool:
        """Whether every serving worker's beamdeploy-asgi knows how to wait paused."""
        serving = generation.in_state(WorkerState.SERVING)
        return bool(serving) and all(w.deploy >= DEPLOY_VERSION for w in serving)

    def paused(self, generation: Generation) -> int:
        """How many of its workers said they paused (and did not resume since)."""
        return sum(1 for w in generation.workers.values() if w.paused)

    def responses(self, generation: Generation) -> dict[str, int]:
        """Its responses by status class: live workers' last counts plus exited ones'."""
        total = dict.fromkeys(RESPONSE_CLASSES, 0)
        live = [w.responses for w in generation.workers.values()]
        for counts in [generation.exited_responses, *live]:
            for key, value in counts.items():
                total[key] += value
        return total

    def promote(self, generation: Generation) -> Generation | None:
        """Make `generation` the serving one; returns the one it replaces."""
        old = self.serving
        generation.state = GenerationState.SERVING
        generation.promoted_at = time.time()
        self.serving = generation
        return old

    def drain(self, generation: Generation) -> None:
        generation.state = GenerationState.DRAINING
        generation.drain_started_at = time.time()
        for worker in list(generation.workers.values()):
            self.retire(worker)
        if not generation.workers:
            self._end(generation)

    def stop(self, generation: Generation, cause: str, keep_serving: bool = False) -> None:
        """A generation that will never be promoted: stop every worker it has.

        Those that already serve (a stopped rollout's) drain, as any serving
        worker does; with `keep_serving` they stay, for `shrink` to take out
        one by one as the old generation serves again.
        """
        generation.state = GenerationState.FAILED
        generation.failure = cause
        self.close_private(generation)
        for worker in list(generation.workers.values()):
            if not (keep_serving and worker.state is WorkerState.SERVING):
                self.retire(worker)
        if not generation.workers:
            self._end(generation)

    # -- what a hot reload asks ------------------------------------------------

    def reload_members(self, generation: Generation) -> tuple[set[int], str | None]:
        """The workers that take part, or why the reload cannot start."""
        workers = list(generation.workers.values())
        if not workers:
            return set(), f"{generation} has no worker"
        for worker in workers:
            if worker.state is not WorkerState.SERVING:
                return set(), (
                    f"worker {worker.pid} of {generation} is {worker.state.value}, not "
                    "serving; try again once every worker serves"
                )
            if worker.hot_reload < HOT_RELOAD_VERSION:
                return set(), (
                    f"worker {worker.pid} runs a beamdeploy-asgi that cannot hot-reload; "
                    "deploy this release with `beamdeploy upgrade`"
                )
        return {w.pid for w in workers}, None

    def send_reload(self, generation: Generation, pids: set[int], message: dict[str, Any]) -> None:
        for pid in pids:
            worker = generation.workers.get(pid)
            if worker is not None:
                worker.send({"cmd": Command.RELOAD, **message})

    def switch_release(self, generation: Generation, release: Release) -> None:
        """After a hot reload the generation runs `release`; replacements start from it.

        Its workers still run the interpreter, and the modules that did not
        change, of the release they started from: that one stays in use.
        """
        if generation.release.path:
            generation.ran.append(generation.release.path)
        generation.release = release

    def retire_pids(self, generation: Generation, pids: set[int]) -> None:
        for pid in pids:
            worker = generation.workers.get(pid)
            if worker is not None:
                self.log.error("%s: worker %s did not answer; replacing it", generation, pid)
                self.retire(worker)

    def releases_in_use(self) -> set[str]:
        paths = {g.release.path for g in self.generations if g.release.path}
        return paths.union(*(g.ran for g in self.generations))

    # -- the serving generation's size ----------------------------------------

    def resize(self, size: int) -> None:
        self.size = size
        if self.serving is not None:
            self.serving.size = size
        self.manage()

    def manage(self) -> None:
        """Keep the serving generation at its size, with back-off after crashes."""
        generation = self.serving
        if generation is None or self.stopping or self.hold_spawns:
            return
        active = generation.in_state(WorkerState.BOOTING, WorkerState.READY, WorkerState.SERVING)
        missing = generation.size - len(active)
        if missing > 0 and self.clock() >= generation.respawn_at:
            for _ in range(missing):
                self.spawn(generation)
        elif missing < 0:
            for worker in sorted(active, key=lambda w: w.age)[:-missing]:
                self.retire(worker)

    # -- processes ------------------------------------------------------------

    def workers(self) -> list[WorkerProcess]:
        return [w for g in self.generations for w in g.workers.values()]

    def tell_host_state(self, command: dict[str, Any]) -> None:
        """Every worker gets the host's state now; each one started later, first thing."""
        self.host_command = command
        for worker in self.workers():
            worker.send(command)

    def spawn(self, generation: Generation) -> WorkerProcess | None:
        self.worker_age += 1
        self.cfg.pre_fork(self.hooks_arg, types.SimpleNamespace(age=self.worker_age, pid=None))
        context = self.context
        try:
            worker = spawn_worker(
                generation=generation,
                age=self.worker_age,
                cfg=context.cfg,
                argv=context.argv,
                cwd=context.cwd,
                listeners=context.listeners,
                control_path=context.control_path,
                admin=context.admin,
            )
        except OSError as exc:
            python = generation.release.python
            cause = f"could not start {python}: {owner_problem(exc, self.cfg, python, context.cwd)}"
            self.log.error("%s: %s", generation, cause)
            generation.failure = cause
            if generation is self.serving:
                self._count_crash(generation, stable=False)
            return None
        worker.started = self.clock()
        generation.workers[worker.pid] = worker
        self.selector.register(worker.channel, selectors.EVENT_READ, worker)
        worker.selector = self.selector
        if self.host_command is not None:
            worker.send(self.host_command)  # before READY: health answers right from the start
        self.log.info("%s: started worker %s", generation, worker.pid)
        return worker

    def retire(self, worker: WorkerProcess) -> None:
        """Take a worker out of service: a serving one drains, one that never served stops."""
        if worker.state is WorkerState.SERVING:
            self._begin_drain(worker)
        elif worker.state not in (WorkerState.DRAINING, WorkerState.STOPPING):
            self._stop_unserved(worker)

    def signal_all(self, sig: int) -> None:
        for worker in self.workers():
            self._signal(worker, sig)

    def _stop_unserved(self, worker: WorkerProcess) -> None:
        worker.state = WorkerState.STOPPING
        worker.deadline = self.clock() + STOP_TIMEOUT
        self._signal(worker, signal.SIGTERM)

    def _begin_drain(self, worker: WorkerProcess, signal_it: bool = True) -> None:
        worker.state = WorkerState.DRAINING
        limit = self.clock() + self.cfg.graceful_timeout + KILL_MARGIN
        # An aborted worker keeps its earlier deadline.
        worker.deadline = min(limit, worker.deadline or limit)
        if signal_it:
            self._signal(worker, signal.SIGTERM)

    def _signal(self, worker: WorkerProcess, sig: int) -> None:
        if worker.proc.returncode is not None:
            return  # reaped: the pid may belong to another process by now
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, sig)

    # -- events: the status channel ---------------------------------------------

    def read(self, worker: WorkerProcess) -> None:
        """The worker's channel is readable: take in every whole line."""
        try:
            chunk = worker.channel.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(worker.channel)
            return
        try:
            lines = worker.reader.feed(chunk)
        except LineTooLong as exc:
            self.reject(worker, f"worker {worker.pid} sent {exc} on its status channel")
            return
        for line in lines:
            message = parse_object(line)
            if message is None:
                self.reject(
                    worker, f"worker {worker.pid} sent a status line that is not a JSON object"
                )
                return
            self._on_message(worker, message)

    def reject(self, worker: WorkerProcess, cause: str) -> None:
        """A worker broke the channel protocol: stop reading it and stop it."""
        self.log.error("%s: %s; stopping it", worker.generation, cause)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(worker.channel)
        worker.failure = cause
        unpromoted = worker.generation.state is GenerationState.BOOTING
        if unpromoted or worker.state in (WorkerState.BOOTING, WorkerState.READY):
            self._failed(worker, cause, "boot")
        elif worker.state is WorkerState.SERVING:
            self._begin_drain(worker)

    def _on_message(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        event = message.get("event")
        generation = worker.generation
        if event == Event.IMPORTED and worker.state is WorkerState.BOOTING:
            if generation is not self.serving and self.listener is not None:
                self.listener.worker_imported(generation)
        elif event == Event.READY and worker.state is WorkerState.BOOTING:
            protocol = message.get("protocol", PROTOCOL_VERSION)  # older workers do not say
            if protocol != PROTOCOL_VERSION:
                self.reject(worker, mismatch(protocol, f"worker {worker.pid}"))
                return
            worker.state = WorkerState.READY
            self._note_app_file(worker, message)
            capability = message.get("hot_reload")
            if isinstance(capability, int) and not isinstance(capability, bool):
                worker.hot_reload = capability
            capability = message.get("deploy")
            if isinstance(capability, int) and not isinstance(capability, bool):
                worker.deploy = capability
            self.log.info("%s: worker %s is ready", generation, worker.pid)
            if generation is self.serving:
                worker.send({"cmd": Command.SERVE})  # a replacement: it serves at once
            else:
                self._changed(generation)
        elif event == Event.SERVING and worker.state is WorkerState.READY:
            worker.state = WorkerState.SERVING
            worker.serving_since = self.clock()
            self._changed(generation)
        elif event == Event.DRAINING:
            worker.stopped_accepting = True
            if generation.state is GenerationState.BOOTING and worker.state is WorkerState.SERVING:
                # A rolling upgrade's worker, at its max requests: the rollout replaces it.
                self.log.info("%s: worker %s drains on its own", generation, worker.pid)
                self._begin_drain(worker, signal_it=False)
            elif generation.state is GenerationState.BOOTING:
                cause = f"worker {worker.pid} stopped before its generation was promoted"
                worker.failure = cause
                self._begin_drain(worker, signal_it=False)
                self._failed(worker, cause, "boot")
            elif worker.state is WorkerState.SERVING:
                # Max requests or a lost arbiter: it drains on its own and
                # manage() replaces it; it only gets the drain deadline.
                self.log.info("%s: worker %s drains on its own", generation, worker.pid)
                self._begin_drain(worker, signal_it=False)
            self._changed(generation)
        elif event in (Event.PAUSED, Event.RESUMED):
            worker.paused = event == Event.PAUSED
            self._changed(generation)
        elif event == Event.RESPONSES:
            worker.responses = {**worker.responses, **valid_counts(message)}
            if self.listener is not None:
                self.listener.worker_responses(generation)
        elif event == Event.ADMIN:
            self.on_admin_request(worker, message)
        elif event == Event.RELOAD:
            self._note_app_file(worker, message)
            if self.listener is not None:
                self.listener.worker_reloaded(generation, worker.pid, message)
        elif event == Event.FAILED:
            cause = str(message.get("error") or "worker failed")
            phase = "import" if message.get("phase") == "import" else "boot"
            self.log.error(
                "%s: worker %s failed to boot (%s): %s",
                generation,
                worker.pid,
                str(message.get("phase", "boot"))[:40],
                cause,
            )
            if message.get("traceback"):
                cause = f"{cause}\n{message['traceback']!s}"
            worker.failure = cause
            # It exits by itself after reporting; only hold it to a deadline.
            worker.state = WorkerState.STOPPING
            worker.deadline = self.clock() + STOP_TIMEOUT
            self._failed(worker, cause, phase)

    def _note_app_file(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        app_file = message.get("app_file")
        if isinstance(app_file, str) and len(app_file) <= MAX_PATH:
            worker.app_file = app_file

    def _failed(self, worker: WorkerProcess, cause: str, phase: str) -> None:
        """A worker that never served failed: its generation's deployment decides."""
        generation = worker.generation
        self._count("worker_boot_failures")
        if worker.state in (WorkerState.BOOTING, WorkerState.READY):
            self._stop_unserved(worker)
        if generation.state is GenerationState.BOOTING and self.listener is not None:
            self.listener.worker_failed(generation, cause, phase)

    def _changed(self, generation: Generation) -> None:
        if self.listener is not None:
            self.listener.worker_changed(generation)

    # -- events: exits and deadlines --------------------------------------------

    def exited(self, pid: int, status: int) -> bool:
        """A reaped child; False if it is none of our workers."""
        for generation in self.generations:
            worker = generation.workers.get(pid)
            if worker is not None:
                worker.proc.returncode = os.waitstatus_to_exitcode(status)
                self._exited(worker, status)
                return True
        return False

    def _exited(self, worker: WorkerProcess, status: int) -> None:
        generation = worker.generation
        generation.workers.pop(worker.pid, None)
        for key, value in worker.responses.items():  # a crash keeps its 5xx in the tally
            generation.exited_responses[key] = generation.exited_responses.get(key, 0) + value
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(worker.channel)
        worker.close()
        how = exit_description(status)
        # While the arbiter stops, every exit is expected: Ctrl-C reaches the
        # workers too, and they may go before the arbiter has told them.
        expected = self.stopping or worker.state in (WorkerState.DRAINING, WorkerState.STOPPING)
        log = self.log.info if expected else self.log.error
        log("%s: worker %s %s (was %s)", generation, worker.pid, how, worker.state.value)
        self.cfg.child_exit(self.hooks_arg, worker)

        # Before its generation is promoted, any exit is a failed boot.
        unexpected = worker.state in (WorkerState.BOOTING, WorkerState.READY) or (
            worker.state is WorkerState.SERVING and generation.state is GenerationState.BOOTING
        )
        if unexpected and worker.state is not WorkerState.SERVING:
            self._count("worker_boot_failures")
        if (
            generation is self.serving
            and not self.stopping
            and (unexpected or worker.state is WorkerState.SERVING or worker.failure)
        ):
            self._count("worker_restarts")
            served = self.clock() - (worker.serving_since or self.clock())
            self._count_crash(generation, stable=served >= STABLE_AFTER)
        if unexpected and generation.state is GenerationState.BOOTING:
            cause = worker.failure or f"worker {worker.pid} {how} before it was ready"
            if self.listener is not None:
                self.listener.worker_failed(generation, cause, "boot")
        if self.listener is not None:
            self.listener.worker_exited(generation, worker.pid)
        if not generation.workers and generation.state in (
            GenerationState.DRAINING,
            GenerationState.FAILED,
        ):
            self._end(generation)
            if self.listener is not None:
                self.listener.generation_ended(generation)
        else:
            self._changed(generation)

    def _end(self, generation: Generation) -> None:
        self.close_private(generation)
        if generation.state is GenerationState.DRAINING:
            generation.state = GenerationState.STOPPED
            generation.stopped_at = time.time()
            took = generation.stopped_at - (generation.drain_started_at or generation.stopped_at)
            self.log.info("%s: drained in %.2fs", generation, took)
        if generation in self.generations:
            self.generations.remove(generation)

    def _count(self, event: str) -> None:
        self.events[event] = self.events.get(event, 0) + 1

    def _count_crash(self, generation: Generation, stable: bool) -> None:
        """A worker that served `STABLE_AFTER` seconds ends the crash streak."""
        generation.crashes += 1
        generation.crash_streak = 1 if stable else generation.crash_streak + 1
        delay = backoff(generation.crash_streak)
        generation.respawn_at = self.clock() + delay
        if delay:
            self.log.warning(
                "%s: %s crashes in a row, next worker in %.1fs",
                generation,
                generation.crash_streak,
                delay,
            )

    def check(self, heartbeat_timeout: float) -> None:
        """Deadlines: boot timeout while booting, heartbeat while serving, kill past a limit."""
        now = self.clock()
        boot_timeout = self.cfg.boot_timeout
        for worker in self.workers():
            if worker.deadline is not None and now > worker.deadline:
                self.log.warning(
                    "%s: worker %s still %s at its deadline, killing it",
                    worker.generation,
                    worker.pid,
                    "aborting" if worker.aborted else worker.state.value,
                )
                worker.deadline = None
                self._signal(worker, signal.SIGKILL)
            elif self._booting(worker):
                if now - worker.started > boot_timeout:
                    cause = (
                        f"worker {worker.pid} did not report READY within "
                        f"{boot_timeout:g}s (boot timeout)"
                    )
                    self.log.error("%s: %s", worker.generation, cause)
                    worker.failure = cause
                    self._failed(worker, cause, "boot")
            elif worker.state is WorkerState.SERVING and heartbeat_timeout:
                self._check_heartbeat(worker, now, heartbeat_timeout)

    def _booting(self, worker: WorkerProcess) -> bool:
        """Held to the boot timeout: booting, or ready in a generation that serves.

        A ready worker of a new generation waits for its deployment (the
        checks before promotion may take longer than a boot), which has its
        own deadlines.
        """
        if worker.state is WorkerState.BOOTING:
            return True
        return worker.state is WorkerState.READY and worker.generation is self.serving

    def _check_heartbeat(self, worker: WorkerProcess, now: float, timeout: float) -> None:
        try:
            silent = time.monotonic() - worker.heartbeat.last_update()
        except (OSError, ValueError):
            return
        if silent > timeout and not worker.aborted:
            self.log.critical("WORKER TIMEOUT (pid:%s)", worker.pid)
            self._count("heartbeat_timeouts")
            worker.aborted = True
            worker.deadline = now + ABORT_GRACE
            self._signal(worker, signal.SIGABRT)

    def kill_overdue(self) -> None:
        """While stopping: kill every worker past its deadline."""
        now = self.clock()
        for worker in self.workers():
            if worker.deadline is not None and now > worker.deadline:
                worker.deadline = None
                self._signal(worker, signal.SIGKILL)


def valid_counts(message: dict[str, Any]) -> dict[str, int]:
    """The response counts of a RESPONSES line that are counts; the rest is ignored."""
    return {
        key: value
        for key in RESPONSE_CLASSES
        if isinstance(value := message.get(key), int)
        and not isinstance(value, bool)
        and 0 <= value < MAX_COUNT
    }


def exit_description(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"was killed by {name}"
    return f"exited with code {os.WEXITSTATUS(status)}"
