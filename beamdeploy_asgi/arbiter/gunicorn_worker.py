"""`gunicorn -k beamdeploy_asgi.Worker`: plain gunicorn hands over to beamdeploy.

gunicorn resolves the worker class in its master before it binds a socket or
writes a pidfile, and calls the class's ``setup()`` when it does. There the
process re-executes itself, same pid and same arguments, as ``beamdeploy
serve``, so both ways in run the same arbiter with the same options.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from gunicorn.workers.base import Worker as GunicornWorker


def _launched_by_gunicorn_cli() -> bool:
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    return program == "gunicorn" or sys.argv[0].endswith(os.path.join("gunicorn", "__main__.py"))


class Worker(GunicornWorker):
    """The gunicorn worker class name under which beamdeploy takes over the master."""

    @classmethod
    def setup(cls) -> None:
        from beamdeploy_asgi import config

        if config.RUNNING:
            return
        if not _launched_by_gunicorn_cli():
            raise RuntimeError(
                "beamdeploy_asgi.Worker takes over gunicorn's master, which only works "
                "from the gunicorn command; embedded, use "
                "beamdeploy_asgi.arbiter.application.serve(argv)"
            )
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(
            sys.executable,
            [sys.executable, "-m", "beamdeploy_asgi", "serve", *sys.argv[1:]],
        )

    def init_process(self) -> Any:
        raise RuntimeError(
            "beamdeploy_asgi.Worker cannot run under a plain gunicorn arbiter; "
            "start the service with `beamdeploy serve` or the gunicorn command"
        )
