"""The plan of a hot reload: which app modules two releases differ in, and what forbids it.

A hot reload patches the new release's source of the app's own pure-Python
modules into the workers of the serving release; everything else those
workers run (the interpreter, every installed distribution, compiled
extensions, data files, the manifest) must be the same in both, because a
running process cannot take it over. Whatever else differs is a `Refusal`
that points at `beamdeploy upgrade`.

Reading only: nothing of either release is imported or run. Installed
distributions are compared by their RECORD (the installer's path -> hash
listing), the app's files by content. No link is followed out of a release
and no file over `MAX_FILE` is read.
"""

from __future__ import annotations

import csv
import email.parser
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from beamdeploy_asgi.releases.release import DIGEST_FILE, MANIFEST, Release
from beamdeploy_asgi.reload.changes import Refusal

MAX_FILE = 5 * 1024 * 1024  # bytes of one file read: a source, a RECORD, a data file
MAX_FILES = 50_000  # files in one directory tree walked
UPGRADE = "use `beamdeploy upgrade`"
EXTENSIONS = (".so", ".pyd")
# Written by the installer or the build tool, read by nothing the app runs
# (uv writes its cache key into uv_cache.json).
IGNORED_DIST_FILES = frozenset(
    {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "WHEEL", "uv_cache.json"}
)
IGNORED_METADATA = frozenset({"version", "description"})
# The release's own files, not the app's, when pythonpath names the release itself.
RELEASE_FILES = frozenset({"venv", MANIFEST, DIGEST_FILE})


@dataclass
class ChangedModule:
    """An app module whose source differs between the releases, or that is new."""

    module: str  # dotted name, e.g. "myapp.routes" or "main"
    old_file: str | None  # None for a module that is new in the new release
    new_file: str
    old_source: str | None
    new_source: str

    def describe(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "old_file": self.old_file,
            "new_file": self.new_file,
            "new": self.old_file is None,
        }


@dataclass
class ReleaseDiff:
    """What a hot reload from one release to the next would change, or why it cannot."""

    modules: list[ChangedModule] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)  # any: the reload is refused
    old_paths: list[str] = field(default_factory=list)  # sys.path entries, in sys.path order
    new_paths: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refusals

    def describe(self) -> dict[str, Any]:
        return {
            "modules": [m.describe() for m in self.modules],
            "refusals": [str(r) for r in self.refusals],
            "old_paths": list(self.old_paths),
            "new_paths": list(self.new_paths),
        }


def compare(old: Release, new: Release) -> ReleaseDiff:
    """The changed app modules from `old` (serving) to `new`, and every reason to refuse."""
    if old.path is None or new.path is None:
        why = f"a hot reload compares two release directories; {UPGRADE}"
        return ReleaseDiff(refusals=[Refusal("<environment>", 0, "no-release", why)])
    return _Planner(_Side.read(old), _Side.read(new)).plan()


class _Refused(Exception):
    """A file the plan cannot read or accept; it becomes a Refusal naming that file."""

    def __init__(self, path: Path, rule: str, what: str) -> None:
        super().__init__(what)
        self.path = path
        self.rule = rule
        self.what = what

    def refusal(self) -> Refusal:
        return _refusal(self.path, self.rule, self.what)


def _refusal(file: Path, rule: str, what: str) -> Refusal:
    return Refusal(str(file), 0, rule, f"{what}; {UPGRADE}")


@dataclass(frozen=True)
class _Dist:
    """An installed distribution, as its .dist-info directory describes it."""

    name: str  # canonical: "beamdeploy-asgi"
    version: str
    directory: Path
    files: dict[str, str] | None  # RECORD, normalized (see _record); None if unreadable
    unreadable: _Refused | None = None

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}".strip()


