"""Where a release's app really came from.

A worker of release 2.0.0 that imports the app from a 1.0.0 checkout in the
working directory (or an editable install pointing at one) would serve old
code while every status says 2.0.0. So a release's interpreter starts with
nothing but its own venv and manifest paths on ``sys.path``, and after the
import the app's module and its top-level package must lie inside the release.
"""

from __future__ import annotations

import os
import sys

from beamdeploy_asgi.protocol import SPEC_ENV, Event

# Run by `python -c` in place of `python -m MODULE`: `-m` would put the
# working directory first on sys.path, where an old checkout shadows the
# release. `-c` puts '' there instead, which this takes out again. A venv
# without beamdeploy-asgi cannot run a worker, nor say why: this says it on
# the status channel the arbiter handed over.
BOOTSTRAP = (
    "import sys, runpy\n"
    "if sys.path[:1] == ['']: del sys.path[0]\n"
    "try:\n"
    "    import beamdeploy_asgi\n"
    "except ImportError as exc:\n"
    "    import json, os\n"
    "    why = {{'event': {failed!r}, 'phase': 'import', 'error':\n"
    '        f"the release\'s venv lacks beamdeploy-asgi, which runs its workers ({{exc}})"}}\n'
    "    fd = json.loads(os.environ.get({spec_env!r}) or '{{}}').get('channel_fd')\n"
    "    if isinstance(fd, int): os.write(fd, json.dumps(why).encode() + b'\\n')\n"
    "    sys.exit(why['error'])\n"
    "runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
)

# Variables that would put directories outside the release on sys.path.
FOREIGN_PATH_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE", "PYTHONSTARTUP")


class ProvenanceError(Exception):
    """The app was imported from outside its release."""


def bootstrap(module: str) -> list[str]:
    """Arguments after the interpreter that run `module` as ``__main__``."""
    code = BOOTSTRAP.format(module=module, failed=Event.FAILED.value, spec_env=SPEC_ENV)
    return ["-c", code]


def release_environment(env: dict[str, str]) -> dict[str, str]:
    """`env` without the variables that would let code outside the release in."""
    return {k: v for k, v in env.items() if k not in FOREIGN_PATH_VARIABLES}


def app_file(app_spec: str) -> str | None:
    """The absolute path of the file of the module that defines the app, once imported."""
    module = sys.modules.get(app_spec.split(":", 1)[0])
    path = getattr(module, "__file__", None)
    return os.path.realpath(path) if isinstance(path, str) else None


def check(app_spec: str, release_path: str) -> str:
    """Return the app's file; raise ProvenanceError if it or its package is not in the release."""
    root = os.path.realpath(release_path)
    module_name = app_spec.split(":", 1)[0]
    names = [module_name]
    top = module_name.split(".", 1)[0]
    if top != module_name:
        names.append(top)
    found = app_file(app_spec)
    if found is None:
        raise ProvenanceError(
            f"{module_name} has no file, so it cannot be shown to come from release {root}"
        )
    for name in names:
        for path in _files_of(sys.modules.get(name)):
            if not _inside(path, root):
                raise ProvenanceError(
                    f"{name} was imported from {path}, outside release {root}: "
                    "something on sys.path (an editable install, a .pth file) "
                    "shadows the release's own code"
                )
    return found


def _files_of(module: object) -> list[str]:
    """The module's file, or a namespace package's directories."""
    path = getattr(module, "__file__", None)
    if isinstance(path, str):
        return [os.path.realpath(path)]
    return [os.path.realpath(p) for p in getattr(module, "__path__", None) or ()]


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
