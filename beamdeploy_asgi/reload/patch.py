"""Patch a new release's code into the modules this process has loaded.

A hot reload keeps every live object: the new code goes into the existing
function objects (``f.__code__ = new``), so the routes, dependency graphs,
``from m import f`` copies, decorator wrappers and bound methods that hold
a function run the new code from their next call on, and module globals,
class attributes and instances stay as they are.

It takes two steps, so that a worker can vote before anything changes and
holds its requests only during the second, short one:

- `prepare` does what is slow (compiling, evaluating each new def's defaults
  and annotations in the running module, scanning the heap for every
  function object that runs the old code) and refuses what it cannot apply
  to what this process has loaded. It changes no live object.
- `ModulePatch.commit` only assigns what `prepare` computed, recording each
  old value, so that `ModulePatch.undo` puts back exactly what was there.
"""

from __future__ import annotations
import __future__

import ast
import builtins
import contextlib
import copy
import functools
import gc
import inspect
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import CodeType, FrameType, FunctionType, ModuleType
from typing import Any, NoReturn

from beamdeploy_asgi.reload.changes import (
    ConstantChange,
    FunctionChange,
    ModuleChanges,
    Refusal,
)

UPGRADE = "deploy it with `beamdeploy upgrade`"

_ACCESSORS = ("fget", "fset", "fdel")
_NEW_DECORATORS: dict[str, Callable[[Any], Any]] = {
    "staticmethod": staticmethod,
    "classmethod": classmethod,
}
# What a caller that inspected a function once relies on: its parameters and kind.
_SHAPE_FLAGS = (
    inspect.CO_VARARGS
    | inspect.CO_VARKEYWORDS
    | inspect.CO_COROUTINE
    | inspect.CO_GENERATOR
    | inspect.CO_ASYNC_GENERATOR
    | inspect.CO_ITERABLE_COROUTINE
)
# Objects that read a function's signature once, when a route is created.
_CAPTURING_CLASSES = frozenset(
    {
        "starlette.routing.Route",
        "starlette.routing.WebSocketRoute",
        "fastapi.routing.APIRoute",
        "fastapi.routing.APIWebSocketRoute",
        "fastapi.dependencies.models.Dependant",
        "fastapi.params.Depends",
    }
)
MAX_SOURCE = 5 * 1024 * 1024  # bytes of another module read to see what it imports
_MAX_WRAPPERS = 64  # decorator chains longer than this are taken for a cycle
_COMMIT_SWITCH_INTERVAL = 1.0  # seconds: far longer than a commit takes
_PHASES = ("new", "constants", "code", "removed", "docstring")  # the order commit assigns in


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT: Any = _Absent()  # a name that was not bound: undo deletes it again


class PatchRefused(RuntimeError):
    """`commit` of a patch that has refusals: nothing was changed."""


@dataclass
class _Summary:
    functions: list[str] = field(default_factory=list)  # qualnames whose code changes
    function_objects: int = 0  # live function objects that get the new code
    constants: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    docstring: bool = False


@dataclass(eq=False)
class ModulePatch:
    """One module's prepared patch: assignments to make, or why they cannot be made."""

    module: str
    refusals: list[Refusal] = field(default_factory=list)  # against this process; empty: can commit
    skipped: bool = False  # the module is not imported in this process: nothing to patch
    _steps: list[tuple[Any, str, Any]] = field(default_factory=list, repr=False)
    _caches: list[Any] = field(default_factory=list, repr=False)
    _summary: _Summary = field(default_factory=_Summary, repr=False)
    _undo_log: list[tuple[Any, str, Any]] = field(default_factory=list, repr=False)
    _committed: bool = field(default=False, repr=False)

    @property
    def committed(self) -> bool:
        return self._committed

    def commit(self) -> None:
        """Make the prepared assignments: all of them or, if one raises, none."""
        if self.refusals:
            raise PatchRefused(f"{self.module} cannot be patched: {self.refusals[0]}")
        if self.skipped:
            return
        if self._committed:
            raise RuntimeError(f"the patch of {self.module} is already committed")
        try:
            with _uninterrupted():
                for target, name, value in self._steps:
                    old = _read(target, name)
                    _write(target, name, value)
                    self._undo_log.append((target, name, old))
        except BaseException:
            self.undo()
            raise
        self._committed = True
        # Last: dropping cached results runs their finalizers, which may be slow.
        for cache in self._caches:
            cache.cache_clear()

    def undo(self) -> None:
        """Put back, newest first, every value commit replaced; doing it twice does nothing.

        An entry leaves the log only once restored, so an undo that raised
        can be called again and goes on where it stopped.
        """
        with _uninterrupted():
            while self._undo_log:
                target, name, old = self._undo_log[-1]
                _write(target, name, old)
                self._undo_log.pop()
        self._committed = False

    def describe(self) -> dict[str, Any]:
        summary = self._summary
        return {
            "module": self.module,
            "skipped": self.skipped,
            "committed": self._committed,
            "functions": list(summary.functions),
            "function_objects": summary.function_objects,
            "constants": list(summary.constants),
            "new": list(summary.new),
            "removed": list(summary.removed),
            "docstring": summary.docstring,
            "caches_cleared": len(self._caches),
            "refusals": [str(refusal) for refusal in self.refusals],
        }


