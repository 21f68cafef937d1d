"""The artifact reader, in process: what it accepts, and each rule it refuses by."""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

import pytest

from beamdeploy_asgi.errors import ReleaseError
from beamdeploy_asgi.releases.unpack import DEFAULT_LIMITS, Limits, extract
from tests.releases.archives import (
    END,
    MANIFEST,
    WHEEL,
    directory,
    gzip_bytes,
    header,
    manifest_data,
    member,
    padded,
    patched,
    pax,
    sample_files,
    valid_tar,
)

FILES = sample_files()
START = member(MANIFEST, manifest_data(FILES))


def listed(*names: str, data: bytes = b"x") -> bytes:
    """A manifest listing the sample files and `names` (each holding `data`)."""
    return member(MANIFEST, manifest_data({**FILES, **dict.fromkeys(names, data)}))


def rest() -> bytes:
    """The sample's members after its manifest, without the end marker."""
    return valid_tar()[len(START) : -len(END)]


def unpack(tmp_path: Path, archive: bytes, limits: Limits = DEFAULT_LIMITS) -> Path:
    artifact = tmp_path / "artifact.tar.gz"
    artifact.write_bytes(archive)
    dest = tmp_path / "dest"
    extract(artifact, dest, limits)
    return dest


def refused(tmp_path: Path, archive: bytes, message: str, limits: Limits = DEFAULT_LIMITS) -> str:
    with pytest.raises(ReleaseError) as error:
        unpack(tmp_path, archive, limits)
    assert message in str(error.value), str(error.value)
    assert list((tmp_path / "dest").iterdir()) == [], "a refused archive leaves nothing"
    return str(error.value)


def test_a_well_formed_artifact_is_unpacked(tmp_path: Path):
    dest = unpack(tmp_path, gzip_bytes(valid_tar()))
    for name, data in FILES.items():
        assert (dest / name).read_bytes() == data
    assert (dest / MANIFEST).read_bytes() == manifest_data(FILES)
    assert (dest / WHEEL).stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_what_tarfile_writes_is_read_in_every_format(tmp_path: Path, fmt: int):
    long_name = "app/" + "pkg/" * 30 + "module.py"
    files = {**FILES, long_name: b"long = 1\n", "app/sample/caf\u00e9.py": b"", "app/run.sh": b"#!"}
    if fmt == tarfile.USTAR_FORMAT:
        del files["app/sample/caf\u00e9.py"]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=fmt) as tar:
        for name, data in [(MANIFEST, manifest_data(files)), *files.items()]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755 if name.endswith(".sh") else 0o644
            tar.addfile(info, io.BytesIO(data))
    dest = unpack(tmp_path, buffer.getvalue())
    assert (dest / long_name).read_bytes() == b"long = 1\n"
    assert (dest / "app/run.sh").stat().st_mode & 0o111


def test_the_manifest_first_pack_proposed_for_build_is_read(tmp_path: Path):
    """What `_pack` should write: the manifest, then the rest sorted, by tarfile."""
    staging = tmp_path / "release"
    for name, data in FILES.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(data)
    (staging / MANIFEST).write_bytes(manifest_data(FILES))
    artifact = tmp_path / "a.tar.gz"
    with tarfile.open(artifact, "w:gz") as tar:
        tar.add(staging / MANIFEST, arcname=MANIFEST)
        for path in sorted(staging.rglob("*")):
            if path.name != MANIFEST or path.parent != staging:
                tar.add(path, arcname=path.relative_to(staging).as_posix(), recursive=False)
    manifest = extract(artifact, tmp_path / "dest")
    assert manifest.wheels == [WHEEL]


def big_number_header() -> bytes:
    return header(WHEEL, 10**15)


