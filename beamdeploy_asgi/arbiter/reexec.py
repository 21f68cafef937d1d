"""`beamdeploy reexec` and USR2: replace the arbiter with a new one, sockets kept.

The old arbiter starts its successor (see reexec_spec.py) and keeps serving
while the successor boots the current release on the same listening sockets:
one accept queue, never closed, so no connection is refused or reset. When
the successor's generation serves, the old arbiter tells it to take over,
the successor renames its control socket over ``control.sock`` and writes
the pidfile; then the old arbiter gives systemd the new main pid, drains its
own workers and exits. Until the successor has taken over, any failure (it
cannot start, its boot fails, it says nothing in time) leaves the old
arbiter serving as before, and the reason is the reexec's outcome.

A reexec is a deployment record of kind ``reexec``: its events are followed
like an upgrade's, and the successor records its boot under the same id.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import textwrap
import time
from collections.abc import Callable
from typing import Any

from beamdeploy_asgi.arbiter import systemd_notify
from beamdeploy_asgi.arbiter.deployer import Busy
from beamdeploy_asgi.arbiter.deployment import Deployment, Phase
from beamdeploy_asgi.arbiter.reexec_spec import (
    NEXT_SOCKET,
    ReexecSpec,
    describe_exit,
    successor_command,
    successor_environment,
)
from beamdeploy_asgi.arbiter.successor import Successor
from beamdeploy_asgi.errors import ReleaseError
from beamdeploy_asgi.releases.release import Release

KIND = "reexec"
STARTUP_MARGIN = 30.0  # seconds past the boot timeout: the interpreter, the config, the sockets
KILL_GRACE = 10.0  # a successor told to stop gets this long before SIGKILL
FORWARDED = {p.value for p in Phase} - {"starting", "done", "failed"}


class ReexecRefused(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class Reexec:
    """The old arbiter's side. `host` is the BeamArbiter: its sockets, pool, store, pidfile."""

    def __init__(
        self,
        host: Any,
        *,
        token: str | None,
        clock: Callable[[], float] = time.monotonic,
        service: systemd_notify.ServiceNotifier | None = None,
    ) -> None:
        self.host = host
        self.log = host.log
        self.service = service or systemd_notify.ServiceNotifier(host.log)
        self.token = token
        self.clock = clock
        self.current: Deployment | None = None
        self.successor: Successor | None = None
        self.handed_over = False
        self._reset()

    def _reset(self) -> None:
        self.deadline: float | None = None
        self.kill_at: float | None = None
        self.cause: str | None = None  # why the old arbiter gave up on it
        self.reported: str | None = None  # why the successor says it stops

    def busy(self) -> str | None:
        """Why a deployment cannot start now, if a reexec runs."""
        if self.current is None:
            return None
        pid = self.successor.pid if self.successor else "?"
        return (
            f"the arbiter is being replaced: reexec {self.current.id} (new arbiter pid {pid}, "
            f"{self.current.phase}); try again when it has ended"
        )

    def describe(self) -> dict[str, Any] | None:
        if self.current is None:
            return None
        return {**self.current.summary(), "pid": self.successor.pid if self.successor else None}

    # -- starting ------------------------------------------------------------

    def start(self) -> Deployment:
        """Start a successor, or raise ReexecRefused; the deployment says how it goes."""
        host = self.host
        if self.current is not None:
            raise ReexecRefused("reexec_in_progress", self.busy() or "")
        if host.deployer.current is not None:
            raise ReexecRefused("upgrade_in_progress", str(Busy(host.deployer.current)))
        serving = host.pool.serving
        if serving is None or host.pool.stopping:
            raise ReexecRefused("unavailable", "the arbiter is not serving")
        current = host.store.current()
        path = str(current) if current is not None else serving.release.path
        release = serving.release
        if path is not None and path != release.path:
            try:
                release = Release.load(path)
            except ReleaseError as exc:
                raise ReexecRefused("invalid_release", f"the current release: {exc}") from None
        deployment = Deployment(kind=KIND, previous=serving, release=release)
        deployment.details["old_arbiter_pid"] = os.getpid()
        self.current = deployment
        host.deployer.deployments.append(deployment)  # listed and found like any deployment
        self.service.observe(deployment)  # RELOADING=1 until it ends
        self._reset()
        command = successor_command()
        deployment.record(Phase.STARTING, f"starting a new arbiter: {shlex.join(command)}")
        self.log.info("reexec %s: starting a new arbiter: %s", deployment.id, shlex.join(command))
        try:
            self.successor = self._spawn(command, deployment, path)
        except OSError as exc:
            self.cause = f"the new arbiter could not start: {command[0]}: {exc}"
            self._failed()
            return deployment
        pid = self.successor.pid
        deployment.details["new_arbiter_pid"] = pid
        limit = host.cfg.boot_timeout + STARTUP_MARGIN
        self.deadline = self.clock() + limit
        deployment.record(Phase.BOOTING, f"arbiter {pid} started; it boots {release}")
        return deployment

    def _spawn(self, command: list[str], deployment: Deployment, release: str | None) -> Successor:
        host = self.host
        next_path = os.path.join(host.state_dir, NEXT_SOCKET)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(next_path)  # left by an earlier attempt
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        stderr_fd = os.dup(2)
        try:
            spec = ReexecSpec(
                parent=os.getpid(),
                listeners=[sock.fileno() for sock in host.LISTENERS],
                channel_fd=theirs.fileno(),
                stderr_fd=stderr_fd,
                control_path=next_path,
                deployment_id=deployment.id,
                release=release,
                previous_release=host.deployer.previous_release,
            )
            return Successor(
                command=command,
                env=successor_environment(os.environ, spec, self.token),
                cwd=host.app.launch_cwd,
                pass_fds=[*spec.listeners, spec.channel_fd, stderr_fd],
                channel=ours,
                selector=host.selector,
                on_message=self._message,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            os.close(stderr_fd)

    # -- events --------------------------------------------------------------

    def _message(self, message: dict[str, Any]) -> None:
        deployment, successor = self.current, self.successor
        if deployment is None or successor is None or self.handed_over:
            return
        event = message.get("event")
        if event == "progress" and message.get("phase") in FORWARDED:
            text = str(message.get("message", ""))[:2000]
            deployment.record(Phase(message["phase"]), f"arbiter {successor.pid}: {text}")
        elif event == "ready" and self.cause is None:
            deployment.record(Phase.PROMOTED, f"arbiter {successor.pid} serves; handing over")
            if not successor.send({"cmd": "take_over", "pidfile": self._pidfile()}):
                self._give_up("the new arbiter went away as it became ready")
        elif event == "took_over":
            self._handed_over(deployment, successor)
        elif event == "failed":
            self.reported = str(message.get("error") or "it stopped")[:8000]

    def _pidfile(self) -> str | None:
        pidfile = self.host.pidfile
        return pidfile.fname if pidfile is not None else None

    def _handed_over(self, deployment: Deployment, successor: Successor) -> None:
        """The successor owns the control socket's name and the pidfile: we go."""
        self.handed_over = True
        self.deadline = None
        if self.host.control is not None:
            self.host.control.give_up_name()
        status = f"serving {deployment.release} (arbiter {successor.pid})"
        self.service.handed_over(successor.pid, status)
        # Closing the channel tells the successor that systemd has heard MAINPID=
        # from us: from then on it speaks, and is the main process when it does.
        successor.release()
        deployment.record(Phase.DRAINING, f"arbiter {os.getpid()} drains its workers and exits")
        deployment.finish("succeeded", f"arbiter {successor.pid} serves {deployment.release}")
        self.log.info(
            "reexec %s: arbiter %s took over; draining the workers, then exiting",
            deployment.id,
            successor.pid,
        )

    def exited(self, pid: int, status: int) -> bool:
        """A reaped child; False if it is not the successor."""
        successor = self.successor
        if successor is None or pid != successor.pid:
            return False
        successor.exited(status)
        self.successor = None

        how = describe_exit(os.waitstatus_to_exitcode(status))
        if self.handed_over:
            self.log.warning("the new arbiter %s %s while this one drains", pid, how)
        elif self.current is not None:
            cause = self.cause or f"the new arbiter (pid {pid}) {how} before it served"
            if self.reported:
                cause += f": {self.reported}"
            else:
                tail = successor.tail()
                if tail:
                    cause += "; its last output:\n" + textwrap.indent(tail, "  ")
            self.cause = cause
            self._failed()
        return True

    def tick(self) -> None:
        successor = self.successor
        if successor is None:
            return
        now = self.clock()
        if self.kill_at is not None and now > self.kill_at:
            self.kill_at = None
            successor.kill()
        if self.deadline is not None and now > self.deadline:
            limit = self.host.cfg.boot_timeout + STARTUP_MARGIN
            self._give_up(f"the new arbiter (pid {successor.pid}) did not serve within {limit:g}s")

    def _give_up(self, cause: str) -> None:
        """Stop the successor; the reexec fails once it is gone."""
        assert self.successor is not None
        self.deadline = None
        self.cause = self.cause or cause
        self.log.error("reexec: %s; stopping it", cause)
        self.successor.terminate()
        self.kill_at = self.clock() + KILL_GRACE

    def abandon(self) -> None:
        """This arbiter stops: a successor that has not taken over stops too."""
        if self.current is None or self.handed_over:
            return
        if self.successor is not None:
            self.successor.terminate()
        self.cause = "the old arbiter is shutting down"
        self._failed()

    # -- ending --------------------------------------------------------------

    def _failed(self) -> None:
        deployment = self.current
        assert deployment is not None
        self.current = None
        self.deadline = None
        cause = self.cause or "failed"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.host.state_dir, NEXT_SOCKET))
        self.log.error("reexec %s failed, this arbiter serves on: %s", deployment.id, cause)
        deployment.finish("failed", cause.splitlines()[0], cause)
        try:
            self.host.store.append_history(deployment.summary())
        except OSError as exc:
            self.log.error("cannot write %s: %s", self.host.store.history_file, exc)