@dataclass
class _Side:
    """One release as read from disk: its interpreter, site-packages and distributions."""

    release: Release
    root: Path
    python: str | None = None  # from venv/pyvenv.cfg: "3.11.7"
    lib: str | None = None  # venv/lib/<this>: "python3.11"
    dists: dict[str, _Dist] = field(default_factory=dict)
    problems: list[Refusal] = field(default_factory=list)

    @classmethod
    def read(cls, release: Release) -> _Side:
        assert release.path is not None
        side = cls(release, Path(release.path))
        side.python = side._python_version()
        side.lib = side._lib_dir()
        if side.site is not None:
            side.dists = _distributions(side.site, side.root)
        return side

    @property
    def site(self) -> Path | None:
        return None if self.lib is None else self.root / "venv" / "lib" / self.lib / "site-packages"

    @property
    def paths(self) -> list[str]:
        """As a worker's sys.path has them: the pythonpath dirs go in front."""
        site = [] if self.site is None else [str(self.site)]
        return [*self.release.pythonpath, *site]

    @property
    def pythonpath(self) -> list[str]:
        """The manifest's pythonpath, relative to the release as written there."""
        return [os.path.relpath(p, self.root) for p in self.release.pythonpath]

    @property
    def owned(self) -> set[str]:
        """The top-level names in site-packages that some distribution lists."""
        names = {dist.directory.name for dist in self.dists.values()}
        for dist in self.dists.values():
            names.update(p.partition("/")[0] for p in dist.files or () if not p.startswith("../"))
        return names

    def _python_version(self) -> str | None:
        """`version` (venv) or `version_info` (uv, virtualenv: "3.11.7.final.0"), as X.Y.Z."""
        cfg = self.root / "venv" / "pyvenv.cfg"
        try:
            text = _text(cfg, self.root)
        except _Refused as exc:
            self.problems.append(exc.refusal())
            return None
        keys = {}
        for line in text.splitlines():
            key, equals, value = line.partition("=")
            if equals:
                keys[key.strip().lower()] = value.strip()
        version = keys.get("version_info") or keys.get("version")
        if not version:
            self.problems.append(
                _refusal(cfg, "python-version", "names no Python version, so none can be compared")
            )
            return None
        return ".".join(version.split(".")[:3])

    def _lib_dir(self) -> str | None:
        lib = self.root / "venv" / "lib"
        try:
            found = sorted(p.name for p in lib.iterdir() if p.name.startswith(("python", "pypy")))
        except OSError:
            found = []
        if len(found) != 1:
            what = f"holds {len(found)} Python directories ({', '.join(found) or 'none'}), not 1"
            self.problems.append(_refusal(lib, "python-version", what))
            return None
        return found[0]


