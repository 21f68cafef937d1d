"""Which differences between a module's old and new source a hot reload can apply.

A hot reload swaps the code of functions that already exist in a live
process and rebinds literal constants; it never re-runs module or class
bodies. So the two sources are compared by syntax tree, and every
difference is either recognised as one of those (a FunctionChange, a
ConstantChange, the module docstring, a removed function) or refused.
Anything not positively recognised is refused: a wrong guess would leave a
process running code that no deploy ever shipped.

Nothing here imports or runs the app's code. The sources are compiled (not
executed) so that the compiler, not a re-implementation of Python's scoping
rules, says what a function closes over and whether it is a generator or a
coroutine.
"""

from __future__ import annotations

import ast
import inspect
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import CodeType

from beamdeploy_asgi.reload.changes import (
    ConstantChange,
    FunctionChange,
    ModuleChanges,
    Refusal,
)

UPGRADE = "deploy it with `beamdeploy upgrade`"

_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_SCOPES = (*_DEFINITIONS, ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_ACCESSOR_ROLES = {"setter": "fset", "deleter": "fdel"}
_NEW_METHOD_DECORATORS = ("staticmethod", "classmethod")
# Methods that class creation acts on: implicitly wrapped (__new__, __init_subclass__,
# __class_getitem__), run then (__set_name__), or wired in by it (__eq__ sets __hash__ to
# None; a dataclass's or attrs class's __init__ calls a post-init hook only if it was there).
_CLASS_CREATION_METHODS = frozenset(
    {
        "__new__",
        "__init_subclass__",
        "__class_getitem__",
        "__set_name__",
        "__eq__",
        "__post_init__",
        "__attrs_post_init__",
    }
)

_Function = ast.FunctionDef | ast.AsyncFunctionDef
_Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def classify(
    module: str, file: str, old_source: str, new_source: str, old_file: str | None = None
) -> ModuleChanges:
    """Every difference between `old_source` and `new_source`, as changes or refusals.

    A refusal of something removed points at `old_file` (the serving release's
    copy), where its line is; any other at `file`, the new one.
    """
    changes = ModuleChanges(module=module, file=file)
    new = _compile(new_source, file, "new")
    if isinstance(new, Refusal):
        changes.refusals.append(new)
        return changes
    old = _compile(old_source, old_file or file, "old")
    if isinstance(old, Refusal):
        changes.refusals.append(old)
        return changes
    try:
        _Diff(changes, old, new, old_file or file).module()
    except RecursionError:
        why = f"the source nests too deeply to compare safely; {UPGRADE}"
        return ModuleChanges(module, file, refusals=[Refusal(file, 1, "too-deep", why)])
    return changes


@dataclass
class _Compiled:
    """One side's syntax tree, and its code objects by (name, first line)."""

    tree: ast.Module
    code: dict[tuple[str, int], CodeType]

    def code_of(self, node: _Definition) -> CodeType | None:
        """None for a definition the compiler dropped as unreachable: it never exists."""
        return self.code.get((node.name, _first_line(node)))


def _compile(source: str, file: str, side: str) -> _Compiled | Refusal:
    """The source parsed and compiled (never run), or why it cannot be.

    Compiling, not just parsing, catches errors such as `await` outside
    `async def` that would otherwise first show at import in every worker.
    Its warnings (``x is 1``) are left alone: muting them would change the
    warning filters of the whole live process, for every thread.
    """
    try:
        tree = ast.parse(source, filename=file)
        code = compile(tree, file, "exec", dont_inherit=True, optimize=0)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        line = getattr(error, "lineno", None) or 1
        reason = getattr(error, "msg", None) or str(error) or type(error).__name__
        if side == "new":
            why = f"the new source does not compile: {reason}; fix it and build a new release"
            return Refusal(file, line, "syntax", why)
        why = f"the old source does not compile ({reason}), so there is nothing to compare with"
        return Refusal(file, line, "syntax", f"{why}; {UPGRADE}")
    return _Compiled(tree, _code_index(code))


def _code_index(module_code: CodeType) -> dict[tuple[str, int], CodeType]:
    """Every code object in a module by name and first line: unique for defs and classes."""
    index = {}
    todo = [module_code]
    while todo:
        code = todo.pop()
        index[(code.co_name, code.co_firstlineno)] = code
        todo.extend(const for const in code.co_consts if isinstance(const, CodeType))
    return index


def _first_line(node: _Definition) -> int:
    """The line the compiler gives the code object: the first decorator's, if any."""
    return node.decorator_list[0].lineno if node.decorator_list else node.lineno


# --- Reading one scope (a module or class body) ---------------------------------


@dataclass
class _Binding:
    """What binds one name in a scope: its kind and statement(s).

    Kinds: function, property (its accessors, getter first), class,
    constant, import, statement; and several, when more than one statement
    binds the name (the last to run wins).
    """

    kind: str
    nodes: list[ast.stmt]


@dataclass
class _Scope:
    """A body's statements: by the one name each binds, the rest as they come."""

    docstring: str | None = None
    names: dict[str, _Binding] = field(default_factory=dict)
    rest: list[ast.stmt] = field(default_factory=list)  # binding no name, or several


def _read_scope(body: list[ast.stmt], in_class: bool) -> _Scope:
    """Statements binding one name are compared by that name, so moving them is no change."""
    docstring, statements = _split_docstring(body)
    scope = _Scope(docstring)
    by_name: dict[str, list[ast.stmt]] = defaultdict(list)
    bindings: Counter[str] = Counter()
    for statement in statements:
        names = _bound_names(statement)
        bindings.update(names)
        if len(names) == 1:
            by_name[next(iter(names))].append(statement)
        elif not _is_no_op(statement):
            scope.rest.append(statement)
    for name, named in by_name.items():
        binding = _binding(name, named, in_class) if bindings[name] == len(named) else None
        scope.names[name] = binding or _Binding("several", named)
    return scope


def _is_no_op(statement: ast.stmt) -> bool:
    """``pass``, ``...`` or a bare string: adding or removing one changes nothing."""
    if isinstance(statement, ast.Expr):
        return isinstance(statement.value, ast.Constant)
    return isinstance(statement, ast.Pass)


def _split_docstring(body: list[ast.stmt]) -> tuple[str | None, list[ast.stmt]]:
    if body and isinstance(body[0], ast.Expr):
        value = body[0].value
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            return value.value, body[1:]
    return None, body


def _binding(name: str, statements: list[ast.stmt], in_class: bool) -> _Binding | None:
    """How `name` is bound, or None when several statements bind it (the last one wins)."""
    if in_class and _property_accessors(name, statements):
        return _Binding("property", statements)
    if len(statements) > 1:
        return None
    return _Binding(_kind(statements[0], in_class), statements)


def _kind(statement: ast.stmt, in_class: bool) -> str:
    if isinstance(statement, _FUNCTIONS):
        return "function"
    if isinstance(statement, ast.ClassDef):
        return "class"
    if isinstance(statement, (ast.Import, ast.ImportFrom)):
        return "import"
    if not in_class and _is_constant(statement):
        return "constant"
    return "statement"


def _property_accessors(name: str, statements: Sequence[ast.stmt]) -> dict[str, _Function] | None:
    """A property's accessors by role (fget, fset, fdel), or None if these are not one.

    Only the plain spelling is recognised: ``@property`` first, then
    ``@name.setter`` and ``@name.deleter``, each at most once.
    """
    getter, *others = statements
    if not isinstance(getter, _FUNCTIONS) or not _outer_decorator_is_property(getter):
        return None
    accessors = {"fget": getter}
    for other in others:
        if not isinstance(other, _FUNCTIONS):
            return None
        role = _accessor_role(name, other)
        if role is None or role in accessors:
            return None
        accessors[role] = other
    return accessors


def _outer_decorator_is_property(node: _Function) -> bool:
    outer = node.decorator_list[0] if node.decorator_list else None
    return isinstance(outer, ast.Name) and outer.id == "property"


def _accessor_role(name: str, node: _Function) -> str | None:
    """fset for ``@name.setter``, fdel for ``@name.deleter``, else None."""
    if not node.decorator_list:
        return None
    outer = node.decorator_list[0]
    if isinstance(outer, ast.Attribute) and isinstance(outer.value, ast.Name):
        if outer.value.id == name:
            return _ACCESSOR_ROLES.get(outer.attr)
    return None


def _is_constant(statement: ast.stmt) -> bool:
    """``NAME = <literal>`` or ``NAME: T = <literal>``, literal as `ast.literal_eval` has it."""
    if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
        target, value = statement.targets[0], statement.value
    elif isinstance(statement, ast.AnnAssign) and statement.simple and statement.value:
        target, value = statement.target, statement.value
    else:
        return False
    return isinstance(target, ast.Name) and _is_literal(value)


def _is_literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        return False
    return True


def _bound_names(statement: ast.stmt) -> set[str]:
    """The names a statement binds (or deletes) in the scope it runs in."""
    names = set()
    for node in _scope_walk([statement]):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, _DEFINITIONS):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.add(node.rest)
    return names


