"""One process's side of a hot reload: check, apply, run the hooks, undo.

A worker runs it step by step as the arbiter says (all workers or none); a
process outside the arbiter runs it in one go. Either way `prepare` changes
nothing, `commit` only assigns what `prepare` computed, and `undo` puts every
assignment back, so a reload that fails half way leaves the old code running.
"""

from __future__ import annotations

import functools
import importlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from beamdeploy_asgi.reload.changes import ModuleChanges, Refusal
from beamdeploy_asgi.reload.classify import classify
from beamdeploy_asgi.reload.patch import ModulePatch, prepare

MAX_SOURCE = 5 * 1024 * 1024
HOOK = "beamdeploy_code_change"


class HookFailed(Exception):
    """A module's code-change hook raised; everything was undone."""


@dataclass(frozen=True)
class ModuleFiles:
    """A module of the app whose source differs between the two releases."""

    module: str
    old_file: str | None  # None: new in the new release, so no process has it loaded
    new_file: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModuleFiles:
        old = data.get("old_file")
        return cls(str(data["module"]), str(old) if old else None, str(data["new_file"]))


def read_source(path: str) -> str:
    with open(path, "rb") as source:
        data = source.read(MAX_SOURCE + 1)
    if len(data) > MAX_SOURCE:
        raise ValueError(f"{path} is larger than {MAX_SOURCE >> 20} MiB")
    return data.decode("utf-8")


class Reload:
    def __init__(
        self, modules: list[ModuleFiles], old_paths: list[str], new_paths: list[str]
    ) -> None:
        self.modules = modules
        self.old_paths = old_paths
        self.new_paths = new_paths
        self.changes: list[ModuleChanges] = []
        self.patches: list[ModulePatch] = []
        self.committed = False
        self._undo: list[Callable[[], None]] = []

    # -- prepare: nothing changes ---------------------------------------------

    def prepare(self) -> list[Refusal]:
        """Compile the new code and check it against what this process has loaded."""
        refusals: list[Refusal] = []
        for files in self.modules:
            if files.old_file is None or files.module not in sys.modules:
                continue  # a later import finds the new file on the new path
            try:
                old, new = read_source(files.old_file), read_source(files.new_file)
            except (OSError, ValueError) as exc:
                refusals.append(Refusal(files.new_file, 0, "unreadable", str(exc)))
                continue
            changes = classify(files.module, files.new_file, old, new, files.old_file)
            self.changes.append(changes)
            if changes.refusals:
                refusals += changes.refusals
                continue
            patch = prepare(changes, new)
            refusals += patch.refusals
            if not patch.skipped:
                self.patches.append(patch)
        return refusals

    # -- commit: assignments only ---------------------------------------------

    def commit(self) -> None:
        """Patch every prepared module and point the module search path at the new release."""
        try:
            for patch in self.patches:
                self._undo.append(patch.undo)
                patch.commit()
            self._move_files()
            self._switch_paths()
        except BaseException:
            self.undo()
            raise
        self.committed = True

    def _move_files(self) -> None:
        """A patched module says it comes from its new file, as its code does."""
        by_name = {files.module: files for files in self.modules}
        for patch in self.patches:
            module = sys.modules.get(patch.module)
            files = by_name.get(patch.module)
            if module is None or files is None:
                continue
            before = (module.__dict__.get("__file__"), module.__dict__.get("__cached__"))
            module.__file__ = files.new_file
            module.__dict__.pop("__cached__", None)  # its bytecode path names the old file
            self._undo.append(functools.partial(_restore_files, module, *before))

    def _switch_paths(self) -> None:
        """Later imports load from the new release: its entries replace the old ones."""
        before = list(sys.path)
        replaced = dict(zip(self.old_paths, self.new_paths, strict=False))
        sys.path[:] = [replaced.get(entry, entry) for entry in sys.path]
        for path in self.new_paths:
            if path not in sys.path:
                sys.path.append(path)
        for path in self.old_paths:
            sys.path_importer_cache.pop(path, None)
        importlib.invalidate_caches()
        self._undo.append(functools.partial(_restore_path, before))

    def run_hooks(self, old_version: str, new_version: str) -> list[dict[str, Any]]:
        """Each changed module's code-change hook, the new version of it, once.

        A hook that raises undoes the whole reload (HookFailed says which).
        """
        ran = []
        for patch in self.patches:
            module = sys.modules.get(patch.module)
            hook = getattr(module, HOOK, None)
            if not callable(hook):
                continue
            started = time.perf_counter()
            try:
                result = hook(old_version, new_version)
            except Exception as exc:
                self.undo()
                raise HookFailed(
                    f"{patch.module}.{HOOK}({old_version!r}, {new_version!r}) raised "
                    f"{type(exc).__name__}: {exc}; every change was undone"
                ) from exc
            except BaseException:  # SystemExit and the like: undone, then on its way
                self.undo()
                raise
            ran.append(
                {
                    "module": patch.module,
                    "result": repr(result)[:200],
                    "seconds": round(time.perf_counter() - started, 6),
                }
            )
        return ran

    # -- undo ------------------------------------------------------------------

    def undo(self) -> None:
        """Put back, in reverse order, everything commit changed."""
        while self._undo:
            self._undo.pop()()
        self.committed = False

    def describe(self) -> dict[str, Any]:
        return {
            "modules": [c.describe() for c in self.changes],
            "patches": [p.describe() for p in self.patches],
        }


def _restore_files(module: ModuleType, file: Any, cached: Any) -> None:
    for name, value in (("__file__", file), ("__cached__", cached)):
        if value is None:
            module.__dict__.pop(name, None)
        else:
            module.__dict__[name] = value


def _restore_path(before: list[str]) -> None:
    sys.path[:] = before
    importlib.invalidate_caches()
