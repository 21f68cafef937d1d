"""Fuzzing the artifact reader with generated archives, seeded and time-boxed.

Each case is a well-formed artifact, then maybe mutated: members dropped,
repeated, reordered, retyped, renamed to escape, sizes lying, manifests
edited, extended headers of junk, bytes flipped in the tar or in the gzip,
truncations, trailing garbage. extract() must unpack an intact artifact
exactly, and anything else either exactly or with a ReleaseError: never
another exception, never a byte outside the destination.

ARCHIVE_FUZZ_SEED and ARCHIVE_FUZZ_SECONDS change the seed and the budget;
a failure names its case, and `case(SEED, N)` rebuilds it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import stat
import tarfile
import time
import traceback
import zlib
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from beamdeploy_asgi.errors import ReleaseError
from beamdeploy_asgi.releases.unpack import Limits, extract
from tests.releases.archives import (
    END,
    MANIFEST,
    gzip_bytes,
    header,
    manifest_data,
    padded,
    pax,
    pax_records,
)

SEED = int(os.environ.get("ARCHIVE_FUZZ_SEED", "8"))
SECONDS = float(os.environ.get("ARCHIVE_FUZZ_SECONDS", "4"))
LIMITS = Limits(max_bytes=256 * 1024, max_files=40, max_seconds=5, max_manifest_bytes=16 * 1024)
KINDS = [b"0", b"\0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"S", b"K", b"L", b"g", b"x", b"Z"]
ESCAPES = (
    "../escaped",
    "app/../../escaped",
    "app/../../../escaped",
    "/tmp/beamdeploy-fuzz-escaped",
    "app/..\\..\\x",
)
ODD_NAMES = (
    "",
    ".",
    "./app/a.py",
    "app//a.py",
    "app/",
    "wheels/",
    "wheels/x.txt",
    "wheels/sub/x.whl",
    "etc/passwd",
    MANIFEST,
    "app/a\x00b",
    "app/a\nb",
    "app/" + "x" * 300,
    "app/" + "d/" * 80 + "f",
    "app/caf\u00e9/\u2603.py",
)


@dataclass
class Entry:
    name: str | bytes
    data: bytes = b""
    kind: bytes = b"0"
    linkname: str = ""
    size: int | None = None  # declared, when it lies
    carrier: str = ""  # how a long name travels: "pax", "gnu" or in the header


def ident(rng: random.Random) -> str:
    first = rng.choice("abcdefghijklmnopqrstuvwxyz")
    rest = "".join(rng.choice("abcdefghij0123456789_-.\u00e9") for _ in range(rng.randint(0, 12)))
    return first + rest + ("x" * rng.randint(60, 130) if rng.random() < 0.1 else "")


def files_of(rng: random.Random) -> dict[str, bytes]:
    files = {}
    for _ in range(rng.randint(1, 3)):
        files[f"wheels/{ident(rng)}-1.0-py3-none-any.whl"] = rng.randbytes(rng.randint(0, 3000))
    for _ in range(rng.randint(0, 6)):
        parts = [ident(rng) for _ in range(rng.randint(0, 3))]
        files["/".join(["app", *parts, ident(rng) + ".py"])] = rng.randbytes(rng.randint(0, 2000))
    return files


def valid_entries(rng: random.Random, files: dict[str, bytes]) -> list[Entry]:
    entries = [Entry(MANIFEST, manifest_data(files))]
    dirs = {"/".join(name.split("/")[:i]) for name in files for i in range(1, name.count("/") + 1)}
    rest = [Entry(name, data) for name, data in files.items()]
    rest += [Entry(name, kind=b"5") for name in dirs if rng.random() < 0.5]
    rng.shuffle(rest)
    for entry in entries + rest:
        long = len(str(entry.name).encode()) > 100
        entry.carrier = rng.choice(["pax", "gnu"]) if long or rng.random() < 0.1 else ""
    return entries + rest


def serialize(entries: list[Entry]) -> tuple[bytes, list[int]]:
    """The tar bytes and where each header block starts."""
    out = bytearray()
    headers = []
    for entry in entries:
        name = entry.name.encode() if isinstance(entry.name, str) else entry.name
        if entry.carrier == "pax":
            out += pax({"path": name})
        elif entry.carrier == "gnu":
            out += header("././@LongLink", len(name) + 1, b"L") + padded(name + b"\0")
        headers.append(len(out))
        size = len(entry.data) if entry.size is None else entry.size
        out += header(name[:100], max(size, 0), entry.kind, linkname=entry.linkname)
        out += padded(entry.data)
    return bytes(out + END), headers


def mutate_entries(rng: random.Random, entries: list[Entry], files: dict[str, bytes]) -> None:
    choice = rng.randrange(10)
    index = rng.randrange(len(entries))
    entry = entries[index]
    if choice == 0 and len(entries) > 1:
        del entries[index]
    elif choice == 1:
        entries.insert(rng.randrange(len(entries) + 1), replace(entry))
    elif choice == 2:
        rng.shuffle(entries)
    elif choice == 3:
        name = rng.choice(ESCAPES + ODD_NAMES + tuple(files))
        kind = rng.choice(KINDS)
        evil = Entry(name, rng.randbytes(rng.randint(0, 600)), kind, rng.choice(ESCAPES + ("",)))
        evil.carrier = rng.choice(["", "", "pax", "gnu"])
        entries.insert(rng.randrange(len(entries) + 1), evil)
    elif choice == 4 and entry.data:
        data = bytearray(entry.data)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        entry.data = bytes(data)
    elif choice == 5:
        entry.size = len(entry.data) + rng.choice([-1, 1, 511, -512, 10**6, 2**33, 2**40])
    elif choice == 6:
        entries[0].data = edited_manifest(rng, files)
    elif choice == 7:
        entry.kind = rng.choice(KINDS)
    elif choice == 8:
        entry.name = rng.choice(ESCAPES + ODD_NAMES)
    else:
        entries.insert(rng.randrange(len(entries) + 1), Entry("junk", junk_header(rng), b"?"))


def edited_manifest(rng: random.Random, files: dict[str, bytes]) -> bytes:
    data = json.loads(manifest_data(files))
    edit = rng.randrange(6)
    if edit == 0:
        data.pop(rng.choice(list(data)))
    elif edit == 1:
        data["files"][rng.choice(ESCAPES + ODD_NAMES)] = "0" * 64
    elif edit == 2:
        data["files"] = {}
    elif edit == 3:
        data = rng.choice([[], "x", None, 7, {"files": []}])
    elif edit == 4:
        data[rng.choice(["name", "version", "app", "python"])] = rng.choice(["", "../x", 5, None])
    else:
        return rng.randbytes(rng.randint(0, 200))
    return json.dumps(data).encode()


def junk_header(rng: random.Random) -> bytes:
    """Raw bytes for a pax or GNU long-name header: records well- or ill-formed."""
    if rng.random() < 0.5:
        keys = ["path", "size", "linkpath", "GNU.sparse.size", "mtime", ident(rng)]
        values = [*ESCAPES, *ODD_NAMES, "12", "-3", str(2**70), "x"]
        records = {rng.choice(keys): rng.choice(values) for _ in range(rng.randint(1, 4))}
        return pax_records(records)
    return rng.choice([b"9 path=\n", b"x" * 40, b"99999999999 a=b\n", rng.randbytes(100)])


def case(seed: int, number: int) -> tuple[bytes, bool]:
    """Case `number`'s gzip bytes, and whether it is an intact artifact."""
    rng = random.Random(f"{seed}-{number}")
    files = files_of(rng)
    if rng.random() < 0.15:
        return tarfile_archive(rng, files), True
    entries = valid_entries(rng, files)
    mutations = rng.choice([0, 0, 1, 1, 2, 3])
    for _ in range(mutations):
        mutate_entries(rng, entries, files)
    for entry in entries:
        if entry.kind == b"?":
            entry.kind = rng.choice([b"x", b"L"])
    tar, headers = serialize(entries)
    intact = mutations == 0
    if rng.random() < 0.25:
        tar, intact = mutate_bytes(rng, tar, headers), False
    data = gzip_bytes(tar)
    if rng.random() < 0.15:
        data, intact = mutate_gzip(rng, data, tar), False
    return data, intact


