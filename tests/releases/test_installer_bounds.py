"""Issue 8's attacks against the real installer subprocess: bounded memory, time and disk.

Each hostile artifact is a few hundred kilobytes to a few megabytes on disk
and claims hundreds of megabytes to gigabytes inside. The installer runs as
the arbiter runs it, under a wrapper process that reports its peak resident
memory (ru_maxrss of its one child) and wall time; both are printed.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.releases.archives import (
    END,
    MANIFEST,
    directory,
    gzip_bytes,
    header,
    manifest_data,
    member,
    sample_files,
    valid_tar,
    write_gzip,
)

MB = 1024**2
GB = 1024**3
MAX_RSS_MB = 150
MAX_SECONDS = 20

MEASURE = """
import json, resource, subprocess, sys, time
started = time.monotonic()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({
    "returncode": done.returncode,
    "stdout": done.stdout,
    "stderr": done.stderr,
    "seconds": time.monotonic() - started,
    "max_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
}))
"""


def run_installer(tmp_path: Path, artifact: Path, *args: str) -> dict:
    """Run `python -m beamdeploy_asgi.releases.install` as the arbiter does; measure it."""
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "beamdeploy_asgi.releases.install", str(artifact)]
    command += ["--state-dir", str(state), *args]
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, *command],
        capture_output=True,
        text=True,
        cwd=state,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    lines = [json.loads(line) for line in result["stdout"].splitlines() if line.strip()]
    result["last"] = lines[-1] if lines else {}
    return result


def refused_within_bounds(tmp_path: Path, artifact: Path, message: str, *args: str) -> dict:
    size = artifact.stat().st_size
    result = run_installer(tmp_path, artifact, *args)
    print(
        f"\n{tmp_path.name}: artifact {size / MB:.2f} MB on disk; installer peak "
        f"{result['max_rss_mb']:.0f} MB, {result['seconds']:.2f} s; "
        f"refused: {result['last'].get('error')}"
    )
    assert result["returncode"] == 1, result["stderr"]
    assert "Traceback" not in result["stderr"], result["stderr"]
    assert message in result["last"].get("error", ""), result["last"]
    assert result["max_rss_mb"] < MAX_RSS_MB
    assert result["seconds"] < MAX_SECONDS
    assert_nothing_left(tmp_path, artifact)
    return result


def assert_nothing_left(tmp_path: Path, artifact: Path) -> None:
    state = tmp_path / "state"
    releases = state / "releases"
    assert not releases.exists() or list(releases.iterdir()) == [], "nothing in the store"
    assert sorted(p.name for p in state.iterdir()) in ([], ["releases"])
    assert sorted(tmp_path.iterdir()) == sorted([artifact, state]), "nothing outside it"


def with_manifest(files: dict[str, bytes], **digests: str) -> bytes:
    """The manifest member listing `files`, some digests replaced (by name)."""
    data = json.loads(manifest_data(files))
    data["files"].update(digests)
    return member(MANIFEST, json.dumps(data).encode())


def zeros_digest(size: int) -> str:
    digest = hashlib.sha256()
    block = bytes(MB)
    for _ in range(size // MB):
        digest.update(block)
    return digest.hexdigest()


FILES = sample_files()
START = member(MANIFEST, manifest_data(FILES))
REST = valid_tar()[len(START) : -len(END)]


def test_a_gnu_long_name_of_300_mb_is_refused_before_it_is_read(tmp_path: Path):
    artifact = write_gzip(
        tmp_path / "long-name.tar.gz",
        [(START, 1), (header("././@LongLink", 300 * MB, b"L"), 1), (b"a" * MB, 300), (END, 1)],
    )
    assert artifact.stat().st_size < 2 * MB
    refused_within_bounds(tmp_path, artifact, "a GNU long name of 314572800 bytes")


def test_a_gnu_long_name_first_is_refused_before_it_is_read(tmp_path: Path):
    artifact = write_gzip(
        tmp_path / "long-name-first.tar.gz",
        [(header("././@LongLink", 300 * MB, b"L"), 1), (b"a" * MB, 300), (END, 1)],
    )
    refused_within_bounds(tmp_path, artifact, "over the 1024-byte limit for a name")


def test_a_pax_header_of_300_mb_is_refused_before_it_is_read(tmp_path: Path):
    record = b"%d path=" % (300 * MB)
    artifact = write_gzip(
        tmp_path / "pax.tar.gz",
        [(START, 1), (header("././@PaxHeader", 300 * MB, b"x"), 1), (record, 1)]
        + [(b"a" * MB, 300), (END, 1)],
    )
    refused_within_bounds(tmp_path, artifact, "a pax header of 314572800 bytes")


def test_hard_links_between_large_members_are_refused_at_the_first(tmp_path: Path):
    """Each link once made tarfile rewind the gzip stream to copy its target."""
    big = {f"app/big{i}.bin": 16 * MB for i in range(12)}
    files = {**FILES, **dict.fromkeys(big, b"")}
    digests = {name: zeros_digest(size) for name, size in big.items()}
    pieces = [(with_manifest(files, **digests), 1), (REST, 1), (directory("app/links"), 1)]
    for i, name in enumerate(big):
        pieces += [(header(name, 16 * MB), 1), (bytes(MB), 16)]
        pieces += [(header(f"app/links/{i}-{j}", kind=b"1", linkname=name), 1) for j in range(10)]
    artifact = write_gzip(tmp_path / "links.tar.gz", pieces + [(END, 1)])
    assert artifact.stat().st_size < 1 * MB
    refused_within_bounds(tmp_path, artifact, "app/links/0-0: hard links are not allowed")


def test_a_gzip_bomb_before_the_manifest_writes_nothing(tmp_path: Path):
    artifact = write_gzip(
        tmp_path / "bomb-first.tar.gz",
        [(header("app/bomb", 4 * GB - 1), 1), (bytes(16 * MB), 256), (END, 1)],
    )
    assert artifact.stat().st_size < 5 * MB
    refused_within_bounds(
        tmp_path,
        artifact,
        "no beamdeploy-release.json as its first member (it starts with app/bomb)",
    )


def test_a_listed_gzip_bomb_over_the_size_limit_is_refused_by_its_header(tmp_path: Path):
    bomb = "wheels/bomb-1.0-py3-none-any.whl"
    files = {**FILES, bomb: b""}
    artifact = write_gzip(
        tmp_path / "bomb-listed.tar.gz",
        [(with_manifest(files), 1), (REST, 1), (header(bomb, 4 * GB), 1)]
        + [(bytes(16 * MB), 256), (END, 1)],
    )
    refused_within_bounds(tmp_path, artifact, f"unpacks to more than {4 * GB} bytes ({bomb} is")


def test_an_unlisted_gzip_bomb_is_refused_by_its_header(tmp_path: Path):
    artifact = write_gzip(
        tmp_path / "bomb-unlisted.tar.gz",
        [(START + REST, 1), (header("app/bomb", 3 * GB), 1), (bytes(16 * MB), 192), (END, 1)],
    )
    refused_within_bounds(tmp_path, artifact, "app/bomb is in the artifact but not in")


def test_a_bomb_with_a_wrong_checksum_streams_within_the_limit_and_leaves_nothing(
    tmp_path: Path,
):
    """Listed, under --max-bytes: written while hashed, then refused and removed."""
    bomb = "app/bomb.bin"
    files = {**FILES, bomb: b""}
    artifact = write_gzip(
        tmp_path / "bomb-checksum.tar.gz",
        [(with_manifest(files, **{bomb: "0" * 64}), 1), (REST, 1), (header(bomb, 256 * MB), 1)]
        + [(bytes(16 * MB), 16), (END, 1)],
    )
    refused_within_bounds(
        tmp_path, artifact, f"checksum mismatch for {bomb}", "--max-bytes", str(300 * MB)
    )


def test_gigabytes_of_zeros_after_the_end_of_the_archive_are_not_read(tmp_path: Path):
    artifact = write_gzip(tmp_path / "trailer.tar.gz", [(valid_tar(), 1), (bytes(16 * MB), 256)])
    refused_within_bounds(tmp_path, artifact, "data after its end-of-archive marker")


def test_a_flood_of_empty_gzip_members_is_read_quickly(tmp_path: Path):
    artifact = tmp_path / "flood.tar.gz"
    artifact.write_bytes(gzip_bytes(START) + gzip_bytes(b"") * 200_000)
    refused_within_bounds(tmp_path, artifact, "the archive is truncated")


def test_twenty_thousand_long_named_directories_stay_bounded(tmp_path: Path):
    """Members up to the count limit, each with a long-name header near the cap."""
    name = "app/" + "n" * 200 + "/" + "m" * 200 + "/" + "o" * 200 + "/%06d"
    names = [(name % i).encode() for i in range(20_001)]
    body = b"".join(
        member("././@LongLink", n + b"\0", b"L") + header(n[:100], 0, b"5") for n in names
    )
    artifact = write_gzip(tmp_path / "names.tar.gz", [(START + REST + body + END, 1)])
    refused_within_bounds(tmp_path, artifact, "the archive holds more than 20000 files")


def test_what_build_writes_installs_within_the_same_bounds(tmp_path: Path, artifacts):
    """The positive control: `beamdeploy build`'s artifact, manifest first, installs."""
    built = artifacts["1.0.0"]
    with tarfile.open(built) as tar:
        assert tar.next().name == MANIFEST
    artifact = tmp_path / built.name
    artifact.write_bytes(built.read_bytes())
    result = run_installer(tmp_path, artifact)
    print(
        f"\nvalid artifact: installer peak {result['max_rss_mb']:.0f} MB, {result['seconds']:.2f} s"
    )
    assert result["returncode"] == 0, result["stdout"] + result["stderr"]
    path = Path(result["last"]["result"]["path"])
    assert (path / MANIFEST).is_file() and (path / "venv" / "bin" / "python").exists()
    assert not (path / "wheels").exists()
