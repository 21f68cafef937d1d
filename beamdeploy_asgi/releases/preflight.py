"""Import the app once in the release's interpreter, before any worker boots.

Run as ``<release>/venv/bin/python -m beamdeploy_asgi.releases.preflight APP
[PATH ...]`` (through the provenance bootstrap); prints one JSON line and
exits 0 when the import works. With ``BEAMDEPLOY_RELEASE_PATH`` set, the app
must also come from inside that release.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

from beamdeploy_asgi.protocol import RELEASE_PATH_ENV
from beamdeploy_asgi.releases import provenance


def main() -> None:
    app, paths = sys.argv[1], sys.argv[2:]
    for path in reversed(paths):
        sys.path.insert(0, path)
    try:
        from uvicorn.importer import import_from_string

        import_from_string(app)
    except BaseException as exc:  # an import can raise anything, SystemExit included
        lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        tail = "\n".join(lines.splitlines()[-30:])
        print(
            json.dumps(
                {"error": f"could not import {app}: {type(exc).__name__}: {exc}", "traceback": tail}
            ),
            flush=True,
        )
        sys.exit(1)
    release_path = os.environ.get(RELEASE_PATH_ENV)
    if release_path:
        try:
            provenance.check(app, release_path)
        except provenance.ProvenanceError as exc:
            print(json.dumps({"error": str(exc)}), flush=True)
            sys.exit(1)
    print(json.dumps({"ok": True}), flush=True)


if __name__ == "__main__":
    main()