def mutate_bytes(rng: random.Random, tar: bytes, headers: list[int]) -> bytes:
    out = bytearray(tar)
    kind = rng.randrange(4)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    elif kind == 1:  # a header field changed, its checksum made right: deeper parsing
        start = rng.choice(headers)
        for _ in range(rng.randint(1, 3)):
            out[start + rng.randrange(148)] = rng.choice(b"01234567\x00 /.\x80\xffa")
        out[start + 148 : start + 156] = b" " * 8
        out[start + 148 : start + 156] = b"%06o\0 " % sum(out[start : start + 512])
    elif kind == 2:
        del out[rng.randrange(len(out)) :]
    else:
        out += rng.choice([b"\x01", bytes(2 << 20), rng.randbytes(700)])
    return bytes(out)


def mutate_gzip(rng: random.Random, data: bytes, tar: bytes) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        flipped = bytearray(data)
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        return bytes(flipped)
    if kind == 1:
        return data[: rng.randrange(len(data))]
    if kind == 2:
        return data + rng.choice([b"\x1f\x8b", rng.randbytes(30), gzip_bytes(b"x")])
    cut = rng.randrange(len(tar) + 1)
    tail = rng.choice([gzip_bytes, zlib.compress])(tar[cut:])
    return gzip_bytes(tar[:cut]) + gzip_bytes(b"") + tail


