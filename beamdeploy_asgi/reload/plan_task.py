"""The hot reload plan, computed in a subprocess as the workers' user.

Run as ``python -m beamdeploy_asgi.reload.plan_task SERVING NEW``; prints
one JSON line: ``{"result": PLAN}`` or ``{"error": ...}``. The new release
may come from an uploaded artifact, so its files are parsed here, not in the
arbiter, and never as the arbiter's user.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from beamdeploy_asgi.errors import ReleaseError
from beamdeploy_asgi.releases.release import Release
from beamdeploy_asgi.reload.classify import classify
from beamdeploy_asgi.reload.plan import compare

MAX_LISTED = 200  # refusals and functions listed in the plan; the counts stay whole


def make_plan(serving: Release, new: Release) -> dict[str, Any]:
    """What changes and what is refused, with everything a worker needs to do it."""
    diff = compare(serving, new)
    refusals = [str(r) for r in diff.refusals]
    modules = []
    functions = 0
    for changed in diff.modules:
        entry: dict[str, Any] = {
            "module": changed.module,
            "old_file": changed.old_file,
            "new_file": changed.new_file,
        }
        if changed.old_source is not None:
            changes = classify(
                changed.module,
                changed.new_file,
                changed.old_source,
                changed.new_source,
                changed.old_file,
            )
            refusals += [str(r) for r in changes.refusals]
            functions += len(changes.functions)
            entry["changes"] = {
                "functions": [f.qualname for f in changes.functions][:MAX_LISTED],
                "constants": [c.name for c in changes.constants][:MAX_LISTED],
                "removed": changes.removed[:MAX_LISTED],
                "docstring": changes.docstring,
            }
        else:
            entry["changes"] = {"new_module": True}
        modules.append(entry)
    return {
        "from": serving.describe(),
        "to": new.describe(),
        "modules": modules,
        "functions": functions,
        "refusals": refusals[:MAX_LISTED],
        "refused": len(refusals),
        "old_paths": diff.old_paths,
        "new_paths": diff.new_paths,
    }


def main() -> None:
    try:
        serving, new = Release.load(sys.argv[1]), Release.load(sys.argv[2])
        result = make_plan(serving, new)
    except ReleaseError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        sys.exit(1)
    print(json.dumps({"result": result}), flush=True)


if __name__ == "__main__":
    main()
