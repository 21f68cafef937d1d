"""The in-process health check a worker passes before it reports READY."""

from __future__ import annotations

import asyncio
from typing import Any

from beamdeploy_asgi.worker.failure import BootFailure


async def check_health(app: Any, path: str, state: dict[str, Any], timeout: float) -> None:
    """Send GET `path` straight to the app; anything but a 2xx is a boot failure."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost"), (b"user-agent", b"beamdeploy-health")],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
        "state": dict(state),
    }
    status: list[int] = []
    body = bytearray()
    done = asyncio.Event()
    sent_request = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body":
            if len(body) < 500:
                body.extend(message.get("body", b"")[:500])
            if not message.get("more_body", False):
                done.set()

    try:
        await asyncio.wait_for(app(scope, receive, send), timeout)
    except asyncio.TimeoutError:
        raise BootFailure("health", f"health check GET {path} did not answer in time") from None
    except Exception as exc:
        raise BootFailure.from_exception("health", f"health check GET {path} raised", exc) from None
    finally:
        done.set()
    if not status or not 200 <= status[0] < 300:
        answer = status[0] if status else "nothing"
        text = bytes(body).decode("utf-8", "replace").strip()
        detail = f": {text[:200]}" if text else ""
        raise BootFailure("health", f"health check GET {path} answered {answer}{detail}")