def _scope_walk(nodes: Iterable[ast.AST]) -> Iterator[ast.AST]:
    """Every node run in the same scope as `nodes`, in source order.

    Functions, classes, lambdas and comprehensions are yielded but not
    entered: their insides are scopes of their own.
    """
    todo = deque(nodes)
    while todo:
        node = todo.popleft()
        yield node
        if not isinstance(node, _SCOPES):
            todo.extend(ast.iter_child_nodes(node))


# --- Comparing ------------------------------------------------------------------


class _Diff:
    """Walks the old and new module side by side, filling one ModuleChanges."""

    def __init__(
        self, changes: ModuleChanges, old: _Compiled, new: _Compiled, old_file: str
    ) -> None:
        self.changes = changes
        self.old = old
        self.new = new
        self.old_file = old_file

    def refuse(self, refusal: Refusal | None) -> None:
        if refusal is not None:
            self.changes.refusals.append(refusal)

    def refusal(self, line: int, rule: str, why: str, *, old: bool = False) -> Refusal:
        """`old`: the line is in the serving release's file."""
        return Refusal(self.old_file if old else self.changes.file, line, rule, why)

    def module(self) -> None:
        old = _read_scope(self.old.tree.body, in_class=False)
        new = _read_scope(self.new.tree.body, in_class=False)
        self.changes.docstring = old.docstring != new.docstring
        self.scope(old, new, owner="")
        # As a user reads the files: the new one first, then what is gone from the old one.
        self.changes.refusals.sort(key=lambda r: (r.file != self.changes.file, r.line))

    def scope(self, old: _Scope, new: _Scope, owner: str) -> None:
        """One module or class body; `owner` is the class's qualname, "" for the module."""
        old_rest, new_rest = list(old.rest), list(new.rest)
        for name in dict.fromkeys([*new.names, *old.names]):
            qualname = f"{owner}.{name}" if owner else name
            before, after = old.names.get(name), new.names.get(name)
            if "several" not in {binding.kind for binding in (before, after) if binding}:
                self.binding(qualname, before, after, owner)
                continue
            old_nodes = before.nodes if before else []
            new_nodes = after.nodes if after else []
            if any(isinstance(node, _DEFINITIONS) for node in old_nodes + new_nodes):
                self.refuse(self.duplicates(qualname, old_nodes, new_nodes))
            else:  # plain statements rebinding a name: compared like any other statement
                old_rest += old_nodes
                new_rest += new_nodes
        added, removed = _unmatched(old_rest, new_rest)
        for statement in added:
            self.refuse(self.statement_added(statement, owner))
        for statement in removed:
            self.refuse(self.statement_removed(statement, owner))

    def duplicates(self, qualname: str, old: list[ast.stmt], new: list[ast.stmt]) -> Refusal | None:
        """Refused when changed: the last definition wins, so what to patch is a guess."""
        if _dumps(old) == _dumps(new):
            return None
        added, removed = _unmatched(old, new)
        line = (added or new or removed)[0].lineno
        times = max(len(old), len(new))
        why = (
            f"`{qualname}` is bound {times} times in one scope and these changed; the last one"
            f" wins at run time, so what to patch would be a guess; keep one definition, or"
            f" {UPGRADE}"
        )
        return self.refusal(line, "duplicate-definition", why)

    def binding(
        self, qualname: str, old: _Binding | None, new: _Binding | None, owner: str
    ) -> None:
        """A name bound in one place on either side: compared by what it is bound to."""
        if old is None:
            assert new is not None
            return self.binding_added(qualname, new, owner)
        if new is None:
            return self.binding_removed(qualname, old, owner)
        if _dumps(old.nodes) == _dumps(new.nodes):
            return None
        if {old.kind, new.kind} == {"function", "property"}:
            return self.refuse(self.decorators_changed(qualname, old.nodes[0], new.nodes[0]))
        if old.kind != new.kind:
            return self.refuse(self.kind_changed(qualname, old, new, owner))
        if new.kind == "property":
            return self.property(qualname, old.nodes, new.nodes)
        if new.kind == "constant":
            return self.constant(qualname, old.nodes[0], new.nodes[0])
        before, after = old.nodes[0], new.nodes[0]
        if isinstance(before, _FUNCTIONS) and isinstance(after, _FUNCTIONS):
            return self.function(qualname, before, after)
        if isinstance(before, ast.ClassDef) and isinstance(after, ast.ClassDef):
            return self.class_(qualname, before, after)
        return self.refuse(self.statement_added(after, owner))

    def binding_added(self, qualname: str, new: _Binding, owner: str) -> None:
        node = new.nodes[0]
        if isinstance(node, _FUNCTIONS) and new.kind == "function":
            self.new_function(qualname, node, in_class=bool(owner))
        elif new.kind == "property":
            self.new_property(qualname, new.nodes)
        elif new.kind == "class":
            why = (
                f"class `{qualname}` is new; creating a class runs its metaclass and decorators"
                f" (ORM, pydantic, route registries), which a hot reload does not do; {UPGRADE}"
            )
            self.refuse(self.refusal(node.lineno, "new-class", why))
        elif new.kind == "constant":
            self.changes.constants.append(ConstantChange(qualname, node.lineno))
        else:
            self.refuse(self.statement_added(node, owner))

    def binding_removed(self, qualname: str, old: _Binding, owner: str) -> None:
        node = old.nodes[0]
        if old.kind in ("function", "property"):
            self.changes.removed.append(qualname)
        elif old.kind in ("class", "constant"):
            why = (
                f"{old.kind} `{qualname}` was removed; running code and live objects may still"
                f" use it; {UPGRADE}"
            )
            self.refuse(self.refusal(node.lineno, _statement_rule(node, owner), why, old=True))
        else:
            self.refuse(self.statement_removed(node, owner))

    def kind_changed(self, qualname: str, old: _Binding, new: _Binding, owner: str) -> Refusal:
        node = new.nodes[0]
        rule = "import" if "import" in (old.kind, new.kind) else _statement_rule(node, owner)
        why = (
            f"`{qualname}` changes from {_a(old.kind)} to {_a(new.kind)}; a hot reload only"
            f" changes the code of functions and the value of literal constants; {UPGRADE}"
        )
        return self.refusal(node.lineno, rule, why)

    def statement_added(self, node: ast.stmt, owner: str) -> Refusal:
        rule = _statement_rule(node, owner)
        if rule == "import":
            reason = "a hot reload imports nothing and rebinds no imported name"
        elif rule == "class-body":
            reason = (
                "class attributes and fields (dataclass, pydantic, attrs, Enum, `__slots__`)"
                " are fixed when the class is created"
            )
        else:
            reason = "module code runs once, at import, and a hot reload does not re-run it"
        why = f"{_where(node, owner)} is new or changed; {reason}; {UPGRADE}"
        return self.refusal(node.lineno, rule, why)

    def statement_removed(self, node: ast.stmt, owner: str) -> Refusal:
        why = (
            f"{_where(node, owner)} was removed or changed; what it did when it ran stays"
            f" done in running processes; {UPGRADE}"
        )
        return self.refusal(node.lineno, _statement_rule(node, owner), why, old=True)

    # --- functions

    def function(self, qualname: str, old: _Function, new: _Function) -> None:
        """A changed function: allowed unless what a live function object fixed changed."""
        refusals = [
            self.decorators_changed(qualname, old, new),
            self.function_kind_changed(qualname, old, new),
            self.closure_changed(qualname, old, new),
        ]
        if any(refusals):
            for refusal in refusals:
                self.refuse(refusal)
            return
        signature_changed = _signature(old) != _signature(new)
        self.changes.functions.append(
            FunctionChange(qualname, new.lineno, "changed", signature_changed)
        )

    def new_function(self, qualname: str, node: _Function, in_class: bool) -> None:
        """New functions are allowed, but not new decorators: those would have to run."""
        name = qualname.rsplit(".", 1)[-1]
        if in_class and name in _CLASS_CREATION_METHODS:
            why = (
                f"the method `{qualname}` is new, and `{name}` is acted on when a class is"
                f" created, which adding it to a live class would not repeat; {UPGRADE}"
            )
            self.refuse(self.refusal(node.lineno, "special-method", why))
        elif _may_decorate_new(node, in_class):
            self.changes.functions.append(FunctionChange(qualname, node.lineno, "new"))
        else:
            self.refuse(self.new_decorated(qualname, node))

    def new_property(self, qualname: str, nodes: list[ast.stmt]) -> None:
        """A new property is its new accessors, as a new setter on an old property is."""
        name = qualname.rsplit(".", 1)[-1]
        for role, node in (_property_accessors(name, nodes) or {}).items():
            self.new_accessor(f"{qualname}.{role}", node)

    def new_accessor(self, accessor: str, node: _Function) -> None:
        """Its one decorator (``@property``, ``@name.setter``) makes it an accessor; no more."""
        if len(node.decorator_list) == 1:
            self.changes.functions.append(FunctionChange(accessor, node.lineno, "new"))
        else:
            self.refuse(self.new_decorated(accessor, node))

    def new_decorated(self, qualname: str, node: _Function) -> Refusal:
        why = (
            f"the new function `{qualname}` has decorators ({_decorator_list(node)}): they would"
            f" have to run in the live process (registering a route, say), which a hot reload"
            f" does not do; {UPGRADE}"
        )
        return self.refusal(node.lineno, "decorator", why)

    def property(self, qualname: str, old: list[ast.stmt], new: list[ast.stmt]) -> None:
        """A property's getter, setter and deleter are compared one by one."""
        name = qualname.rsplit(".", 1)[-1]
        old_accessors = _property_accessors(name, old) or {}
        new_accessors = _property_accessors(name, new) or {}
        for role in ("fget", "fset", "fdel"):
            before, after = old_accessors.get(role), new_accessors.get(role)
            accessor = f"{qualname}.{role}"
            if before and after:
                if _dump(before) != _dump(after):
                    self.function(accessor, before, after)
            elif after:
                self.new_accessor(accessor, after)
            elif before:
                self.changes.removed.append(accessor)

    def decorators_changed(self, qualname: str, old: ast.stmt, new: ast.stmt) -> Refusal | None:
        if _dumps(_decorators(old)) == _dumps(_decorators(new)):
            return None
        why = (
            f"the decorators of `{qualname}` changed from {_decorator_list(old)} to"
            f" {_decorator_list(new)}; decorators ran once, when it was defined (a route, a"
            f" cache, staticmethod or property), and a hot reload does not re-run them; {UPGRADE}"
        )
        return self.refusal(new.lineno, "decorator", why)

    def function_kind_changed(
        self, qualname: str, old: _Function, new: _Function
    ) -> Refusal | None:
        old_code, new_code = self.old.code_of(old), self.new.code_of(new)
        if old_code is None or new_code is None:
            return None
        before, after = _function_kind(old_code), _function_kind(new_code)
        if before == after:
            return None
        why = (
            f"`{qualname}` changes from {before} to {after}; its callers call or await it the"
            f" old way; {UPGRADE}"
        )
        return self.refusal(new.lineno, "function-kind", why)

    def closure_changed(self, qualname: str, old: _Function, new: _Function) -> Refusal | None:
        """A function's free variables are cells, fixed in every live closure of it."""
        before = _free_variables(self.old, qualname, old)
        after = _free_variables(self.new, qualname, new)
        for key, (free, definition) in after.items():
            if key not in before or before[key][0] == free:
                continue
            if definition is new:
                return self.class_cell_changed(qualname, new.lineno, "__class__" in free)
            return self.nested_closure_changed(key[0], definition, before[key][0], free)
        return None

    def class_cell_changed(self, qualname: str, line: int, uses: bool) -> Refusal:
        if uses:
            why = (
                f"`{qualname}` starts using zero-argument `super()` or `__class__`; the"
                f" `__class__` cell cannot be added to a live function; write"
                f" `super(ClassName, self)` instead, or {UPGRADE}"
            )
        else:
            why = (
                f"`{qualname}` stops using zero-argument `super()` or `__class__`; the"
                f" `__class__` cell cannot be removed from a live function; {UPGRADE}"
            )
        return self.refusal(line, "closure", why)

    def nested_closure_changed(
        self, path: str, node: _Definition, before: frozenset[str], after: frozenset[str]
    ) -> Refusal:
        what = "class" if isinstance(node, ast.ClassDef) else "function"
        why = (
            f"the nested {what} `{path}` now closes over {_names(after)} instead of"
            f" {_names(before)}; closures already made hold the old variables; pass the value"
            f" as an argument instead, or {UPGRADE}"
        )
        return self.refusal(node.lineno, "closure", why)

    # --- classes and constants

    def class_(self, qualname: str, old: ast.ClassDef, new: ast.ClassDef) -> None:
        """A class is patched through its methods; everything else about it stays."""
        if _dumps(_class_header(old)) != _dumps(_class_header(new)):
            why = (
                f"the bases or keywords of class `{qualname}` changed from {_header_text(old)}"
                f" to {_header_text(new)}; a live class cannot change its bases or metaclass;"
                f" {UPGRADE}"
            )
            self.refuse(self.refusal(new.lineno, "class-header", why))
        self.refuse(self.decorators_changed(qualname, old, new))
        old_body = _read_scope(old.body, in_class=True)
        new_body = _read_scope(new.body, in_class=True)
        if old_body.docstring != new_body.docstring:
            why = (
                f"the docstring of class `{qualname}` changed; a hot reload patches functions,"
                f" not class attributes such as `__doc__` (which may feed an API schema); keep"
                f" the old docstring, or {UPGRADE}"
            )
            self.refuse(self.refusal(new.lineno, "class-docstring", why))
        self.scope(old_body, new_body, owner=qualname)

    def constant(self, name: str, old: ast.stmt, new: ast.stmt) -> None:
        if _dump(_annotation(old)) != _dump(_annotation(new)):
            why = (
                f"the annotation of constant `{name}` changed; only a constant's literal value"
                f" is reloaded; {UPGRADE}"
            )
            self.refuse(self.refusal(new.lineno, "module-statement", why))
            return
        self.changes.constants.append(ConstantChange(name, new.lineno))


