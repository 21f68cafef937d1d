"""Unpacking an artifact without trusting it.

The archive is read once, forward, as it comes out of gzip (our own small tar
reader: tarfile reads long names and pax headers into memory whole, and seeks
back for hard links). Everything is bounded before it is read: the compressed
bytes, every byte gzip produces (headers and padding included), each header's
name and extended records, each member's declared size, the member count and
the time spent.

The first member must be the manifest. It is parsed and checked before
anything else is written, and it says what may follow: directories and the
files it lists, under ``wheels/`` (wheel files only) or ``app/``, each file's
sha256 checked as it streams. Links, devices, fifos, sparse files, a member
seen twice and a listed file that never comes are refused, naming the member.
Files are created with O_EXCL|O_NOFOLLOW in directories made here, so nothing
lands outside the destination; a refused archive leaves the destination empty.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from beamdeploy_asgi.errors import ReleaseError
from beamdeploy_asgi.releases.manifest import ArtifactManifest
from beamdeploy_asgi.releases.release import MANIFEST

BLOCK = 512
CHUNK = 64 * 1024
MAX_PATH = 1024  # bytes in a member's name
MAX_COMPONENT = 255  # bytes in one part of it
MAX_DEPTH = 64  # parts in it
MAX_PAX = 8 * 1024  # a pax header's records
MAX_PAX_RECORDS = 32
MAX_TRAILER = 1024 * 1024  # zero padding after the end-of-archive marker
ENTRY_OVERHEAD = 4 * 1024  # headers and padding allowed per member on top of max_bytes
FILE_KINDS = (b"0", b"\0")
DIR_KIND = b"5"
REFUSED_KINDS = {
    b"1": "hard links are not allowed",
    b"2": "symbolic links are not allowed",
    b"3": "device and fifo files are not allowed",
    b"4": "device and fifo files are not allowed",
    b"6": "device and fifo files are not allowed",
    b"S": "sparse files are not allowed",
    b"K": "GNU long link names are not allowed (links are refused)",
    b"g": "global pax headers are not allowed",
}
OCTAL = re.compile(rb"[0-7]+")
DECIMAL = re.compile(rb"[0-9]+")
UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Limits:
    """What one artifact may cost the installer."""

    max_bytes: int = 4 * 1024**3  # the files' total size, unpacked
    max_files: int = 20_000  # members, directories and the manifest included
    max_seconds: float = 120.0  # to read, check and write the whole archive
    max_manifest_bytes: int = 4 * 1024**2  # holds ~40,000 files' checksums

    @property
    def max_stream(self) -> int:
        """Every byte gzip may produce: the files plus each member's headers and padding."""
        return self.max_bytes + ENTRY_OVERHEAD * (self.max_files + 3)

    @property
    def max_compressed(self) -> int:
        """Deflate grows incompressible data by far less than 1/16."""
        return self.max_stream + self.max_stream // 16


DEFAULT_LIMITS = Limits()


