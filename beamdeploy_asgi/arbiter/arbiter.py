"""The arbiter: gunicorn's master, taught to run generations.

It keeps gunicorn's configuration, logging, hooks, pidfile and signals; what
it adds lives beside it: the worker pool (`pool.py`), the deployment state
machine (`deployer.py`), the release steps it runs (`release_steps.py`) and
the control requests (`requests.py`). This class is the glue: it starts
them, runs the loop (a selector over the signal wake-up pipe, the control
socket, every worker's status channel and every helper's output, so nothing
ever blocks reaping or heartbeat checks) and turns signals into actions.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import selectors
import signal
import sys
import time
from typing import Any

from gunicorn import __version__ as gunicorn_version
from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer
from gunicorn.pidfile import Pidfile

from beamdeploy_asgi.arbiter import state_dir as state_dir_setup
from beamdeploy_asgi.arbiter.control_server import ControlConnection, ControlServer, Replier
from beamdeploy_asgi.arbiter.deployer import Deployer
from beamdeploy_asgi.arbiter.deployment_hooks import DeploymentHooks
from beamdeploy_asgi.arbiter.generation import GenerationState, WorkerProcess
from beamdeploy_asgi.arbiter.handover import Handover
from beamdeploy_asgi.arbiter.host_state import HostState
from beamdeploy_asgi.arbiter.listeners import (
    ListenError,
    bind_listeners,
    close_listeners,
    describe,
)
from beamdeploy_asgi.arbiter.metrics_server import (
    MISSING,
    MetricsServer,
    MetricsUnavailable,
    load_metrics,
)
from beamdeploy_asgi.arbiter.pool import KILL_MARGIN, SpawnContext, WorkerPool
from beamdeploy_asgi.arbiter.reexec import Reexec, ReexecRefused
from beamdeploy_asgi.arbiter.reexec_spec import REEXEC_ENV, peek_spec, write_pidfile
from beamdeploy_asgi.arbiter.release_steps import ReleaseSteps
from beamdeploy_asgi.arbiter.requests import ControlRequests
from beamdeploy_asgi.arbiter.systemd_notify import ServiceNotifier
from beamdeploy_asgi.arbiter.tasks import Task, TaskRunner
from beamdeploy_asgi.arbiter.worker_requests import ForwardedRequests
from beamdeploy_asgi.control import ControlClient, socket_path
from beamdeploy_asgi.deploy_options import DeployOptions
from beamdeploy_asgi.errors import ControlError
from beamdeploy_asgi.protocol import TOKEN_ENV, simple_request
from beamdeploy_asgi.releases.release import Release
from beamdeploy_asgi.releases.store import ReleaseStore
from beamdeploy_asgi.settings import admin_token, state_dir
from beamdeploy_asgi.version import __version__


class BeamArbiter(Arbiter):
    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.selector = selectors.DefaultSelector()
        self.control: ControlServer | None = None
        self.started_at = time.time()
        self.state_dir = state_dir(self.cfg)
        self.control_path = socket_path(self.state_dir)
        self.store = ReleaseStore(self.state_dir)
        self._wakeup_r = self._wakeup_w = -1
        # Read once and kept here alone: no child process inherits it.
        token = admin_token(self.cfg)
        os.environ.pop(TOKEN_ENV, None)
        # Started by an arbiter's reexec: it hands over to this one (see handover.py).
        spec = peek_spec(os.environ)
        os.environ.pop(REEXEC_ENV, None)
        self.handover = Handover(spec, self.log) if spec is not None else None
        self.service = ServiceNotifier(  # systemd's $NOTIFY_SOCKET
            self.log,
            serving=lambda: self.pool.serving,
            silent=spec is not None,  # until it takes over
            parent=spec.parent if spec is not None else None,
        )

        self.tasks = TaskRunner(self.selector, self.log)
        self.hooks = DeploymentHooks(self.cfg, self.log, server=self, wake=self._wake)
        self.pool = WorkerPool(
            context=SpawnContext(
                cfg=self.cfg,
                argv=self.app.argv,
                cwd=self.app.launch_cwd,
                listeners=[],  # bound in start()
                control_path=self.control_path,
                admin=token is not None,
            ),
            selector=self.selector,
            log=self.log,
            hooks_arg=self,
            on_admin_request=ForwardedRequests(
                token=token,
                release_dirs=self.cfg.release_dirs,
                handle=self.handle_control,
                reject=lambda worker, cause: self.pool.reject(worker, cause),
                log=self.log,
                tokenless=frozenset({"metrics"} if self.cfg.metrics_allow else ()),
            ),
            size=self.num_workers,
        )
        steps = ReleaseSteps(
            cfg=self.cfg,
            store=self.store,
            tasks=self.tasks,
            hooks=self.hooks,
            cwd=self.app.launch_cwd,
            log=self.log,
            service=self.service,
        )
        self.deployer = Deployer(
            self.pool,
            steps,
            self.log,
            boot_timeout=self.cfg.boot_timeout,
            drain_timeout=self.cfg.graceful_timeout + KILL_MARGIN,
            defaults=default_options(self.cfg),
            smoke=bool(self.cfg.smoke_cmd),
            check_timeout=self.cfg.smoke_timeout + self.cfg.hook_timeout,
            past=self.store.history(),
        )
        if spec is not None:
            self.deployer.previous_release = spec.previous_release
        self.pool.listener = self.deployer
        self.reexec = Reexec(self, token=token, service=self.service)
        self.host = HostState(self.state_dir, self.log, self.pool.tell_host_state)
        self.requests = ControlRequests(
            deployer=self.deployer,
            pool=self.pool,
            store=self.store,
            keep_releases=self.cfg.keep_releases,
            describe_arbiter=self.describe,
            reexec=self.reexec,
            metrics=self.render_metrics,
            host=self.host,
        )
        self.metrics_server: MetricsServer | None = None
        try:
            self.metrics: Any = load_metrics(self)  # without prometheus-client: None
        except MetricsUnavailable:
            self.metrics = None
        else:
            steps.observers.append(self.metrics.deployment_recorded)

    def render_metrics(self) -> dict[str, Any]:
        """The `metrics` operation: the Prometheus exposition, rendered in the loop."""
        if self.metrics is None:
            raise ValueError(MISSING)
        return {"text": self.metrics.render(), "content_type": self.metrics.content_type}

    def describe(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "version": __version__,
            "state_dir": self.state_dir,
            "listeners": [describe(s) for s in self.LISTENERS],
            "workers": self.num_workers,
            "started_at": self.started_at,
        }

    def handle_control(self, request: dict[str, Any], conn: Replier) -> None:
        self.requests.handle(request, conn)

    # -- start and stop -------------------------------------------------

    def start(self) -> None:
        if self.handover is not None:
            self.handover.adopt_stderr()
            self.handover.connect(self.selector)  # from now on, failures are said there
        self.log.info("Starting beamdeploy-asgi %s (gunicorn %s)", __version__, gunicorn_version)
        self.pid = os.getpid()
        if self.cfg.pidfile is not None and self.handover is None:  # else: at the takeover
            self.pidfile = Pidfile(self.cfg.pidfile)
            self.pidfile.create(self.pid)
        self.cfg.on_starting(self)
        self.init_signals()
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        self.selector.register(self._wakeup_r, selectors.EVENT_READ, None)
        try:
            inherited = self.handover.spec.listeners if self.handover else None
            self.LISTENERS = bind_listeners(self.cfg, self.log, inherited)
        except ListenError as exc:
            raise HaltServer(str(exc), 1) from None
        self.pool.context.listeners = self.LISTENERS
        self.log.info(
            "Listening at: %s (%s)", ",".join(describe(s) for s in self.LISTENERS), self.pid
        )
        self._open_control()
        self._open_metrics()
        self.cfg.when_ready(self)

    def _open_metrics(self) -> None:
        if self.cfg.metrics_bind is None:
            return
        if self.metrics is None:
            raise HaltServer(f"--metrics-bind: {MISSING}", 1)
        self.metrics_server = MetricsServer(
            self.cfg.metrics_bind,
            self.selector,
            self.metrics.render,
            self.metrics.content_type,
            self.log,
        )
        if self.handover is not None:
            self.metrics_server.listen_later()  # once the old arbiter lets go of the address
            return
        try:
            self.metrics_server.listen()
        except OSError as exc:
            raise HaltServer(f"cannot listen on {self.cfg.metrics_bind}: {exc}", 1) from None
        self.log.info("Metrics: http://%s/metrics", self.metrics_server.describe())

    def _open_control(self) -> None:
        state_dir_setup.prepare(self.store, self.cfg, self.log)
        if self.handover is not None:
            self._open_control_aside(self.handover)
            return
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
        state_dir_setup.prepare_uploads(self.store, self.cfg, self.log)
        try:
            # The arbiter's user's alone: workers forward admin requests over
            # their own channel, where the arbiter checks the token.
            self.control = ControlServer(
                self.control_path, self.selector, self.handle_control, self.log
            )
        except OSError as exc:
            raise HaltServer(f"cannot listen on {self.control_path}: {exc}", 1) from None
        self.log.info("Control socket: %s", self.control_path)
        state_dir_setup.close_interrupted(self.store, self.deployer.past, self.log)

    def _open_control_aside(self, handover: Handover) -> None:
        """A reexec'd arbiter listens at a name of its own until it takes over."""
        path = handover.spec.control_path
        try:
            self.control = ControlServer(path, self.selector, self.handle_control, self.log)
        except OSError as exc:
            raise HaltServer(f"cannot listen on {path}: {exc}", 1) from None
        self.log.info("Control socket: %s until this arbiter takes over", path)
        state_dir_setup.close_interrupted(self.store, self.deployer.past, self.log)
        handover.take_over = self._take_over
        handover.may_speak = self.service.took_over

    def _take_over(self, message: dict[str, Any]) -> None:
        """The old arbiter lets go: the control socket's name and the pidfile are ours."""
        assert self.control is not None
        try:
            os.replace(str(self.control.path), self.control_path)
        except OSError as exc:
            raise HaltServer(f"cannot take over {self.control_path}: {exc}", 1) from None
        self.control.path = self.control_path
        self.log.info("Control socket: %s", self.control_path)
        pidfile = message.get("pidfile")
        if isinstance(pidfile, str) and pidfile:
            try:
                write_pidfile(pidfile, self.pid)
            except OSError as exc:
                self.log.error("cannot write the pidfile %s: %s", pidfile, exc)
            self.pidfile = Pidfile(pidfile)
            self.pidfile.pid = self.pid

    def _first_boot(self) -> None:
        first = self.app.release
        if self.handover is None:
            if isinstance(first, Release):
                self.deployer.start("boot", release=first)
            else:
                self.deployer.start("boot", artifact=str(first))
            return
        spec = self.handover.spec
        if isinstance(first, Release):
            deployment = self.deployer.start(
                "reexec", release=first, deployment_id=spec.deployment_id
            )
            deployment.from_release = first  # the same release, under the old arbiter
        else:
            deployment = self.deployer.start(
                "reexec", artifact=str(first), deployment_id=spec.deployment_id
            )
        deployment.details["old_arbiter_pid"] = spec.parent
        deployment.details["new_arbiter_pid"] = self.pid
        self.handover.follow(deployment)

    def run(self) -> None:
        try:
            self.start()
            self._first_boot()
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
            if self.handover is not None:
                self.handover.failed("unhandled exception in the new arbiter; see its log")
            self.stop(False)
            if self.pidfile is not None:
                self.pidfile.unlink()
            sys.exit(-1)

    def halt(self, reason: str | None = None, exit_status: int = 0) -> None:
        if self.handover is not None:
            self.handover.failed(reason or "it was told to stop")
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
        pool = self.pool
        pool.stopping = True
        self.service.stopping()
        if self.metrics_server is not None:  # a successor may bind it now
            self.metrics_server.close()
        self.tasks.kill_all()
        self.deployer.abandon("the arbiter is shutting down")
        self.reexec.abandon()
        limit = time.monotonic() + (self.cfg.graceful_timeout + KILL_MARGIN if graceful else 2.0)
        if graceful:
            for worker in pool.workers():
                pool.retire(worker)
        else:
            pool.signal_all(signal.SIGQUIT)
        while pool.workers() and time.monotonic() < limit:
            try:
                pending = self.SIG_QUEUE.get_nowait()
            except queue.Empty:
                pending = None
            if pending in (signal.SIGINT, signal.SIGQUIT) and graceful:
                self.log.info("Quick shutdown requested")
                graceful = False
                limit = min(limit, time.monotonic() + 2.0)
                pool.signal_all(signal.SIGQUIT)
            self.reap_workers()
            pool.kill_overdue()
            time.sleep(0.05)
        pool.signal_all(signal.SIGKILL)
        while pool.workers():
            self.reap_workers()
            time.sleep(0.01)
        close_listeners(self.LISTENERS, unlink=not self.reexec.handed_over)
        self.LISTENERS = []
        if self.control is not None:
            self.control.close()
            self.control = None

    # -- the loop ---------------------------------------------------------

    def loop_once(self) -> None:
        busy = (
            self.deployer.current is not None
            or self.reexec.current is not None
            or bool(self.tasks.running)
            or self.hooks.waiting
            or any(g.state is not GenerationState.SERVING for g in self.pool.generations)
        )
        wait = self.service.wait(0.1 if busy else 1.0)  # the watchdog's pings are due too
        for key, mask in self.selector.select(wait):
            target = key.data
            if target is None:
                self._drain_wakeup_pipe()
            elif isinstance(target, WorkerProcess):
                if mask & selectors.EVENT_WRITE:
                    target.flush()
                if mask & selectors.EVENT_READ:
                    self.pool.read(target)
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
        self.tasks.check()
        self.hooks.check()
        self.reexec.tick()
        self.pool.check(self.timeout)
        self.deployer.tick()
        self.pool.manage()
        if self.metrics_server is not None:
            self.metrics_server.tick()
        self.service.tick()  # WATCHDOG=1: only a loop that gets this far is alive
        if self.reexec.handed_over:
            raise StopIteration  # halt(): drain the workers, exit

    def reap_workers(self) -> None:
        """Reap every child that exited: a worker, or a helper task."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except OSError as exc:
                if exc.errno == errno.ECHILD:
                    return
                raise
            if not pid:
                return
            if (
                not self.tasks.exited(pid, status)
                and not self.pool.exited(pid, status)
                and not self.reexec.exited(pid, status)
            ):
                self.log.debug("Reaped unknown child process %s", pid)

    def _wake(self) -> None:
        """Wake the loop from another thread: a byte in the signal wake-up pipe."""
        if self._wakeup_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wakeup_w, b"\0")

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
        serving = self.pool.serving
        if serving is None or self.deployer.current is not None:
            self.log.warning("HUP ignored: a deployment is in progress")
            return
        if self.reexec.busy():
            self.log.warning("HUP ignored: %s", self.reexec.busy())
            return
        self.deployer.start("restart", release=serving.release)

    def _resizable(self, name: str) -> bool:
        """Not during a deployment: a rollout or a bake counts on the sizes it started with."""
        if self.deployer.current is None:
            return True
        self.log.warning("%s ignored: a deployment is in progress; send it again after", name)
        return False

    def handle_ttin(self) -> None:
        if not self._resizable("TTIN"):
            return
        self.num_workers += 1  # gunicorn's property: runs the nworkers_changed hook
        self.pool.resize(self.num_workers)

    def handle_ttou(self) -> None:
        if not self._resizable("TTOU"):
            return
        if self.num_workers > 1:
            self.num_workers -= 1
            self.pool.resize(self.num_workers)

    def handle_usr1(self) -> None:
        self.log.reopen_files()
        self.pool.signal_all(signal.SIGUSR1)

    def handle_usr2(self) -> None:
        """USR2 is `beamdeploy reexec`; the outcome is logged (see arbiter/reexec.py)."""
        try:
            self.reexec.start()
        except ReexecRefused as exc:
            self.log.warning("USR2 ignored: %s", exc.detail)

    def handle_winch(self) -> None:
        self.log.debug("WINCH ignored")


def default_options(cfg: Any) -> DeployOptions:
    """How upgrades deploy unless they say otherwise: the serve settings."""
    return DeployOptions(
        strategy=cfg.strategy,
        max_surge=cfg.max_surge,
        bake=cfg.bake,
        bake_max_error_rate=cfg.bake_max_error_rate,
    )
