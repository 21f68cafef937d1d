"""`beamdeploy serve`: gunicorn's Application, run by the generation arbiter.

gunicorn's ``BaseApplication.run()`` always builds a plain ``Arbiter``; this
class parses gunicorn's command line and config files as usual (plus
beamdeploy's own settings) and runs ``BeamArbiter`` instead.
"""

from __future__ import annotations

import os
import pwd
import sys
import traceback
from pathlib import Path
from typing import Any

from gunicorn import util
from gunicorn.app.base import Application
from gunicorn.errors import ConfigError

import beamdeploy_asgi.settings  # noqa: F401  (registers beamdeploy's settings)
from beamdeploy_asgi.errors import ReleaseError
from beamdeploy_asgi.help_text import readable_parser
from beamdeploy_asgi.protocol import DAEMONIZED_ENV
from beamdeploy_asgi.releases.release import Release
from beamdeploy_asgi.releases.store import ReleaseStore
from beamdeploy_asgi.settings import admin_token, state_dir, token_problem

WORKER_CLASS = "beamdeploy_asgi.Worker"
WORKER_CLASS_NAMES = {
    WORKER_CLASS,
    "beamdeploy_asgi.worker.Worker",
    "egg:beamdeploy-asgi#beamdeploy",
}

# Set while this process is (or is about to become) a beamdeploy arbiter, so
# that gunicorn resolving the worker class does not hand over a second time.
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


class BeamApplication(Application):
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
        self.release: Release | Path | None = None
        super().__init__(usage="%(prog)s [OPTIONS] [APP_MODULE]", prog=prog)

    def load_default_config(self) -> None:
        super().load_default_config()
        self.cfg.set("worker_class", WORKER_CLASS)
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

    def first_release(self) -> Release | Path:
        """--release (a directory or an artifact), else STATE_DIR/current, else APP_MODULE."""
        if self.cfg.release:
            if Path(self.cfg.release).is_file():
                return Path(self.cfg.release).resolve()
            return Release.load(self.cfg.release)
        current = ReleaseStore(state_dir(self.cfg)).current()
        if current is not None:
            return Release.load(current)
        app = self.app_uri or self.cfg.wsgi_app
        if not app:
            raise ConfigError("give an APP_MODULE (module:attribute) or --release DIR")
        paths = [os.path.abspath(p) for p in (self.cfg.pythonpath or "").split(",") if p]
        return Release.from_environment(app, tuple([self.cfg.chdir, *paths]))

    def settle_workers_group(self) -> None:
        """Workers that change user without --group take that user's group, not ours."""
        cfg = self.cfg
        if cfg.uid == os.geteuid() or cfg.gid != os.getegid():
            return
        try:
            self.cfg.set("group", pwd.getpwuid(cfg.uid).pw_gid)
        except KeyError:
            pass  # a uid with no passwd entry; refusals() names the problem if it matters

    def refusals(self) -> list[str]:
        """Options that cannot work with generations, and why."""
        cfg = self.cfg
        found = []
        if cfg.worker_class_str not in WORKER_CLASS_NAMES:
            found.append(
                f"worker class {cfg.worker_class_str!r}: beamdeploy runs its own uvicorn "
                f"workers; leave -k out or use -k {WORKER_CLASS}"
            )
        if cfg.preload_app:
            found.append(
                "preload_app: each generation imports its own release in a fresh "
                "interpreter, so the arbiter never loads the app"
            )
        if cfg.reuse_port:
            found.append(
                "reuse_port: it gives each worker its own listening socket, and closing one "
                "during a drain resets the connections queued on it; beamdeploy binds one "
                "shared SO_REUSEPORT socket in the arbiter instead"
            )
        if cfg.reload:
            found.append(
                "reload: workers run from releases; ship code changes with `beamdeploy upgrade`"
            )
        if cfg.workers < 1:
            found.append("workers: a generation needs at least one worker")
        if cfg.paste:
            found.append("paste: beamdeploy serves ASGI apps named as module:attribute")
        if (cfg.uid != os.geteuid() or cfg.gid != os.getegid()) and os.geteuid() != 0:
            found.append(
                f"user/group: the arbiter runs as uid {os.geteuid()}, and only root can "
                "start workers as another user or group"
            )
        if cfg.uid != os.geteuid() and cfg.gid == 0:
            found.append(
                "user: the workers would keep group root; give them a --group of their own"
            )
        if getattr(cfg, "dirty_workers", 0):
            found.append("dirty_workers: gunicorn's dirty arbiter is not supported by beamdeploy")
        return found

    def run(self) -> None:
        self.settle_workers_group()
        refusals = self.refusals()
        if refusals:
            for reason in refusals:
                print(f"Error: unsupported option {reason}", file=sys.stderr)
            sys.exit(1)
        problem = token_problem(admin_token(self.cfg))
        if problem:
            print(f"Error: {problem}", file=sys.stderr)
            sys.exit(1)
        try:
            self.release = release = self.first_release()
        except (ConfigError, ReleaseError) as exc:
            print(f"Error: {exc}", file=sys.stderr)
            sys.exit(1)
        if self.cfg.print_config:
            print(self.cfg)
        if self.cfg.print_config or self.cfg.check_config:
            print(f"first release: {release}")
            sys.exit(0)
        if self.cfg.daemon and not os.environ.get(DAEMONIZED_ENV):
            util.daemonize(self.cfg.enable_stdio_inheritance)
            os.environ[DAEMONIZED_ENV] = "1"

        from beamdeploy_asgi.arbiter.arbiter import BeamArbiter

        try:
            BeamArbiter(self).run()
        except RuntimeError as exc:
            print(f"\nError: {exc}\n", file=sys.stderr)
            traceback.print_exc()
            sys.exit(1)


def serve(argv: list[str]) -> None:
    """Run the arbiter with gunicorn-style arguments (what `beamdeploy serve` does)."""
    BeamApplication(argv).run()