def extract(
    artifact: Path,
    dest: Path,
    limits: Limits = DEFAULT_LIMITS,
    *,
    on_manifest: Callable[[ArtifactManifest], None] | None = None,
) -> ArtifactManifest:
    """Unpack `artifact` into the empty directory `dest`; return its checked manifest.

    Anything the format does not allow or over a limit raises ReleaseError
    naming the member and the limit, and leaves `dest` empty. `on_manifest`
    runs once the manifest is checked and before any other member is read, so
    a caller can refuse an artifact (its Python, its platform) at no cost.
    """
    try:
        dest.mkdir(parents=True, exist_ok=True)
        busy = any(dest.iterdir())
        raw = open(artifact, "rb", buffering=0)
    except OSError as exc:
        raise ReleaseError(f"cannot unpack {artifact.name} into {dest}: {exc}") from None
    if busy:
        raw.close()
        raise ReleaseError(f"cannot unpack into {dest}: it is not empty")
    try:
        with raw:
            info = os.fstat(raw.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ReleaseError(f"{artifact.name} is not a regular file")
            if info.st_size > limits.max_compressed:
                raise ReleaseError(
                    f"{artifact.name} is {info.st_size} bytes, over the "
                    f"{limits.max_compressed}-byte limit for a compressed artifact "
                    f"(from the size limit {limits.max_bytes})"
                )
            stream = _Gunzip(raw, artifact.name, limits)
            return _Unpacker(stream, dest.resolve(), limits, on_manifest).run()
    except BaseException:
        _empty(dest)
        raise


class _Gunzip:
    """The decompressed stream, forward only, every byte counted against the limits."""

    def __init__(self, raw: BinaryIO, name: str, limits: Limits) -> None:
        self.raw = raw
        self.name = name
        self.limits = limits
        self.deadline = time.monotonic() + limits.max_seconds
        self.inflate = zlib.decompressobj(31)  # gzip only
        self.pending = b""  # compressed bytes not yet given to inflate
        self.buffer = bytearray()
        self.compressed = 0
        self.produced = 0
        self.where = "the start of the archive"  # named in errors

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise ReleaseError(
                f"unpacking {self.name} took more than {self.limits.max_seconds:g} s "
                f"(at {self.where}); refused"
            )

    def read(self, size: int) -> bytes:
        """Exactly `size` bytes (callers ask for at most CHUNK)."""
        while len(self.buffer) < size:
            if not self._more():
                raise ReleaseError(f"the archive is truncated (at {self.where})")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def finish(self) -> None:
        """Read to the end of the gzip stream: after the tar archive, only its zero padding."""
        after = 0
        while True:
            after += len(self.buffer)
            if self.buffer.count(0) != len(self.buffer) or after > MAX_TRAILER:
                raise ReleaseError(
                    "the archive has data after its end-of-archive marker "
                    f"(only up to {MAX_TRAILER} zero bytes of padding may follow it)"
                )
            self.buffer.clear()
            if not self._more():
                return

    def _more(self) -> bool:
        """Inflate up to CHUNK more bytes into the buffer; False at the end of the file."""
        self.check_time()
        if not self.pending:
            self.pending = self._read_raw()
            if not self.pending:
                if self.compressed == 0:
                    raise ReleaseError(f"{self.name} is empty, not a gzip-compressed tar archive")
                if not self.inflate.eof:
                    raise ReleaseError(f"the archive is truncated (at {self.where})")
                return False
        if self.inflate.eof:  # another gzip member follows
            self.inflate = zlib.decompressobj(31)
        try:
            out = self.inflate.decompress(self.pending, CHUNK)
        except zlib.error as exc:
            raise ReleaseError(f"the archive is damaged: {exc} (at {self.where})") from None
        self.pending = (
            self.inflate.unused_data if self.inflate.eof else self.inflate.unconsumed_tail
        )
        self.produced += len(out)
        if self.produced > self.limits.max_stream:
            raise ReleaseError(
                f"the archive unpacks to more than {self.limits.max_stream} bytes with its "
                f"headers (the size limit {self.limits.max_bytes} plus "
                f"{ENTRY_OVERHEAD} per member; at {self.where})"
            )
        self.buffer += out
        return True

    def _read_raw(self) -> bytes:
        try:
            data = self.raw.read(CHUNK)
        except OSError as exc:
            raise ReleaseError(f"{self.name} cannot be read: {exc.strerror}") from None
        if self.compressed == 0 and data and not data.startswith(b"\x1f\x8b"):
            raise ReleaseError(f"{self.name} is not a gzip-compressed tar archive")
        self.compressed += len(data)
        if self.compressed > self.limits.max_compressed:
            raise ReleaseError(
                f"{self.name} is more than {self.limits.max_compressed} bytes compressed; refused"
            )
        return data


@dataclass
class _Member:
    kind: bytes
    name: str
    size: int
    mode: int


class _Unpacker:
    def __init__(
        self,
        stream: _Gunzip,
        root: Path,
        limits: Limits,
        on_manifest: Callable[[ArtifactManifest], None] | None,
    ) -> None:
        self.stream = stream
        self.root = root
        self.limits = limits
        self.on_manifest = on_manifest
        self.count = 0
        self.total = 0  # the files' bytes
        self.seen: set[str] = set()
        self.dirs: set[str] = set()

    def run(self) -> ArtifactManifest:
        first = self._next()
        if first is None:
            raise ReleaseError(f"the artifact has no {MANIFEST}: the archive is empty")
        name = self._check(first)
        if name != MANIFEST or first.kind not in FILE_KINDS:
            raise ReleaseError(
                f"the artifact has no {MANIFEST} as its first member (it starts with {_show(name)})"
            )
        manifest = self._manifest(first)
        if self.on_manifest is not None:
            self.on_manifest(manifest)
        while (member := self._next()) is not None:
            name = self._check(member)
            if member.kind == DIR_KIND:
                if member.size:
                    raise ReleaseError(
                        f"{_show(name)}: a directory with {member.size} bytes of data"
                    )
                self._directory(name.split("/"), name)
                continue
            if name not in manifest.files:
                raise ReleaseError(f"{_show(name)} is in the artifact but not in {MANIFEST}")
            self._file(member, name, manifest.files[name])
        self.stream.where = "the end of the archive"
        self.stream.finish()
        missing = sorted(set(manifest.files) - self.seen)
        if missing:
            raise ReleaseError(
                f"{_show(missing[0])} is listed in {MANIFEST} but missing from the artifact"
            )
        return manifest

    def _next(self) -> _Member | None:
        """The next member's header, its extended headers applied; None at the end."""
        path: str | None = None  # from a GNU long-name or a pax header
        size: int | None = None  # from a pax header
        for _ in range(3):  # a member and at most two extended headers before it
            block = self.stream.read(BLOCK)
            if block.count(0) == BLOCK:
                if path is not None or size is not None:
                    raise ReleaseError("the archive ends with an extended header and no member")
                return None
            kind, header_size, mode = _parse_header(block, self.stream.where)
            if kind == b"L":
                if header_size > MAX_PATH + 1:
                    raise ReleaseError(
                        f"a GNU long name of {header_size} bytes (after {self.stream.where}) "
                        f"is over the {MAX_PATH}-byte limit for a name"
                    )
                data = self._data(header_size)
                path = _decode(data.split(b"\0", 1)[0], "a GNU long name")
                continue
            if kind == b"x":
                if header_size > MAX_PAX:
                    raise ReleaseError(
                        f"a pax header of {header_size} bytes (after {self.stream.where}) "
                        f"is over the {MAX_PAX}-byte limit"
                    )
                records = _pax(self._data(header_size))
                if "path" in records:
                    path = _decode(records["path"], "a pax path")
                if "size" in records:
                    size = _pax_size(records["size"])
                continue
            name = path if path is not None else _ustar_name(block)
            return _Member(kind, name, header_size if size is None else size, mode)
        raise ReleaseError(f"more than two extended headers in a row (after {self.stream.where})")

    def _check(self, member: _Member) -> str:
        """The member's canonical name, if its kind, name and count are allowed."""
        self.count += 1
        if self.count > self.limits.max_files:
            raise ReleaseError(
                f"the archive holds more than {self.limits.max_files} files "
                f"({_show(member.name)} is one too many)"
            )
        refused = REFUSED_KINDS.get(member.kind)
        if refused is None and member.kind not in FILE_KINDS and member.kind != DIR_KIND:
            refused = f"unsupported member type {member.kind!r}"
        if refused is not None:
            raise ReleaseError(f"{_show(member.name)}: {refused}")
        name = member.name
        if member.kind == DIR_KIND and name.endswith("/"):
            name = name[:-1]
        name = _safe_name(name)
        self.stream.where = _show(name)
        if name in self.seen:
            raise ReleaseError(f"{_show(name)} appears twice in the archive")
        self.seen.add(name)
        if self.count > 1 and not _allowed(name, member.kind == DIR_KIND):
            raise ReleaseError(
                f"{_show(name)}: an artifact holds only {MANIFEST}, wheels/*.whl and app/"
            )
        return name

    def _manifest(self, member: _Member) -> ArtifactManifest:
        if member.size > self.limits.max_manifest_bytes:
            raise ReleaseError(
                f"{MANIFEST} is {member.size} bytes, more than the "
                f"{self.limits.max_manifest_bytes}-byte limit for a manifest"
            )
        self._count_bytes(member.size, MANIFEST)
        raw = self._data(member.size)
        try:
            data = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise ReleaseError(f"{MANIFEST} is not valid JSON: {exc}") from None
        manifest = ArtifactManifest.from_dict(data)
        if len(manifest.files) >= self.limits.max_files:
            raise ReleaseError(
                f"{MANIFEST} lists {len(manifest.files)} files: with it, more than "
                f"{self.limits.max_files} files"
            )
        for name in manifest.files:
            if _canonical(name) is None or not _allowed(name, directory=False):
                raise ReleaseError(
                    f"{MANIFEST} lists {_show(name)}: an artifact holds only {MANIFEST}, "
                    "wheels/*.whl and app/"
                )
        try:
            (self.root / MANIFEST).write_bytes(raw)
        except OSError as exc:
            raise ReleaseError(f"{MANIFEST}: cannot be written: {exc.strerror}") from None
        return manifest

    def _file(self, member: _Member, name: str, expected: str) -> None:
        self._count_bytes(member.size, name)
        parts = name.split("/")
        self._directory(parts[:-1], name)
        mode = 0o755 if member.mode & 0o111 else 0o644
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        digest = hashlib.sha256()
        try:
            fd = os.open(self.root.joinpath(*parts), flags, mode)
        except FileExistsError:
            raise ReleaseError(
                f"{_show(name)}: a directory of that name is already in the archive"
            ) from None
        except OSError as exc:
            raise ReleaseError(f"{_show(name)}: cannot be written: {exc.strerror}") from None
        with os.fdopen(fd, "wb") as out:
            remaining = member.size
            while remaining:
                data = self.stream.read(min(CHUNK, remaining))
                digest.update(data)
                try:
                    out.write(data)
                except OSError as exc:
                    raise ReleaseError(
                        f"{_show(name)}: cannot be written: {exc.strerror}"
                    ) from None
                remaining -= len(data)
        self.stream.read(-member.size % BLOCK)
        if digest.hexdigest() != expected:
            raise ReleaseError(f"checksum mismatch for {name}: the artifact was altered")

    def _directory(self, parts: list[str], name: str) -> None:
        """Make the directories of `parts` under the root, through no link."""
        for depth in range(1, len(parts) + 1):
            path = "/".join(parts[:depth])
            if path in self.dirs:
                continue
            self.stream.check_time()
            full = self.root.joinpath(*parts[:depth])
            try:
                os.mkdir(full, 0o755)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(full).st_mode):
                    raise ReleaseError(
                        f"{_show(name)}: {_show(path)} is a file in the archive, not a directory"
                    ) from None
            except OSError as exc:
                raise ReleaseError(f"{_show(name)}: cannot be written: {exc.strerror}") from None
            self.dirs.add(path)

    def _count_bytes(self, size: int, name: str) -> None:
        self.total += size
        if self.total > self.limits.max_bytes:
            raise ReleaseError(
                f"the archive unpacks to more than {self.limits.max_bytes} bytes "
                f"({_show(name)} is {size} bytes)"
            )

    def _data(self, size: int) -> bytes:
        """A small member's data (size checked by the caller), without its padding."""
        data = bytearray()
        while len(data) < size:
            data += self.stream.read(min(CHUNK, size - len(data)))
        self.stream.read(-size % BLOCK)
        return bytes(data)


