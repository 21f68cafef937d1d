"""The arbiter: gunicorn's master, taught to run generations.

It keeps gunicorn's configuration, logging, hooks, pidfile and signals, but
replaces the worker bookkeeping: workers belong to generations, each new
generation is booted beside the serving one, promoted only when every worker
reported READY, and the old one is drained. The loop is a selector over the
signal wake-up pipe, the control socket and every worker's status channel, so
nothing a deployment does ever blocks reaping or heartbeat checks.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import selectors
import signal
import stat
import subprocess
import sys
import time
import types
from collections import deque
from typing import Any

from gunicorn import __version__ as gunicorn_version
from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer
from gunicorn.pidfile import Pidfile

from beamdeploy_asgi.arbiter.control_server import ControlConnection, ControlServer
from beamdeploy_asgi.arbiter.deployment import Deployment
from beamdeploy_asgi.arbiter.deployments import Deployments
from beamdeploy_asgi.arbiter.generation import (
    Generation,
    GenerationState,
    WorkerProcess,
    WorkerState,
)
from beamdeploy_asgi.arbiter.listeners import (
    ListenError,
    bind_listeners,
    close_listeners,
    describe,
)
from beamdeploy_asgi.arbiter.requests import ControlRequests
from beamdeploy_asgi.arbiter.spawn import owner_problem, spawn_worker, worker_owner
from beamdeploy_asgi.arbiter.tasks import Task
from beamdeploy_asgi.arbiter.worker_requests import WorkerConnection, parse_request, token_matches
from beamdeploy_asgi.control import ControlClient, socket_path
from beamdeploy_asgi.errors import ControlError
from beamdeploy_asgi.lines import LineTooLong, parse_object
from beamdeploy_asgi.protocol import (
    PROTOCOL_VERSION,
    TOKEN_ENV,
    Command,
    Event,
    mismatch,
    simple_request,
)
from beamdeploy_asgi.releases.confine import PathNotAllowed, confined
from beamdeploy_asgi.releases.release import Release
from beamdeploy_asgi.releases.store import ReleaseStore
from beamdeploy_asgi.settings import admin_token, state_dir
from beamdeploy_asgi.version import __version__

STOP_TIMEOUT = 5.0  # a worker told to stop before it served gets this long
ABORT_GRACE = 2.0  # a worker sent SIGABRT for a missed heartbeat gets this long to exit
KILL_MARGIN = 2.0  # past graceful_timeout, a draining worker is killed
STABLE_AFTER = 10.0  # a worker serving this long ends a crash streak
MAX_BACKOFF = 30.0
KEPT_DEPLOYMENTS = 50
MAX_PATH = 4096


def backoff(streak: int) -> float:
    """Respawn at once after a first crash, then back off exponentially."""
    if streak <= 1:
        return 0.0
    return min(0.5 * 2 ** (streak - 2), MAX_BACKOFF)


class BeamArbiter(Deployments, ControlRequests, Arbiter):
    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.selector = selectors.DefaultSelector()
        self.generations: list[Generation] = []
        self.serving: Generation | None = None
        self.deployment: Deployment | None = None
        self.deployments: deque[Deployment] = deque(maxlen=KEPT_DEPLOYMENTS)
        self.generation_counter = 0
        self.stopping = False
        self.control: ControlServer | None = None
        self.started_at = time.time()
        self.state_dir = state_dir(self.cfg)
        self.control_path = socket_path(self.state_dir)
        self.store = ReleaseStore(self.state_dir)
        self.past = self.store.history()
        self.tasks: dict[int, Task] = {}
        self.previous_release: str | None = None
        self._wakeup_r = self._wakeup_w = -1
        # Read once and kept here alone: no child process inherits it.
        self.admin_token = admin_token(self.cfg)
        os.environ.pop(TOKEN_ENV, None)

    # -- start and stop -------------------------------------------------

    def start(self) -> None:
        self.log.info("Starting beamdeploy-asgi %s (gunicorn %s)", __version__, gunicorn_version)
        self.pid = os.getpid()
        if self.cfg.pidfile is not None:
            self.pidfile = Pidfile(self.cfg.pidfile)
            self.pidfile.create(self.pid)
        self.cfg.on_starting(self)
        self.init_signals()
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        self.selector.register(self._wakeup_r, selectors.EVENT_READ, None)
        try:
            self.LISTENERS = bind_listeners(self.cfg, self.log)
        except ListenError as exc:
            raise HaltServer(str(exc), 1) from None
        self.log.info(
            "Listening at: %s (%s)", ",".join(describe(s) for s in self.LISTENERS), self.pid
        )
        self._open_control()
        self.cfg.when_ready(self)

    def _prepare_state_dir(self) -> None:
        """Create STATE_DIR, or take it back to the modes it must have."""
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        info = os.stat(self.state_dir)
        if info.st_uid != os.geteuid():
            raise HaltServer(
                f"the state dir {self.state_dir} belongs to uid {info.st_uid}; it must "
                f"belong to the arbiter's user (uid {os.geteuid()})",
                1,
            )
        workers_elsewhere = self.cfg.uid != os.geteuid()
        os.makedirs(self.store.releases_dir, mode=0o700, exist_ok=True)
        wanted = {
            self.state_dir: 0o711 if workers_elsewhere else 0o700,  # workers reach uploads only
            # The workers' user enters it to build a venv and run its release.
            str(self.store.releases_dir): 0o711 if workers_elsewhere else 0o700,
            str(self.store.history_file): 0o600,
        }
        for path, mode in wanted.items():
            try:
                current = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(current.st_mode) or current.st_uid != os.geteuid():
                raise HaltServer(f"{path} must be the arbiter user's own, not a link", 1)
            if stat.S_IMODE(current.st_mode) != mode:
                self.log.warning(
                    "%s was mode %o; tightened to %o", path, stat.S_IMODE(current.st_mode), mode
                )
                os.chmod(path, mode)
        if workers_elsewhere:
            self._check_parents()
        if workers_elsewhere and not self._workers_can_enter(str(self.store.releases_dir)):
            raise HaltServer(
                f"the workers' user (uid {self.cfg.uid}) cannot enter {self.store.releases_dir}, "
                "where releases are built and run as that user: let it traverse every parent "
                "directory of the state dir (o+x), or choose a --state-dir it can reach",
                1,
            )

    def _check_parents(self) -> None:
        """No one but us may rename the state dir or a directory above it.

        Otherwise the workers' user could swap in a directory of its own,
        whose links the arbiter would then follow.
        """
        path = os.path.dirname(self.state_dir)
        while True:
            info = os.lstat(path)
            writable_by_others = info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX
            if info.st_uid not in (0, os.geteuid()) or writable_by_others:
                raise HaltServer(
                    f"{path}, above the state dir, belongs to uid {info.st_uid} with mode "
                    f"{stat.S_IMODE(info.st_mode):o}: with --user, every directory above the "
                    "state dir must belong to root and be writable by no one else",
                    1,
                )
            if path == os.path.dirname(path):
                return
            path = os.path.dirname(path)

    def _workers_can_enter(self, path: str) -> bool:
        try:
            done = subprocess.run(
                ["test", "-x", path],
                stdin=subprocess.DEVNULL,
                timeout=10,
                cwd="/",
                **worker_owner(self.cfg),
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0

    def _clear_stale_uploads(self) -> None:
        """Uploads left by a previous run: nothing installs them any more."""
        try:
            entries = list(os.scandir(self.store.uploads_dir))
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                self.log.info("removing stale upload %s", entry.path)
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)

    def _close_interrupted(self) -> None:
        """Deployments a previous arbiter started and never ended are marked so."""
        for record in self.past:
            if record.get("outcome") is not None:
                continue
            record.update(
                outcome="interrupted",
                error="the arbiter stopped before this deployment ended",
            )
            self.log.warning("deployment %s was interrupted by the arbiter's end", record["id"])
            try:
                self.store.append_history(record)
            except OSError as exc:
                self.log.error("cannot write %s: %s", self.store.history_file, exc)

    def _open_control(self) -> None:
        self._prepare_state_dir()
        if os.path.exists(self.control_path):
            try:
                ControlClient(self.control_path, timeout=2).request(simple_request("ping"))
            except ControlError as exc:
                if exc.code != "not_running":
                    raise HaltServer(f"cannot use {self.control_path}: {exc.detail}", 1) from None
                os.unlink(self.control_path)
            else:
                raise HaltServer(
                    f"another beamdeploy arbiter already runs with state dir {self.state_dir}", 1
                )
        owner = self.cfg.uid if self.cfg.uid != os.geteuid() else None
        # Workers write uploaded artifacts here, as their own user.
        os.makedirs(self.store.uploads_dir, mode=0o700, exist_ok=True)
        self._clear_stale_uploads()
        if owner is not None:
            if os.path.islink(self.store.uploads_dir):
                raise HaltServer(f"{self.store.uploads_dir} must be a directory, not a link", 1)
            os.chown(self.store.uploads_dir, owner, -1, follow_symlinks=False)
        try:
            # The arbiter's user's alone: workers forward admin requests over
            # their own channel, where the arbiter checks the token.
            self.control = ControlServer(
                self.control_path, self.selector, self.handle_control, self.log
            )
        except OSError as exc:
            raise HaltServer(f"cannot listen on {self.control_path}: {exc}", 1) from None
        self.log.info("Control socket: %s", self.control_path)
        self._close_interrupted()

    def run(self) -> None:
        try:
            self.start()
            first = self.app.release
            if isinstance(first, Release):
                self.start_deployment("boot", release=first)
            else:
                self.start_deployment("boot", artifact=str(first))
            while True:
                self.loop_once()
        except (StopIteration, KeyboardInterrupt):
            self.halt()
        except HaltServer as inst:
            self.halt(reason=inst.reason, exit_status=inst.exit_status)
        except SystemExit:
            raise
        except Exception:
            self.log.error("Unhandled exception in main loop", exc_info=True)
            self.stop(False)
            if self.pidfile is not None:
                self.pidfile.unlink()
            sys.exit(-1)

    def halt(self, reason: str | None = None, exit_status: int = 0) -> None:
        self.stop()
        log = self.log.info if exit_status == 0 else self.log.error
        log("Shutting down: %s", self.master_name)
        if reason is not None:
            log("Reason: %s", reason)
        if self.pidfile is not None:
            self.pidfile.unlink()
        self.cfg.on_exit(self)
        sys.exit(exit_status)

    def stop(self, graceful: bool = True) -> None:
        """Drain (or quickly stop) every generation, then release the sockets."""
        self.stopping = True
        for task in self.tasks.values():
            task.kill()
        if self.deployment is not None and not self.deployment.ended:
            if self.deployment.target is not None:
                self.deployment.target.state = GenerationState.FAILED
            self.deployment.finish("failed", "arbiter stopping", "the arbiter is shutting down")
            self._remember(self.deployment)
        self.deployment = None
        limit = time.monotonic() + (self.cfg.graceful_timeout + KILL_MARGIN if graceful else 2.0)
        for worker in self.all_workers():
            if graceful:
                self.retire(worker)
            else:
                self._signal(worker, signal.SIGQUIT)
        while self.all_workers() and time.monotonic() < limit:
            try:
                pending = self.SIG_QUEUE.get_nowait()
            except queue.Empty:
                pending = None
            if pending in (signal.SIGINT, signal.SIGQUIT) and graceful:
                self.log.info("Quick shutdown requested")
                graceful = False
                limit = min(limit, time.monotonic() + 2.0)
                for worker in self.all_workers():
                    self._signal(worker, signal.SIGQUIT)
            self.reap_workers()
            now = time.monotonic()
            for worker in self.all_workers():
                if worker.deadline is not None and now > worker.deadline:
                    worker.deadline = None
                    self._signal(worker, signal.SIGKILL)
            time.sleep(0.05)
        for worker in self.all_workers():
            self._signal(worker, signal.SIGKILL)
        while self.all_workers():
            self.reap_workers()
            time.sleep(0.01)
        close_listeners(self.LISTENERS)
        self.LISTENERS = []
        if self.control is not None:
            self.control.close()
            self.control = None

    # -- the loop ---------------------------------------------------------

    def loop_once(self) -> None:
        busy = (
            self.deployment is not None
            or bool(self.tasks)
            or any(g.state is not GenerationState.SERVING for g in self.generations)
        )
        for key, mask in self.selector.select(0.1 if busy else 1.0):
            target = key.data
            if target is None:
                self._drain_wakeup_pipe()
            elif isinstance(target, WorkerProcess):
                if mask & selectors.EVENT_WRITE:
                    target.flush()
                if mask & selectors.EVENT_READ:
                    self.read_worker(target)
            elif isinstance(target, Task):
                target.on_readable()
            elif isinstance(target, ControlConnection):
                if target.closed:
                    continue
                if mask & selectors.EVENT_READ:
                    target.on_readable()
                if mask & selectors.EVENT_WRITE and not target.closed:
                    target.on_writable()
            else:
                target.on_readable()
        self.handle_signals()
        self.reap_workers()
        self.check_workers()
        self.manage_workers()

    def _drain_wakeup_pipe(self) -> None:
        try:
            while os.read(self._wakeup_r, 512):
                pass
        except BlockingIOError:
            pass

    def handle_signals(self) -> None:
        while True:
            try:
                sig = self.SIG_QUEUE.get_nowait()
            except queue.Empty:
                return
            name = self.SIG_NAMES.get(sig)
            handler = getattr(self, f"handle_{name}", None) if name else None
            if handler is None:
                continue
            if sig != signal.SIGCHLD:
                self.log.info("Handling signal: %s", name)
            handler()

    def handle_chld(self) -> None:
        self.reap_workers()

    handle_cld = handle_chld

    def handle_hup(self) -> None:
        """HUP restarts the serving release blue-green: new workers first, then drain."""
        if self.serving is None or self.deployment is not None:
            self.log.warning("HUP ignored: a deployment is in progress")
            return
        self.start_deployment("restart", release=self.serving.release)

    def handle_ttin(self) -> None:
        self.num_workers += 1
        if self.serving is not None:
            self.serving.size = self.num_workers
        self.manage_workers()

    def handle_ttou(self) -> None:
        if self.num_workers <= 1:
            return
        self.num_workers -= 1
        if self.serving is not None:
            self.serving.size = self.num_workers
        self.manage_workers()

    def handle_usr1(self) -> None:
        self.log.reopen_files()
        for worker in self.all_workers():
            self._signal(worker, signal.SIGUSR1)

    def handle_usr2(self) -> None:
        self.log.warning("USR2 ignored: beamdeploy swaps releases with `beamdeploy upgrade`")

    def handle_winch(self) -> None:
        self.log.debug("WINCH ignored")

    # -- workers ----------------------------------------------------------

    def all_workers(self) -> list[WorkerProcess]:
        return [w for g in self.generations for w in g.workers.values()]

    def spawn(self, generation: Generation) -> WorkerProcess | None:
        self.worker_age += 1
        self.cfg.pre_fork(self, types.SimpleNamespace(age=self.worker_age, pid=None))
        try:
            worker = spawn_worker(
                generation=generation,
                age=self.worker_age,
                cfg=self.cfg,
                argv=self.app.argv,
                cwd=self.app.launch_cwd,
                listeners=self.LISTENERS,
                control_path=self.control_path,
                admin=self.admin_token is not None,
            )
        except OSError as exc:
            problem = owner_problem(exc, self.cfg, generation.release.python, self.app.launch_cwd)
            cause = f"could not start {generation.release.python}: {problem}"
            self.log.error("%s: %s", generation, cause)
            if generation is self.serving:
                self._count_crash(generation, stable=False)
            self.worker_failed(generation, None, cause)
            return None
        generation.workers[worker.pid] = worker
        self.selector.register(worker.channel, selectors.EVENT_READ, worker)
        worker.selector = self.selector
        self.log.info("%s: started worker %s", generation, worker.pid)
        return worker

    def read_worker(self, worker: WorkerProcess) -> None:
        try:
            chunk = worker.channel.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.selector.unregister(worker.channel)
            return
        try:
            lines = worker.reader.feed(chunk)
        except LineTooLong as exc:
            self.reject_worker(worker, f"worker {worker.pid} sent {exc} on its status channel")
            return
        for line in lines:
            message = parse_object(line)
            if message is None:
                self.reject_worker(
                    worker, f"worker {worker.pid} sent a status line that is not a JSON object"
                )
                return
            self.on_worker_message(worker, message)

    def reject_worker(self, worker: WorkerProcess, cause: str) -> None:
        """A worker broke the channel protocol: stop reading it and stop it."""
        self.log.error("%s: %s; stopping it", worker.generation, cause)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(worker.channel)
        worker.failure = cause
        unpromoted = worker.generation.state is GenerationState.BOOTING
        if unpromoted or worker.state in (WorkerState.BOOTING, WorkerState.READY):
            self.worker_failed(worker.generation, worker, cause)
            if worker.state is not WorkerState.STOPPING:
                self._stop_unserved(worker)
        elif worker.state is WorkerState.SERVING:
            self._begin_drain(worker)

    def on_worker_message(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        event = message.get("event")
        generation = worker.generation
        if event == Event.READY and worker.state is WorkerState.BOOTING:
            protocol = message.get("protocol", PROTOCOL_VERSION)  # older workers do not say
            if protocol != PROTOCOL_VERSION:
                self.reject_worker(worker, mismatch(protocol, f"worker {worker.pid}"))
                return
            worker.state = WorkerState.READY
            app_file = message.get("app_file")
            if isinstance(app_file, str) and len(app_file) <= MAX_PATH:
                worker.app_file = app_file
            self.log.info("%s: worker %s is ready", generation, worker.pid)
            if generation is self.serving:
                worker.send({"cmd": Command.SERVE})
            elif self.deployment is not None and generation is self.deployment.target:
                self.deployment_progress()
        elif event == Event.SERVING and worker.state is WorkerState.READY:
            worker.state = WorkerState.SERVING
            worker.serving_since = time.monotonic()
            if self.deployment is not None and generation is self.deployment.target:
                self.deployment_progress()
        elif event == Event.DRAINING:
            if generation.state is GenerationState.BOOTING:
                # Stopping before its generation was promoted: it never will be.
                cause = f"worker {worker.pid} stopped before its generation was promoted"
                worker.failure = cause
                self._begin_drain(worker, signal_it=False)
                self.worker_failed(generation, worker, cause)
            elif worker.state is WorkerState.SERVING:
                # The worker drains on its own (max requests, lost arbiter):
                # give it the drain deadline and let manage_workers replace it.
                self.log.info("%s: worker %s drains on its own", generation, worker.pid)
                self._begin_drain(worker, signal_it=False)
            worker.stopped_accepting = True
            self.deployment_progress()
        elif event == Event.ADMIN:
            self.worker_request(worker, message)
        elif event == Event.FAILED:
            cause = str(message.get("error") or "worker failed")
            worker.failure = cause
            self.log.error(
                "%s: worker %s failed to boot (%s): %s",
                generation,
                worker.pid,
                message.get("phase", "boot"),
                cause,
            )
            if message.get("traceback"):
                worker.failure = f"{cause}\n{message['traceback']!s}"
            # It exits by itself after reporting; only hold it to a deadline.
            worker.state = WorkerState.STOPPING
            worker.deadline = time.monotonic() + STOP_TIMEOUT
            self.worker_failed(generation, worker, worker.failure)

    def worker_request(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        """An admin request a worker forwards; acted on only with the right token."""
        parsed = parse_request(message)
        if parsed is None:
            self.reject_worker(worker, f"worker {worker.pid} forwarded a malformed admin request")
            return
        request_id, request = parsed
        conn = WorkerConnection(worker, request_id)
        if self.admin_token is None:
            conn.fail("not_found", "the admin API is off: no admin token is set")
        elif not token_matches(message.get("token"), self.admin_token):
            self.log.warning(
                "admin: refused %r forwarded by worker %s (wrong token)",
                request["op"][:40],
                worker.pid,
            )
            conn.fail("unauthorized", "send the admin token as 'Authorization: Bearer <token>'")
        elif request["op"] == "auth":
            conn.reply({"ok": True})
        elif not self._confine(request, conn):
            return
        else:
            try:
                self.handle_control(request, conn)
            except Exception:
                self.log.exception("admin request %r failed", request["op"][:40])
                conn.fail("internal_error", "the arbiter failed to handle this request")

    def _confine(self, request: dict[str, Any], conn: WorkerConnection) -> bool:
        """An upgrade over HTTP deploys an upload, or a path inside --release-dir only."""
        release = request.get("release")
        if (
            request["op"] != "upgrade"
            or request.get("remove_after")
            or not isinstance(release, str)
        ):
            return True  # uploads are confined to the uploads dir by control_upgrade
        try:
            request["release"] = str(confined(release, self.cfg.release_dirs))
        except PathNotAllowed as exc:
            conn.fail(exc.code, str(exc))
            return False
        return True

    def worker_failed(
        self, generation: Generation, worker: WorkerProcess | None, cause: str
    ) -> None:
        """A worker of `generation` could not boot."""
        deployment = self.deployment
        if (
            deployment is not None
            and generation is deployment.target
            and generation.state is GenerationState.BOOTING
        ):
            self.abort_deployment(cause)
        elif worker is not None and worker.state in (WorkerState.BOOTING, WorkerState.READY):
            self._stop_unserved(worker)

    def retire(self, worker: WorkerProcess) -> None:
        """Take a worker out of service: a serving one drains, one that never served stops."""
        if worker.state is WorkerState.SERVING:
            self._begin_drain(worker)
        elif worker.state not in (WorkerState.DRAINING, WorkerState.STOPPING):
            self._stop_unserved(worker)

    def _stop_unserved(self, worker: WorkerProcess) -> None:
        worker.state = WorkerState.STOPPING
        worker.deadline = time.monotonic() + STOP_TIMEOUT
        self._signal(worker, signal.SIGTERM)

    def _begin_drain(self, worker: WorkerProcess, signal_it: bool = True) -> None:
        worker.state = WorkerState.DRAINING
        limit = time.monotonic() + self.cfg.graceful_timeout + KILL_MARGIN
        # An aborted worker keeps its earlier deadline.
        worker.deadline = min(limit, worker.deadline or limit)
        if signal_it:
            self._signal(worker, signal.SIGTERM)

    def _signal(self, worker: WorkerProcess, sig: int) -> None:
        try:
            os.kill(worker.pid, sig)
        except ProcessLookupError:
            pass

    def reap_workers(self) -> None:
        known = {w.pid: w for w in self.all_workers()}
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except OSError as exc:
                if exc.errno == errno.ECHILD:
                    return
                raise
            if not pid:
                return
            task = self.tasks.pop(pid, None)
            if task is not None:
                task.exited(status)
                continue
            worker = known.get(pid)
            if worker is None:
                self.log.debug("Reaped unknown child process %s", pid)
                continue
            worker.proc.returncode = os.waitstatus_to_exitcode(status)
            self.worker_exited(worker, status)

    def worker_exited(self, worker: WorkerProcess, status: int) -> None:
        generation = worker.generation
        generation.workers.pop(worker.pid, None)
        try:
            self.selector.unregister(worker.channel)
        except (KeyError, ValueError):
            pass
        worker.close()
        how = _exit_description(status)
        expected = worker.state in (WorkerState.DRAINING, WorkerState.STOPPING)
        log = self.log.info if expected else self.log.error
        log("%s: worker %s %s (was %s)", generation, worker.pid, how, worker.state.value)
        self.cfg.child_exit(self, worker)

        # Before its generation is promoted, any exit is a failed boot.
        unexpected = worker.state in (WorkerState.BOOTING, WorkerState.READY) or (
            worker.state is WorkerState.SERVING and generation.state is GenerationState.BOOTING
        )
        if generation is self.serving and (
            unexpected or worker.state is WorkerState.SERVING or worker.failure
        ):
            self._count_crash(generation, stable=worker.served_for() >= STABLE_AFTER)
        if unexpected:
            cause = worker.failure or f"worker {worker.pid} {how} before it was ready"
            self.worker_failed(generation, worker, cause)

        if not generation.workers:
            self.generation_emptied(generation)
        self.deployment_progress()

    def _count_crash(self, generation: Generation, stable: bool) -> None:
        """A worker that served `STABLE_AFTER` seconds ends the crash streak."""
        generation.crash_streak = 1 if stable else generation.crash_streak + 1
        delay = backoff(generation.crash_streak)
        generation.respawn_at = time.monotonic() + delay
        if delay:
            self.log.warning(
                "%s: %s crashes in a row, next worker in %.1fs",
                generation,
                generation.crash_streak,
                delay,
            )

    def generation_emptied(self, generation: Generation) -> None:
        if generation.state is GenerationState.DRAINING:
            generation.state = GenerationState.STOPPED
            generation.stopped_at = time.time()
            took = generation.stopped_at - (generation.drain_started_at or generation.stopped_at)
            self.log.info("%s: drained in %.2fs", generation, took)
            for deployment in self.deployments:
                if deployment.previous is generation and deployment.drained_at is None:
                    deployment.drained_at = generation.stopped_at
                    deployment.timings["drain"] = took
        if generation.state in (GenerationState.STOPPED, GenerationState.FAILED):
            if generation in self.generations:
                self.generations.remove(generation)
            if generation.stopped_at is not None:
                self.prune_store()  # its release may go now that nothing runs it

    def check_workers(self) -> None:
        """Deadlines: boot timeout while booting, heartbeat while serving, drain limit."""
        now = time.monotonic()
        for task in self.tasks.values():
            if now > task.deadline:
                self.log.error("%s did not finish in time, killing it", task.name)
                task.text.append(f"killed: {task.name} did not finish in time")
                task.deadline = float("inf")
                task.kill()
        for worker in self.all_workers():
            if worker.deadline is not None and now > worker.deadline:
                self.log.warning(
                    "%s: worker %s still %s at its deadline, killing it",
                    worker.generation,
                    worker.pid,
                    "aborting" if worker.aborted else worker.state.value,
                )
                worker.deadline = None
                self._signal(worker, signal.SIGKILL)
            elif worker.state in (WorkerState.BOOTING, WorkerState.READY):
                if now - worker.started > self.cfg.boot_timeout:
                    cause = (
                        f"worker {worker.pid} did not report READY within "
                        f"{self.cfg.boot_timeout:g}s (boot timeout)"
                    )
                    self.log.error("%s: %s", worker.generation, cause)
                    worker.failure = cause
                    self.worker_failed(worker.generation, worker, cause)
                    if worker.state is not WorkerState.STOPPING:
                        self._stop_unserved(worker)
            elif worker.state is WorkerState.SERVING:
                if not self.timeout:
                    continue
                try:
                    silent = now - worker.heartbeat.last_update()
                except (OSError, ValueError):
                    continue
                if silent <= self.timeout:
                    continue
                if not worker.aborted:
                    self.log.critical("WORKER TIMEOUT (pid:%s)", worker.pid)
                    worker.aborted = True
                    worker.deadline = now + ABORT_GRACE
                    self._signal(worker, signal.SIGABRT)

    def manage_workers(self) -> None:
        generation = self.serving
        if generation is None or self.stopping:
            return
        active = generation.in_state(WorkerState.BOOTING, WorkerState.READY, WorkerState.SERVING)
        missing = generation.size - len(active)
        if missing > 0 and time.monotonic() >= generation.respawn_at:
            for _ in range(missing):
                self.spawn(generation)
        elif missing < 0:
            for worker in sorted(active, key=lambda w: w.age)[:-missing]:
                self.retire(worker)


def _exit_description(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"was killed by {name}"
    return f"exited with code {os.WEXITSTATUS(status)}"