# --- Small helpers ----------------------------------------------------------------


def _dump(node: ast.AST | None) -> str:
    """A node's structure without positions: moving code is not changing it."""
    return "" if node is None else ast.dump(node)


def _dumps(nodes: Iterable[ast.AST]) -> list[str]:
    return [_dump(node) for node in nodes]


def _unmatched(old: list[ast.stmt], new: list[ast.stmt]) -> tuple[list[ast.stmt], list[ast.stmt]]:
    """The statements only in `new` and only in `old`, in any order (counted, not sorted)."""
    added, removed = [], []
    remaining = Counter(_dumps(old))
    for node in new:
        key = _dump(node)
        if remaining[key]:
            remaining[key] -= 1
        else:
            added.append(node)
    remaining = Counter(_dumps(new))
    for node in old:
        key = _dump(node)
        if remaining[key]:
            remaining[key] -= 1
        else:
            removed.append(node)
    return added, removed


def _statement_rule(node: ast.stmt, owner: str) -> str:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return "import"
    return "class-body" if owner else "module-statement"


def _where(node: ast.stmt, owner: str) -> str:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return f"the import `{_snippet(node)}`"
    if owner:
        return f"the statement `{_snippet(node)}` in the body of class `{owner}`"
    return f"the module-level statement `{_snippet(node)}`"


