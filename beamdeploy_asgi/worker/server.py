"""A uvicorn Server that boots, waits to be told to serve, and drains cleanly.

uvicorn's own startup accepts connections right after lifespan startup, and
its shutdown closes idle keep-alive connections at once. Here a worker:

1. runs lifespan startup and the health check, then reports READY;
2. accepts connections only once the arbiter says ``serve``, except on its
   private loopback listener, if it has one, which it serves from READY on;
3. on drain stops accepting, answers every response with ``Connection:
   close``, closes idle connections after a short grace, and closes
   websockets with 1012 only at the drain deadline;
4. on ``pause`` stops accepting on its public listeners and lets their
   connections go as in a drain, but stays booted; ``resume`` accepts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import signal
import socket
import time
import weakref
from collections.abc import Callable, Generator
from typing import Any

import uvicorn

from beamdeploy_asgi.admin.health import host_command
from beamdeploy_asgi.protocol import (
    DEPLOY_VERSION,
    HOT_RELOAD_VERSION,
    PROTOCOL_VERSION,
    Command,
    Event,
)
from beamdeploy_asgi.worker.drain import is_websocket, unread_bytes
from beamdeploy_asgi.worker.failure import BootFailure, StoppedBeforeServing
from beamdeploy_asgi.worker.header_timeout import HeaderTimeout
from beamdeploy_asgi.worker.health import check_health

POLL = 0.05
ACCEPTED_SETTLE = 0.1
TICK = 0.1  # uvicorn's main loop interval
QUICK_LIFESPAN = 1.0  # seconds the app's shutdown gets in a quick exit


class ErrorCapture(logging.Handler):
    """Keeps what uvicorn logs while lifespan startup fails: that is the cause."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @contextlib.contextmanager
    def watching(self, logger: logging.Logger) -> Generator[None, None, None]:
        logger.addHandler(self)
        try:
            yield
        finally:
            logger.removeHandler(self)


class WorkerServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runtime: Any, private_app: Any = None) -> None:
        """`private_app`: the app without the public listeners' response counter."""
        super().__init__(config)
        self.runtime = runtime
        self.private_app = private_app if private_app is not None else config.loaded_app
        self.stop_requested = asyncio.Event()
        self.serve_ordered = asyncio.Event()
        self.lifespan_started = False
        self.servers: list[asyncio.base_events.Server] = []
        self.public_sockets: list[socket.socket] = []
        self.private_server: asyncio.base_events.Server | None = None
        self.private_connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self.paused = False
        self.switching = asyncio.Lock()  # pause and resume, one at a time, in order
        self.switches: set[asyncio.Task[None]] = set()
        self.letting_go: asyncio.Task[None] | None = None  # a pause's connections
        self.reporting: asyncio.Task[None] | None = None

    # -- signals: gunicorn's meanings ------------------------------------

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_drain)
        loop.add_signal_handler(signal.SIGINT, self.request_quick_exit)
        loop.add_signal_handler(signal.SIGQUIT, self.request_quick_exit)
        loop.add_signal_handler(signal.SIGUSR1, self.runtime.reopen_logs)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1):
                loop.remove_signal_handler(sig)

    def request_drain(self) -> None:
        self.runtime.draining = True  # /_deploy/health says so from now on
        self.should_exit = True
        self.stop_requested.set()

    def request_quick_exit(self) -> None:
        self.runtime.hook("worker_int")
        self.should_exit = True
        self.force_exit = True
        self.stop_requested.set()

    def on_command(self, command: dict[str, Any]) -> None:
        if command.get("cmd") == Command.SERVE:
            self.serve_ordered.set()
        elif command.get("cmd") == Command.ADMIN:
            self.runtime.requests.on_reply(command)
        elif command.get("cmd") == Command.RELOAD:
            self.runtime.reloads.on_command(command)
        elif command.get("cmd") == Command.PAUSE:
            self._switch(self.pause())
        elif command.get("cmd") == Command.RESUME:
            self._switch(self.resume())
        elif command.get("cmd") == Command.HOST:
            host_command(self.runtime, command)

    def _switch(self, work: Any) -> None:
        """Run a pause or a resume; the loop keeps only weak references to tasks."""
        task = asyncio.ensure_future(work)
        self.switches.add(task)
        task.add_done_callback(self.switches.discard)

    def on_arbiter_lost(self) -> None:
        self.runtime.log.error("the arbiter is gone; draining and exiting")
        self.runtime.requests.on_lost()
        self.request_drain()

    # -- boot --------------------------------------------------------------

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        runtime = self.runtime
        runtime.channel.watch(self.on_command, self.on_arbiter_lost)
        runtime.start_heartbeat()
        if not await self._unless_stopped(self._boot()):
            await self._stop_unserved()
        # From here on connections may come, on the private listener at least.
        self.header_timeout = HeaderTimeout.start(
            self.server_state.connections,
            runtime.cfg.header_timeout,
            getattr(self.config, "timeout_keep_alive", 5),
            runtime.log,
        )
        if runtime.responses is not None:
            reporting = runtime.responses.keep_reporting(runtime.channel)
            self.reporting = asyncio.ensure_future(reporting)
        if runtime.spec.private_listener is not None:
            await self._listen_privately(socket.socket(fileno=runtime.spec.private_listener))
        runtime.channel.send(
            Event.READY,
            protocol=PROTOCOL_VERSION,
            app_file=runtime.app_file,
            hot_reload=HOT_RELOAD_VERSION,
            deploy=DEPLOY_VERSION,
        )
        if not await self._unless_stopped(self.serve_ordered.wait()):
            await self._stop_unserved()
        self.public_sockets = list(sockets or [])
        self.servers = await self._listen(self.public_sockets)
        if self.private_server is not None:
            self.private_server.close()  # the checks are over: users' requests only, from here
        self.started = True
        runtime.channel.send(Event.SERVING)
        runtime.log.info("%s: serving", runtime.name)

    def _create_protocol(self, _loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
        return self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
            _loop=_loop,
        )

    async def _listen(self, sockets: list[socket.socket]) -> list[asyncio.base_events.Server]:
        """Accept on `sockets` through copies: closing a server closes its socket.

        The listening sockets stay open in this worker (and in the arbiter),
        so a resume listens on the very same accept queues again.
        """
        loop = asyncio.get_running_loop()
        return [
            await loop.create_server(
                self._create_protocol,
                sock=sock.dup(),
                ssl=self.config.ssl,
                backlog=self.config.backlog,
            )
            for sock in sockets
        ]

    async def _listen_privately(self, sock: socket.socket) -> None:
        """Serve the uncounted app, in plain HTTP, on the arbiter's loopback listener."""
        config = copy.copy(self.config)  # the protocols take their app from the config
        config.loaded_app = self.private_app
        private = self.private_connections

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=_loop,
            )
            private.add(protocol)
            return protocol

        loop = asyncio.get_running_loop()
        self.private_server = await loop.create_server(
            create_protocol, sock=sock, backlog=self.config.backlog
        )

    async def _boot(self) -> None:
        capture = ErrorCapture()
        with capture.watching(logging.getLogger("uvicorn.error")):
            await self.lifespan.startup()
        if self.lifespan.should_exit:
            causes = [
                text.strip().splitlines()[-1]
                for text in capture.lines
                if text.strip() and "Application startup failed" not in text
            ]
            cause = causes[0] if causes else "the app reported a failure"
            detail = "\n".join(capture.lines)
            raise BootFailure("lifespan", f"lifespan startup failed: {cause}", detail)
        self.lifespan_started = True
        path = self.runtime.health_path
        if path:
            remaining = max(self.runtime.boot_deadline - time.monotonic(), 1.0)
            await check_health(self.private_app, path, self.lifespan.state, remaining)

    async def _unless_stopped(self, work: Any) -> bool:
        """Run `work` unless the arbiter asks us to stop first; False if it did."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self.stop_requested.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not task.done():
            task.cancel()
            return False
        task.result()
        return True

    async def _stop_unserved(self) -> None:
        if self.private_server is not None:
            self.private_server.close()
        if self.lifespan_started:
            await self._shut_down_lifespan()
        raise StoppedBeforeServing()

    # -- serving -----------------------------------------------------------

    async def main_loop(self) -> None:
        """uvicorn's loop, woken at once by a drain or a stop instead of at its next tick.

        uvicorn looks at should_exit every 0.1 s, and a draining worker stops
        accepting (and tells the arbiter, which waits for that to finish a
        deployment) only once this loop has ended.
        """
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864000
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_requested.wait(), TICK)
            should_exit = await self.on_tick(counter)

    # -- pause ---------------------------------------------------------------

    async def pause(self) -> None:
        """Stop accepting on the public listeners; their connections go as in a drain.

        Connections still queued in the kernel wait there for the next
        worker that accepts, this one after a resume included: the
        listening sockets stay open, so no client is refused.
        """
        async with self.switching:
            if not self.started or self.should_exit:
                return  # not serving yet, or draining: nothing to pause
            runtime = self.runtime
            if not self.paused:
                self.paused = runtime.paused = True
                for server in self.servers:
                    server.close()
                self.servers = []
                self.letting_go = asyncio.ensure_future(self._let_public_connections_go())
                runtime.log.info("%s: paused", runtime.name)
            runtime.channel.send(Event.PAUSED)

    async def resume(self) -> None:
        async with self.switching:
            if not self.started or self.should_exit:
                return
            runtime = self.runtime
            if self.paused:
                if self.letting_go is not None:
                    self.letting_go.cancel()  # what is still open may stay open now
                    self.letting_go = None
                self.paused = runtime.paused = False
                servers = await self._listen(self.public_sockets)
                if self.should_exit:  # a drain began meanwhile
                    for server in servers:
                        server.close()
                    return
                self.servers = servers
                runtime.log.info("%s: resumed", runtime.name)
            runtime.channel.send(Event.RESUMED)

    async def _let_public_connections_go(self) -> None:
        runtime = self.runtime
        loop = asyncio.get_running_loop()
        deadline = loop.time() + runtime.graceful_timeout
        await self._settle(runtime.graceful_timeout)
        connections = self.server_state.connections
        private = self.private_connections

        def http() -> list[Any]:
            return [c for c in connections if not is_websocket(c) and c not in private]

        grace_end = min(loop.time() + runtime.drain_grace, deadline)
        await self._close_http(http, grace_end, deadline)

    async def _settle(self, limit: float) -> None:
        """Until a connection accepted just before the close is counted.

        It becomes a protocol instance a few loop iterations later; with TLS
        only after the handshake, so then the whole grace.
        """
        settle = self.runtime.drain_grace if self.config.ssl else ACCEPTED_SETTLE
        await asyncio.sleep(min(settle, limit))

    async def _close_http(
        self, http: Callable[[], list[Any]], grace_end: float, deadline: float
    ) -> None:
        """Answer what comes during the grace, then close what is idle; wait for the rest."""
        loop = asyncio.get_running_loop()
        # Requests already on their way on idle keep-alive connections
        # are answered (with Connection: close) during the grace.
        while http() and loop.time() < grace_end and not self.force_exit:
            await asyncio.sleep(POLL)
        for connection in http():
            if not unread_bytes(connection):
                # A connection with a request waiting in its socket is
                # left to answer it; that answer closes the connection.
                connection.shutdown()
        while http() and loop.time() < deadline and not self.force_exit:
            await asyncio.sleep(POLL)

    # -- drain -------------------------------------------------------------

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        runtime = self.runtime
        loop = asyncio.get_running_loop()
        self.header_timeout.stop()  # the drain closes what is idle from now on
        if self.letting_go is not None:
            self.letting_go.cancel()  # the drain takes over a pause's connections
        runtime.draining = True
        runtime.channel.send(Event.DRAINING)
        if runtime.responses is not None:
            runtime.responses.report(runtime.channel, force=True)
        for server in [*self.servers, *filter(None, [self.private_server])]:
            server.close()
        deadline = loop.time() + runtime.graceful_timeout
        await self._settle(runtime.graceful_timeout)
        connections = self.server_state.connections
        runtime.log.info("%s: draining %s connections", runtime.name, len(connections))

        def http() -> list[Any]:
            return [c for c in connections if not is_websocket(c)]

        if not self.force_exit:
            grace_end = min(loop.time() + runtime.drain_grace, deadline)
            await self._close_http(http, grace_end, deadline)
            while connections and loop.time() < deadline and not self.force_exit:
                await asyncio.sleep(POLL)
        for connection in list(connections):
            connection.shutdown()  # websockets are closed with 1012 (service restart)
        tasks_deadline = loop.time() + 1.0
        while self.server_state.tasks and loop.time() < tasks_deadline:
            await asyncio.sleep(POLL)
        for task in self.server_state.tasks:
            task.cancel()
        if self.reporting is not None:
            self.reporting.cancel()
            if runtime.responses is not None:
                runtime.responses.report(runtime.channel)  # what the drain answered
        await self._shut_down_lifespan()
        runtime.log.info("%s: drained", runtime.name)

    async def _shut_down_lifespan(self) -> None:
        """The app's shutdown; in a quick exit (INT, QUIT) only for QUICK_LIFESPAN seconds.

        Skipping it would leave the lifespan task waiting, to be cancelled
        with a traceback when the loop closes.
        """
        if not self.force_exit:
            await self.lifespan.shutdown()
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.lifespan.shutdown(), QUICK_LIFESPAN)
