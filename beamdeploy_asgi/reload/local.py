"""Hot reload without an arbiter: this one process, in one go.

For an app run by plain ``uvicorn`` (with ``admin_app()`` mounted) or a
script calling ``beamdeploy_asgi.hot_reload()``. The process must run from a
release (its interpreter is ``RELEASE/venv/bin/python``): that release is what
the new one is compared with, by the same rules as under the arbiter.

There is no request gate here: call it on the event loop's thread (the
admin endpoint does), so that no request runs while the code changes.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from beamdeploy_asgi.errors import DeploymentFailed, ReleaseError
from beamdeploy_asgi.protocol import RELEASE_VERSION_ENV
from beamdeploy_asgi.releases.release import MANIFEST, Release
from beamdeploy_asgi.reload.engine import HookFailed, ModuleFiles, Reload
from beamdeploy_asgi.reload.plan_task import make_plan

_serving: Release | None = None  # after a reload, the release this process runs


def running_release() -> Release:
    """The release this interpreter belongs to, or ReleaseError saying why there is none."""
    if _serving is not None:
        return _serving
    root = Path(sys.prefix).parent
    if not (root / MANIFEST).is_file():
        raise ReleaseError(
            f"this process does not run from a release ({sys.prefix} is not the venv of a "
            f"directory holding {MANIFEST}), so there is nothing to compare with"
        )
    return Release.load(root)


def reload_here(release: str | os.PathLike[str], *, dry_run: bool = False) -> dict[str, Any]:
    """Plan, check and apply `release` in this process; the record, as under the arbiter.

    Raises DeploymentFailed (with the record) when it is refused or fails;
    nothing is then changed.
    """
    global _serving
    serving = running_release()
    new = Release.load(release)
    record: dict[str, Any] = {
        "id": secrets.token_hex(6),
        "kind": "hot-reload",
        "from": serving.describe(),
        "to": new.describe(),
        "started_at": time.time(),
        "outcome": None,
        "error": None,
    }
    plan = make_plan(serving, new)
    record["plan"] = plan
    if plan["refused"]:
        listed = "\n".join(plan["refusals"])
        _fail(record, f"hot reload refused ({plan['refused']} reasons); deploy it with "
              f"an upgrade:\n{listed}")  # fmt: skip
    if dry_run:
        return _done(record, "dry run: nothing was applied")
    reload = Reload(
        [ModuleFiles.from_dict(m) for m in plan["modules"]], plan["old_paths"], plan["new_paths"]
    )
    refusals = reload.prepare()
    if refusals:
        _fail(record, "hot reload refused here:\n" + "\n".join(str(r) for r in refusals))
    started = time.perf_counter()
    reload.commit()
    try:
        hooks = reload.run_hooks(serving.version, new.version)
    except HookFailed as exc:
        _fail(record, f"hot reload failed: {exc}")
    os.environ[RELEASE_VERSION_ENV] = new.version
    _serving = new
    record["workers"] = {
        str(os.getpid()): {
            "commit": {"hooks": hooks, "commit_seconds": round(time.perf_counter() - started, 6)},
            **reload.describe(),
        }
    }
    return _done(record, f"this process runs {new}")


def _done(record: dict[str, Any], message: str) -> dict[str, Any]:
    record.update(outcome="succeeded", message=message, ended_at=time.time())
    return record


def _fail(record: dict[str, Any], error: str) -> None:
    record.update(outcome="failed", error=error, ended_at=time.time())
    raise DeploymentFailed(record)
