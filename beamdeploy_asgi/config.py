"""Reading gunicorn's configuration, on the arbiter's side and on the workers'.

beamdeploy's own settings are registered with gunicorn's (see settings.py),
so both sides parse one command line and one config file the same way.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from gunicorn.app.base import Application
from gunicorn.errors import ConfigError

import beamdeploy_asgi.settings  # noqa: F401  (registers beamdeploy's settings)

WORKER_CLASS = "beamdeploy_asgi.Worker"

# Set while this process reads beamdeploy's configuration (an arbiter, or a
# worker), so that gunicorn resolving the worker class does not hand over.
RUNNING = False


class LenientParser:
    """Parses the options this version knows and sets the others aside.

    Workers re-read the arbiter's command line with the beamdeploy-asgi of
    their own release, which may be older than the arbiter's and not know
    every option it was given.
    """

    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self.ignored: list[str] = []

    def parse_args(self, args: list[str] | None = None) -> Any:
        known, unknown = self.parser.parse_known_args(args)
        self.ignored += [arg for arg in unknown if arg.startswith("-")]
        return known


class Configuration(Application):
    """gunicorn's configuration (command line, config file, beamdeploy's settings).

    The arbiter reads it to run; each worker reads the same arguments again
    in its own interpreter. Neither imports the app here.
    """

    def __init__(
        self, argv: list[str], prog: str = "beamdeploy serve", *, lenient: bool = False
    ) -> None:
        """`lenient`: ignore unknown options (in workers; see `LenientParser`)."""
        global RUNNING
        RUNNING = True
        self.argv = list(argv)
        self.lenient = lenient
        self.ignored_options: list[str] = []
        self.chdir_error: str | None = None
        # Workers start here and apply chdir themselves, like the arbiter did.
        self.launch_cwd = os.getcwd()
        self.app_uri: str | None = None
        super().__init__(usage="%(prog)s [OPTIONS] [APP_MODULE]", prog=prog)

    def load_default_config(self) -> None:
        super().load_default_config()
        self.cfg.set("worker_class", WORKER_CLASS)
        if not self.lenient:  # a worker never prints --help: it keeps gunicorn's own parser
            from beamdeploy_asgi.help_text import readable_parser

            self.cfg.parser = readable_parser(self.cfg)  # plain-text --help, real defaults

    def load_config(self) -> None:
        if self.lenient:
            make_parser = self.cfg.parser
            parser = LenientParser(make_parser())
            self.cfg.parser = lambda: parser
        saved, sys.argv = sys.argv, [self.prog or "beamdeploy serve", *self.argv]
        try:
            super().load_config()
        finally:
            sys.argv = saved
            if self.lenient:
                self.cfg.parser = make_parser
                self.ignored_options = parser.ignored

    def init(self, parser: Any, opts: Any, args: list[str]) -> None:
        if self.lenient:
            return  # workers take the app from their release, not the command line
        if len(args) > 1:
            raise ConfigError(f"expected one APP_MODULE, got {' '.join(args)}")
        if args:
            self.app_uri = args[0]
            self.cfg.set("default_proc_name", args[0])

    def chdir(self) -> None:
        # The arbiter never imports the app, so only the working directory
        # changes here; workers put it on sys.path when they run from it.
        if not self.lenient:
            os.chdir(self.cfg.chdir)
            return
        try:
            os.chdir(self.cfg.chdir)
        except OSError as exc:
            # A worker says why it cannot boot, rather than gunicorn's bare exit.
            self.chdir_error = (
                f"cannot enter the working directory {self.cfg.chdir} as uid "
                f"{os.getuid()}: {exc.strerror}"
            )

    def load(self) -> Any:
        raise ConfigError("the beamdeploy arbiter never imports the application")
