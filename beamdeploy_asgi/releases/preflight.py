"""Import the app once in the release's interpreter, before any worker boots.

Run as ``<release>/venv/bin/python -m beamdeploy_asgi.releases.preflight APP
[PATH ...]``; prints one JSON line and exits 0 when the import works.
"""

from __future__ import annotations

import json
import sys
import traceback


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
    print(json.dumps({"ok": True}), flush=True)


if __name__ == "__main__":
    main()
