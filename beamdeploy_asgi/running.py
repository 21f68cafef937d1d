"""What this process runs as: a beamdeploy worker, or nothing beamdeploy knows.

The admin app asks here rather than importing the worker package, so it
can be mounted by any app, and the worker registers itself when it starts.
"""

from __future__ import annotations

from typing import Any

_current: Any = None


def current() -> Any:
    """This process's worker runtime (worker/runtime.py), or None outside beamdeploy."""
    return _current


def set_current(runtime: Any) -> None:
    global _current
    _current = runtime
