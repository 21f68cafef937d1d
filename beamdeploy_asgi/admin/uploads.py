"""Artifacts sent as a request body: streamed to disk, capped, never left half-written."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from starlette.requests import ClientDisconnect, Request

from beamdeploy_asgi.admin.errors import AdminError
from beamdeploy_asgi.releases.store import ReleaseStore

ARTIFACT_TYPES = ("application/gzip", "application/x-gzip")


def uploads_dir() -> Path:
    """STATE_DIR/uploads: the control socket lives in STATE_DIR."""
    return ReleaseStore(Path(os.environ["BEAMDEPLOY_CONTROL"]).parent).uploads_dir


async def receive_upload(request: Request, directory: Path, limit: int) -> Path:
    """Write the body to `directory`; on any failure remove what was written."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise AdminError(413, f"the artifact is larger than {limit} bytes")
    directory.mkdir(mode=0o700, exist_ok=True)
    name = f"upload-{secrets.token_hex(8)}.tar.gz"
    partial = directory / (name + ".partial")
    size = 0
    try:
        with open(partial, "xb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise AdminError(413, f"the artifact is larger than {limit} bytes")
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
