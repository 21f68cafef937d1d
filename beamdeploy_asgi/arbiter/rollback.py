"""Which release a rollback goes to."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def rollback_target(
    version: str | None,
    *,
    serving: str | None,
    records: list[dict[str, Any]],
    kept: list[dict[str, Any]],
) -> str:
    """The path to roll back to; raises LookupError saying why there is none.

    Without `version`: what served before the serving release, by the newest
    deployment that put it in service. With one: the newest kept release of
    that version, or one a deployment record names. A release that failed its
    last deployment is never picked (an upgrade may try it again).
    `records` are deployments newest first, `kept` the store's releases,
    oldest first.
    """
    if version is None:
        for record in records:
            if record["kind"] in ("boot", "restart", "reexec") or record["outcome"] != "succeeded":
                continue
            if (record.get("to") or {}).get("path") != serving:
                continue
            previous = (record.get("from") or {}).get("path")
            if previous and previous != serving and Path(previous).is_dir():
                return previous
            break
        raise LookupError("no previous release to roll back to")
    failed = {r["path"]: r["failed"] for r in kept if r["failed"]}
    for release in reversed(kept):
        if release["version"] == version and release["path"] not in failed:
            return release["path"]
    for record in records:
        for side in ("to", "from"):
            release = record.get(side) or {}
            path = release.get("path")
            if (
                release.get("version") == version
                and path
                and path not in failed
                and Path(path).is_dir()
            ):
                return path
    for path, why in failed.items():
        if any(r["path"] == path and r["version"] == version for r in kept):
            raise LookupError(
                f"release {version} failed at {why.get('phase')} when last deployed "
                f"({why.get('error')}); rollback skips it (use upgrade to try it again)"
            )
    raise LookupError(f"no kept release has version {version!r}")