def prepare(changes: ModuleChanges, new_source: str) -> ModulePatch:
    """Everything `commit` will assign, checked against this process; nothing changes yet."""
    module = sys.modules.get(changes.module)
    if module is None:
        return ModulePatch(changes.module, skipped=True)
    patch = ModulePatch(changes.module)
    if changes.refusals:
        patch.refusals.extend(changes.refusals)
        return patch
    if not isinstance(module, ModuleType):
        why = f"sys.modules[{changes.module!r}] is {_short(module)}, not a module; {UPGRADE}"
        patch.refusals.append(Refusal(changes.file, 1, "not-loaded", why))
        return patch
    try:
        tree = ast.parse(new_source, filename=changes.file)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        line = getattr(error, "lineno", None) or 1
        why = f"the new source does not compile: {error}"
        patch.refusals.append(Refusal(changes.file, line, "syntax", why))
        return patch
    _Preparer(module, changes, tree, patch).run()
    return patch


# --- Where a qualname lives ----------------------------------------------------------


@dataclass
class _Site:
    """Where a qualname is bound in the running module (the name itself may be missing)."""

    owner: Any  # the module, or the class whose namespace binds `name`
    name: str  # the key in that namespace: private names are mangled
    def_name: str  # the name the def statement uses
    classes: list[str]  # the classes from the module down to `owner`
    accessor: str | None = None  # fget, fset or fdel of the property `name`

    @property
    def qualname(self) -> str:
        """The `__qualname__` the def's function has."""
        return ".".join([*self.classes, self.def_name])

    def live(self) -> Any:
        return vars(self.owner).get(self.name, _ABSENT)


def _locate(module: ModuleType, qualname: str) -> _Site | None:
    """The site of `qualname`, or None if one of its classes is not in the running module.

    ``Service.total.fset`` names an accessor of the property ``total``
    (a nested class ``total`` would make it a method instead).
    """
    parts = qualname.split(".")
    owner: Any = module
    classes: list[str] = []
    for index, part in enumerate(parts[:-1]):
        key = _mangle(owner, part)
        value = vars(owner).get(key, _ABSENT)
        if isinstance(value, type):
            owner = value
            classes.append(part)
        elif classes and index == len(parts) - 2 and parts[-1] in _ACCESSORS:
            return _Site(owner, key, part, classes, parts[-1])
        else:
            return None
    return _Site(owner, _mangle(owner, parts[-1]), parts[-1], classes)


def _mangle(owner: Any, name: str) -> str:
    """The key a class body stores ``__name`` under, as the compiler mangles it."""
    if not isinstance(owner, type) or not name.startswith("__") or name.endswith("__"):
        return name
    stripped = owner.__name__.lstrip("_")
    return f"_{stripped}{name}" if stripped else name


def _unwrap(value: Any, accessor: str | None) -> list[Any]:
    """The objects from a namespace value down to the function its def made, that last.

    Decorators built with functools.wraps say what they wrap (`__wrapped__`);
    staticmethod, classmethod, property and cached_property hold the function.
    """
    chain = [value]
    for _ in range(_MAX_WRAPPERS):
        if isinstance(value, property):
            value = getattr(value, accessor or "fget")
        elif isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        elif isinstance(value, functools.cached_property):
            value = value.func
        else:
            value = getattr(value, "__wrapped__", None)
        if value is None:
            break
        chain.append(value)
    return chain


@dataclass
class _Source:
    """A def in the new source and the classes around it, outermost first."""

    classes: list[ast.ClassDef]
    node: ast.FunctionDef | ast.AsyncFunctionDef


