"""Artifacts sent as a request body: one at a time, streamed to disk, capped,
timed, never left half-written."""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType

from starlette.requests import ClientDisconnect, Request

from beamdeploy_asgi.admin.errors import AdminError
from beamdeploy_asgi.protocol import CONTROL_ENV
from beamdeploy_asgi.releases.store import ReleaseStore

ARTIFACT_TYPES = ("application/gzip", "application/x-gzip")
# A refused upload's body is still on its way: closing the connection spares
# reading it to the end.
CLOSE = {"Connection": "close"}


def uploads_dir() -> Path:
    """STATE_DIR/uploads: the control socket lives in STATE_DIR."""
    return ReleaseStore(Path(os.environ[CONTROL_ENV]).parent).uploads_dir


class UploadSlot:
    """The one upload under way among all workers of the arbiter.

    An exclusive ``flock`` on the uploads directory itself: the workers are
    separate processes, and the kernel drops the lock when its holder dies,
    so a killed worker never blocks uploads. Locking the directory leaves no
    lock file among the uploads.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the slot, or raise 409 ``upload_in_progress`` at once."""
        self.directory.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AdminError(
                409,
                "another upload is in progress; try again when it has been handed over",
                "upload_in_progress",
                headers=CLOSE,
            ) from None
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # the lock goes with the descriptor
            self.fd = None

    def __enter__(self) -> UploadSlot:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def refuse_oversized(request: Request, limit: int) -> None:
    """413 on the declared length alone, before anything is read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise AdminError(413, f"the artifact is larger than {limit} bytes", headers=CLOSE)


async def timed_chunks(
    request: Request, idle: float, total: float, code: str = "request_timeout"
) -> AsyncIterator[bytes]:
    """The body's chunks; 408 when none comes for `idle` seconds or all of it takes `total`.

    A client that sends a byte now and then would otherwise hold a worker's
    connection, and the upload slot, for as long as it likes.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + total
    chunks = request.stream().__aiter__()
    while True:
        left = deadline - loop.time()
        try:
            if left <= 0:
                raise asyncio.TimeoutError
            chunk = await asyncio.wait_for(chunks.__anext__(), min(idle, left))
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            if left <= idle:
                detail = f"the request body did not arrive within {total:g}s"
            else:
                detail = f"no part of the request body arrived for {idle:g}s"
            raise AdminError(408, detail, code, headers=CLOSE) from None
        yield chunk


async def receive_upload(
    request: Request, directory: Path, limit: int, *, idle: float, total: float
) -> Path:
    """Write the body to `directory`; on any failure remove what was written."""
    refuse_oversized(request, limit)
    directory.mkdir(mode=0o700, exist_ok=True)
    name = f"upload-{secrets.token_hex(8)}.tar.gz"
    partial = directory / (name + ".partial")
    size = 0
    try:
        with open(partial, "xb") as out:
            async for chunk in timed_chunks(request, idle, total, "upload_timeout"):
                size += len(chunk)
                if size > limit:
                    raise AdminError(
                        413, f"the artifact is larger than {limit} bytes", headers=CLOSE
                    )
                out.write(chunk)
        if size == 0:
            raise AdminError(400, "the request body is empty; send the artifact")
        final = directory / name
        partial.rename(final)
        return final
    except ClientDisconnect:
        raise AdminError(400, "the client went away before the upload ended") from None
    finally:
        if partial.exists():
            partial.unlink()