def tarfile_archive(rng: random.Random, files: dict[str, bytes]) -> bytes:
    """The same artifact as tarfile writes it, in one of its formats."""
    buffer = io.BytesIO()
    fmt = rng.choice([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
    with tarfile.open(fileobj=buffer, mode="w:gz", format=fmt) as tar:
        for name, data in [(MANIFEST, manifest_data(files)), *files.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def check_unpacked(dest: Path, manifest_files: dict[str, str]) -> None:
    """Exactly the manifest and its files, regular files and directories only."""
    found = {}
    for path in dest.rglob("*"):
        mode = os.lstat(path).st_mode
        assert stat.S_ISREG(mode) or stat.S_ISDIR(mode), f"{path} is neither file nor dir"
        if stat.S_ISREG(mode):
            found[path.relative_to(dest).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    assert found.pop(MANIFEST, None) is not None
    assert found == manifest_files


def test_the_reader_refuses_cleanly_or_unpacks_exactly(tmp_path: Path):
    box = tmp_path / "box"
    box.mkdir()
    artifact, dest = box / "artifact.tar.gz", box / "dest"
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + SECONDS
    number = 0
    while time.monotonic() < deadline:
        number += 1
        data, intact = case(SEED, number)
        artifact.write_bytes(data)
        where = f"case({SEED}, {number})"
        try:
            manifest = extract(artifact, dest, LIMITS)
        except ReleaseError as exc:
            message = str(exc)
            assert message.strip(), f"{where}: a ReleaseError without a message"
            assert not intact, f"{where}: an intact artifact was refused: {message}"
            assert list(dest.iterdir()) == [], f"{where}: a refused archive left files"
            outcomes[category(message)] += 1
        except Exception:  # anything else is the bug this test looks for
            raise AssertionError(f"{where} raised:\n{traceback.format_exc()}") from None
        else:
            check_unpacked(dest, manifest.files)
            outcomes["unpacked"] += 1
        assert sorted(p.name for p in box.iterdir()) == ["artifact.tar.gz", "dest"], where
        assert (
            not Path("/tmp/beamdeploy-fuzz-escaped").exists()
            and not (tmp_path / "escaped").exists()
        ), where
        shutil.rmtree(dest)
    print(f"\n{number} archives in {SECONDS:g} s (seed {SEED}): {dict(outcomes.most_common())}")
    assert number > 100
    assert outcomes["unpacked"] > 20
    assert len(outcomes) > 20, "the mutations reach many different rules"


def category(message: str) -> str:
    """A refusal's rule, without the member names and numbers that vary."""
    words = [w for w in message.split() if w.isalpha() and w.islower()]
    return " ".join(words[:6])