def _find_def(tree: ast.Module, site: _Site) -> _Source | None:
    """The def that binds `site` last in the new source (for an accessor: the one in that role)."""
    body = tree.body
    classes = []
    for name in site.classes:
        found = [n for n in body if isinstance(n, ast.ClassDef) and n.name == name]
        if not found:
            return None
        classes.append(found[-1])
        body = found[-1].body
    role = site.accessor or "fget"
    defs = [
        node
        for node in body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.name == site.def_name
        and _role(node) == role
    ]
    return _Source(classes, defs[-1]) if defs else None


def _role(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """fset or fdel for ``@name.setter`` and ``@name.deleter``; fget for anything else."""
    for decorator in node.decorator_list:
        if isinstance(decorator, ast.Attribute) and decorator.attr in ("setter", "deleter"):
            return "fset" if decorator.attr == "setter" else "fdel"
    return "fget"


# --- Building a def without binding it -------------------------------------------------


def _future_flags(tree: ast.Module) -> int:
    """The compiler flags of the module's ``from __future__`` imports, for each def alone."""
    flags = 0
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            for alias in node.names:
                feature = getattr(__future__, alias.name, None)
                flags |= getattr(feature, "compiler_flag", 0)
    return flags


def _bare_class(node: ast.ClassDef, body: ast.stmt) -> ast.ClassDef:
    """`node` holding only `body`, without bases or decorators.

    Compiled inside its class, a method gets what the real class body gave
    it: private names mangled, the `__class__` cell of zero-argument super(),
    its full `__qualname__`.
    """
    bare = copy.copy(node)
    bare.bases, bare.keywords, bare.decorator_list, bare.body = [], [], [], [body]
    if sys.version_info >= (3, 12):
        bare.type_params = []
    return bare


def _class_body(module_code: CodeType, names: list[str]) -> CodeType:
    """The code of the innermost class body among the nested `names`."""
    code = module_code
    for name in names:
        code = next(c for c in code.co_consts if isinstance(c, CodeType) and c.co_name == name)
    return code


def _fill_class_cell(function: FunctionType, owner: Any) -> None:
    """Point a new method's `__class__` cell (zero-argument super()) at its live class."""
    code = function.__code__
    if isinstance(owner, type) and function.__closure__ and "__class__" in code.co_freevars:
        function.__closure__[code.co_freevars.index("__class__")].cell_contents = owner


# --- Comparing signatures, finding holders ---------------------------------------------


def _signature_differs(live: FunctionType, new: FunctionType) -> bool:
    """Whether the parameters, the kind (async, generator) or the annotations differ.

    Default values are not compared: a mutable default may hold state, so
    it differs from a fresh one though its source did not change; the
    change list says whether that source changed. Annotations are
    evaluated anew, so they are compared by value, and objects that compare
    by identity (a FastAPI ``Query()``) by type and repr.
    """
    if _shape(live.__code__) != _shape(new.__code__):
        return True
    try:
        old, now = dict(live.__annotations__), dict(new.__annotations__)
    except Exception:
        return True
    return old.keys() != now.keys() or not all(_same(old[key], now[key]) for key in old)


def _shape(code: CodeType) -> tuple[Any, ...]:
    """Parameter names and kinds, and whether the function is async or a generator."""
    count = code.co_argcount + code.co_kwonlyargcount
    count += bool(code.co_flags & inspect.CO_VARARGS) + bool(code.co_flags & inspect.CO_VARKEYWORDS)
    return (
        code.co_posonlyargcount,
        code.co_argcount,
        code.co_kwonlyargcount,
        code.co_flags & _SHAPE_FLAGS,
        code.co_varnames[:count],
    )


def _same(old: Any, new: Any) -> bool:
    if old is new:
        return True
    if type(old) is not type(new):
        return False
    try:
        return bool(old == new) or repr(old) == repr(new)
    except Exception:
        return False


class _Heap:
    """One pass over the objects the garbage collector tracks.

    It finds every function object that runs one of `codes` (``from m
    import f`` copies are the same object; functions made with
    ``FunctionType(code, ...)`` share the code) and every `__dict__` that
    names a `__wrapped__` object, to find wrappers without asking objects.
    """

    def __init__(self, codes: Iterable[CodeType]) -> None:
        self._functions: dict[int, list[FunctionType]] = {id(code): [] for code in codes}
        self._wrapper_dicts: list[dict[str, Any]] = []
        for obj in gc.get_objects():
            kind = type(obj)
            if kind is FunctionType:
                found = self._functions.get(id(obj.__code__))
                if found is not None:
                    found.append(obj)
            elif kind is dict and "__wrapped__" in obj:
                self._wrapper_dicts.append(obj)

    def sharing(self, function: FunctionType) -> list[FunctionType]:
        """The live functions that run `function`'s code, `function` among them."""
        found = self._functions.get(id(function.__code__), [])
        return found if any(f is function for f in found) else [function, *found]

    def wrappers(self, inner: list[Any]) -> list[Any]:
        """Every object whose `__wrapped__` chain leads to one of `inner`."""
        found: dict[int, Any] = {}
        frontier = {id(obj) for obj in inner}
        for _ in range(_MAX_WRAPPERS):
            # Requests run while prepare does: a dict may have changed since the scan.
            dicts = {id(d): d for d in self._wrapper_dicts if id(d.get("__wrapped__")) in frontier}
            if not dicts:
                break
            frontier = set()
            for owner in gc.get_referrers(*dicts.values()):
                if id(owner) not in found and id(_dict_of(owner)) in dicts:
                    found[id(owner)] = owner
                    frontier.add(id(owner))
        return list(found.values())


def _dict_of(obj: Any) -> Any:
    """`obj`'s instance `__dict__`, without running its class's attribute hooks."""
    try:
        return object.__getattribute__(obj, "__dict__")
    except Exception:
        return None


def _capturing_holder(objects: list[Any]) -> str | None:
    """The class of a route or dependency object holding one of `objects`, if any.

    Checked by class name, so that FastAPI need not be importable; an
    object's attributes are found in its `__dict__` or in its slots.
    """
    dicts = []
    for referrer in gc.get_referrers(*objects):
        name = _capturing_class(referrer)
        if name:
            return name
        if type(referrer) is dict:
            dicts.append(referrer)
    for owner in gc.get_referrers(*dicts) if dicts else ():
        name = _capturing_class(owner)
        if name:
            return name
    return None


def _capturing_class(obj: Any) -> str | None:
    for cls in type(obj).__mro__:
        name = f"{cls.__module__}.{cls.__qualname__}"
        if name in _CAPTURING_CLASSES:
            return name
    return None


def _is_cache(obj: Any) -> bool:
    """An lru_cache or cache wrapper: its results were computed by the old code."""
    return callable(getattr(type(obj), "cache_clear", None)) and hasattr(obj, "__wrapped__")


def _other_holders(owner: Any, name: str) -> list[str]:
    """What refers to the function bound at `owner.name`, besides `owner`'s namespace."""
    value = vars(owner)[name]
    if not (callable(value) or isinstance(value, (staticmethod, classmethod, property))):
        return []
    if isinstance(owner, type):
        home = {id(d) for d in gc.get_referents(owner) if type(d) is dict}
    else:
        home = {id(vars(owner))}
    return [
        _holder_name(referrer)
        for referrer in gc.get_referrers(value)
        if id(referrer) not in home and not isinstance(referrer, FrameType)
    ]


def _holder_name(obj: Any) -> str:
    if type(obj) is dict and "__builtins__" in obj and isinstance(obj.get("__name__"), str):
        return f"module `{obj['__name__']}`"
    return type(obj).__qualname__


def _bound_elsewhere(module: ModuleType, name: str, value: Any) -> str | None:
    """Another loaded module that imported `name` from `module`, if any.

    Binding the very same object is the hint; the other module's source
    saying ``from module import name`` (or ``*``) is the proof. Identity
    alone is not: CPython shares equal small ints and short strings, so two
    unrelated modules with ``VERSION = "v1"`` hold the same object.
    """
    for other in list(sys.modules.values()):
        if other is module or not isinstance(other, ModuleType):
            continue
        namespace = _dict_of(other)  # a lazy module's own attribute hook would import it
        if not isinstance(namespace, dict) or namespace.get(name, _ABSENT) is not value:
            continue
        if _imports_name(namespace, module.__name__, name):
            return str(namespace.get("__name__"))
    return None


def _imports_name(namespace: dict[str, Any], source_module: str, name: str) -> bool:
    """Whether the module with this namespace says ``from source_module import name``.

    Read from its file; a module without a readable source file is taken to
    import it, as refusing is the safe side.
    """
    path = namespace.get("__file__")
    if not isinstance(path, str) or not path.endswith(".py"):
        return True
    try:
        with open(path, "rb") as source:
            text = source.read(MAX_SOURCE + 1)
        if len(text) > MAX_SOURCE:
            return True
        tree = ast.parse(text, filename=path)
    except (OSError, SyntaxError, ValueError, RecursionError):
        return True
    package = str(namespace.get("__package__") or "")
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if _absolute(node, package) != source_module:
            continue
        if any(alias.name in (name, "*") for alias in node.names):
            return True
    return False


def _absolute(node: ast.ImportFrom, package: str) -> str:
    """The module an ``from ... import`` names, with a relative one resolved."""
    if not node.level:
        return node.module or ""
    parts = package.split(".") if package else []
    base = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
    return ".".join([*base, node.module] if node.module else base)


class _ImportTimeReads(ast.NodeVisitor):
    """Where a module reads some names while it is imported (not inside function bodies).

    A rebound constant changes what functions read when they run; whatever
    the import made from it (another constant, a class attribute, a
    default, a decorator's argument) keeps the old value.
    """

    def __init__(self, names: set[str], lazy_annotations: bool, rebuilt: set[int]) -> None:
        self.names = names
        self.lazy_annotations = lazy_annotations
        self.rebuilt = rebuilt  # ids of defs whose defaults the patch evaluates anew
        self.found: dict[str, int] = {}

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load) and node.id in self.names:
            self.found.setdefault(node.id, node.lineno)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for decorator in node.decorator_list:
            self.visit(decorator)
        if id(node) not in self.rebuilt:
            self._arguments(node.args, node.returns)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._arguments(node.args, None)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if not self.lazy_annotations:
            self.visit(node.annotation)
        if node.value is not None:
            self.visit(node.value)
        if not isinstance(node.target, ast.Name):
            self.visit(node.target)

    def _arguments(self, args: ast.arguments, returns: ast.expr | None) -> None:
        for default in [*args.defaults, *args.kw_defaults]:
            if default is not None:
                self.visit(default)
        if self.lazy_annotations:
            return
        every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
        for annotation in [*(arg.annotation for arg in every if arg), returns]:
            if annotation is not None:
                self.visit(annotation)


