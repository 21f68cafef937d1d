"""Installing one artifact as tasks of the arbiter's loop, each step as its own user.

``prepare`` and ``seal`` run as the arbiter's user: they unpack and check the
artifact, then take the built release over, and run no code from it. The two
commands in between, which build the venv from the bundled wheels, run as
the workers' user when there is one: a flaw an artifact could exploit in an
installer then never runs as root. See ``beamdeploy_asgi.releases.install``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from beamdeploy_asgi.arbiter.spawn import owner_problem, worker_owner
from beamdeploy_asgi.arbiter.tasks import Task, TaskRunner
from beamdeploy_asgi.releases.disk import disk_full

INSTALL_TIMEOUT = 900.0
INSTALLER = [sys.executable, "-m", "beamdeploy_asgi.releases.install"]


class ArtifactInstall:
    def __init__(
        self,
        artifact: str,
        *,
        state_dir: str,
        cfg: Any,
        tasks: TaskRunner,
        progress: Callable[[str], None],
        done: Callable[[str], None],
        failed: Callable[[str], None],
        wanted: Callable[[], bool],
    ) -> None:
        """`wanted` says whether the deployment still waits for this install."""
        self.artifact = artifact
        self.state_dir = state_dir
        self.cfg = cfg
        self.tasks = tasks
        self.progress = progress
        self.done = done
        self.failed = failed
        self.wanted = wanted
        self.owner = worker_owner(cfg)
        self.staging: str | None = None
        self.commands: list[list[str]] = []

    def start(self, on_prepared: Callable[[], None] = lambda: None) -> None:
        self.on_prepared = on_prepared
        owner = f"{self.cfg.uid}:{self.cfg.gid}" if self.owner else None
        self._task(
            "install",
            [
                *INSTALLER, self.artifact, "--step", "prepare", "--state-dir", self.state_dir,
                "--max-bytes", str(self.cfg.artifact_max_size),
                "--max-files", str(self.cfg.artifact_max_files),
                *(["--python", self.cfg.release_python] if self.cfg.release_python else []),
                *(["--owner", owner] if owner else []),
            ],
            self._prepared,
        )  # fmt: skip

    def _prepared(self, task: Task) -> None:
        self.on_prepared()
        result = task.last("result")
        if task.returncode != 0 or not isinstance(result, dict):
            self.failed(task.last("error") or died(task, "the install"))
            return
        if "path" in result:
            self.done(str(result["path"]))
            return
        self.staging = str(result["staging"])
        self.digest = str(result["digest"])
        self.commands = [list(map(str, command)) for command in result["commands"]]
        if not self.wanted():
            self._remove_staging()
            return
        self._next_command()

    def _next_command(self) -> None:
        if not self.commands:
            self._seal()
            return
        command = self.commands.pop(0)
        assert self.staging is not None
        who = f"uid {self.cfg.uid}" if self.owner else "the arbiter's user"
        self.progress(f"running {describe_command(command)} as {who}")
        self._task(
            "installer",
            command,
            self._built,
            trusted=False,  # its output is the builder's, not ours: no progress from it
            owner=self.owner,
            cwd="/",
            # Nothing of ours: no secrets, no configuration, a home of its own.
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.staging},
        )

    def _built(self, task: Task) -> None:
        if task.returncode != 0:
            full = disk_full(Path(self.staging)) if self.staging else None
            self._remove_staging()
            cause = died(task, " ".join(task.argv[:3]))
            if full:
                cause = f"{full}: {cause}"
            if self.owner:
                first, _, rest = cause.partition("\n")
                cause = (
                    f"{first} (it ran as uid {self.cfg.uid}, gid {self.cfg.gid}, the workers' "
                    "user, who must be able to run the release's interpreter: see "
                    f"--release-python)\n{rest}"
                )
            self.failed("the offline install failed: " + cause)
            return
        if not self.wanted():
            self._remove_staging()
            return
        self._next_command()

    def _seal(self) -> None:
        assert self.staging is not None
        self._task(
            "seal",
            [
                *INSTALLER, "--step", "seal", "--state-dir", self.state_dir,
                "--staging", self.staging, "--digest", self.digest,
                "--group", str(self.cfg.gid),
            ],
            self._sealed,
        )  # fmt: skip

    def _sealed(self, task: Task) -> None:
        result = task.last("result")
        if task.returncode != 0 or not isinstance(result, dict):
            self._remove_staging()
            self.failed(task.last("error") or died(task, "sealing the release"))
            return
        self.done(str(result["path"]))

    def _remove_staging(self) -> None:
        if self.staging is not None:
            self.tasks.start("remove", ["rm", "-rf", "--", self.staging], on_line=_ignore,
                             on_exit=_ignore, timeout=INSTALL_TIMEOUT)  # fmt: skip
            self.staging = None

    def _task(
        self,
        name: str,
        argv: list[str],
        on_exit: Callable[[Task], None],
        trusted: bool = True,
        **kw: Any,
    ) -> None:
        def on_line(message: dict[str, Any]) -> None:
            if trusted and "progress" in message:
                self.progress(str(message["progress"]))

        def could_not_start(exc: OSError) -> None:
            problem = owner_problem(exc, self.cfg, argv[0], kw["cwd"]) if kw.get("owner") else exc
            self._remove_staging()
            self.failed(f"{name} could not start: {problem}")

        kw.setdefault("cwd", self.state_dir)  # nothing from the app's directory on sys.path
        self.tasks.start(
            name,
            argv,
            on_line=on_line,
            on_exit=on_exit,
            timeout=INSTALL_TIMEOUT,
            could_not_start=could_not_start,
            **kw,
        )


def describe_command(command: list[str]) -> str:
    """`uv venv`, `uv pip`, `python -m pip`, `python -m compileall`: what runs, in short."""
    words = [os.path.basename(command[0])]
    if "-m" in command:
        words += ["-m", command[command.index("-m") + 1]]
    else:
        words.append(command[1])
    return " ".join(words)


def died(task: Task, what: str) -> str:
    """The first line says why; the output's tail follows for the details."""
    if task.failure is not None:
        return f"{what} was stopped: {task.failure}"
    tail = task.output_tail()
    how = f"exited with code {task.returncode}" if task.returncode is not None else "died"
    if not tail:
        return f"{what} {how}"
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    # uv and pip say what went wrong on a line of its own; the last line is often a hint.
    errors = [line for line in lines if line.lower().startswith(("error:", "error "))]
    last = errors[0] if errors else lines[-1]
    if "No space left on device" in tail:
        last = "no space left on device"
    return f"{what} {how}: {last}\n{tail}"


def _ignore(*_: Any) -> None:
    pass
