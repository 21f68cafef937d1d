"""What a deployment asks of the release side, done for real: tasks and the store.

The deployer only knows the `Steps` interface; this is its implementation in
the arbiter: installs run as helper subprocesses of the arbiter's loop, the
release store records what happened.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from logging import Logger
from typing import Any

from gunicorn.errors import HaltServer

from beamdeploy_asgi.arbiter.artifact_install import INSTALL_TIMEOUT, ArtifactInstall, died
from beamdeploy_asgi.arbiter.deployment import Deployment
from beamdeploy_asgi.arbiter.deployment_hooks import DeploymentHooks
from beamdeploy_asgi.arbiter.spawn import owner_problem, worker_owner
from beamdeploy_asgi.arbiter.systemd_notify import SERVICE_ENV, ServiceNotifier
from beamdeploy_asgi.arbiter.tasks import Task, TaskRunner
from beamdeploy_asgi.protocol import RELEASE_NAME_ENV, RELEASE_VERSION_ENV, SMOKE_URL_ENV
from beamdeploy_asgi.releases.provenance import bootstrap, release_environment
from beamdeploy_asgi.releases.release import Release
from beamdeploy_asgi.releases.store import ReleaseStore

PLAN_MODULE = "beamdeploy_asgi.reload.plan_task"
PLAN_TIMEOUT = 120.0
PLAN_OUTPUT = 4 * 1024 * 1024  # bytes: a plan is a line of at most 1 MiB, warnings aside
SMOKE_OUTPUT = 16 * 1024 * 1024  # bytes a smoke command may print before it is stopped
SMOKE_OUTPUT_LINES = 50  # the last lines of its output, kept in the deployment's record


class ReleaseSteps:
    def __init__(
        self,
        *,
        cfg: Any,
        store: ReleaseStore,
        tasks: TaskRunner,
        hooks: DeploymentHooks,
        cwd: str,
        log: Logger,
        service: ServiceNotifier | None = None,
    ) -> None:
        """`cwd`: where `serve` was started, which the smoke command runs in.
        `service`: told of every deployment's start, for systemd."""
        self.cfg = cfg
        self.service = service
        self.store = store
        self.tasks = tasks
        self.hooks = hooks
        self.cwd = cwd
        self.log = log
        self.observers: list[Callable[[Deployment], None]] = []  # told of every record

    def install(
        self,
        artifact: str,
        *,
        remove_after: bool,
        progress: Callable[[str], None],
        done: Callable[[str], None],
        failed: Callable[[str], None],
        wanted: Callable[[], bool],
    ) -> None:
        def forget_upload() -> None:
            if remove_after:  # unpacked by now, or refused
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(artifact)

        def install_failed(cause: str) -> None:
            forget_upload()
            failed(cause)

        ArtifactInstall(
            artifact,
            state_dir=str(self.store.state_dir),
            cfg=self.cfg,
            tasks=self.tasks,
            progress=progress,
            done=done,
            failed=install_failed,
            wanted=wanted,
        ).start(on_prepared=forget_upload)

    def plan(
        self,
        serving: Release,
        new: Release,
        done: Callable[[dict[str, Any] | None, str | None], None],
    ) -> None:
        """Compare the releases in a subprocess: the serving release's interpreter, as
        the workers' user, so nothing of the new release runs and nothing is parsed as us."""
        if serving.path is None or new.path is None:
            done(None, "the serving generation runs from the arbiter's environment, not a release")
            return

        def exited(task: Task) -> None:
            result = task.last("result")
            if task.returncode == 0 and isinstance(result, dict):
                done(result, None)
            else:
                done(None, task.last("error") or died(task, "the hot reload plan"))

        def could_not_start(exc: OSError) -> None:
            problem = owner_problem(exc, self.cfg, serving.python, "/")
            done(None, f"the plan could not start: {problem}")

        env = release_environment(dict(os.environ))
        env["VIRTUAL_ENV"] = os.path.join(serving.path, "venv")
        self.tasks.start(
            "plan",
            [serving.python, *bootstrap(PLAN_MODULE), serving.path, new.path],
            on_line=lambda message: None,
            on_exit=exited,
            could_not_start=could_not_start,
            timeout=PLAN_TIMEOUT,
            env=env,
            cwd="/",
            owner=worker_owner(self.cfg),
            keep_messages=2,  # the result, or the error
            max_output=PLAN_OUTPUT,
        )

    def smoke(
        self,
        url: str,
        release: Release,
        done: Callable[[str | None, dict[str, Any]], None],
    ) -> None:
        """Run --smoke-cmd against the new generation's private address, as the workers' user.

        The command is the operator's; it runs as the workers' user all the
        same, since what it tests (and may import) is the release's code.
        """
        command = self.cfg.smoke_cmd
        started = time.monotonic()

        def report(task: Task | None, failure: str | None) -> dict[str, Any]:
            return {
                "command": command,
                "url": url,
                "exit_code": task.returncode if task else None,
                "took": round(time.monotonic() - started, 3),
                "output": task.output_tail(SMOKE_OUTPUT_LINES) if task else "",
                "failure": failure,
            }

        def exited(task: Task) -> None:
            if task.failure is not None:
                failure: str | None = f"stopped: {task.failure}"
            elif task.returncode == 0:
                failure = None
            elif task.returncode is not None and task.returncode < 0:
                failure = (
                    f"{command!r} was killed after {self.cfg.smoke_timeout:g}s (--smoke-timeout)"
                    if time.monotonic() - started >= self.cfg.smoke_timeout
                    else f"{command!r} was killed by signal {-task.returncode}"
                )
            else:
                failure = f"{command!r} exited with code {task.returncode}"
            if failure is not None:
                tail = task.output_tail(3)
                failure += f"\n{tail}" if tail else ""
            done(failure, report(task, failure))

        def could_not_start(exc: OSError) -> None:
            problem = owner_problem(exc, self.cfg, "/bin/sh", self.cwd)
            failure = f"could not start {command!r}: {problem}"
            done(failure, report(None, failure))

        env = dict(os.environ)  # the arbiter's, the token already taken out
        for name in SERVICE_ENV:  # systemd's, the arbiter's to speak on
            env.pop(name, None)
        env[SMOKE_URL_ENV] = url
        env[RELEASE_NAME_ENV] = release.name
        env[RELEASE_VERSION_ENV] = release.version
        self.tasks.start(
            "smoke",
            ["/bin/sh", "-c", command],
            on_line=lambda message: None,
            on_exit=exited,
            could_not_start=could_not_start,
            timeout=self.cfg.smoke_timeout,
            env=env,
            cwd=self.cwd,
            owner=worker_owner(self.cfg),
            max_output=SMOKE_OUTPUT,
            messages=False,
        )

    def has_hook(self, name: str) -> bool:
        return getattr(self.cfg, name) is not self.cfg.settings[name].default

    def hook(
        self, name: str, record: dict[str, Any], done: Callable[[str | None], None] | None = None
    ) -> None:
        self.hooks.call(name, record, done)

    def restored(self, release: Release) -> None:
        if release.path is not None:
            self.store.set_current(release.path)

    def open_to_workers(self, release: Release) -> str | None:
        if release.path is None or not worker_owner(self.cfg):
            return None
        try:
            self.store.open_to_group(release.path, self.cfg.gid)
        except OSError as exc:
            return str(exc)
        return None

    def promoted(self, deployment: Deployment) -> None:
        release = deployment.release
        if release is not None and release.path is not None:
            self.store.set_current(release.path)
            self.store.clear_failed(release.path)

    def record(self, deployment: Deployment) -> None:
        """At the start and at the end of every deployment."""
        if self.service is not None:
            self.service.observe(deployment)  # READY=1 and such, from its events
        try:
            self.store.append_history(deployment.summary())
        except OSError as exc:
            self.log.error("cannot write %s: %s", self.store.history_file, exc)
        for observer in self.observers:
            observer(deployment)

    def mark_failed(self, release: Release, phase: str, error: str) -> None:
        if release.path is None:
            return
        try:
            self.store.mark_failed(release.path, phase, error)
        except OSError as exc:
            self.log.error("cannot mark %s as failed: %s", release.path, exc)

    def prune(self, in_use: set[str]) -> None:
        """Keep `keep_releases`, and never one in use or the current one."""
        current = self.store.current()
        if current is not None:
            in_use = in_use | {str(current)}
        for path, doomed in self.store.prune(self.cfg.keep_releases, in_use):
            self.log.info("removed old release %s (keeping %s)", path, self.cfg.keep_releases)
            # Deleting a venv takes a while; a subprocess does it, not the loop.
            self.tasks.start(
                "remove",
                ["rm", "-rf", "--", doomed],
                on_line=lambda message: None,
                on_exit=lambda task: None,
                timeout=INSTALL_TIMEOUT,
            )

    def halt(self, cause: str) -> None:
        raise HaltServer(cause, 3)