# --- Preparing --------------------------------------------------------------------------


class _Refused(Exception):
    """One change is refused (the refusal is recorded); go on with the next."""


@dataclass
class _Live:
    """A changed function as this process has it."""

    change: FunctionChange
    site: _Site
    chain: list[Any]  # from the namespace value down to `function`
    function: FunctionType


@dataclass
class _PropertyEdit:
    """A property gaining or losing an accessor: replaced by a new property."""

    site: _Site
    base: property | None
    roles: dict[str, FunctionType | None] = field(default_factory=dict)

    def build(self) -> property:
        fget, fset, fdel = (self.roles.get(r, getattr(self.base, r, None)) for r in _ACCESSORS)
        return property(fget, fset, fdel)


class _Preparer:
    """Works out one module's patch into `patch`: its steps, caches, summary and refusals."""

    def __init__(
        self, module: ModuleType, changes: ModuleChanges, tree: ast.Module, patch: ModulePatch
    ) -> None:
        self.module = module
        self.changes = changes
        self.tree = tree
        self.patch = patch
        self.summary = patch._summary
        self.flags = _future_flags(tree)
        # Module names as the new release binds them, for the defs built before commit.
        self.overlay: dict[str, Any] = {}
        self.rebuilt: set[int] = set()  # ids of the defs (in `tree`) whose defaults are new
        self.properties: dict[tuple[int, str], _PropertyEdit] = {}
        self.steps: dict[str, list[tuple[Any, str, Any]]] = {phase: [] for phase in _PHASES}

    def record(self, line: int, rule: str, why: str, file: str | None = None) -> None:
        self.patch.refusals.append(Refusal(file or self.changes.file, line, rule, why))

    def refuse(self, line: int, rule: str, why: str, file: str | None = None) -> NoReturn:
        """Record a refusal and give up on the change at hand."""
        self.record(line, rule, why, file)
        raise _Refused

    def step(self, phase: str, target: Any, name: str, value: Any) -> None:
        self.steps[phase].append((target, name, value))

    def run(self) -> None:
        functions = self.changes.functions
        # Removed names first, while we hold no live function; constants before the
        # defs, whose defaults may read them; new functions before the changed ones.
        self.each(self.removed_name, self.changes.removed)
        self.each(self.constant, self.changes.constants)
        new = sorted((c for c in functions if c.kind == "new"), key=lambda c: c.line)
        self.each(self.new_function, new)
        self.changed_functions([c for c in functions if c.kind != "new"])
        self.each(self.property_edit, list(self.properties.values()))
        if self.changes.constants:
            self.constant_reads()
        if self.changes.docstring:
            self.step("docstring", self.module, "__doc__", ast.get_docstring(self.tree, False))
            self.summary.docstring = True
        self.patch._steps = [step for phase in _PHASES for step in self.steps[phase]]

    @staticmethod
    def each(handle: Callable[[Any], None], items: Iterable[Any]) -> None:
        """`handle` each item; a refused one does not stop the others from being checked."""
        for item in items:
            with contextlib.suppress(_Refused):
                handle(item)

    # -- functions

    def changed_functions(self, changes: list[FunctionChange]) -> None:
        found: list[_Live] = []
        self.each(lambda change: found.append(self.find_live(change)), changes)
        if found:
            heap = _Heap(live.function.__code__ for live in found)
            self.each(lambda live: self.changed(live, heap), found)

    def find_live(self, change: FunctionChange) -> _Live:
        """The function object the running module's def made for `change`."""
        site = _locate(self.module, change.qualname)
        if site is None or site.live() is _ABSENT:
            why = (
                f"`{change.qualname}` is not in the running module `{self.module.__name__}`,"
                f" so this process runs code that differs from the serving release's source;"
                f" {UPGRADE}"
            )
            self.refuse(change.line, "not-loaded", why)
        chain = _unwrap(site.live(), site.accessor)
        function = chain[-1]
        if (
            not isinstance(function, FunctionType)
            or function.__code__.co_name != site.def_name
            or function.__qualname__ != site.qualname
        ):
            why = (
                f"`{change.qualname}` is {_short(function)} in the running module, not the"
                f" function its def made (a decorator without `__wrapped__`, which"
                f" functools.wraps sets, or a name rebound at run time), so the code to"
                f" replace cannot be found; {UPGRADE}"
            )
            self.refuse(change.line, "decorator", why)
        return _Live(change, site, chain, function)

    def changed(self, live: _Live, heap: _Heap) -> None:
        """The new code for every function object that shares the old one."""
        change = live.change
        source = self.source(live.site, change)
        new = self.build(live.site, source, change)
        old_free, new_free = live.function.__code__.co_freevars, new.__code__.co_freevars
        if old_free != new_free:
            why = (
                f"the new code of `{change.qualname}` needs the closure variables"
                f" {_names(new_free)}, the running function has {_names(old_free)}; a live"
                f" function's closure cannot change (zero-argument super() and `__class__`"
                f" add one); {UPGRADE}"
            )
            self.refuse(change.line, "closure", why)
        targets = heap.sharing(live.function)
        holders = _unique([*live.chain, *targets, *heap.wrappers(targets)])
        signature = change.signature_changed or _signature_differs(live.function, new)
        holder = _capturing_holder(holders) if signature else None
        if holder:
            why = (
                f"the signature of `{change.qualname}` changes (parameters, defaults,"
                f" annotations or sync/async) and a {holder} holds it: FastAPI and Starlette"
                f" build the dependant, the validators and the sync/async choice once, at"
                f" route creation, so a new parameter would be silently ignored or turn into a"
                f" 500; {UPGRADE}"
            )
            self.refuse(change.line, "route-signature", why)
        for function in targets:
            self.new_code(function, new, signature)
        if signature:
            self.rebuilt.add(id(source.node))
        self.property_doc(live, new)
        self.patch._caches.extend(h for h in holders if _is_cache(h))
        self.summary.functions.append(change.qualname)
        self.summary.function_objects += len(targets)

    def new_code(self, function: FunctionType, new: FunctionType, signature: bool) -> None:
        """Defaults and annotations only with the signature: a mutable default keeps its state."""
        self.step("code", function, "__code__", new.__code__)
        self.step("code", function, "__doc__", new.__doc__)
        if signature:
            self.step("code", function, "__defaults__", new.__defaults__)
            kwdefaults = new.__kwdefaults__
            self.step("code", function, "__kwdefaults__", dict(kwdefaults) if kwdefaults else None)
            self.step("code", function, "__annotations__", dict(new.__annotations__))

    def property_doc(self, live: _Live, new: FunctionType) -> None:
        """A property took its getter's docstring when it was made: it gets the new one."""
        prop = live.chain[0]
        if type(prop) is property and prop.fget is live.function and new.__doc__ != prop.__doc__:
            if prop.__doc__ == live.function.__doc__:
                self.step("code", prop, "__doc__", new.__doc__)

    def new_function(self, change: FunctionChange) -> None:
        site = _locate(self.module, change.qualname)
        if site is None:
            why = (
                f"the class of the new `{change.qualname}` is not in the running module"
                f" `{self.module.__name__}`; {UPGRADE}"
            )
            self.refuse(change.line, "not-loaded", why)
        if site.accessor is None and site.live() is not _ABSENT:
            why = (
                f"`{change.qualname}` is new in this release, but the running module already"
                f" binds it to {_short(site.live())}; {UPGRADE}"
            )
            self.refuse(change.line, "not-loaded", why)
        source = self.source(site, change)
        self.rebuilt.add(id(source.node))
        if site.accessor:
            edit = self.property_for(site, change.line)
            if getattr(edit.base, site.accessor, None) is not None:
                why = (
                    f"`{change.qualname}` is new in this release, but the running property"
                    f" already has one; {UPGRADE}"
                )
                self.refuse(change.line, "not-loaded", why)
            edit.roles[site.accessor] = self.build(site, source, change)
        else:
            wrap = self.new_decorator(site, source, change)
            value = wrap(self.build(site, source, change))
            self.step("new", site.owner, site.name, value)
            if site.owner is self.module:
                self.overlay[site.name] = value  # a later def's default may name it
        self.summary.new.append(change.qualname)

    def new_decorator(self, site: _Site, source: _Source, change: FunctionChange) -> Any:
        """What wraps a new function: nothing, or the builtin staticmethod or classmethod."""
        decorators = source.node.decorator_list
        if not decorators:
            return lambda function: function
        first = decorators[0]
        if len(decorators) == 1 and isinstance(first, ast.Name) and isinstance(site.owner, type):
            builtin = _NEW_DECORATORS.get(first.id)
            scopes = (vars(site.owner), vars(self.module), vars(builtins))
            bound = next((s[first.id] for s in scopes if first.id in s), None)
            if builtin is not None and bound is builtin:
                return builtin
        text = ", ".join(f"@{ast.unparse(d)}" for d in decorators)
        why = (
            f"the new `{change.qualname}` is decorated ({text}); a decorator would have to run"
            f" in the live process (registering a route, say), which a hot reload does not do;"
            f" {UPGRADE}"
        )
        self.refuse(change.line, "decorator", why)

    def source(self, site: _Site, change: FunctionChange) -> _Source:
        source = _find_def(self.tree, site)
        if source is None:
            why = (
                f"the new source has no def of `{change.qualname}` at module or class level,"
                f" though its changes name it; {UPGRADE}"
            )
            self.refuse(change.line, "source", why)
        return source

    def build(self, site: _Site, source: _Source, change: FunctionChange) -> FunctionType:
        """The new def run alone, decorators stripped, in the running module; bound nowhere.

        The module's dict is the globals, so defaults and annotations are
        evaluated there, but a separate dict takes the name the def binds.
        A method's def runs in its class's body (a copy of the live class
        namespace), so that names of the class are found as at import.
        """
        node = copy.copy(source.node)
        node.decorator_list = []
        statement: ast.stmt = node
        for cls in reversed(source.classes):
            statement = _bare_class(cls, statement)
        namespace = dict(self.overlay)
        try:
            code = compile(
                ast.Module(body=[statement], type_ignores=[]),
                self.changes.file,
                "exec",
                flags=self.flags,
                dont_inherit=True,
            )
            if source.classes:
                code = _class_body(code, [cls.name for cls in source.classes])
                namespace.update(vars(site.owner))
            exec(code, vars(self.module), namespace)
        except Exception as error:
            why = (
                f"evaluating the def of `{change.qualname}` (its defaults and annotations) in"
                f" the running module raised {type(error).__name__}: {error}; {UPGRADE}"
            )
            self.refuse(change.line, "evaluate", why)
        function = namespace[site.name]
        _fill_class_cell(function, site.owner)
        return function

    # -- properties

    def property_for(self, site: _Site, line: int) -> _PropertyEdit:
        key = (id(site.owner), site.name)
        if key not in self.properties:
            base = site.live()
            if base is not _ABSENT and type(base) is not property:
                why = (
                    f"`{site.qualname}` is {_short(base)} in the running module, not a plain"
                    f" property, so its accessors cannot be changed; {UPGRADE}"
                )
                self.refuse(line, "decorator", why)
            self.properties[key] = _PropertyEdit(site, None if base is _ABSENT else base)
        return self.properties[key]

    def property_edit(self, edit: _PropertyEdit) -> None:
        self.step("new", edit.site.owner, edit.site.name, edit.build())

    # -- removed names

    def removed_name(self, qualname: str) -> None:
        site = _locate(self.module, qualname)
        if site is None or site.live() is _ABSENT:
            return  # the running module does not have it either
        if site.accessor:
            self.property_for(site, 1).roles[site.accessor] = None
        else:
            holders = _other_holders(site.owner, site.name)
            if holders:
                self.refuse_removed(qualname, site, holders)
            self.step("removed", site.owner, site.name, _ABSENT)
        self.summary.removed.append(qualname)

    def refuse_removed(self, qualname: str, site: _Site, holders: list[str]) -> NoReturn:
        code = getattr(_unwrap(site.live(), None)[-1], "__code__", None)
        file, line = (code.co_filename, code.co_firstlineno) if code else (None, 1)
        more = f" and {len(holders) - 3} more" if len(holders) > 3 else ""
        held = ", ".join(holders[:3]) + more
        why = (
            f"`{qualname}` is gone from the new source, but the running process still holds it"
            f" ({held}); those would go on calling the old code; {UPGRADE}"
        )
        self.refuse(line, "removed-referenced", why, file)

    # -- constants

    def constant(self, change: ConstantChange) -> None:
        node = _assigned_value(self.tree, change.name)
        if node is None:
            why = f"the new source has no module-level assignment of `{change.name}`; {UPGRADE}"
            self.refuse(change.line, "source", why)
        try:
            value = ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError) as error:
            why = f"the new value of `{change.name}` is not a literal ({error}); {UPGRADE}"
            self.refuse(change.line, "constant", why)
        old = self.module.__dict__.get(change.name, _ABSENT)
        other = _bound_elsewhere(self.module, change.name, old) if old is not _ABSENT else None
        if other:
            why = (
                f"module `{other}` binds `{change.name}` to the same object (``from"
                f" {self.module.__name__} import {change.name}``, most likely) and would keep"
                f" the old value; read it as `{self.module.__name__}.{change.name}` there, or"
                f" {UPGRADE}"
            )
            self.refuse(change.line, "constant-imported", why)
        self.overlay[change.name] = value
        self.step("constants", self.module, change.name, value)
        self.summary.constants.append(change.name)

    def constant_reads(self) -> None:
        lazy = bool(self.flags & __future__.annotations.compiler_flag)
        reads = _ImportTimeReads({c.name for c in self.changes.constants}, lazy, self.rebuilt)
        reads.visit(self.tree)
        for name, line in reads.found.items():
            why = (
                f"`{name}` is also read while the module is imported (here: a module or class"
                f" statement, a decorator or a default), which a hot reload does not run again,"
                f" so what was made from it would keep the old value; {UPGRADE}"
            )
            self.record(line, "constant-captured", why)


