"""A reexec'd arbiter's side of the handover, until it owns the state dir.

It boots the current release on the listening sockets it inherited, with
its control socket at a name of its own, and tells the arbiter that started
it how the boot goes. When its generation serves it says so; the old
arbiter answers ``take_over``, and only then does it rename its control
socket over ``control.sock`` (one rename: a client reaches one arbiter or
the other, never none) and write its pid into the pidfile. If the old
arbiter goes away before that, the reexec is over: this one stops too.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from logging import Logger
from typing import Any

from gunicorn.errors import HaltServer

from beamdeploy_asgi.arbiter.deployment import Deployment
from beamdeploy_asgi.arbiter.reexec_channel import Channel
from beamdeploy_asgi.arbiter.reexec_spec import ReexecSpec


class Handover:
    def __init__(self, spec: ReexecSpec, log: Logger) -> None:
        self.spec = spec
        self.log = log
        self.channel: Channel | None = None
        self.taken_over = False
        self.take_over: Callable[[dict[str, Any]], None] = lambda message: None
        # Once the old arbiter has told systemd MAINPID=, this one may speak to it.
        self.may_speak: Callable[[], None] = lambda: None

    def adopt_stderr(self) -> None:
        """Write to the old arbiter's stderr from now on, not to the pipe it reads."""
        os.dup2(self.spec.stderr_fd, 2)
        os.close(self.spec.stderr_fd)

    def connect(self, selector: Any) -> None:
        sock = socket.socket(fileno=self.spec.channel_fd)
        self.channel = Channel(sock, selector, self)

    def follow(self, deployment: Deployment) -> None:
        """Report the boot's progress; once it serves, say so."""

        def forward(event: dict[str, Any]) -> None:
            self._send({"event": "progress", "phase": event["phase"], "message": event["message"]})
            if event["phase"] == "done":
                self._send({"event": "ready", "pid": os.getpid()})

        deployment.listeners.append(forward)

    def on_readable(self) -> None:
        assert self.channel is not None
        messages = self.channel.receive()
        if messages is None:
            self.channel.close()
            if not self.taken_over:
                raise HaltServer(
                    f"the arbiter that started this one (pid {self.spec.parent}) went away "
                    "before handing over",
                    1,
                )
            self.may_speak()  # it closed its end after its last word to systemd
            return
        for message in messages:
            if message.get("cmd") == "take_over" and not self.taken_over:
                self.take_over(message)
                self.taken_over = True
                self._send({"event": "took_over", "pid": os.getpid()})
                self.log.info("Took over from arbiter %s", self.spec.parent)
                return

    def failed(self, reason: str) -> None:
        """This arbiter stops before it took over: the old one reports why."""
        if not self.taken_over:
            self._send({"event": "failed", "error": reason})

    def _send(self, message: dict[str, Any]) -> None:
        if self.channel is not None:
            self.channel.send(message)