def _parse_header(block: bytes, after: str) -> tuple[bytes, int, int]:
    """Type, size and mode of a ustar header, refused if damaged."""
    if block[257:263] not in (b"ustar\x00", b"ustar "):
        raise ReleaseError(f"the archive is damaged: not a ustar header after {after}")
    checksum = _number(block[148:156], after)
    fields = block[:148] + block[156:]
    unsigned = sum(fields) + 8 * 32  # the checksum field counts as spaces
    if checksum != unsigned and checksum != unsigned - 256 * sum(b > 127 for b in fields):
        raise ReleaseError(f"the archive is damaged: bad header checksum after {after}")
    return block[156:157], _number(block[124:136], after), _number(block[100:108], after)


def _number(field: bytes, after: str) -> int:
    if field[0] == 0x80:  # GNU base-256, for sizes over 8 GiB
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip(b" ")
    if not digits:
        return 0
    if not OCTAL.fullmatch(digits):
        raise ReleaseError(f"the archive is damaged: bad number in the header after {after}")
    return int(digits, 8)


def _ustar_name(block: bytes) -> str:
    name = block[:100].split(b"\0", 1)[0]
    if block[257:263] == b"ustar\x00":  # POSIX: a prefix may hold the start of the path
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return _decode(name, "a member name")


