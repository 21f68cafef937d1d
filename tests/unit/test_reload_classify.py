"""The classifier: which source differences a hot reload applies, and which it refuses."""

from __future__ import annotations

import textwrap

import pytest

from beamdeploy_asgi.reload.changes import ConstantChange, FunctionChange, ModuleChanges
from beamdeploy_asgi.reload.classify import classify

FILE = "app/routes.py"
OLD_FILE = "serving/app/routes.py"  # where what was removed is
UPGRADE = "deploy it with `beamdeploy upgrade`"


def diff(old: str, new: str) -> ModuleChanges:
    """Classify two snippets; line 1 is the first line after the opening quotes."""
    return classify("app.routes", FILE, source(old), source(new), OLD_FILE)


def source(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def refusals(changes: ModuleChanges) -> list[str]:
    return [str(refusal) for refusal in changes.refusals]


def rules(changes: ModuleChanges) -> list[tuple[int, str]]:
    return [(refusal.line, refusal.rule) for refusal in changes.refusals]


def only_function(changes: ModuleChanges) -> FunctionChange:
    assert changes.ok, refusals(changes)
    assert not (changes.constants or changes.removed or changes.docstring)
    [function] = changes.functions
    return function


# --- Nothing changed --------------------------------------------------------------


def test_identical_sources_have_no_changes():
    code = """
        import os

        app = make_app()

        def handler():
            return os.getpid()
    """
    changes = diff(code, code)
    assert changes.ok and changes.empty
    assert changes.describe() == {
        "module": "app.routes",
        "file": FILE,
        "functions": [],
        "constants": [],
        "docstring": False,
        "removed": [],
        "refusals": [],
    }


def test_moving_a_function_is_not_a_change():
    old = """
        def first():
            return 1

        def second():
            return 2
    """
    new = """
        def second():
            return 2



        def first():
            return 1
    """
    changes = diff(old, new)
    assert changes.ok and changes.empty


def test_a_function_moved_down_by_a_changed_one_above_is_unchanged():
    old = """
        def above():
            return 1

        def below():
            return 2
    """
    new = """
        def above():
            x = 1
            return x

        def below():
            return 2
    """
    assert only_function(diff(old, new)) == FunctionChange("above", 1, "changed")


def test_reordered_module_statements_are_not_a_change():
    old = """
        app.include_router(a)
        app.include_router(b)
    """
    new = """
        app.include_router(b)
        app.include_router(a)
    """
    assert diff(old, new).empty


def test_pass_ellipsis_and_bare_strings_are_not_a_change():
    old = """
        class Marker:
            pass
    """
    new = """
        class Marker:
            ...

        "A note, not a docstring."
    """
    assert diff(old, new).empty


def test_comments_and_formatting_are_not_a_change():
    old = "def f(a, b):\n    return a + b\n"
    new = "def f(a,\n      b):  # sum\n    return (a + b)\n"
    assert diff(old, new).empty


# --- Allowed: functions -----------------------------------------------------------


def test_changed_function_body():
    old = """
        def handler():
            return 1
    """
    new = """
        def handler():
            return 2
    """
    assert only_function(diff(old, new)) == FunctionChange(
        "handler", 1, "changed", signature_changed=False
    )


def test_changed_async_function_body():
    old = """
        async def handler():
            return await fetch(1)
    """
    new = """
        async def handler():
            value = await fetch(2)
            return value
    """
    assert only_function(diff(old, new)) == FunctionChange("handler", 1, "changed")


def test_changed_body_of_a_decorated_route_keeps_its_decorator():
    old = """
        @app.get("/a")
        async def handler():
            return {"a": 1}
    """
    new = """
        @app.get("/a")
        async def handler():
            return {"a": 2}
    """
    assert only_function(diff(old, new)) == FunctionChange("handler", 2, "changed")


def test_changed_method_body():
    old = """
        class Service:
            def run(self):
                return 1
    """
    new = """
        class Service:
            def run(self):
                return 2
    """
    assert only_function(diff(old, new)) == FunctionChange("Service.run", 2, "changed")


def test_changed_staticmethod_and_classmethod_bodies():
    old = """
        class Service:
            @staticmethod
            def make():
                return 1

            @classmethod
            def build(cls):
                return cls()
    """
    new = """
        class Service:
            @staticmethod
            def make():
                return 2

            @classmethod
            def build(cls):
                return cls(1)
    """
    changes = diff(old, new)
    assert changes.ok
    assert changes.functions == [
        FunctionChange("Service.make", 3, "changed"),
        FunctionChange("Service.build", 7, "changed"),
    ]


def test_changed_property_accessors_are_fget_fset_fdel():
    old = """
        class Service:
            @property
            def total(self):
                return self._total

            @total.setter
            def total(self, value):
                self._total = value

            @total.deleter
            def total(self):
                del self._total
    """
    new = """
        class Service:
            @property
            def total(self):
                return self._total + 0

            @total.setter
            def total(self, value):
                self._total = int(value)

            @total.deleter
            def total(self):
                self._total = 0
    """
    changes = diff(old, new)
    assert changes.ok
    assert changes.functions == [
        FunctionChange("Service.total.fget", 3, "changed"),
        FunctionChange("Service.total.fset", 7, "changed"),
        FunctionChange("Service.total.fdel", 11, "changed"),
    ]


def test_changed_docstring_of_a_function():
    old = '''
        def handler():
            """Old words."""
            return 1
    '''
    new = '''
        def handler():
            """New words."""
            return 1
    '''
    assert only_function(diff(old, new)) == FunctionChange("handler", 1, "changed")


def test_changed_default_is_a_signature_change():
    old = """
        def handler(limit=10):
            return limit
    """
    new = """
        def handler(limit=20):
            return limit
    """
    assert only_function(diff(old, new)) == FunctionChange(
        "handler", 1, "changed", signature_changed=True
    )


def test_changed_annotations_are_a_signature_change():
    old = """
        def handler(limit: int) -> int:
            return limit
    """
    new = """
        def handler(limit: str) -> str:
            return limit
    """
    assert only_function(diff(old, new)).signature_changed


def test_nested_function_body_change_is_part_of_its_outer_function():
    old = """
        def outer():
            factor = 2
            def inner(x):
                return x * factor
            return inner
    """
    new = """
        def outer():
            factor = 2
            def inner(x):
                return x * factor + 1
            return inner
    """
    assert only_function(diff(old, new)) == FunctionChange("outer", 1, "changed")


def test_method_of_a_nested_class():
    old = """
        class Outer:
            class Inner:
                def method(self):
                    return 1
    """
    new = """
        class Outer:
            class Inner:
                def method(self):
                    return 2
    """
    assert only_function(diff(old, new)).qualname == "Outer.Inner.method"


def test_method_keeping_zero_argument_super_may_change():
    old = """
        class Service(Base):
            def run(self):
                return super().run()
    """
    new = """
        class Service(Base):
            def run(self):
                return super().run() + 1
    """
    assert only_function(diff(old, new)) == FunctionChange("Service.run", 2, "changed")


def test_yield_in_a_nested_function_does_not_make_the_outer_a_generator():
    old = """
        def outer():
            return 1
    """
    new = """
        def outer():
            def numbers():
                yield 1
            return list(numbers())
    """
    assert only_function(diff(old, new)) == FunctionChange("outer", 1, "changed")


def test_comprehension_using_a_new_local_is_not_a_closure_change():
    old = """
        def scale(xs):
            return [x for x in xs]
    """
    new = """
        def scale(xs, factor=2):
            return [x * factor for x in xs]
    """
    assert only_function(diff(old, new)) == FunctionChange(
        "scale", 1, "changed", signature_changed=True
    )


# --- Allowed: new functions -------------------------------------------------------


def test_new_module_function():
    old = """
        def handler():
            return 1
    """
    new = """
        def handler():
            return 1

        async def helper():
            return 2
    """
    assert only_function(diff(old, new)) == FunctionChange("helper", 4, "new")


def test_new_methods_in_an_existing_class():
    old = """
        class Service:
            def run(self):
                return 1
    """
    new = """
        class Service:
            def run(self):
                return 1

            def stop(self):
                return 0

            @staticmethod
            def make():
                return Service()

            @property
            def name(self):
                return "service"
    """
    changes = diff(old, new)
    assert changes.ok
    assert changes.functions == [
        FunctionChange("Service.stop", 5, "new"),
        FunctionChange("Service.make", 9, "new"),
        FunctionChange("Service.name.fget", 13, "new"),
    ]


def test_new_property_is_its_new_accessors():
    old = """
        class Service:
            pass
    """
    new = """
        class Service:
            @property
            def total(self):
                return self._total

            @total.setter
            def total(self, value):
                self._total = value
    """
    changes = diff(old, new)
    assert changes.ok
    assert changes.functions == [
        FunctionChange("Service.total.fget", 3, "new"),
        FunctionChange("Service.total.fset", 7, "new"),
    ]


def test_new_setter_on_an_existing_property():
    old = """
        class Service:
            @property
            def total(self):
                return self._total
    """
    new = """
        class Service:
            @property
            def total(self):
                return self._total

            @total.setter
            def total(self, value):
                self._total = value
    """
    assert only_function(diff(old, new)) == FunctionChange("Service.total.fset", 7, "new")


# --- Allowed: constants and the module docstring ----------------------------------


def test_changed_literal_constants():
    old = """
        VERSION = "1.0"
        LIMITS = {"a": (1, 2), "b": [3, -4.5, None, True]}
        TIMEOUT: float = 1.5
    """
    new = """
        VERSION = "1.1"
        LIMITS = {"a": (1, 2), "b": [3, -4.5, None, False]}
        TIMEOUT: float = 2.5
    """
    changes = diff(old, new)
    assert changes.ok and not changes.functions
    assert changes.constants == [
        ConstantChange("VERSION", 1),
        ConstantChange("LIMITS", 2),
        ConstantChange("TIMEOUT", 3),
    ]


def test_new_literal_constant():
    changes = diff("A = 1\n", "A = 1\nB = b'x'\n")
    assert changes.ok
    assert changes.constants == [ConstantChange("B", 2)]


def test_changed_module_docstring():
    old = '''
        """Old module words."""

        def handler():
            return 1
    '''
    new = '''
        """New module words,
        on two lines."""

        def handler():
            return 1
    '''
    changes = diff(old, new)
    assert changes.ok
    assert changes.docstring
    assert not (changes.functions or changes.constants or changes.removed)


def test_removed_functions_are_listed_not_refused():
    old = """
        def handler():
            return 1

        def gone():
            return 2

        class Service:
            def stop(self):
                return 0

            @property
            def total(self):
                return 1

            @total.setter
            def total(self, value):
                pass
    """
    new = """
        def handler():
            return 1

        class Service:
            @property
            def total(self):
                return 1
    """
    changes = diff(old, new)
    assert changes.ok
    assert sorted(changes.removed) == ["Service.stop", "Service.total.fset", "gone"]
    assert not changes.functions


# --- Refused: syntax --------------------------------------------------------------


def test_syntax_error_is_the_only_refusal():
    old = """
        import os

        def handler():
            return 1
    """
    new = """
        import sys

        def handler(:
            return 2
    """
    changes = diff(old, new)
    assert refusals(changes) == [
        f"{FILE}:3: syntax: the new source does not compile: invalid syntax;"
        " fix it and build a new release"
    ]
    assert changes.empty


def test_errors_only_the_compiler_finds_are_syntax_errors():
    new = """
        def handler():
            return 1

        def other():
            await handler()
    """
    changes = diff("", new)
    assert rules(changes) == [(5, "syntax")]
    assert "'await' outside async function" in changes.refusals[0].why


def test_an_old_source_that_does_not_compile_is_refused():
    changes = diff("def f(:\n", "x = 1\n")
    assert rules(changes) == [(1, "syntax")]
    assert changes.refusals[0].why.endswith(UPGRADE)


def test_absurd_nesting_is_refused_not_raised():
    deep = "x = " + "+".join(["1"] * 5000) + "\n"
    changes = diff("x = 1\n", deep)
    # Whether the parser or the comparison gives up first depends on the Python version.
    assert rules(changes) in ([(1, "syntax")], [(1, "too-deep")])
    assert changes.empty


def test_a_comparison_too_deep_to_finish_is_refused_not_raised(monkeypatch):
    from beamdeploy_asgi.reload import classify as module

    def too_deep(node):
        raise RecursionError

    monkeypatch.setattr(module, "_dump", too_deep)
    changes = diff("def f():\n    return 1\n", "def f():\n    return 2\n")
    assert refusals(changes) == [
        f"{FILE}:1: too-deep: the source nests too deeply to compare safely; {UPGRADE}"
    ]
    assert changes.empty


# --- Refused: module statements ---------------------------------------------------


def test_changed_app_construction_is_refused():
    old = """
        from fastapi import FastAPI

        app = FastAPI()
    """
    new = """
        from fastapi import FastAPI

        app = FastAPI(title="orders")
    """
    assert refusals(diff(old, new)) == [
        f"{FILE}:3: module-statement: the module-level statement"
        " `app = FastAPI(title='orders')` is new or changed; module code runs once, at"
        f" import, and a hot reload does not re-run it; {UPGRADE}"
    ]


def test_new_module_call_is_refused():
    old = """
        app = FastAPI()
    """
    new = """
        app = FastAPI()
        app.include_router(orders)
        app.add_middleware(GZipMiddleware)
    """
    assert rules(diff(old, new)) == [(2, "module-statement"), (3, "module-statement")]


def test_removed_module_statement_is_refused_at_its_old_line():
    old = """
        app = FastAPI()

        app.include_router(orders)
    """
    new = """
        app = FastAPI()
    """
    assert refusals(diff(old, new)) == [
        f"{OLD_FILE}:3: module-statement: the module-level statement"
        " `app.include_router(orders)` was removed or changed; what it did when it ran stays"
        f" done in running processes; {UPGRADE}"
    ]


def test_constant_from_a_call_is_refused():
    old = """
        LIMIT = 10
    """
    new = """
        LIMIT = int(os.environ["LIMIT"])
    """
    assert refusals(diff(old, new)) == [
        f"{FILE}:1: module-statement: `LIMIT` changes from a constant to a statement; a hot"
        " reload only changes the code of functions and the value of literal constants;"
        f" {UPGRADE}"
    ]


def test_changed_non_literal_assignment_is_refused():
    changes = diff("TTL = 60 * 60\n", "TTL = 60 * 60 * 24\n")
    assert rules(changes) == [(1, "module-statement")]
    assert not changes.constants


def test_changed_constant_annotation_is_refused():
    changes = diff("LIMIT: int = 1\n", "LIMIT: float = 1\n")
    assert rules(changes) == [(1, "module-statement")]
    assert "annotation of constant `LIMIT`" in changes.refusals[0].why


def test_removed_constant_is_refused():
    changes = diff("A = 1\nB = 2\n", "A = 1\n")
    assert refusals(changes) == [
        f"{OLD_FILE}:2: module-statement: constant `B` was removed; running code and live objects"
        f" may still use it; {UPGRADE}"
    ]


def test_other_module_statements_are_refused():
    old = """
        COUNT = 0
        if DEBUG:
            level = 1
        handler = lambda request: 1
    """
    new = """
        COUNT = 0
        COUNT += 1
        if DEBUG:
            level = 2
        handler = lambda request: 2
        del helper
    """
    assert rules(diff(old, new)) == [
        (2, "module-statement"),
        (3, "module-statement"),
        (5, "module-statement"),
        (6, "module-statement"),
    ]


def test_rebinding_a_constant_is_a_module_statement():
    old = """
        COUNT = 0
    """
    new = """
        COUNT = 0
        COUNT += 1
    """
    changes = diff(old, new)
    assert rules(changes) == [(2, "module-statement")]
    assert "`COUNT += 1`" in changes.refusals[0].why
    assert not changes.constants


def test_function_defined_inside_a_module_if_is_a_module_statement():
    old = """
        if DEBUG:
            def trace():
                return 1
    """
    new = """
        if DEBUG:
            def trace():
                return 2
    """
    changes = diff(old, new)
    assert rules(changes) == [(1, "module-statement")]
    assert not changes.functions


def test_new_import_is_refused():
    old = """
        import json
    """
    new = """
        import json
        from orders import service
    """
    assert refusals(diff(old, new)) == [
        f"{FILE}:2: import: the import `from orders import service` is new or changed; a hot"
        f" reload imports nothing and rebinds no imported name; {UPGRADE}"
    ]


def test_changed_import_is_refused():
    changes = diff("import json\n", "import orjson as json\n")
    assert rules(changes) == [(1, "import")]


def test_a_function_replacing_an_import_is_refused():
    changes = diff("from helpers import slug\n", "def slug(text):\n    return text\n")
    assert rules(changes) == [(1, "import")]
    assert "changes from an import to a function" in changes.refusals[0].why


# --- Refused: decorators ----------------------------------------------------------


def test_changed_decorator_argument_is_refused():
    old = """
        @app.get("/a")
        async def handler():
            return 1
    """
    new = """
        @app.get("/b")
        async def handler():
            return 1
    """
    assert refusals(diff(old, new)) == [
        f"{FILE}:2: decorator: the decorators of `handler` changed from `@app.get('/a')` to"
        " `@app.get('/b')`; decorators ran once, when it was defined (a route, a cache,"
        f" staticmethod or property), and a hot reload does not re-run them; {UPGRADE}"
    ]


def test_added_removed_and_reordered_decorators_are_refused():
    old = """
        @a
        @b
        def one():
            return 1

        def two():
            return 2

        @cache
        def three():
            return 3
    """
    new = """
        @b
        @a
        def one():
            return 1

        @cache
        def two():
            return 2

        def three():
            return 3
    """
    assert rules(diff(old, new)) == [(3, "decorator"), (7, "decorator"), (10, "decorator")]


def test_a_decorator_change_is_refused_even_with_a_changed_body():
    old = """
        @app.get("/a")
        def handler():
            return 1
    """
    new = """
        @app.post("/a")
        def handler():
            return 2
    """
    changes = diff(old, new)
    assert rules(changes) == [(2, "decorator")]
    assert not changes.functions


def test_method_becoming_static_class_or_property_is_a_decorator_change():
    old = """
        class Service:
            def one(self):
                return 1

            def two(self):
                return 2

            def three(self):
                return 3
    """
    new = """
        class Service:
            @staticmethod
            def one():
                return 1

            @classmethod
            def two(cls):
                return 2

            @property
            def three(self):
                return 3
    """
    changes = diff(old, new)
    assert rules(changes) == [(3, "decorator"), (7, "decorator"), (11, "decorator")]
    assert "from none to `@property`" in changes.refusals[2].why


def test_property_becoming_a_plain_method_is_a_decorator_change():
    old = """
        class Service:
            @property
            def total(self):
                return 1
    """
    new = """
        class Service:
            def total(self):
                return 1
    """
    changes = diff(old, new)
    assert rules(changes) == [(2, "decorator")]
    assert "from `@property` to none" in changes.refusals[0].why


def test_new_decorated_function_is_refused():
    old = """
        @app.get("/a")
        def a():
            return 1
    """
    new = """
        @app.get("/a")
        def a():
            return 1

        @app.get("/b")
        def b():
            return 2
    """
    changes = diff(old, new)
    assert refusals(changes) == [
        f"{FILE}:6: decorator: the new function `b` has decorators (`@app.get('/b')`): they"
        " would have to run in the live process (registering a route, say), which a hot"
        f" reload does not do; {UPGRADE}"
    ]
    assert not changes.functions


def test_new_module_function_may_not_be_a_staticmethod():
    changes = diff("", "@staticmethod\ndef f():\n    return 1\n")
    assert rules(changes) == [(2, "decorator")]


def test_changed_class_decorator_is_refused():
    old = """
        @dataclass
        class Order:
            id: int
    """
    new = """
        @dataclass(frozen=True)
        class Order:
            id: int
    """
    changes = diff(old, new)
    assert rules(changes) == [(2, "decorator")]
    assert "`@dataclass` to `@dataclass(frozen=True)`" in changes.refusals[0].why


# --- Refused: classes -------------------------------------------------------------


def test_new_class_is_refused():
    old = """
        def handler():
            return 1
    """
    new = """
        def handler():
            return 1

        class Order(BaseModel):
            id: int
    """
    changes = diff(old, new)
    assert refusals(changes) == [
        f"{FILE}:4: new-class: class `Order` is new; creating a class runs its metaclass and"
        " decorators (ORM, pydantic, route registries), which a hot reload does not do;"
        f" {UPGRADE}"
    ]
    assert changes.empty


def test_new_nested_class_is_refused():
    old = """
        class Order:
            pass
    """
    new = """
        class Order:
            class Config:
                frozen = True
    """
    assert rules(diff(old, new)) == [(2, "new-class")]


def test_removed_class_is_refused():
    old = """
        class Order:
            pass

        class Outer:
            class Inner:
                pass
    """
    new = """
        class Outer:
            pass
    """
    changes = diff(old, new)
    assert rules(changes) == [(1, "module-statement"), (5, "class-body")]
    assert changes.refusals[1].why.startswith("class `Outer.Inner` was removed")


def test_changed_class_bases_are_refused():
    old = """
        class Service(Base):
            pass
    """
    new = """
        class Service(Base, metaclass=Registry):
            pass
    """
    assert refusals(diff(old, new)) == [
        f"{FILE}:1: class-header: the bases or keywords of class `Service` changed from"
        " `(Base)` to `(Base, metaclass=Registry)`; a live class cannot change its bases or"
        f" metaclass; {UPGRADE}"
    ]


def test_pydantic_field_change_is_refused():
    old = """
        class Order(BaseModel):
            id: int
            note: str = ""

            def total(self):
                return 1
    """
    new = """
        class Order(BaseModel):
            id: int
            note: str | None = None

            def total(self):
                return 2
    """
    changes = diff(old, new)
    assert refusals(changes) == [
        f"{FILE}:3: class-body: the statement `note: str | None = None` in the body of class"
        " `Order` is new or changed; class attributes and fields (dataclass, pydantic, attrs,"
        f" Enum, `__slots__`) are fixed when the class is created; {UPGRADE}"
    ]
    assert changes.functions == [FunctionChange("Order.total", 5, "changed")]


def test_dataclass_new_field_is_refused():
    old = """
        @dataclass
        class Point:
            x: int
    """
    new = """
        @dataclass
        class Point:
            x: int
            y: int = 0
    """
    assert rules(diff(old, new)) == [(4, "class-body")]


def test_enum_member_change_is_refused():
    old = """
        class Color(Enum):
            RED = 1
            GREEN = 2
    """
    new = """
        class Color(Enum):
            RED = 1
            GREEN = 3
    """
    assert rules(diff(old, new)) == [(3, "class-body")]


def test_removed_class_attribute_is_refused_at_its_old_line():
    old = """
        class Service:
            __slots__ = ("a", "b")
            retries = 3
    """
    new = """
        class Service:
            __slots__ = ("a", "b")
    """
    changes = diff(old, new)
    assert rules(changes) == [(3, "class-body")]
    assert changes.refusals[0].file == OLD_FILE, "line 3 is a line of the serving release's file"
    assert "was removed or changed" in changes.refusals[0].why


def test_removals_point_at_the_old_file_and_come_after_the_new_files_refusals():
    old = """
        import os


        class Gone:
            pass


        LIMIT = 3
        print("x")


        def f():
            return 1
    """
    new = """
        def f():
            return 2

        import json
    """
    placed = [(r.file, r.line, r.rule) for r in diff(old, new).refusals]
    assert placed == [
        (FILE, 4, "import"),
        (OLD_FILE, 1, "import"),
        (OLD_FILE, 4, "module-statement"),
        (OLD_FILE, 8, "module-statement"),
        (OLD_FILE, 9, "module-statement"),
    ]
    assert classify("m", FILE, "X = 1\n", "\n").refusals[0].file == FILE, "no old file given"


def test_nested_class_body_change_is_refused_with_its_qualname():
    old = """
        class Outer:
            class Inner:
                limit = 1
    """
    new = """
        class Outer:
            class Inner:
                limit = 2
    """
    changes = diff(old, new)
    assert rules(changes) == [(3, "class-body")]
    assert "in the body of class `Outer.Inner`" in changes.refusals[0].why


def test_changed_class_docstring_is_refused():
    old = '''
        class Order(BaseModel):
            """An order."""
    '''
    new = '''
        class Order(BaseModel):
            """A customer's order."""
    '''
    assert refusals(diff(old, new)) == [
        f"{FILE}:1: class-docstring: the docstring of class `Order` changed; a hot reload"
        " patches functions, not class attributes such as `__doc__` (which may feed an API"
        f" schema); keep the old docstring, or {UPGRADE}"
    ]


@pytest.mark.parametrize(
    "method", ["__eq__", "__init_subclass__", "__class_getitem__", "__post_init__", "__new__"]
)
def test_new_method_acted_on_at_class_creation_is_refused(method):
    old = """
        @dataclass
        class Order:
            id: int
    """
    new = f"""
        @dataclass
        class Order:
            id: int

            def {method}(self, *args):
                return None
    """
    assert refusals(diff(old, new)) == [
        f"{FILE}:5: special-method: the method `Order.{method}` is new, and `{method}` is"
        " acted on when a class is created, which adding it to a live class would not repeat;"
        f" {UPGRADE}"
    ]


def test_changed_body_of_a_special_method_is_allowed():
    old = """
        class Order:
            def __eq__(self, other):
                return self.id == other.id
    """
    new = """
        class Order:
            def __eq__(self, other):
                return isinstance(other, Order) and self.id == other.id
    """
    assert only_function(diff(old, new)) == FunctionChange("Order.__eq__", 2, "changed")


# --- Refused: closures ------------------------------------------------------------


def test_nested_function_closing_over_other_variables_is_refused():
    old = """
        def outer():
            x = 1
            y = 2
            def inner():
                return x
            return inner
    """
    new = """
        def outer():
            x = 1
            y = 2
            def inner():
                return x + y
            return inner
    """
    changes = diff(old, new)
    assert refusals(changes) == [
        f"{FILE}:4: closure: the nested function `outer.<locals>.inner` now closes over `x`,"
        " `y` instead of `x`; closures already made hold the old variables; pass the value as"
        f" an argument instead, or {UPGRADE}"
    ]
    assert not changes.functions


def test_nonlocal_counts_as_a_closure_variable():
    old = """
        def counter():
            count = 0
            def step():
                return 1
            return step
    """
    new = """
        def counter():
            count = 0
            def step():
                nonlocal count
                count += 1
                return count
            return step
    """
    assert rules(diff(old, new)) == [(3, "closure")]


def test_class_nested_in_a_function_closing_over_other_variables_is_refused():
    old = """
        def make():
            a, b = 1, 2
            class Local:
                x = a
            return Local
    """
    new = """
        def make():
            a, b = 1, 2
            class Local:
                x = b
            return Local
    """
    changes = diff(old, new)
    assert rules(changes) == [(3, "closure")]
    assert changes.refusals[0].why.startswith(
        "the nested class `make.<locals>.Local` now closes over `b` instead of `a`"
    )


def test_unreachable_nested_function_is_no_closure():
    old = """
        def handler():
            return 1
    """
    new = """
        def handler():
            value = 2
            return value
            def never():
                return value
    """
    assert only_function(diff(old, new)) == FunctionChange("handler", 1, "changed")


def test_starting_to_use_zero_argument_super_is_refused():
    old = """
        class Service(Base):
            def run(self):
                return 1
    """
    new = """
        class Service(Base):
            def run(self):
                return super().run()
    """
    assert refusals(diff(old, new)) == [
        f"{FILE}:2: closure: `Service.run` starts using zero-argument `super()` or"
        " `__class__`; the `__class__` cell cannot be added to a live function; write"
        f" `super(ClassName, self)` instead, or {UPGRADE}"
    ]


def test_stopping_to_use_dunder_class_is_refused():
    old = """
        class Service:
            def name(self):
                return __class__.__name__
    """
    new = """
        class Service:
            def name(self):
                return "Service"
    """
    changes = diff(old, new)
    assert rules(changes) == [(2, "closure")]
    assert "stops using zero-argument `super()` or `__class__`" in changes.refusals[0].why


# --- Refused: function kind -------------------------------------------------------


def test_def_becoming_async_def_is_refused():
    old = """
        def handler():
            return 1
    """
    new = """
        async def handler():
            return 1
    """
    assert refusals(diff(old, new)) == [
        f"{FILE}:1: function-kind: `handler` changes from a plain function to a coroutine"
        f" function; its callers call or await it the old way; {UPGRADE}"
    ]


def test_gaining_yield_is_refused():
    old = """
        def rows():
            return [1, 2]

        async def events():
            return 1
    """
    new = """
        def rows():
            yield 1

        async def events():
            yield 1
    """
    changes = diff(old, new)
    assert rules(changes) == [(1, "function-kind"), (4, "function-kind")]
    assert "from a plain function to a generator function" in changes.refusals[0].why
    assert "from a coroutine function to an async generator function" in changes.refusals[1].why


def test_losing_yield_from_is_refused():
    old = """
        def rows():
            yield from source()
    """
    new = """
        def rows():
            return list(source())
    """
    assert rules(diff(old, new)) == [(1, "function-kind")]


# --- Refused: duplicate definitions -----------------------------------------------


def test_changed_duplicate_definitions_are_refused():
    old = """
        @overload
        def parse(x: int) -> int: ...
        @overload
        def parse(x: str) -> str: ...
        def parse(x):
            return x
    """
    new = """
        @overload
        def parse(x: int) -> int: ...
        @overload
        def parse(x: str) -> str: ...
        def parse(x):
            return x * 2
    """
    assert refusals(diff(old, new)) == [
        f"{FILE}:5: duplicate-definition: `parse` is bound 3 times in one scope and these"
        " changed; the last one wins at run time, so what to patch would be a guess; keep one"
        f" definition, or {UPGRADE}"
    ]


def test_unchanged_duplicate_definitions_are_fine():
    code = """
        def handler():
            return 1

        def handler():
            return 2
    """
    new = source(code) + "\ndef other():\n    return 3\n"
    changes = classify("app.routes", FILE, source(code), new)
    assert changes.ok
    assert changes.functions == [FunctionChange("other", 7, "new")]


def test_function_rebound_by_a_wrapper_is_a_duplicate():
    old = """
        def handler():
            return 1
        handler = traced(handler)
    """
    new = """
        def handler():
            return 2
        handler = traced(handler)
    """
    assert rules(diff(old, new)) == [(1, "duplicate-definition")]


# --- Results ----------------------------------------------------------------------


def test_every_refusal_names_the_file_given():
    changes = classify("pkg.mod", "/srv/releases/7/pkg/mod.py", "", "import os\n")
    assert str(changes.refusals[0]).startswith("/srv/releases/7/pkg/mod.py:1: import: ")
    assert changes.module == "pkg.mod"


def test_a_mixed_release_reports_changes_and_refusals_together():
    old = """
        VERSION = "1"

        def handler():
            return 1
    """
    new = """
        import os

        VERSION = "2"

        def handler():
            return os.getpid()
    """
    changes = diff(old, new)
    assert rules(changes) == [(1, "import")]
    assert changes.constants == [ConstantChange("VERSION", 3)]
    assert changes.functions == [FunctionChange("handler", 5, "changed")]
