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

from gunicorn import util
from gunicorn.errors import ConfigError

from beamdeploy_asgi.arbiter.reexec_spec import peek_spec
from beamdeploy_asgi.config import WORKER_CLASS, Configuration
from beamdeploy_asgi.errors import ReleaseError
from beamdeploy_asgi.protocol import DAEMONIZED_ENV
from beamdeploy_asgi.releases.release import Release
from beamdeploy_asgi.releases.store import ReleaseStore
from beamdeploy_asgi.settings import admin_token, state_dir, token_problem

WORKER_CLASS_NAMES = {
    WORKER_CLASS,
    "beamdeploy_asgi.worker.Worker",
    "egg:beamdeploy-asgi#beamdeploy",
}


class BeamApplication(Configuration):
    """`beamdeploy serve`: the configuration, checked, then run by BeamArbiter."""

    def __init__(self, argv: list[str], prog: str = "beamdeploy serve") -> None:
        self.release: Release | Path | None = None
        super().__init__(argv, prog)

    def first_release(self) -> Release | Path:
        """--release (a directory or an artifact), else STATE_DIR/current, else APP_MODULE.

        An arbiter started by a reexec boots what the old one served instead.
        """
        try:
            reexec = peek_spec(os.environ)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if reexec is not None and reexec.release:
            return Release.load(reexec.release)
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
        if cfg.uid != os.geteuid() and cfg.admin_token is not None:
            found.append(
                "admin_token in the config file: the workers (--user) read that file too, so "
                "their user could read the token; set BEAMDEPLOY_TOKEN in the arbiter's "
                "environment instead"
            )
        if cfg.strategy == "rolling" and cfg.bake:
            found.append(
                "bake with the rolling strategy: the bake keeps the old generation booted "
                "beside the new one, and a rolling upgrade leaves none; bake with blue-green"
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
