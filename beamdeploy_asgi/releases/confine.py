"""Which release paths a token holder may deploy over HTTP: those in --release-dir.

Checked by the worker that serves the request, for a quick answer, and again
by the arbiter, which does not trust a worker to have done it.
"""

from __future__ import annotations

from pathlib import Path


class PathNotAllowed(Exception):
    def __init__(self, detail: str, status: int = 403, code: str = "path_not_allowed") -> None:
        super().__init__(detail)
        self.status = status
        self.code = code


def confined(release: str, release_dirs: list[str]) -> Path:
    """The real path of `release`, if it lies inside a configured release dir.

    A relative path is looked up in each release directory in turn. Symlinks
    and ``..`` are resolved before the check, so neither can lead outside.
    """
    if not release_dirs:
        raise PathNotAllowed(
            "no release directory is configured (--release-dir), so the admin API deploys no path"
        )
    roots = [Path(directory).resolve() for directory in release_dirs]
    try:
        if Path(release).is_absolute():
            candidates = [Path(release).resolve()]
        else:
            candidates = [(root / release).resolve() for root in roots]
    except (OSError, RuntimeError, ValueError):
        raise PathNotAllowed(
            f"release {release!r} is not a usable path", 400, "bad_request"
        ) from None
    inside = [c for c in candidates if any(c.is_relative_to(root) for root in roots)]
    if not inside:
        raise PathNotAllowed(
            f"release {release!r} is not inside a release directory ({', '.join(release_dirs)})"
        )
    return next((c for c in inside if _exists(c)), inside[0])


def _exists(path: Path) -> bool:
    """Like Path.exists, but a name too long (or otherwise unusable) is simply not there."""
    try:
        path.stat()
    except (OSError, ValueError):
        return False
    return True