class _Planner:
    """Compares two read releases, filling one ReleaseDiff."""

    def __init__(self, old: _Side, new: _Side) -> None:
        self.old = old
        self.new = new
        self.diff = ReleaseDiff(old_paths=old.paths, new_paths=new.paths)
        self.planned: set[str] = set()  # modules compared, first on sys.path first

    def plan(self) -> ReleaseDiff:
        self.diff.refusals += self.old.problems + self.new.problems
        self.check_manifest()
        self.check_python()
        if self.old.pythonpath == self.new.pythonpath:  # else refused by check_manifest
            pairs = zip(self.old.release.pythonpath, self.new.release.pythonpath, strict=True)
            for old_dir, new_dir in dict.fromkeys(pairs):
                self.compare_app_dir(Path(old_dir), Path(new_dir))
        app_dist = self.app_distribution()
        self.check_distributions(skip=app_dist)
        if app_dist is not None:
            self.compare_app_distribution(app_dist)
        self.check_unowned()
        if app_dist is None and not self.app_in_pythonpath():
            top = _app_top(self.new.release.app)
            what = f"the app's package {top!r} is neither in pythonpath nor in a distribution"
            self.refuse(self.new.root / MANIFEST, "app-not-found", what)
        self.diff.modules.sort(key=lambda m: m.module)
        return self.diff

    def refuse(self, file: Path, rule: str, what: str) -> None:
        self.diff.refusals.append(_refusal(file, rule, what))

    def check_manifest(self) -> None:
        """Workers imported the app by its manifest entry; a reload cannot re-point them."""
        manifest = self.new.root / MANIFEST
        old, new = self.old.release, self.new.release
        if old.app != new.app:
            what = f"the app is {old.app} in the serving release and {new.app} in the new one"
            self.refuse(manifest, "manifest-app", what)
        if self.old.pythonpath != self.new.pythonpath:
            what = (
                f"pythonpath is {self.old.pythonpath} in the serving release"
                f" and {self.new.pythonpath} in the new one"
            )
            self.refuse(manifest, "manifest-app", what)

    def check_python(self) -> None:
        """Workers keep the serving release's interpreter; the new code must expect the same."""
        old, new = self.old, self.new
        if old.python and new.python and old.python != new.python:
            what = f"the serving release runs Python {old.python}, the new one Python {new.python}"
            self.refuse(new.root / "venv" / "pyvenv.cfg", "python-version", what)
        if old.lib and new.lib and old.lib != new.lib:
            what = f"the serving release's venv has lib/{old.lib}, the new one lib/{new.lib}"
            self.refuse(new.root / "venv" / "lib", "python-version", what)

    def app_distribution(self) -> str | None:
        """The app's own distribution, when both releases install the app as the same one."""
        old = _app_owner(self.old.dists, self.old.release.app)
        new = _app_owner(self.new.dists, self.new.release.app)
        return new if old == new else None  # else both are compared, and refused, as others

    def app_in_pythonpath(self) -> bool:
        top = _app_top(self.new.release.app)
        dirs = [Path(d) for d in self.new.release.pythonpath]
        return any((d / top).is_dir() or (d / f"{top}.py").is_file() for d in dirs)

    def check_distributions(self, skip: str | None) -> None:
        """Every other distribution, beamdeploy-asgi included, must be installed identically."""
        for name in sorted(self.old.dists.keys() | self.new.dists.keys()):
            if name == skip:
                continue
            old, new = self.old.dists.get(name), self.new.dists.get(name)
            if old is None:
                assert new is not None
                what = f"{new.label} is installed in the new release, not in the serving one"
                self.refuse(new.directory, "distribution", what)
            elif new is None:
                what = f"{old.label} is installed in the serving release, not in the new one"
                self.refuse(old.directory, "distribution", what)
            elif old.version != new.version:
                what = (
                    f"{name} is {old.version} in the serving release, {new.version} in the new one"
                )
                self.refuse(new.directory, "distribution", what)
            elif old.files is None or new.files is None:
                unreadable = old.unreadable or new.unreadable
                assert unreadable is not None
                self.diff.refusals.append(unreadable.refusal())
            elif old.files != new.files:
                what = f"{new.label} has other files than the same version in the serving release"
                self.refuse(new.directory, "distribution", f"{what}: {_some(old.files, new.files)}")

    def compare_app_distribution(self, name: str) -> None:
        """The app's wheel: its version and .py modules may change, nothing else."""
        old, new = self.old.dists[name], self.new.dists[name]
        if old.files is None or new.files is None:
            unreadable = old.unreadable or new.unreadable
            assert unreadable is not None
            self.diff.refusals.append(unreadable.refusal())
            return
        assert self.old.site is not None and self.new.site is not None
        for rel in sorted(old.files.keys() | new.files.keys()):
            if old.files.get(rel) == new.files.get(rel):
                continue
            old_file = self.old.site / rel if rel in old.files else None
            new_file = self.new.site / rel if rel in new.files else None
            module = _module_name(rel)
            if rel == f"{name}.dist-info/METADATA":
                self.compare_metadata(old, new)
            elif module is not None:
                self.compare_module(module, old_file, new_file)
            else:
                self.refuse_file(rel, old_file, new_file)

    def compare_metadata(self, old: _Dist, new: _Dist) -> None:
        """The version always changes in METADATA (and the long description may): not the rest."""
        try:
            before = _metadata(old.directory / "METADATA", self.old.root)
            after = _metadata(new.directory / "METADATA", self.new.root)
        except _Refused as exc:
            self.diff.refusals.append(exc.refusal())
            return
        if before != after:
            fields = sorted({k for k, _ in set(before) ^ set(after)})
            what = f"the metadata of {new.name} differs beyond its version: {', '.join(fields)}"
            self.refuse(new.directory / "METADATA", "not-python", what)

    def compare_app_dir(self, old_dir: Path, new_dir: Path) -> None:
        """A pythonpath dir: .py modules may change or be added; nothing else may change."""
        skip = set(RELEASE_FILES) if old_dir == self.old.root else set()
        old_files = self.walk(old_dir, self.old.root, skip)
        new_files = self.walk(new_dir, self.new.root, skip)
        for rel in sorted(old_files.keys() | new_files.keys()):
            old_file, new_file = old_files.get(rel), new_files.get(rel)
            module = _module_name(rel)
            if module is not None:
                self.compare_module(module, old_file, new_file)
            elif not self.same_file(old_file, new_file):
                self.refuse_file(rel, old_file, new_file)

    def check_unowned(self) -> None:
        """Files in site-packages no RECORD lists (a .pth, sitecustomize.py) may not change."""
        if self.old.site is None or self.new.site is None:
            return
        owned = self.old.owned | self.new.owned
        old_files = self.walk(self.old.site, self.old.root, skip=owned)
        new_files = self.walk(self.new.site, self.new.root, skip=owned)
        for rel in sorted(old_files.keys() | new_files.keys()):
            old_file, new_file = old_files.get(rel), new_files.get(rel)
            if not self.same_file(old_file, new_file):
                file = new_file or old_file
                assert file is not None
                what = (
                    f"{rel} {_change(old_file, new_file)}, and no installed distribution lists it"
                )
                self.refuse(file, "unowned-file", what)

    def compare_module(self, module: str, old: Path | None, new: Path | None) -> None:
        """A new or changed source is a ChangedModule; a gone one may still be in use.

        A module already compared is shadowed by that one, earlier on sys.path.
        """
        if module in self.planned:
            return
        self.planned.add(module)
        if new is None:
            assert old is not None
            what = (
                f"module {module} is gone from the new release; a running worker may still use it"
            )
            self.refuse(old, "removed-module", what)
            return
        try:
            new_source = _text(new, self.new.root)
            old_source = None if old is None else _text(old, self.old.root)
        except _Refused as exc:
            self.diff.refusals.append(exc.refusal())
            return
        if old_source != new_source:
            old_file = None if old is None else str(old)
            self.diff.modules.append(
                ChangedModule(module, old_file, str(new), old_source, new_source)
            )

    def refuse_file(self, rel: str, old: Path | None, new: Path | None) -> None:
        file = new or old
        assert file is not None
        if rel.endswith(EXTENSIONS):
            what = f"{rel} {_change(old, new)}: a compiled extension cannot be reloaded"
            self.refuse(file, "extension-module", what)
        else:
            what = f"{rel} {_change(old, new)}: a hot reload changes Python modules only"
            self.refuse(file, "not-python", what)

    def same_file(self, old: Path | None, new: Path | None) -> bool:
        if old is None or new is None:
            return False
        try:
            return _read(old, self.old.root) == _read(new, self.new.root)
        except _Refused as exc:
            self.diff.refusals.append(exc.refusal())
            return True  # refused already, as unreadable

    def walk(self, top: Path, root: Path, skip: set[str] | None = None) -> dict[str, Path]:
        files, refusals = _walk(top, root, skip or set())
        self.diff.refusals += refusals
        return files