def _snippet(node: ast.AST, limit: int = 60) -> str:
    """The node's first line of source, shortened: enough to find it."""
    text = ast.unparse(node).splitlines()[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _names(names: frozenset[str]) -> str:
    return ", ".join(f"`{name}`" for name in sorted(names)) or "nothing"


def _decorators(node: ast.stmt) -> list[ast.expr]:
    return list(node.decorator_list) if isinstance(node, _DEFINITIONS) else []


def _decorator_list(node: ast.stmt) -> str:
    decorators = " ".join(f"@{ast.unparse(d)}" for d in _decorators(node))
    return f"`{decorators}`" if decorators else "none"


def _may_decorate_new(node: _Function, in_class: bool) -> bool:
    """No decorator, or for a method a lone ``@staticmethod`` or ``@classmethod``.

    Those builtins only wrap the function; any other decorator would have to run.
    """
    if not node.decorator_list:
        return True
    wrapper = node.decorator_list[0]
    return (
        in_class
        and len(node.decorator_list) == 1
        and isinstance(wrapper, ast.Name)
        and wrapper.id in _NEW_METHOD_DECORATORS
    )


def _signature(node: _Function) -> list[str]:
    type_params: list[ast.AST] = getattr(node, "type_params", [])  # Python 3.12+
    return [_dump(node.args), _dump(node.returns), *_dumps(type_params)]


def _class_header(node: ast.ClassDef) -> list[ast.AST]:
    type_params: list[ast.AST] = getattr(node, "type_params", [])  # Python 3.12+
    return [*node.bases, *node.keywords, *type_params]


def _header_text(node: ast.ClassDef) -> str:
    return "`(" + ", ".join(ast.unparse(part) for part in _class_header(node)) + ")`"


def _annotation(node: ast.stmt) -> ast.expr | None:
    return node.annotation if isinstance(node, ast.AnnAssign) else None


def _function_kind(code: CodeType) -> str:
    if code.co_flags & inspect.CO_ASYNC_GENERATOR:
        return "an async generator function"
    if code.co_flags & inspect.CO_COROUTINE:
        return "a coroutine function"
    if code.co_flags & inspect.CO_GENERATOR:
        return "a generator function"
    return "a plain function"


def _free_variables(
    side: _Compiled, qualname: str, node: _Function
) -> dict[tuple[str, int], tuple[frozenset[str], _Definition]]:
    """What `node` and each def or class nested in it close over, by qualname and occurrence."""
    found = {}
    occurrences: Counter[str] = Counter()
    root: list[tuple[str, _Definition]] = [(qualname, node)]
    for path, definition in [*root, *_nested_definitions(node, qualname)]:
        key = (path, occurrences[path])
        occurrences[path] += 1
        code = side.code_of(definition)
        if code is not None:
            found[key] = (frozenset(code.co_freevars), definition)
    return found


def _nested_definitions(node: _Definition, qualname: str) -> Iterator[tuple[str, _Definition]]:
    separator = "." if isinstance(node, ast.ClassDef) else ".<locals>."
    for child in _scope_walk(node.body):
        if isinstance(child, _DEFINITIONS):
            path = f"{qualname}{separator}{child.name}"
            yield path, child
            yield from _nested_definitions(child, path)
