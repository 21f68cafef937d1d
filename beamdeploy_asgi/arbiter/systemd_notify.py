"""systemd's notification protocol ($NOTIFY_SOCKET, sd_notify(3)), the arbiter's side.

`ServiceNotifier` says what the service is doing: ``READY=1`` once the first
generation serves; ``RELOADING=1`` (with ``MONOTONIC_USEC=``) when a
deployment starts and ``READY=1`` when it ends, whatever the outcome, with
``STATUS=`` lines for its phases; ``STOPPING=1`` when the arbiter starts to
shut down; ``WATCHDOG=1`` from the loop; and, at a reexec, ``MAINPID=`` of
the new arbiter. It only observes: deployments are followed through their
event listeners, and a reexec'd arbiter is silent until it has taken over,
since until then systemd's main process is the old one.

Sending never blocks (a datagram, ``MSG_DONTWAIT``) and never raises: a
failure is logged once, and the service goes on.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from logging import Logger
from typing import Any

from beamdeploy_asgi.arbiter.deployment import Deployment
from beamdeploy_asgi.arbiter.generation import Generation

NOTIFY_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"
# What only the arbiter may use: not passed to workers or helpers.
SERVICE_ENV = (NOTIFY_ENV, WATCHDOG_USEC_ENV, WATCHDOG_PID_ENV)
STATUS_MAX = 200  # characters: `systemctl status` shows one line
ENDED = {"done", "failed", "rolled-back"}


def notify(state: str, log: Logger | None = None) -> bool:
    """Send `state` (``KEY=VALUE`` lines) if systemd listens; True if it was sent.

    Without $NOTIFY_SOCKET this is no service of systemd's: nothing is sent.
    An address starting with ``@`` is in the abstract namespace. A full
    queue drops the message rather than wait.
    """
    address = os.environ.get(NOTIFY_ENV)
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), socket.MSG_DONTWAIT, address)
    except OSError as exc:
        if log is not None:
            log.warning("cannot notify systemd at %s: %s", os.environ.get(NOTIFY_ENV), exc)
        return False
    return True


def main_pid(pid: int) -> bool:
    """Tell systemd that `pid` is the service's main process from now on."""
    return notify(f"MAINPID={pid}")


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def watchdog_interval(environ: Any, pids: set[int]) -> float | None:
    """Seconds between ``WATCHDOG=1``: half of $WATCHDOG_USEC, if the watchdog is ours."""
    try:
        usec = int(environ.get(WATCHDOG_USEC_ENV, ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = environ.get(WATCHDOG_PID_ENV)
    if owner:
        try:
            if int(owner) not in pids:
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


class ServiceNotifier:
    """What the arbiter tells systemd. `silent`: a reexec'd arbiter before its takeover."""

    def __init__(
        self,
        log: Logger,
        *,
        serving: Callable[[], Generation | None] = lambda: None,
        silent: bool = False,
        parent: int | None = None,
    ) -> None:
        self.log = log
        self.serving = serving
        self.enabled = bool(os.environ.get(NOTIFY_ENV))
        self.silent = silent
        self.parent = parent  # the arbiter that started this one: its watchdog becomes ours
        self.ready = False  # READY=1 was said once: later deployments are reloads
        self.stopped = False
        self.failed = False  # a failure was logged: later ones are not
        self.status = ""
        self.followed: set[str] = set()
        self.watchdog: float | None = None
        self.next_ping = 0.0
        self._arm_watchdog()

    # -- sending -------------------------------------------------------------

    def send(self, *lines: str) -> None:
        if not self.enabled or self.silent or self.stopped:
            return
        sent = notify("\n".join(lines), None if self.failed else self.log)
        if not sent and not self.failed:
            self.failed = True
            self.log.warning("further failures to notify systemd are not logged")

    def _status(self, text: str) -> str:
        text = " ".join(text.split())  # one line
        if len(text) > STATUS_MAX:
            text = text[: STATUS_MAX - 3] + "..."
        self.status = text
        return f"STATUS={text}"

    # -- deployments -------------------------------------------------------------

    def observe(self, deployment: Deployment) -> None:
        """A deployment was recorded (at its start and end): follow it from its start."""
        if deployment.ended or deployment.id in self.followed:
            return
        self.followed.add(deployment.id)
        if self.ready:
            self.send(
                "RELOADING=1",
                f"MONOTONIC_USEC={monotonic_usec()}",
                self._status(self._describe(deployment, str(deployment.phase))),
            )
        deployment.listeners.append(lambda event: self._event(deployment, event))

    def _describe(self, deployment: Deployment, what: str) -> str:
        artifact = deployment.artifact
        target = deployment.release or (artifact and os.path.basename(artifact))
        to = f" to {target}" if target else ""
        return f"{deployment.kind} {deployment.id[:8]}{to}: {what}"

    def _event(self, deployment: Deployment, event: dict[str, Any]) -> None:
        phase = str(event["phase"])
        if phase in ENDED:
            self.followed.discard(deployment.id)
            if deployment.outcome == "succeeded" or self.ready:  # a first boot that failed: no
                self.ready = True
                self.send("READY=1", self._status(self.serving_text(deployment)))
            return
        message = str(event.get("message", "")).split("\n", 1)[0]
        for release in {deployment.release, deployment.from_release} - {None}:
            message = message.replace(f" ({release})", "")  # said once is enough
        text = self._describe(deployment, message or phase)
        if text != self.status:
            self.send(self._status(text))

    def serving_text(self, deployment: Deployment | None = None) -> str:
        """ "serving myapp 1.6.0 (generation 4)", and how `deployment` ended if it failed."""
        generation = self.serving()
        text = "serving"
        if generation is not None:
            text = f"serving {generation.release} (generation {generation.number})"
        if deployment is not None and deployment.outcome != "succeeded":
            text += f"; {deployment.kind} {deployment.id[:8]} {deployment.outcome}"
        return text

    # -- the arbiter's own life ------------------------------------------------

    def handed_over(self, pid: int, status: str) -> None:
        """A reexec: `pid` is the main process now, and the reload is over. Nothing
        is said after this: systemd would take it from a process that is no longer main."""
        self.send(f"MAINPID={pid}", "READY=1", self._status(status))
        self.silent = True

    def took_over(self) -> None:
        """A reexec'd arbiter is the main process: it speaks, its watchdog runs.

        The watchdog is ours from now on, for the next reexec's successor too:
        it would otherwise look for the first arbiter's pid, or its own parent's.
        """
        self.silent = False
        self.ready = True
        self._arm_watchdog()
        if self.watchdog is not None:
            os.environ[WATCHDOG_PID_ENV] = str(os.getpid())

    def stopping(self) -> None:
        self.send("STOPPING=1", self._status("stopping: draining the workers"))
        self.stopped = True

    # -- the watchdog --------------------------------------------------------------

    def _arm_watchdog(self) -> None:
        pids = {os.getpid()}
        if self.parent is not None and not self.silent:
            pids.add(self.parent)  # systemd's WATCHDOG_PID= names the first arbiter
        self.watchdog = watchdog_interval(os.environ, pids) if self.enabled else None
        self.next_ping = time.monotonic()

    def wait(self, longest: float) -> float:
        """How long the loop may wait for events before the next ping is due."""
        if self.watchdog is None or self.silent or self.stopped:
            return longest
        return max(0.0, min(longest, self.next_ping - time.monotonic()))

    def tick(self) -> None:
        """Called by the loop after each round: the loop still runs, the service is alive."""
        if self.watchdog is None or self.silent or self.stopped:
            return
        now = time.monotonic()
        if now >= self.next_ping:
            self.send("WATCHDOG=1")
            self.next_ping = now + self.watchdog
