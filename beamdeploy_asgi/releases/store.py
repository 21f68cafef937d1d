"""The release store: installed releases, the current one, and the history.

STATE_DIR/
    control.sock        the arbiter's control socket
    current             symlink to the release the service runs
    history.jsonl       deployments, a line when each starts and when it ends
    releases/NAME-VERSION/   installed releases (manifest, venv)
    uploads/            artifacts received over HTTP, until installed
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from beamdeploy_asgi.errors import ReleaseError
from beamdeploy_asgi.releases.history import History
from beamdeploy_asgi.releases.release import DIGEST_FILE, MANIFEST, Release

INSTALLED_FILE = ".installed-at"
FAILED_FILE = ".failed"  # why the last deployment of this release failed


class ReleaseStore:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state_dir = Path(state_dir)
        self.releases_dir = self.state_dir / "releases"
        self.uploads_dir = self.state_dir / "uploads"
        self.current_link = self.state_dir / "current"
        self.history_file = self.state_dir / "history.jsonl"

    # -- installed releases ---------------------------------------------

    def releases(self) -> list[dict[str, Any]]:
        """Installed releases, oldest first, each with `failed` (None or why)."""
        found: list[dict[str, Any]] = []
        if not self.releases_dir.is_dir():
            return found
        for path in self.releases_dir.iterdir():
            if path.name.startswith(".") or not (path / MANIFEST).is_file():
                continue
            try:
                release = Release.load(path)
            except ReleaseError:
                continue
            found.append(
                {**release.describe(), "installed_at": _installed_at(path), "failed": _failed(path)}
            )
        return sorted(found, key=lambda r: r["installed_at"])

    def find_by_digest(self, digest: str) -> Path | None:
        for release in self.releases():
            path = Path(release["path"])
            if (path / DIGEST_FILE).is_file() and (
                path / DIGEST_FILE
            ).read_text().strip() == digest:
                return path
        return None

    def prune(self, keep: int, protected: set[str]) -> list[tuple[str, str]]:
        """Take the oldest releases beyond `keep` out of the store, never a protected one.

        Releases whose last deployment failed do not take the slots of good
        ones: the store keeps up to `keep` of each. Each release removed is
        renamed to a hidden name at once (so it is gone from the store) and
        returned as (path, hidden path) for the caller to delete.
        """
        releases = self.releases()
        removed = []
        for failed in (False, True):
            group = [r["path"] for r in releases if bool(r["failed"]) is failed]
            removable = [path for path in group if path not in protected]
            for path in removable[: max(len(group) - keep, 0)]:
                doomed = Path(path).with_name(f".removing-{Path(path).name}-{os.getpid()}")
                try:
                    os.rename(path, doomed)
                except OSError:
                    continue
                removed.append((path, str(doomed)))
        return removed

    def mark_failed(self, release_path: str, phase: str, error: str) -> None:
        """Remember that deploying a release of the store failed, and why."""
        path = self._in_store(release_path)
        if path is not None:
            record = {"phase": phase, "error": error.splitlines()[0][:500], "at": time.time()}
            _write_atomically(path / FAILED_FILE, json.dumps(record))

    def clear_failed(self, release_path: str) -> None:
        """A release that now served is no longer a failed one."""
        path = self._in_store(release_path)
        if path is not None:
            try:
                (path / FAILED_FILE).unlink()
            except FileNotFoundError:
                pass

    def _in_store(self, release_path: str) -> Path | None:
        path = Path(os.path.realpath(release_path))
        if path.parent != Path(os.path.realpath(self.releases_dir)):
            return None
        return path

    def open_to_group(self, release_path: str, gid: int) -> bool:
        """Let group `gid` (workers running as another user) read a release of the store.

        Installed releases are 0700; this makes one 0750 and of group `gid`.
        Returns False for a release outside the store, which is left alone.
        """
        path = os.path.realpath(release_path)
        if os.path.dirname(path) != os.path.realpath(self.releases_dir):
            return False
        os.chown(path, -1, gid)
        os.chmod(path, 0o750)
        return True

    # -- current ------------------------------------------------------------

    def current(self) -> Path | None:
        try:
            target = os.readlink(self.current_link)
        except OSError:
            return None
        return Path(target)

    def set_current(self, release_path: str) -> None:
        """Point `current` at the release in one rename, so it is never half-written."""
        staging = self.current_link.with_name(f".current-{os.getpid()}")
        try:
            staging.unlink()
        except FileNotFoundError:
            pass
        os.symlink(release_path, staging)
        os.replace(staging, self.current_link)

    # -- history --------------------------------------------------------------

    def append_history(self, record: dict[str, Any]) -> None:
        History(self.history_file).append(record)

    def history(self, limit: int = 100) -> list[dict[str, Any]]:
        """The last `limit` deployments, newest first."""
        return History(self.history_file).records(limit)


def _failed(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((path / FAILED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_new(path: Path, text: str, gid: int | None) -> None:
    """Create `path`, never through a link, readable by group `gid` if given."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        if gid is not None:
            os.fchown(out.fileno(), -1, gid)
        out.write(text)


def _write_atomically(path: Path, text: str) -> None:
    staging = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    staging.unlink(missing_ok=True)  # a leftover, or a link: never written through
    _write_new(staging, text, None)
    os.replace(staging, path)


def _installed_at(path: Path) -> float:
    try:
        return float((path / INSTALLED_FILE).read_text())
    except (OSError, ValueError):
        return path.stat().st_mtime


def mark_installed(path: Path, digest: str, gid: int | None = None) -> None:
    """Record where a release came from and when; readable by group `gid` if given."""
    for name, text in ((DIGEST_FILE, digest), (INSTALLED_FILE, str(time.time()))):
        _write_new(path / name, text + "\n", gid)
