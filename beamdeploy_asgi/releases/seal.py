"""Make a freshly built release the arbiter's: owned by it, read-only to the workers.

With ``--user``, a release is unpacked and its venv built as the workers' user,
so no part of the install runs as root. Before the release joins the store,
the arbiter takes it over: its owner, the workers' group, and no write bit
for anyone else. The walk never follows a link and works on file descriptors,
so a file swapped for a link during the walk cannot lead it elsewhere.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from beamdeploy_asgi.errors import ReleaseError


def seal(root: Path, uid: int, gid: int) -> None:
    """Give every file under `root` to uid:gid; 0750 for dirs and programs, 0640 else."""
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        # Shut the builder out first: nobody else may enter while we walk.
        os.fchown(top, uid, gid)
        os.fchmod(top, 0o700)
    finally:
        os.close(top)
    for dirpath, dirnames, filenames, dirfd in os.fwalk(root, follow_symlinks=False):
        # Only the venv, which the builder wrote, may hold links (bin/python).
        in_venv = Path(dirpath).relative_to(root).parts[:1] == ("venv",)
        for name in dirnames + filenames:
            _take(name, dirfd, uid, gid, links_allowed=in_venv)


def _take(name: str, dirfd: int, uid: int, gid: int, *, links_allowed: bool) -> None:
    info = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    if stat.S_ISLNK(info.st_mode):
        if not links_allowed:
            raise ReleaseError(f"{name}: a link outside the release's venv")
        os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)
        return
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        raise ReleaseError(f"{name}: the install left something neither a file nor a directory")
    if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
        raise ReleaseError(
            f"{name}: a hard link to a file elsewhere; the release must own its files"
        )
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dirfd)
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
            raise ReleaseError(f"{name} changed while the release was sealed")
        os.fchown(fd, uid, gid)
        runnable = stat.S_ISDIR(now.st_mode) or now.st_mode & 0o111
        os.fchmod(fd, 0o750 if runnable else 0o640)
    finally:
        os.close(fd)
