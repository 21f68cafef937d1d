"""What a hot reload changes, and what it refuses: the types every step shares.

The planner compares two releases (`plan.py`), the classifier compares one
module's old and new source (`classify.py`), the patcher checks the result
against what a process has loaded and applies it (`patch.py`). Each says
what it found in these terms, so a refusal reads the same wherever it came
from: ``file:line: rule: why``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Refusal:
    """One reason the reload cannot be done; nothing is applied when there is any."""

    file: str
    line: int
    rule: str  # a short name, e.g. "module-statement", "decorator", "route-signature"
    why: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.rule}: {self.why}"

    def describe(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "rule": self.rule, "why": self.why}


@dataclass(frozen=True)
class FunctionChange:
    """A function or method whose code changes, or that is new.

    `qualname` is the dotted path inside the module: ``handler``,
    ``Service.run``, ``Service.total`` for a property (its getter, setter
    and deleter are ``Service.total.fget`` and so on), ``Outer.Inner.m``.
    """

    qualname: str
    line: int
    kind: str  # "changed" (body, defaults, annotations, docstring) or "new"
    signature_changed: bool = False  # parameters, defaults or annotations differ

    def describe(self) -> dict[str, Any]:
        return {
            "qualname": self.qualname,
            "line": self.line,
            "kind": self.kind,
            "signature_changed": self.signature_changed,
        }


@dataclass(frozen=True)
class ConstantChange:
    """A module-level name rebound from a literal: ``VERSION = "1.1.0"``."""

    name: str
    line: int

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "line": self.line}


@dataclass
class ModuleChanges:
    """Everything that differs between one module's old and new source."""

    module: str  # dotted name, e.g. "myapp.routes"
    file: str  # the new file, as reported in refusals
    functions: list[FunctionChange] = field(default_factory=list)
    constants: list[ConstantChange] = field(default_factory=list)
    docstring: bool = False  # the module's own docstring changed
    removed: list[str] = field(default_factory=list)  # qualnames gone from the new source
    refusals: list[Refusal] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refusals

    @property
    def empty(self) -> bool:
        return not (self.functions or self.constants or self.docstring or self.removed)

    def describe(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "file": self.file,
            "functions": [f.describe() for f in self.functions],
            "constants": [c.describe() for c in self.constants],
            "docstring": self.docstring,
            "removed": list(self.removed),
            "refusals": [str(r) for r in self.refusals],
        }
