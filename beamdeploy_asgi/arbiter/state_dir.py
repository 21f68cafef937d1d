"""Taking over STATE_DIR at start: its modes, its parents, what an earlier run left.

With ``--user``, the workers' user must reach the releases (they build and
run them) and the uploads (they write them), and nothing else; and no one
but the arbiter's user may swap a directory on the way to it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from logging import Logger
from typing import Any

from gunicorn.errors import HaltServer

from beamdeploy_asgi.arbiter.spawn import worker_owner
from beamdeploy_asgi.releases.store import ReleaseStore


def prepare(store: ReleaseStore, cfg: Any, log: Logger) -> None:
    """Create STATE_DIR, or take it back to the modes it must have."""
    state_dir = str(store.state_dir)
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    info = os.stat(state_dir)
    if info.st_uid != os.geteuid():
        raise HaltServer(
            f"the state dir {state_dir} belongs to uid {info.st_uid}; it must "
            f"belong to the arbiter's user (uid {os.geteuid()})",
            1,
        )
    workers_elsewhere = cfg.uid != os.geteuid()
    os.makedirs(store.releases_dir, mode=0o700, exist_ok=True)
    wanted = {
        state_dir: 0o711 if workers_elsewhere else 0o700,  # workers reach uploads only
        # The workers' user enters it to build a venv and run its release.
        str(store.releases_dir): 0o711 if workers_elsewhere else 0o700,
        str(store.history_file): 0o600,
    }
    for path, mode in wanted.items():
        try:
            current = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(current.st_mode) or current.st_uid != os.geteuid():
            raise HaltServer(f"{path} must be the arbiter user's own, not a link", 1)
        was = stat.S_IMODE(current.st_mode)
        if was != mode:
            log.warning("%s was mode %o; tightened to %o", path, was, mode)
            os.chmod(path, mode)
    if workers_elsewhere:
        _check_parents(state_dir)
        if not _workers_can_enter(str(store.releases_dir), cfg):
            raise HaltServer(
                f"the workers' user (uid {cfg.uid}) cannot enter {store.releases_dir}, "
                "where releases are built and run as that user: let it traverse every parent "
                "directory of the state dir (o+x), or choose a --state-dir it can reach",
                1,
            )


def _check_parents(state_dir: str) -> None:
    """No one but us may rename the state dir or a directory above it.

    Otherwise the workers' user could swap in a directory of its own, whose
    links the arbiter would then follow.
    """
    path = os.path.dirname(state_dir)
    while True:
        info = os.lstat(path)
        writable_by_others = info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX
        if info.st_uid not in (0, os.geteuid()) or writable_by_others:
            raise HaltServer(
                f"{path}, above the state dir, belongs to uid {info.st_uid} with mode "
                f"{stat.S_IMODE(info.st_mode):o}: with --user, every directory above the "
                "state dir must belong to root and be writable by no one else",
                1,
            )
        if path == os.path.dirname(path):
            return
        path = os.path.dirname(path)


def _workers_can_enter(path: str, cfg: Any) -> bool:
    try:
        done = subprocess.run(
            ["test", "-x", path],
            stdin=subprocess.DEVNULL,
            timeout=10,
            cwd="/",
            **worker_owner(cfg),
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def prepare_uploads(store: ReleaseStore, cfg: Any, log: Logger) -> None:
    """The uploads dir, emptied of what an earlier run left, owned by the workers' user.

    Workers write uploaded artifacts there, as their own user.
    """
    os.makedirs(store.uploads_dir, mode=0o700, exist_ok=True)
    try:
        entries = list(os.scandir(store.uploads_dir))
    except FileNotFoundError:
        entries = []
    for entry in entries:  # nothing installs them any more
        if entry.is_file(follow_symlinks=False) or entry.is_symlink():
            log.info("removing stale upload %s", entry.path)
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
    if cfg.uid != os.geteuid():
        if os.path.islink(store.uploads_dir):
            raise HaltServer(f"{store.uploads_dir} must be a directory, not a link", 1)
        os.chown(store.uploads_dir, cfg.uid, -1, follow_symlinks=False)


def close_interrupted(store: ReleaseStore, records: list[dict[str, Any]], log: Logger) -> None:
    """Deployments a previous arbiter started and never ended are marked so."""
    for record in records:
        if record.get("outcome") is not None:
            continue
        record.update(
            outcome="interrupted",
            error="the arbiter stopped before this deployment ended",
        )
        log.warning("deployment %s was interrupted by the arbiter's end", record["id"])
        try:
            store.append_history(record)
        except OSError as exc:
            log.error("cannot write %s: %s", store.history_file, exc)
