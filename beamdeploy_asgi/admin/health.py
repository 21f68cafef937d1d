"""The public health check: whether a load balancer should send this host traffic.

It answers from what this worker knows, never by asking the arbiter: the
route is public, and a probe must cost nothing. The host's drain mark comes
from the arbiter on the status channel (see arbiter/host_state.py). The body
says why, and nothing more: no paths, no pids, no names of files.
"""

from __future__ import annotations

from typing import Any

OUTSIDE = "this process is not run by a beamdeploy arbiter"
STOPPING = "this worker is stopping (replaced by a deploy, or the server shuts down)"


def health_answer(runtime: Any) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body): 200 serving, or 503 draining with the reason."""
    if runtime is None:
        return 503, {"status": "draining", "reason": OUTSIDE}
    release = runtime.release.get("version")
    if runtime.draining:
        return 503, {"status": "draining", "reason": STOPPING, "release": release}
    host = runtime.host
    if host.get("draining"):
        reason = host.get("reason") or "marked draining by the operator"
        return 503, {"status": "draining", "reason": str(reason), "release": release}
    return 200, {"status": "serving", "release": release}


def host_command(runtime: Any, command: dict[str, Any]) -> None:
    """Keep the host state the arbiter sent (Command.HOST)."""
    reason = command.get("reason")
    runtime.host = {
        "draining": command.get("draining") is True,
        "reason": reason if isinstance(reason, str) else None,
    }