CASES = {
    # the manifest
    "empty archive": (END, "the artifact has no beamdeploy-release.json"),
    "manifest not first": (rest() + START + END, "no beamdeploy-release.json as its first member"),
    "manifest a directory": (directory(MANIFEST) + END, "as its first member"),
    "manifest not json": (member(MANIFEST, b"{oops") + END, "is not valid JSON"),
    "manifest not utf-8": (member(MANIFEST, b'{"a": "\xff"}') + END, "is not valid JSON"),
    "manifest nested deep": (member(MANIFEST, b"[" * 200_000) + END, "is not valid JSON"),
    "manifest without app": (
        member(MANIFEST, manifest_data(FILES, app=None)) + END,
        "'app' must be a non-empty string",
    ),
    "manifest lists dot-dot": (listed("app/../../x") + END, "lists app/../../x"),
    "manifest lists elsewhere": (listed("etc/passwd") + END, "lists etc/passwd"),
    "manifest lists a nested wheel": (listed("wheels/a/b.whl") + END, "lists wheels/a/b.whl"),
    "manifest lists a non-wheel": (listed("wheels/notes.txt") + END, "lists wheels/notes.txt"),
    "manifest lists itself": (listed(MANIFEST) + END, "lists beamdeploy-release.json"),
    # what may follow it
    "unlisted file": (START + rest() + member("app/sneaky.py", b"x") + END, "app/sneaky.py is in"),
    "top-level file": (listed("evil.py") + member("evil.py", b"x") + END, "evil.py: an artifact"),
    "file in wheels": (START + member("wheels/x.txt", b"x") + END, "wheels/x.txt: an artifact"),
    "dir in wheels": (START + directory("wheels/sub") + END, "wheels/sub: an artifact holds"),
    "dir elsewhere": (START + directory("etc") + END, "etc: an artifact holds only"),
    "duplicate file": (START + rest() + member(WHEEL, FILES[WHEEL]) + END, "appears twice"),
    "duplicate manifest": (START + START + END, "beamdeploy-release.json appears twice"),
    "duplicate dir": (START + directory("app") + directory("app/") + END, "app appears twice"),
    "file then dir": (START + rest() + directory(WHEEL) + END, "appears twice"),
    "dir then file": (
        listed("app/x") + directory("app/x") + member("app/x", b"x") + END,
        "app/x appears twice",
    ),
    "file under a file": (
        listed("app/x", "app/x/y") + member("app/x", b"x") + member("app/x/y", b"x") + END,
        "app/x is a file in the archive, not a directory",
    ),
    "file where a dir was made": (
        listed("app/x/y", "app/x") + member("app/x/y", b"x") + member("app/x", b"x") + END,
        "app/x: a directory of that name is already in the archive",
    ),
    "missing file": (START + member(WHEEL, FILES[WHEEL]) + END, "is listed in beamdeploy-relea"),
    "checksum mismatch": (
        START + member(WHEEL, FILES[WHEEL][:-1] + b"!") + END,
        f"checksum mismatch for {WHEEL}",
    ),
    "directory with data": (START + member("app", b"data", b"5") + END, "app: a directory with 4"),
    # member kinds
    "hard link": (START + rest() + header("app/l", kind=b"1", linkname=WHEEL) + END, "hard links"),
    "symlink": (START + header("app/l", kind=b"2", linkname="/etc") + END, "symbolic links"),
    "char device": (START + header("app/null", kind=b"3") + END, "device and fifo files"),
    "block device": (START + header("app/sda", kind=b"4") + END, "device and fifo files"),
    "fifo": (START + header("app/fifo", kind=b"6") + END, "device and fifo files"),
    "sparse": (START + header("app/s", 1 << 40, b"S") + END, "sparse files are not allowed"),
    "pax sparse": (START + pax({"GNU.sparse.size": "9"}) + END, "sparse files are not allowed"),
    "gnu long link": (START + member("././@LongLink", b"x" * 50, b"K") + END, "GNU long link"),
    "global pax": (START + member("g", b"9 a=bcd\n", b"g") + END, "global pax headers"),
    "unknown type": (START + header("app/x", kind=b"Z") + END, "unsupported member type b'Z'"),
    # names
    "absolute": (START + member("/tmp/x", b"x") + END, "absolute paths are not allowed"),
    "dot-dot": (START + member("app/../../x", b"x") + END, "'..' is not allowed"),
    "dot": (START + member("./app/x", b"x") + END, "'.' parts are not allowed"),
    "empty part": (START + member("app//x", b"x") + END, "'.' parts are not allowed"),
    "backslash": (START + member("app\\..\\x", b"x") + END, "unusable member name"),
    "control character": (START + member("app/a\nb", b"x") + END, "control characters"),
    "nul in pax path": (START + pax({"path": "app/a\0b"}) + member("x", b"") + END, "unusable"),
    "not utf-8": (START + member(b"app/\xff", b"x") + END, "a member name is not UTF-8"),
    "pax path not utf-8": (START + pax({"path": b"app/\xff"}) + END, "a pax path is not UTF-8"),
    "name over 1024": (
        START + pax({"path": "app/" + "a/" * 520 + "b"}) + member("x", b"") + END,
        "over the 1024-byte limit",
    ),
    "part over 255": (
        START + pax({"path": "app/" + "a" * 256}) + member("x", b"") + END,
        "a part of the name is over the 255-byte limit",
    ),
    "too deep": (
        START + pax({"path": "app/" + "a/" * 70 + "b"}) + member("x", b"") + END,
        "more than 64 directories deep",
    ),
    # extended headers
    "long name over the cap": (
        START + header("././@LongLink", 300 * 1024**2, b"L") + END,
        "a GNU long name of 314572800 bytes",
    ),
    "pax over the cap": (START + header("p", 10**9, b"x") + END, "a pax header of 1000000000"),
    "pax with many records": (
        START + pax({f"k{i}": "v" for i in range(40)}) + END,
        "a pax header with more than 32 records",
    ),
    "pax malformed": (START + member("p", b"99 path=x\n", b"x") + END, "malformed pax header"),
    "pax bad size": (START + pax({"size": "-1"}) + END, "bad size in a pax header"),
    "pax huge size": (
        START + pax({"size": str(10**30)}) + header(WHEEL) + END,
        "the archive unpacks to more than",
    ),
    "three extended headers": (
        START + pax({"path": "app/a"}) * 3 + member("x") + END,
        "more than two extended headers in a row",
    ),
    "extended header at the end": (START + pax({"path": "app/a"}) + END, "ends with an extended"),
    # sizes and damage
    "absurd size": (START + big_number_header() + END, "unpacks to more than 4294967296 bytes"),
    "bad checksum": (START + header("app/x")[:-1] + b"!" + END, "bad header checksum"),
    "not ustar": (START + bytes(257) + b"nope" + bytes(251) + END, "not a ustar header"),
    "bad number": (
        START + patched(header("app/x", 1), 124, b"0000000000x\0") + END,
        "bad number in the header",
    ),
    "no end marker": (START + rest(), "the archive is truncated"),
    "data after the end": (START + rest() + END + b"hidden", "data after its end-of-archive"),
    "too much padding after the end": (START + rest() + END + bytes(2 << 20), "after its end-of"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused(tmp_path: Path, case: str):
    archive, message = CASES[case]
    refused(tmp_path, gzip_bytes(archive), message)


def test_the_manifest_size_is_capped(tmp_path: Path):
    refused(
        tmp_path,
        gzip_bytes(valid_tar()),
        "more than the 100-byte limit for a manifest",
        Limits(max_manifest_bytes=100),
    )


def test_the_total_size_is_capped(tmp_path: Path):
    message = refused(
        tmp_path, gzip_bytes(valid_tar()), "unpacks to more than 1000 bytes", Limits(max_bytes=1000)
    )
    assert WHEEL in message


def test_the_member_count_is_capped(tmp_path: Path):
    refused(tmp_path, gzip_bytes(valid_tar()), "more than 5 files", Limits(max_files=5))
    many = {WHEEL: b"", **{f"app/m{i}.py": b"" for i in range(9)}}
    refused(
        tmp_path,
        gzip_bytes(valid_tar(many)),
        "lists 10 files: with it, more than 10 files",
        Limits(max_files=10),
    )


def test_every_byte_out_of_gzip_counts(tmp_path: Path):
    """Extended headers are capped one by one; together they count against the stream cap."""
    stuffing = pax({f"k{i}": "v" * 240 for i in range(30)})
    archive = START + b"".join(stuffing * 2 + directory(f"app/d{i}") for i in range(20)) + END
    refused(
        tmp_path,
        gzip_bytes(archive),
        "more than 139168 bytes with its headers",
        Limits(max_bytes=4000, max_files=30),
    )


def test_the_compressed_size_is_capped(tmp_path: Path):
    archive = gzip_bytes(valid_tar()) + os.urandom(200_000)
    refused(tmp_path, archive, "over the 57638-byte limit for a compressed", Limits(1000, 10))


def test_the_time_is_capped(tmp_path: Path):
    """A million empty gzip members yield nothing, slowly: the deadline stops them."""
    empty = gzip_bytes(b"")
    archive = gzip_bytes(START) + empty * 1_000_000
    started = time.monotonic()
    refused(tmp_path, archive, "took more than 0.2 s", Limits(max_seconds=0.2))
    assert time.monotonic() - started < 5


def test_damaged_gzip(tmp_path: Path):
    good = gzip_bytes(valid_tar())
    refused(tmp_path, b"", "is empty, not a gzip-compressed tar archive")
    refused(tmp_path, valid_tar(), "is not a gzip-compressed tar archive")
    refused(tmp_path, good[: len(good) // 2], "the archive is truncated")
    refused(tmp_path, good[:-4], "the archive is truncated")
    refused(tmp_path, good + b"garbage", "the archive is damaged")
    flipped = bytearray(good)
    flipped[-8] ^= 0xFF  # the CRC
    refused(tmp_path, bytes(flipped), "the archive is damaged")


def test_concatenated_gzip_members_are_one_stream(tmp_path: Path):
    tar = valid_tar()
    dest = unpack(tmp_path, gzip_bytes(tar[:700]) + gzip_bytes(b"") + gzip_bytes(tar[700:]))
    assert (dest / WHEEL).read_bytes() == FILES[WHEEL]


def test_a_busy_destination_is_refused_and_left_alone(tmp_path: Path):
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "mine").write_text("keep")
    with pytest.raises(ReleaseError, match="it is not empty"):
        unpack(tmp_path, gzip_bytes(valid_tar()))
    assert (tmp_path / "dest" / "mine").read_text() == "keep"


def test_padding_and_header_fields_as_gnu_tar_writes_them(tmp_path: Path):
    """GNU magic, directories with a trailing slash, a long name header, record padding."""
    long_name = "app/" + "x" * 150 + ".py"
    files = {**FILES, long_name: b"1"}
    gnu = b"ustar  \0"
    archive = (
        member(MANIFEST, manifest_data(files), magic=gnu)
        + header("app/", 0, b"5", magic=gnu)
        + member("././@LongLink", long_name.encode() + b"\0", b"L", magic=gnu)
        + member(long_name, b"1", magic=gnu)
        + member(WHEEL, FILES[WHEEL], magic=gnu)
        + member("app/sample/__init__.py", b"", magic=gnu)
        + member("app/sample/app.py", FILES["app/sample/app.py"], magic=gnu)
    )
    archive = padded(archive + END)
    archive += bytes(-len(archive) % 10240)
    dest = unpack(tmp_path, gzip_bytes(archive))
    assert (dest / long_name).read_bytes() == b"1"


def test_the_manifest_is_handed_over_before_any_other_member(tmp_path: Path):
    """install can refuse an artifact for another Python before it is unpacked."""
    seen = []

    def refuse(manifest) -> None:
        seen.append(sorted(p.name for p in (tmp_path / "dest").iterdir()))
        raise ReleaseError(f"built for Python {manifest.python}")

    artifact = tmp_path / "a.tar.gz"
    artifact.write_bytes(gzip_bytes(valid_tar()))
    with pytest.raises(ReleaseError, match="built for Python 3.11"):
        extract(artifact, tmp_path / "dest", on_manifest=refuse)
    assert seen == [[MANIFEST]]
    assert list((tmp_path / "dest").iterdir()) == []


def test_only_a_regular_file_is_read(tmp_path: Path):
    with pytest.raises(ReleaseError, match="null is not a regular file"):
        extract(Path("/dev/null"), tmp_path / "dest")
    with pytest.raises(ReleaseError, match="cannot unpack missing.tar.gz"):
        extract(tmp_path / "missing.tar.gz", tmp_path / "dest")