def _app_top(app: str) -> str:
    """ "myapp.main:app" -> "myapp"."""
    return app.partition(":")[0].partition(".")[0]


def _app_owner(dists: dict[str, _Dist], app: str) -> str | None:
    """The distribution whose files hold the app's top-level package.

    Several may share a namespace package; then the one holding the app's
    module itself.
    """
    top = _app_top(app)
    owners = [d for d in dists.values() if any(_holds(p, top) for p in d.files or ())]
    if len(owners) > 1:
        module = app.partition(":")[0].replace(".", "/")
        wanted = {f"{module}.py", f"{module}/__init__.py"}
        owners = [d for d in owners if wanted & set(d.files or ())] or owners
    return owners[0].name if owners else None


def _holds(path: str, top: str) -> bool:
    """Whether a RECORD path is the top-level package or module `top` or under it."""
    first, slash, _ = path.partition("/")
    return first == top if slash else first.partition(".")[0] == top


def _module_name(rel: str) -> str | None:
    """ "pkg/__init__.py" -> "pkg", "pkg/mod.py" -> "pkg.mod"; None if not importable."""
    if not rel.endswith(".py"):
        return None
    parts = rel[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts.pop()
    if not parts or not all(part.isidentifier() for part in parts):
        return None
    return ".".join(parts)


def _change(old: Path | None, new: Path | None) -> str:
    return "is new" if old is None else "is gone" if new is None else "differs"


def _some(old: dict[str, str], new: dict[str, str]) -> str:
    """The first few paths two RECORD listings differ in."""
    missing = object()
    differ = sorted(
        p for p in old.keys() | new.keys() if old.get(p, missing) != new.get(p, missing)
    )
    more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
    return ", ".join(differ[:3]) + more


def _distributions(site: Path, root: Path) -> dict[str, _Dist]:
    """Every *.dist-info in site-packages, by canonical name."""
    try:
        infos = sorted(p for p in site.iterdir() if p.name.endswith(".dist-info") and p.is_dir())
    except OSError:
        return {}
    dists: dict[str, _Dist] = {}
    for directory in infos:
        raw_name, _, version = directory.name[: -len(".dist-info")].partition("-")
        name = canonicalize_name(raw_name)
        try:
            files: dict[str, str] | None = _record(directory, root, name)
            unreadable = None
        except _Refused as exc:
            files, unreadable = None, exc
        dists[name] = _Dist(name, version, directory, files, unreadable)
    return dists


def _record(directory: Path, root: Path, name: str) -> dict[str, str]:
    """RECORD as path -> hash, without what differs between two installs of the same files.

    Bytecode is the interpreter's; the installer's own files are ignored; the
    .dist-info dir is renamed without its version, so the app's matches
    across a version bump. Files installed outside site-packages (scripts)
    count by name only: the installer rewrites their shebang for each venv.
    """
    text = _text(directory / "RECORD", root)
    prefix = f"{directory.name}/"
    files = {}
    for row in csv.reader(text.splitlines()):
        if not row or _is_bytecode(row[0]):
            continue
        path, digest = row[0], row[1] if len(row) > 1 else ""
        if path.startswith(prefix):
            inner = path[len(prefix) :]
            if inner in IGNORED_DIST_FILES:
                continue
            path = f"{name}.dist-info/{inner}"
        files[path] = "" if path.startswith("../") else digest
    return files


def _metadata(path: Path, root: Path) -> list[tuple[str, str]]:
    """METADATA's headers but its version and description, in a stable order."""
    message = email.parser.HeaderParser().parsestr(_text(path, root))
    return sorted(
        (k.lower(), str(v)) for k, v in message.items() if k.lower() not in IGNORED_METADATA
    )


def _is_bytecode(rel: str) -> bool:
    return rel.endswith(".pyc") or "__pycache__" in rel.split("/")


def _walk(top: Path, root: Path, skip: set[str]) -> tuple[dict[str, Path], list[Refusal]]:
    """Every file under `top` by relative path, and what could not be walked.

    Bytecode is skipped (the interpreter's), and `skip` at the top level. A
    link to a file is listed (`_read` refuses it if it leads out of the
    release); a link to a directory is refused, not followed: it may loop,
    or bring in anything.
    """
    files: dict[str, Path] = {}
    refusals: list[Refusal] = []
    pending = [(top, "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except FileNotFoundError:
            continue
        except OSError as exc:
            refusals.append(_refusal(directory, "unreadable", f"cannot be listed: {exc.strerror}"))
            continue
        for entry in entries:
            rel, path = prefix + entry.name, Path(entry.path)
            if _is_bytecode(rel) or (not prefix and entry.name in skip):
                continue
            if entry.is_symlink() and entry.is_dir():
                refusals.append(_refusal(path, "symlink", "is a link to a directory, not followed"))
            elif entry.is_dir():
                pending.append((path, f"{rel}/"))
            elif entry.is_file():
                files[rel] = path
            else:
                refusals.append(_refusal(path, "not-python", "is not a regular file"))
            if len(files) > MAX_FILES:
                what = f"holds more than {MAX_FILES} files, more than a hot reload compares"
                return files, [*refusals, _refusal(top, "too-many-files", what)]
    return files, refusals


def _read(path: Path, root: Path) -> bytes:
    """A regular file of the release, at most MAX_FILE bytes, never through a link out of it."""
    try:
        real = path.resolve()
        if not real.is_relative_to(root):
            raise _Refused(path, "symlink", f"leads out of the release, to {real}")
        info = real.stat()
        if not stat.S_ISREG(info.st_mode):
            raise _Refused(path, "not-python", "is not a regular file")
        with open(real, "rb") as file:
            data = file.read(MAX_FILE + 1)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a link loop, before Python 3.13
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise _Refused(path, "unreadable", f"cannot be read: {detail}") from None
    if len(data) > MAX_FILE:
        what = f"is larger than {MAX_FILE // (1024 * 1024)} MiB, more than a hot reload reads"
        raise _Refused(path, "too-large", what)
    return data


def _text(path: Path, root: Path) -> str:
    """A file as UTF-8 text, as Python reads source (a leading BOM dropped)."""
    data = _read(path, root)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _Refused(path, "not-python", f"is not UTF-8 text (byte {exc.start})") from None
