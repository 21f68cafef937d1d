"""Telling a full disk apart from other install failures."""

from __future__ import annotations

import os
from pathlib import Path

FULL_BELOW = 4 * 1024 * 1024


def disk_full(where: Path) -> str | None:
    """'no space left on device ...' when `where` is on a nearly full filesystem.

    Installers do not always say so (venv reports only that ensurepip
    failed), so a failed step looks at the disk itself.
    """
    try:
        info = os.statvfs(where)
    except OSError:
        return None
    free = info.f_bavail * info.f_frsize
    if free >= FULL_BELOW:
        return None
    return f"no space left on device for {where} ({free // 1024} KiB free)"
