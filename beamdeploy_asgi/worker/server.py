"""A uvicorn Server that boots, waits to be told to serve, and drains cleanly.

uvicorn's own startup accepts connections right after lifespan startup, and
its shutdown closes idle keep-alive connections at once. Here a worker:

1. runs lifespan startup and the health check, then reports READY;
2. accepts connections only once the arbiter says ``serve``;
3. on drain stops accepting, answers every response with ``Connection:
   close``, closes idle connections after a short grace, and closes
   websockets with 1012 only at the drain deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Generator
from typing import Any

import uvicorn

from beamdeploy_asgi.protocol import HOT_RELOAD_VERSION, PROTOCOL_VERSION, Command, Event
from beamdeploy_asgi.worker.drain import is_websocket, unread_bytes
from beamdeploy_asgi.worker.failure import BootFailure, StoppedBeforeServing
from beamdeploy_asgi.worker.header_timeout import HeaderTimeout
from beamdeploy_asgi.worker.health import check_health

POLL = 0.05
ACCEPTED_SETTLE = 0.1
TICK = 0.1  # uvicorn's main loop interval


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
    def __init__(self, config: uvicorn.Config, runtime: Any) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.stop_requested = asyncio.Event()
        self.serve_ordered = asyncio.Event()
        self.lifespan_started = False

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
        runtime.channel.send(
            Event.READY,
            protocol=PROTOCOL_VERSION,
            app_file=runtime.app_file,
            hot_reload=HOT_RELOAD_VERSION,
        )
        if not await self._unless_stopped(self.serve_ordered.wait()):
            await self._stop_unserved()
        loop = asyncio.get_running_loop()
        self.servers = []
        for sock in sockets or []:
            server = await loop.create_server(
                self._create_protocol, sock=sock, ssl=self.config.ssl, backlog=self.config.backlog
            )
            self.servers.append(server)
        self.started = True
        self.header_timeout = HeaderTimeout.start(
            self.server_state.connections,
            runtime.cfg.header_timeout,
            getattr(self.config, "timeout_keep_alive", 5),
            runtime.log,
        )
        runtime.channel.send(Event.SERVING)
        runtime.log.info("%s: serving", runtime.name)

    def _create_protocol(self, _loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
        return self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
            _loop=_loop,
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
            await check_health(self.config.loaded_app, path, self.lifespan.state, remaining)

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
        if self.lifespan_started and not self.force_exit:
            await self.lifespan.shutdown()
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

    # -- drain -------------------------------------------------------------

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        runtime = self.runtime
        loop = asyncio.get_running_loop()
        self.header_timeout.stop()  # the drain closes what is idle from now on
        runtime.draining = True
        runtime.channel.send(Event.DRAINING)
        for server in self.servers:
            server.close()
        deadline = loop.time() + runtime.graceful_timeout
        # A connection accepted just before the close becomes a protocol
        # instance a few loop iterations later; wait for it to be counted.
        # With TLS that happens only after the handshake: wait the whole grace.
        settle = runtime.drain_grace if self.config.ssl else ACCEPTED_SETTLE
        await asyncio.sleep(min(settle, runtime.graceful_timeout))
        connections = self.server_state.connections
        runtime.log.info("%s: draining %s connections", runtime.name, len(connections))

        def http() -> list[Any]:
            return [c for c in connections if not is_websocket(c)]

        if not self.force_exit:
            # Requests already on their way on idle keep-alive connections
            # are answered (with Connection: close) during the grace.
            grace_end = min(loop.time() + runtime.drain_grace, deadline)
            while http() and loop.time() < grace_end and not self.force_exit:
                await asyncio.sleep(POLL)
            for connection in http():
                if not unread_bytes(connection):
                    # A connection with a request waiting in its socket is
                    # left to answer it; that answer closes the connection.
                    connection.shutdown()
            while http() and loop.time() < deadline and not self.force_exit:
                await asyncio.sleep(POLL)
            while connections and loop.time() < deadline and not self.force_exit:
                await asyncio.sleep(POLL)
        for connection in list(connections):
            connection.shutdown()  # websockets are closed with 1012 (service restart)
        tasks_deadline = loop.time() + 1.0
        while self.server_state.tasks and loop.time() < tasks_deadline:
            await asyncio.sleep(POLL)
        for task in self.server_state.tasks:
            task.cancel()
        if not self.force_exit:
            await self.lifespan.shutdown()
        runtime.log.info("%s: drained", runtime.name)
