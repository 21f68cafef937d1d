"""Each hostile or broken artifact is refused, and nothing leaves the store."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

import beamdeploy_asgi
from beamdeploy_asgi.errors import DeploymentFailed

MANIFEST = "beamdeploy-release.json"


def members_of(artifact: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """The artifact's members, its manifest first as the reader requires."""
    with tarfile.open(artifact) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar]
    return sorted(members, key=lambda member: member[0].name != MANIFEST)


def write(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def link_member(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def with_manifest(members, change) -> list:
    out = []
    for info, data in members:
        if info.name == MANIFEST:
            manifest = json.loads(data)
            change(manifest)
            info, data = file_member(MANIFEST, json.dumps(manifest).encode())
        out.append((info, data))
    return out


def device(name: str):
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info, None


def tamper(members):
    out = []
    for info, data in members:
        if info.name.endswith(".whl") and "starlette" in info.name:
            data = data[:-10] + b"0123456789"
            info.size = len(data)
        out.append((info, data))
    return out


CASES = {
    "absolute-path": (
        lambda m, t: m + [file_member(f"{t}/abs-escape.txt", b"x")],
        [],
        "absolute paths are not allowed",
    ),
    "dot-dot": (
        lambda m, t: m + [file_member("../../../dotdot-escape.txt", b"x")],
        [],
        "'..' is not allowed",
    ),
    "symlink-outside": (
        lambda m, t: m + [link_member("wheels/evil", "/etc", tarfile.SYMTYPE)],
        [],
        "wheels/evil: symbolic links are not allowed",
    ),
    "symlink-up": (
        lambda m, t: m + [link_member("app/evil", "../../..", tarfile.SYMTYPE)],
        [],
        "app/evil: symbolic links are not allowed",
    ),
    "hardlink-outside": (
        lambda m, t: m + [link_member("app/evil", "/etc/passwd", tarfile.LNKTYPE)],
        [],
        "app/evil: hard links are not allowed",
    ),
    "device-file": (
        lambda m, t: m + [device("wheels/null")],
        [],
        "device and fifo files are not allowed",
    ),
    "too-large": (lambda m, t: m, ["--artifact-max-size", "4096"], "unpacks to more than 4096"),
    "too-many-files": (lambda m, t: m, ["--artifact-max-files", "3"], "more than 3 files"),
    "no-manifest": (
        lambda m, t: [x for x in m if x[0].name != MANIFEST],
        [],
        "the artifact has no beamdeploy-release.json",
    ),
    "manifest-not-first": (
        lambda m, t: m[1:] + m[:1],
        [],
        "the artifact has no beamdeploy-release.json as its first member",
    ),
    "manifest-not-json": (
        lambda m, t: [file_member(MANIFEST, b"{oops")] + m[1:],
        [],
        "is not valid JSON",
    ),
    "manifest-without-app": (
        lambda m, t: with_manifest(m, lambda d: d.pop("app")),
        [],
        "'app' must be a non-empty string",
    ),
    "checksum-mismatch": (lambda m, t: tamper(m), [], "checksum mismatch for wheels/starlette"),
    "unlisted-file": (
        lambda m, t: m + [file_member("app/sneaky.py", b"import os")],
        [],
        "app/sneaky.py is in the artifact but not in",
    ),
    "outside-the-format": (
        lambda m, t: m + [file_member("etc/cron.d/evil", b"* * * * * root sh")],
        [],
        "etc/cron.d/evil: an artifact holds only",
    ),
    "missing-file": (
        lambda m, t: [x for x in m if "starlette" not in x[0].name],
        [],
        "is listed in beamdeploy-release.json but missing from the artifact",
    ),
    "wrong-python": (
        lambda m, t: with_manifest(m, lambda d: d.update(python="3.99")),
        [],
        "built for Python 3.99, which this host lacks",
    ),
    "wrong-platform": (
        lambda m, t: with_manifest(m, lambda d: d.update(platform="win-amd64")),
        [],
        "was built for win-amd64; this host is",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_artifact_is_refused(serve, artifacts, releases, tmp_path: Path, case: str):
    make, server_args, message = CASES[case]
    outside = tmp_path / "outside"
    outside.mkdir()
    artifact = write(tmp_path / f"{case}.tar.gz", make(members_of(artifacts["1.0.0"]), outside))
    server = serve("--workers", "1", "--release", str(releases["v1"]), *server_args)
    before = server.status()["serving"]
    with pytest.raises(DeploymentFailed) as failed:
        beamdeploy_asgi.upgrade(artifact, state_dir=server.state_dir)
    assert message in failed.value.deployment["error"], failed.value.deployment["error"]
    assert failed.value.deployment["phase"] == "failed"
    status = server.status()
    assert status["serving"] == before
    store = server.state_dir / "releases"
    assert list(store.iterdir()) == [], "no partial or refused release is left in the store"
    assert list(outside.iterdir()) == []
    assert not list(tmp_path.parent.rglob("*escape.txt")), "nothing was written outside"


def test_duplicate_member_is_refused_cleanly(serve, artifacts, releases, tmp_path: Path):
    members = members_of(artifacts["1.0.0"])
    wheel = next(m for m in members if m[0].name.endswith(".whl"))
    artifact = write(tmp_path / "dup.tar.gz", members + [wheel])
    server = serve("--workers", "1", "--release", str(releases["v1"]))
    with pytest.raises(DeploymentFailed) as failed:
        beamdeploy_asgi.upgrade(artifact, state_dir=server.state_dir)
    assert f"{wheel[0].name} appears twice in the archive" in failed.value.deployment["error"]
    assert list((server.state_dir / "releases").iterdir()) == []


def test_hard_links_are_refused(serve, artifacts, releases, tmp_path: Path):
    """A link made tarfile rewind the gzip stream to copy its target: none is read."""
    members = members_of(artifacts["1.0.0"])
    wheel = next(m for m in members if m[0].name.endswith(".whl"))
    links = [link_member(f"app/copy{i}", wheel[0].name, tarfile.LNKTYPE) for i in range(50)]
    artifact = write(tmp_path / "links.tar.gz", members + links)
    server = serve("--workers", "1", "--release", str(releases["v1"]))
    with pytest.raises(DeploymentFailed) as failed:
        beamdeploy_asgi.upgrade(artifact, state_dir=server.state_dir)
    assert "app/copy0: hard links are not allowed" in failed.value.deployment["error"]
    assert list((server.state_dir / "releases").iterdir()) == []