def _pax(data: bytes) -> dict[str, bytes]:
    """A pax header's "LENGTH KEY=VALUE\\n" records."""
    records: dict[str, bytes] = {}
    position = 0
    while position < len(data):
        space = data.find(b" ", position, position + 12)
        length = data[position:space] if space > 0 else b""
        if not DECIMAL.fullmatch(length):
            raise ReleaseError("the archive is damaged: malformed pax header record")
        end = position + int(length)
        key, equals, value = data[space + 1 : end - 1].partition(b"=")
        if end > len(data) or end <= space or data[end - 1 : end] != b"\n" or not equals:
            raise ReleaseError("the archive is damaged: malformed pax header record")
        if len(records) >= MAX_PAX_RECORDS:
            raise ReleaseError(f"a pax header with more than {MAX_PAX_RECORDS} records")
        if key.startswith(b"GNU.sparse."):
            raise ReleaseError("sparse files are not allowed")
        records[_decode(key, "a pax key")] = value
        position = end
    return records


def _pax_size(value: bytes) -> int:
    if not DECIMAL.fullmatch(value):
        raise ReleaseError("the archive is damaged: bad size in a pax header")
    return int(value)


def _decode(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ReleaseError(f"{raw[:200]!r}: {what} is not UTF-8") from None


def _safe_name(name: str) -> str:
    """`name` if it is a plain relative path within the limits."""
    if not name or "\x00" in name or "\\" in name:
        raise ReleaseError(f"{name!r}: unusable member name")
    if name.startswith("/"):
        raise ReleaseError(f"{_show(name)}: absolute paths are not allowed")
    parts = name.split("/")
    if ".." in parts:
        raise ReleaseError(f"{_show(name)}: '..' is not allowed in member names")
    if "" in parts or "." in parts:
        raise ReleaseError(f"{_show(name)}: empty or '.' parts are not allowed in member names")
    if UNPRINTABLE.search(name):
        raise ReleaseError(f"{_show(name)}: control characters are not allowed in member names")
    if len(name.encode()) > MAX_PATH:
        raise ReleaseError(f"{_show(name)}: the name is over the {MAX_PATH}-byte limit")
    if len(parts) > MAX_DEPTH:
        raise ReleaseError(f"{_show(name)}: the name is more than {MAX_DEPTH} directories deep")
    for part in parts:
        if len(part.encode()) > MAX_COMPONENT:
            raise ReleaseError(
                f"{_show(name)}: a part of the name is over the {MAX_COMPONENT}-byte limit"
            )
    return name


def _canonical(name: str) -> str | None:
    try:
        return _safe_name(name)
    except ReleaseError:
        return None


def _allowed(name: str, directory: bool) -> bool:
    """What an artifact may hold besides its manifest: wheels/*.whl, app/."""
    top, _, rest = name.partition("/")
    if directory:
        return top in ("wheels", "app") and (top == "app" or not rest)
    if top == "wheels":
        return "/" not in rest and rest.endswith(".whl") and len(rest) > 4
    return top == "app" and bool(rest)


def _show(name: str) -> str:
    """A member name fit for a message: printable and not too long."""
    shown = name if not UNPRINTABLE.search(name) else repr(name)
    return shown if len(shown) <= 200 else shown[:200] + "..."


def _empty(dest: Path) -> None:
    """Remove what a refused archive left: dest was empty when it started."""
    try:
        entries = list(dest.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
