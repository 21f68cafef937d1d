"""Unpacking an artifact without trusting it.

Every member is checked before a byte is written: no absolute paths, no
``..``, no links leading outside, no devices, nothing over the size and file
count limits. Files are then written one by one under the destination, never
through a link.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from beamdeploy_asgi.errors import ReleaseError


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 4 * 1024**3
    max_files: int = 20_000


DEFAULT_LIMITS = Limits()


def extract(artifact: Path, dest: Path, limits: Limits = DEFAULT_LIMITS) -> None:
    try:
        tar = tarfile.open(artifact, "r:gz")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ReleaseError(
            f"{artifact.name} is not a gzip-compressed tar archive ({exc})"
        ) from None
    with tar:
        members = _checked_members(tar, limits)
        try:
            _write(tar, members, dest)
        except (OSError, tarfile.TarError, EOFError) as exc:
            # A duplicate member, a truncated archive, a full disk...
            raise ReleaseError(f"the archive cannot be unpacked: {exc}") from None


def _checked_members(tar: tarfile.TarFile, limits: Limits) -> list[tarfile.TarInfo]:
    members: list[tarfile.TarInfo] = []
    sizes: dict[str, int] = {}
    total = 0
    try:
        for info in tar:
            if len(members) >= limits.max_files:
                raise ReleaseError(f"the archive holds more than {limits.max_files} files")
            name = _safe_name(info.name)
            if info.isreg() or info.islnk():
                size = info.size
                if info.islnk():
                    target = _safe_name(info.linkname)
                    if target not in sizes or target == name:
                        raise ReleaseError(
                            f"{info.name}: hard link to {info.linkname!r} is not a file "
                            "of the release"
                        )
                    size = sizes[target]  # written as a copy: it counts as much
                sizes[name] = size
                total += size
                if total > limits.max_bytes:
                    raise ReleaseError(f"the archive unpacks to more than {limits.max_bytes} bytes")
            elif info.issym():
                target = info.linkname
                landing = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
                if target.startswith("/") or landing == ".." or landing.startswith("../"):
                    raise ReleaseError(
                        f"{info.name}: link to {target!r} points outside the release"
                    )
            elif info.ischr() or info.isblk() or info.isfifo():
                raise ReleaseError(f"{info.name}: device and fifo files are not allowed")
            elif not info.isdir():
                raise ReleaseError(f"{info.name}: unsupported member type")
            members.append(info)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ReleaseError(f"the archive is damaged: {exc}") from None
    return members


def _safe_name(name: str) -> str:
    if not name or "\x00" in name or "\\" in name:
        raise ReleaseError(f"{name!r}: unusable member name")
    if name.startswith("/"):
        raise ReleaseError(f"{name}: absolute paths are not allowed")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ReleaseError(f"{name}: '..' is not allowed in member names")
    if not parts:
        return "."
    return "/".join(parts)


def _write(tar: tarfile.TarFile, members: list[tarfile.TarInfo], dest: Path) -> None:
    root = dest.resolve()
    files = {_safe_name(info.name): info for info in members if info.isreg()}
    for info in members:
        name = _safe_name(info.name)
        target = root / name
        parent = target.parent.resolve()
        if not parent.is_relative_to(root):
            raise ReleaseError(f"{info.name}: would be written outside the release")
        if info.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        parent.mkdir(parents=True, exist_ok=True)
        if info.issym():
            os.symlink(info.linkname, target)
            continue
        original = info if info.isreg() else files.get(_safe_name(info.linkname))
        source = tar.extractfile(original) if original is not None else None
        if source is None:
            raise ReleaseError(f"{info.name}: cannot be read")
        mode = 0o755 if info.mode & 0o111 else 0o644
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with source, os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out)