def _assigned_value(tree: ast.Module, name: str) -> ast.expr | None:
    """The value of the last module-level ``name = ...`` or ``name: T = ...``."""
    for node in reversed(tree.body):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id == name:
            return value
    return None


# --- Committing -------------------------------------------------------------------------


def _read(target: Any, name: str) -> Any:
    """A namespace entry as stored (not through descriptors), or a function attribute."""
    if isinstance(target, (type, ModuleType)):
        return vars(target).get(name, _ABSENT)
    return getattr(target, name)


def _write(target: Any, name: str, value: Any) -> None:
    if value is not _ABSENT:
        setattr(target, name, value)
    elif name in vars(target):
        delattr(target, name)


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """No other thread and no garbage collection between the assignments.

    The worker holds its requests, but an app's own threads may run: a long
    switch interval keeps them from seeing half a patch, and with the
    collector off no finalizer runs in between.
    """
    interval = sys.getswitchinterval()
    collecting = gc.isenabled()
    gc.disable()
    sys.setswitchinterval(_COMMIT_SWITCH_INTERVAL)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)
        if collecting:
            gc.enable()


# --- Small helpers ------------------------------------------------------------------


def _unique(objects: Iterable[Any]) -> list[Any]:
    return list({id(obj): obj for obj in objects}.values())


def _names(names: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"`{name}`" for name in names) + ")" if names else "none"


def _short(obj: Any, limit: int = 80) -> str:
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__qualname__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
