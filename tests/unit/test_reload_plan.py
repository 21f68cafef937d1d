"""The hot reload planner: which app modules differ, and everything else it refuses.

Releases are built by hand: a manifest, a venv with pyvenv.cfg, an empty
executable bin/python (Release.load asks no more), and distributions as an
installer leaves them, a .dist-info with METADATA and a RECORD of hashes.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from beamdeploy_asgi.releases.release import Release
from beamdeploy_asgi.reload.changes import Refusal
from beamdeploy_asgi.reload.plan import MAX_FILE, ChangedModule, compare

UPGRADE = "use `beamdeploy upgrade`"
SITE = "venv/lib/python3.11/site-packages"
MAIN = (
    "from starlette.applications import Starlette\n"
    "\ndef home():\n    return 1\n\napp = Starlette()\n"
)

Files = dict[str, "str | bytes"]

DEPENDENCIES: dict[str, tuple[str, Files]] = {
    "beamdeploy-asgi": ("0.1.0", {"beamdeploy_asgi/__init__.py": "VERSION = '0.1.0'\n"}),
    "starlette": (
        "0.37.2",
        {"starlette/__init__.py": "", "starlette/routing.py": "class Route: ...\n"},
    ),
}


def digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)


def install(site: Path, name: str, version: str, files: Files) -> None:
    """What an installer leaves: the files, and a .dist-info listing them with hashes."""
    info = f"{name.replace('-', '_')}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nThe {name} project.\n"
    everything = {**files, f"{info}/METADATA": metadata, f"{info}/INSTALLER": "uv\n"}
    rows = []
    for rel, content in everything.items():
        write(site / rel, content)
        data = content.encode() if isinstance(content, str) else content
        rows.append(f"{rel},{digest(data)},{len(data)}")
    rows.append(f"{info}/RECORD,,")
    write(site / info / "RECORD", "\n".join(rows) + "\n")


def release(
    where: Path,
    *,
    version: str = "1.0.0",
    app: str = "main:app",
    pythonpath: list[str] | None = None,
    files: Files | None = None,
    dists: dict[str, tuple[str, Files]] | None = None,
    python: str = "version = 3.11.7",
    lib: str = "python3.11",
) -> Release:
    """A release directory: `files` relative to it, `dists` installed into its venv.

    Without `files` it is an app/ layout release with app/main.py.
    """
    where.mkdir(parents=True)
    manifest: dict[str, object] = {"name": "demo", "version": version, "app": app}
    if files is None:
        files = {"app/main.py": MAIN}
        pythonpath = ["app"] if pythonpath is None else pythonpath
    if pythonpath is not None:
        manifest["pythonpath"] = pythonpath
    write(where / "beamdeploy-release.json", json.dumps(manifest))
    write(where / "venv/bin/python", "")
    (where / "venv/bin/python").chmod(0o755)
    write(where / "venv/pyvenv.cfg", f"home = /usr/bin\n{python}\n")
    (where / "venv/lib" / lib / "site-packages").mkdir(parents=True)
    for rel, content in files.items():
        write(where / rel, content)
    for name, (dist_version, dist_files) in {**DEPENDENCIES, **(dists or {})}.items():
        install(where / "venv/lib" / lib / "site-packages", name, dist_version, dist_files)
    return Release.load(where)


def rules(refusals: list[Refusal]) -> list[str]:
    return [r.rule for r in refusals]


# The app/ layout: the app's source in app/, on sys.path by the manifest's pythonpath.


def test_identical_releases_change_nothing(tmp_path: Path):
    diff = compare(release(tmp_path / "old"), release(tmp_path / "new", version="1.0.1"))
    assert diff.modules == []
    assert diff.refusals == []
    assert diff.ok


def test_a_changed_body_is_one_changed_module_with_both_sources(tmp_path: Path):
    old = release(tmp_path / "old")
    changed = MAIN.replace("return 1", "return 2")
    new = release(tmp_path / "new", files={"app/main.py": changed}, pythonpath=["app"])
    diff = compare(old, new)
    assert diff.refusals == []
    assert diff.modules == [
        ChangedModule(
            module="main",
            old_file=str(tmp_path / "old/app/main.py"),
            new_file=str(tmp_path / "new/app/main.py"),
            old_source=MAIN,
            new_source=changed,
        )
    ]


def test_new_modules_have_no_old_file_and_are_named_from_their_path(tmp_path: Path):
    old = release(tmp_path / "old")
    files: Files = {
        "app/main.py": MAIN,
        "app/helpers.py": "def helper(): ...\n",
        "app/pkg/__init__.py": "",
        "app/pkg/mod.py": "X = 1\n",
    }
    diff = compare(old, release(tmp_path / "new", files=files, pythonpath=["app"]))
    assert diff.refusals == []
    assert [(m.module, m.old_file, m.old_source, m.new_source) for m in diff.modules] == [
        ("helpers", None, None, "def helper(): ...\n"),
        ("pkg", None, None, ""),
        ("pkg.mod", None, None, "X = 1\n"),
    ]
    assert diff.modules[0].new_file == str(tmp_path / "new/app/helpers.py")


def test_a_removed_module_is_refused_as_a_worker_may_still_use_it(tmp_path: Path):
    files: Files = {"app/main.py": MAIN, "app/helpers.py": "def helper(): ...\n"}
    old = release(tmp_path / "old", files=files, pythonpath=["app"])
    diff = compare(old, release(tmp_path / "new"))
    assert diff.modules == []
    assert [str(r) for r in diff.refusals] == [
        f"{tmp_path}/old/app/helpers.py:0: removed-module: module helpers is gone from the new"
        f" release; a running worker may still use it; {UPGRADE}"
    ]


def test_a_changed_data_file_next_to_the_source_is_refused(tmp_path: Path):
    old = release(
        tmp_path / "old", files={"app/main.py": MAIN, "app/t.html": "<p>"}, pythonpath=["app"]
    )
    new = release(
        tmp_path / "new", files={"app/main.py": MAIN, "app/t.html": "<b>"}, pythonpath=["app"]
    )
    (refusal,) = compare(old, new).refusals
    assert (refusal.file, refusal.line, refusal.rule) == (
        str(tmp_path / "new/app/t.html"),
        0,
        "not-python",
    )
    assert refusal.why == f"t.html differs: a hot reload changes Python modules only; {UPGRADE}"


def test_bytecode_is_not_compared(tmp_path: Path):
    old = release(
        tmp_path / "old",
        files={"app/main.py": MAIN, "app/__pycache__/main.cpython-311.pyc": b"a"},
        pythonpath=["app"],
    )
    new = release(
        tmp_path / "new",
        files={"app/main.py": MAIN, "app/__pycache__/main.cpython-311.pyc": b"b"},
        pythonpath=["app"],
    )
    assert compare(old, new).refusals == []


def test_a_source_that_is_not_utf8_is_refused(tmp_path: Path):
    old = release(tmp_path / "old")
    new = release(tmp_path / "new", files={"app/main.py": b"X = '\xe9'\n"}, pythonpath=["app"])
    diff = compare(old, new)
    assert diff.modules == []
    assert [(r.file, r.rule) for r in diff.refusals] == [
        (str(tmp_path / "new/app/main.py"), "not-python")
    ]


def test_a_link_out_of_the_release_is_not_followed(tmp_path: Path):
    outside = tmp_path / "outside.py"
    outside.write_text("SECRET = 1\n")
    old = release(tmp_path / "old")
    new = release(tmp_path / "new")
    (tmp_path / "new/app/extra.py").symlink_to(outside)
    (tmp_path / "new/app/lib").symlink_to(tmp_path / "old/app", target_is_directory=True)
    diff = compare(old, new)
    assert diff.modules == []
    assert sorted((Path(r.file).name, r.rule) for r in diff.refusals) == [
        ("extra.py", "symlink"),
        ("lib", "symlink"),
    ]


def test_a_file_too_large_to_read_is_refused(tmp_path: Path):
    old = release(tmp_path / "old")
    big = "X = 1\n" + "#" * MAX_FILE
    new = release(tmp_path / "new", files={"app/main.py": big}, pythonpath=["app"])
    diff = compare(old, new)
    assert diff.modules == []
    assert rules(diff.refusals) == ["too-large"]


def test_a_module_earlier_on_sys_path_shadows_the_same_module_later(tmp_path: Path):
    files: Files = {"app/main.py": MAIN, "lib/main.py": MAIN}
    old = release(tmp_path / "old", files=files, pythonpath=["app", "lib"])
    changed = {name: source + "X = 1\n" for name, source in files.items()}
    new = release(tmp_path / "new", files=changed, pythonpath=["app", "lib"])
    diff = compare(old, new)
    assert [(m.module, m.new_file) for m in diff.modules] == [
        ("main", str(tmp_path / "new/app/main.py"))
    ]


def test_the_release_itself_on_pythonpath_compares_its_app_not_its_venv_or_manifest(
    tmp_path: Path,
):
    old = release(tmp_path / "old", files={"main.py": MAIN}, pythonpath=["."])
    new = release(tmp_path / "new", version="2.0", files={"main.py": MAIN + "\n"}, pythonpath=["."])
    write(tmp_path / "new/venv/bin/activate", "# another venv\n")
    diff = compare(old, new)
    assert diff.refusals == []
    assert [m.module for m in diff.modules] == ["main"]


def test_the_sys_path_entries_are_the_pythonpath_dirs_then_site_packages(tmp_path: Path):
    diff = compare(release(tmp_path / "old"), release(tmp_path / "new"))
    assert diff.old_paths == [str(tmp_path / "old/app"), str(tmp_path / "old" / SITE)]
    assert diff.new_paths == [str(tmp_path / "new/app"), str(tmp_path / "new" / SITE)]


# The manifest and the interpreter.


def test_another_app_is_refused(tmp_path: Path):
    old = release(tmp_path / "old")
    new = release(tmp_path / "new", app="main:other")
    assert [str(r) for r in compare(old, new).refusals] == [
        f"{tmp_path}/new/beamdeploy-release.json:0: manifest-app: the app is main:app in the"
        f" serving release and main:other in the new one; {UPGRADE}"
    ]


def test_another_pythonpath_is_refused(tmp_path: Path):
    old = release(tmp_path / "old")
    new = release(tmp_path / "new", files={"src/main.py": MAIN}, pythonpath=["src"])
    diff = compare(old, new)
    assert rules(diff.refusals) == ["manifest-app"]
    assert "pythonpath is ['app'] in the serving release and ['src'] in the new one" in str(
        diff.refusals[0]
    )


def test_another_python_version_is_refused(tmp_path: Path):
    old = release(tmp_path / "old")
    new = release(tmp_path / "new", python="version_info = 3.11.9")
    assert [str(r) for r in compare(old, new).refusals] == [
        f"{tmp_path}/new/venv/pyvenv.cfg:0: python-version: the serving release runs Python"
        f" 3.11.7, the new one Python 3.11.9; {UPGRADE}"
    ]


def test_another_python_minor_version_is_refused_by_its_lib_dir_too(tmp_path: Path):
    old = release(tmp_path / "old")
    new = release(tmp_path / "new", python="version = 3.12.1", lib="python3.12")
    diff = compare(old, new)
    assert rules(diff.refusals) == ["python-version", "python-version"]
    assert diff.refusals[1].file == str(tmp_path / "new/venv/lib")
    assert "lib/python3.11, the new one lib/python3.12" in diff.refusals[1].why
    assert diff.new_paths == [
        str(tmp_path / "new/app"),
        str(tmp_path / "new/venv/lib/python3.12/site-packages"),
    ]


def test_the_version_keys_of_venv_and_uv_compare_alike(tmp_path: Path):
    old = release(tmp_path / "old", python="version = 3.11.7")
    new = release(
        tmp_path / "new", python="implementation = CPython\nversion_info = 3.11.7.final.0"
    )
    assert compare(old, new).refusals == []


def test_a_release_without_a_python_version_is_refused(tmp_path: Path):
    old = release(tmp_path / "old")
    new = release(tmp_path / "new", python="")
    (refusal,) = compare(old, new).refusals
    assert (refusal.file, refusal.rule) == (str(tmp_path / "new/venv/pyvenv.cfg"), "python-version")


def test_the_serving_environment_is_no_release_to_compare(tmp_path: Path):
    diff = compare(Release.from_environment("main:app"), release(tmp_path / "new"))
    assert rules(diff.refusals) == ["no-release"]


# Installed distributions: all but the app's own must be the same.


def test_another_dependency_version_is_refused_naming_it(tmp_path: Path):
    old = release(tmp_path / "old")
    new = release(tmp_path / "new", dists={"starlette": ("0.38.0", DEPENDENCIES["starlette"][1])})
    diff = compare(old, new)
    assert diff.modules == []
    assert [str(r) for r in diff.refusals] == [
        f"{tmp_path}/new/{SITE}/starlette-0.38.0.dist-info:0: distribution: starlette is 0.37.2"
        f" in the serving release, 0.38.0 in the new one; {UPGRADE}"
    ]


def test_a_dependency_with_other_files_under_the_same_version_is_refused(tmp_path: Path):
    old = release(tmp_path / "old")
    patched: Files = {"starlette/__init__.py": "", "starlette/routing.py": "class Route: pass\n"}
    new = release(tmp_path / "new", dists={"starlette": ("0.37.2", patched)})
    (refusal,) = compare(old, new).refusals
    assert refusal.rule == "distribution"
    assert refusal.file == str(tmp_path / "new" / SITE / "starlette-0.37.2.dist-info")
    assert refusal.why == (
        "starlette 0.37.2 has other files than the same version in the serving release:"
        f" starlette/routing.py; {UPGRADE}"
    )


def test_an_added_or_removed_dependency_is_refused(tmp_path: Path):
    old = release(tmp_path / "old", dists={"anyio": ("4.0.0", {"anyio/__init__.py": ""})})
    new = release(tmp_path / "new", dists={"h11": ("0.14.0", {"h11/__init__.py": ""})})
    assert [(Path(r.file).name, r.rule, r.why) for r in compare(old, new).refusals] == [
        (
            "anyio-4.0.0.dist-info",
            "distribution",
            f"anyio 4.0.0 is installed in the serving release, not in the new one; {UPGRADE}",
        ),
        (
            "h11-0.14.0.dist-info",
            "distribution",
            f"h11 0.14.0 is installed in the new release, not in the serving one; {UPGRADE}",
        ),
    ]


def test_what_the_installer_writes_for_each_venv_is_not_compared(tmp_path: Path):
    """Scripts get the venv's own shebang; INSTALLER, direct_url.json and uv_cache.json
    say how it was installed, not what."""
    old = release(tmp_path / "old")
    new = release(tmp_path / "new")
    for where, url in ((tmp_path / "old", "file:///a.whl"), (tmp_path / "new", "file:///b.whl")):
        site = where / SITE
        info = site / "starlette-0.37.2.dist-info"
        script = f"#!{where}/venv/bin/python\nfrom starlette import main\n".encode()
        write(where / "venv/bin/starlette", script)
        write(info / "direct_url.json", json.dumps({"url": url}))
        write(info / "INSTALLER", "pip\n" if where.name == "new" else "uv\n")
        cache = json.dumps({"timestamp": where.name}).encode()  # uv's, one per install
        write(info / "uv_cache.json", cache)
        record = (info / "RECORD").read_text()
        record += f"../../../bin/starlette,{digest(script)},{len(script)}\n"
        record += f"{info.name}/direct_url.json,,\n"
        record += f"{info.name}/uv_cache.json,{digest(cache)},{len(cache)}\n"
        (info / "RECORD").write_text(record)
    assert compare(old, new).refusals == []


def test_a_file_no_distribution_lists_may_not_change(tmp_path: Path):
    old = release(
        tmp_path / "old",
        files={"app/main.py": MAIN, f"{SITE}/custom.pth": "import a"},
        pythonpath=["app"],
    )
    new = release(
        tmp_path / "new",
        files={"app/main.py": MAIN, f"{SITE}/custom.pth": "import b"},
        pythonpath=["app"],
    )
    (refusal,) = compare(old, new).refusals
    assert (Path(refusal.file).name, refusal.rule) == ("custom.pth", "unowned-file")


# The packaged layout: the app installed as its own distribution.


def packaged(where: Path, version: str, files: Files) -> Release:
    """The app installed as its own distribution, myapp, and nothing on pythonpath."""
    dists = {"myapp": (version, files)}
    return release(where, version=version, app="myapp.main:app", files={}, dists=dists)


APP: Files = {
    "myapp/__init__.py": "",
    "myapp/main.py": "from myapp.routes import routes\n",
    "myapp/routes.py": "def home():\n    return 1\n",
}


def test_the_apps_own_wheel_may_change_its_modules_and_version(tmp_path: Path):
    old = packaged(tmp_path / "old", "1.0.0", APP)
    changed = {**APP, "myapp/routes.py": "def home():\n    return 2\n", "myapp/extra.py": ""}
    new = packaged(tmp_path / "new", "1.1.0", changed)
    diff = compare(old, new)
    assert diff.refusals == []
    site_old, site_new = tmp_path / "old" / SITE, tmp_path / "new" / SITE
    assert diff.modules == [
        ChangedModule("myapp.extra", None, str(site_new / "myapp/extra.py"), None, ""),
        ChangedModule(
            "myapp.routes",
            str(site_old / "myapp/routes.py"),
            str(site_new / "myapp/routes.py"),
            "def home():\n    return 1\n",
            "def home():\n    return 2\n",
        ),
    ]
    assert diff.old_paths == [str(site_old)]
    assert diff.new_paths == [str(site_new)]


def test_a_module_gone_from_the_apps_wheel_is_refused(tmp_path: Path):
    old = packaged(tmp_path / "old", "1.0.0", APP)
    new = packaged(
        tmp_path / "new", "1.1.0", {k: v for k, v in APP.items() if k != "myapp/routes.py"}
    )
    (refusal,) = compare(old, new).refusals
    assert (refusal.file, refusal.rule) == (
        str(tmp_path / "old" / SITE / "myapp/routes.py"),
        "removed-module",
    )


def test_a_changed_compiled_extension_in_the_apps_wheel_is_refused(tmp_path: Path):
    so = "myapp/_speedups.cpython-311-x86_64-linux-gnu.so"
    old = packaged(tmp_path / "old", "1.0.0", {**APP, so: b"\x7fELF 1"})
    new = packaged(tmp_path / "new", "1.1.0", {**APP, so: b"\x7fELF 2"})
    diff = compare(old, new)
    assert diff.modules == []
    assert [str(r) for r in diff.refusals] == [
        f"{tmp_path}/new/{SITE}/{so}:0: extension-module: {so} differs: a compiled extension"
        f" cannot be reloaded; {UPGRADE}"
    ]


def test_other_files_of_the_apps_wheel_are_refused(tmp_path: Path):
    old = packaged(tmp_path / "old", "1.0.0", {**APP, "myapp/static/app.css": "a {}"})
    entry_points = {
        "myapp-1.1.0.dist-info/entry_points.txt": "[console_scripts]\nmyapp = myapp:cli\n"
    }
    new = packaged(tmp_path / "new", "1.1.0", {**APP, **entry_points})
    only = f"a hot reload changes Python modules only; {UPGRADE}"
    assert [(r.rule, r.why) for r in compare(old, new).refusals] == [
        ("not-python", f"myapp.dist-info/entry_points.txt is new: {only}"),
        ("not-python", f"myapp/static/app.css is gone: {only}"),
    ]


def test_the_apps_metadata_may_change_its_version_and_description_only(tmp_path: Path):
    old = packaged(tmp_path / "old", "1.0.0", APP)
    new = packaged(tmp_path / "new", "1.1.0", APP)
    assert compare(old, new).refusals == []
    metadata = tmp_path / "new" / SITE / "myapp-1.1.0.dist-info/METADATA"
    metadata.write_text(metadata.read_text().replace("\n\n", "\nRequires-Dist: h11\n\nNew text.\n"))
    (refusal,) = compare(old, Release.load(tmp_path / "new")).refusals
    assert (refusal.file, refusal.rule) == (str(metadata), "not-python")
    assert "the metadata of myapp differs beyond its version: requires-dist" in refusal.why


def test_an_app_found_nowhere_is_refused(tmp_path: Path):
    old = release(tmp_path / "old", app="elsewhere.main:app")
    new = release(tmp_path / "new", app="elsewhere.main:app")
    (refusal,) = compare(old, new).refusals
    assert refusal.rule == "app-not-found"


def test_describe_lists_modules_without_their_sources(tmp_path: Path):
    old = release(tmp_path / "old")
    new = release(tmp_path / "new", files={"app/main.py": MAIN + "\n"}, pythonpath=["app"])
    described = compare(old, new).describe()
    assert described["modules"] == [
        {
            "module": "main",
            "old_file": str(tmp_path / "old/app/main.py"),
            "new_file": str(tmp_path / "new/app/main.py"),
            "new": False,
        }
    ]
    assert described["refusals"] == []
    assert described["new_paths"][0] == str(tmp_path / "new/app")
    json.dumps(described)


def test_a_file_that_cannot_be_read_is_refused(tmp_path: Path):
    old = release(tmp_path / "old")
    new = release(tmp_path / "new")
    (tmp_path / "new/venv/pyvenv.cfg").unlink()
    assert [str(r) for r in compare(old, new).refusals] == [
        f"{tmp_path}/new/venv/pyvenv.cfg:0: unreadable: cannot be read: No such file or"
        f" directory; {UPGRADE}"
    ]
