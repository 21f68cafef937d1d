"""A hot reload's plan as the arbiter takes it: checked, bounded, and kept small.

The plan comes from a subprocess that runs the serving release's code as the
workers' user, so the arbiter trusts its shape no more than a worker's line:
every field is checked, every file must lie in one of the two releases, and
the module search paths are the arbiter's own reading of the releases. What
the deployment record keeps of it is a bounded summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from beamdeploy_asgi.releases.release import Release

MAX_MODULES = 5_000
MAX_PATHS = 64
MAX_TEXT = 1_000
KEPT_MODULES = 50  # modules the record lists; the counts stay whole
KEPT_NAMES = 50  # functions or constants listed per module
KEPT_REFUSALS = 20


class BadPlan(ValueError):
    """The plan task answered something that is not a plan."""


@dataclass
class ReloadPlan:
    modules: list[dict[str, Any]]  # module, old_file, new_file: what the workers load
    old_paths: list[str]
    new_paths: list[str]
    functions: int
    refusals: list[str]
    refused: int
    summary: dict[str, Any]  # what the deployment record keeps


def check_plan(data: Any, serving: Release, new: Release) -> ReloadPlan:
    """The plan, or BadPlan naming what is wrong with it."""
    if not isinstance(data, dict):
        raise BadPlan("not a JSON object")
    assert serving.path is not None and new.path is not None
    modules = _list(data, "modules", MAX_MODULES)
    checked = [_module(entry, serving.path, new.path) for entry in modules]
    old_paths = [_inside(p, serving.path, "old_paths") for p in _list(data, "old_paths", MAX_PATHS)]
    new_paths = [_inside(p, new.path, "new_paths") for p in _list(data, "new_paths", MAX_PATHS)]
    if len(old_paths) != len(new_paths):
        raise BadPlan("old_paths and new_paths differ in length")
    refusals = [str(r)[:MAX_TEXT] for r in _list(data, "refusals", 10 * KEPT_REFUSALS)]
    refused = _count(data, "refused")
    functions = _count(data, "functions")
    if refused < len(refusals):
        raise BadPlan("'refused' is less than the refusals listed")
    summary = {
        "from": serving.describe(),
        "to": new.describe(),
        "functions": functions,
        "refused": refused,
        "refusals": refusals[:KEPT_REFUSALS],
        "module_count": len(checked),
        "modules": [_summary(entry) for entry in modules[:KEPT_MODULES]],
    }
    return ReloadPlan(checked, old_paths, new_paths, functions, refusals, refused, summary)


def _module(entry: Any, serving: str, new: str) -> dict[str, Any]:
    if not isinstance(entry, dict) or not isinstance(entry.get("module"), str):
        raise BadPlan("a module entry is not an object with a 'module' name")
    name = entry["module"]
    if not name or len(name) > MAX_TEXT:
        raise BadPlan("a module name is empty or too long")
    old_file = entry.get("old_file")
    return {
        "module": name,
        "old_file": None if old_file is None else _inside(old_file, serving, "old_file"),
        "new_file": _inside(entry.get("new_file"), new, "new_file"),
    }


def _summary(entry: dict[str, Any]) -> dict[str, Any]:
    """One module's changes, as the record shows them: names only, a bounded number."""
    found = entry.get("changes")
    changes: dict[str, Any] = found if isinstance(found, dict) else {}
    kept: dict[str, Any] = {}
    for key in ("functions", "constants", "removed"):
        values = changes.get(key)
        if isinstance(values, list):
            kept[key] = [str(v)[:200] for v in values[:KEPT_NAMES]]
    for key in ("docstring", "new_module"):
        if isinstance(changes.get(key), bool):
            kept[key] = changes[key]
    return {"module": str(entry["module"])[:MAX_TEXT], "changes": kept}


def _list(data: dict[str, Any], key: str, limit: int) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list):
        raise BadPlan(f"'{key}' is not a list")
    if len(value) > limit:
        raise BadPlan(f"'{key}' has more than {limit} entries")
    return value


def _count(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 10**9:
        raise BadPlan(f"'{key}' is not a count")
    return value


def _inside(path: Any, root: str, what: str) -> str:
    """`path` if it lies inside the release `root` (no '..', no way out)."""
    if not isinstance(path, str) or not path or len(path) > 4096 or "\x00" in path:
        raise BadPlan(f"a path in '{what}' is not a path")
    candidate = Path(path)
    if not candidate.is_absolute() or ".." in candidate.parts:
        raise BadPlan(f"{path!r} in '{what}' is not an absolute path without '..'")
    if not candidate.is_relative_to(root):
        raise BadPlan(f"{path!r} in '{what}' lies outside release {root}")
    return path
