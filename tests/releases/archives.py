"""Crafting artifacts byte by byte, hostile ones included, small on disk.

tarfile refuses to write most of what an attacker would send, so headers are
built here; gzip is written piece by piece so that a member claiming
gigabytes costs a few megabytes and a second to make.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterable
from pathlib import Path

MANIFEST = "beamdeploy-release.json"
BLOCK = 512
END = bytes(2 * BLOCK)
WHEEL = "wheels/sample-1.0-py3-none-any.whl"


def header(
    name: str | bytes,
    size: int = 0,
    kind: bytes = b"0",
    *,
    linkname: str | bytes = b"",
    mode: int = 0o644,
    magic: bytes = b"ustar\x0000",
    prefix: bytes = b"",
) -> bytes:
    """One 512-byte ustar header with a correct checksum; sizes over 8 GiB in base-256."""
    name = name.encode() if isinstance(name, str) else name
    linkname = linkname.encode() if isinstance(linkname, str) else linkname
    if size < 8**11:
        size_field = b"%011o\0" % size
    else:
        size_field = b"\x80" + size.to_bytes(11, "big")
    block = bytearray(BLOCK)
    block[0:100] = name[:100].ljust(100, b"\0")
    block[100:108] = b"%07o\0" % mode
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = size_field
    block[136:148] = b"00000000000\0"
    block[148:156] = b" " * 8
    block[156:157] = kind
    block[157:257] = linkname[:100].ljust(100, b"\0")
    block[257:265] = magic[:8].ljust(8, b"\0")
    block[345:500] = prefix[:155].ljust(155, b"\0")
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def patched(block: bytes, offset: int, value: bytes) -> bytes:
    """`block` with `value` written at `offset`, its checksum made right again."""
    out = bytearray(block)
    out[offset : offset + len(value)] = value
    out[148:156] = b" " * 8
    out[148:156] = b"%06o\0 " % sum(out)
    return bytes(out)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def member(name: str | bytes, data: bytes = b"", kind: bytes = b"0", **kwargs) -> bytes:
    """A member's header and its data, padded to whole blocks."""
    return header(name, len(data), kind, **kwargs) + padded(data)


def directory(name: str) -> bytes:
    return header(name, 0, b"5", mode=0o755)


def pax_records(records: dict[str, str | bytes]) -> bytes:
    """ "LENGTH KEY=VALUE\\n" records, each LENGTH counting itself."""
    body = b""
    for key, value in records.items():
        value = value.encode() if isinstance(value, str) else value
        record = b" %s=%s\n" % (key.encode(), value)
        length = len(record) + 1
        while len(b"%d" % length) + len(record) != length:
            length += 1
        body += b"%d" % length + record
    return body


def pax(records: dict[str, str | bytes]) -> bytes:
    """A pax extended header applying to the next member."""
    return member("././@PaxHeader", pax_records(records), b"x")


def manifest_data(files: dict[str, bytes], **changes) -> bytes:
    data = {
        "format": 1,
        "name": "sample",
        "version": "1.0",
        "app": "sample.app:app",
        "python": "3.11",
        "platform": "any",
        "built_at": "2026-01-01T00:00:00+00:00",
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        "pythonpath": [],
    }
    data.update(changes)
    return json.dumps(data, indent=2).encode()


def sample_files() -> dict[str, bytes]:
    return {
        WHEEL: b"PK\x03\x04 not really a wheel " * 40,
        "app/sample/__init__.py": b"",
        "app/sample/app.py": b"app = None\n",
    }


def valid_tar(files: dict[str, bytes] | None = None) -> bytes:
    """The uncompressed tar of a well-formed artifact, manifest first."""
    files = sample_files() if files is None else files
    out = member(MANIFEST, manifest_data(files))
    made: set[str] = set()
    for name, data in files.items():
        parts = name.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            path = "/".join(parts[:depth])
            if path not in made:
                made.add(path)
                out += directory(path)
        out += member(name, data)
    return out + END


def gzip_bytes(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


def write_gzip(path: Path, pieces: Iterable[tuple[bytes, int]]) -> Path:
    """gzip of each (bytes, times) piece repeated: each piece is compressed once.

    A fully flushed raw deflate segment starts from an empty history, so it
    can be written again and again; 4 GiB of zeros cost ~4 MB and ~1 s.
    """
    crc = 0
    size = 0
    with open(path, "wb") as out:
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")
        for data, times in pieces:
            compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
            segment = compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)
            for _ in range(times):
                out.write(segment)
                crc = zlib.crc32(data, crc)
            size += len(data) * times
        out.write(zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH))
        out.write(crc.to_bytes(4, "little") + (size % 2**32).to_bytes(4, "little"))
    return path
