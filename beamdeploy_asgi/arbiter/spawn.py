"""Starting a worker: fork and exec its release's interpreter.

subprocess.Popen does the fork and exec in C, so no Python code (and no lock
the arbiter might hold) runs in the child before the new interpreter starts.
The worker gets its listening sockets (and its generation's private loopback
listener, if it has one), its heartbeat file and its status channel as
inherited file descriptors, described in ``BEAMDEPLOY_WORKER``.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
from typing import Any

from gunicorn.workers.workertmp import WorkerTmp

from beamdeploy_asgi.arbiter.generation import Generation, WorkerProcess
from beamdeploy_asgi.arbiter.systemd_notify import SERVICE_ENV
from beamdeploy_asgi.protocol import CONTROL_ENV, SPEC_ENV, WorkerSpec
from beamdeploy_asgi.releases.provenance import bootstrap, release_environment

# Settings that only the arbiter uses; every one of them takes a value.
ARBITER_ONLY = (
    "release",
    "release_python",
    "keep_releases",
    "artifact_max_size",
    "artifact_max_files",
    "metrics_bind",
)


def spawn_worker(
    *,
    generation: Generation,
    age: int,
    cfg: Any,
    argv: list[str],
    cwd: str,
    listeners: list[socket.socket],
    control_path: str,
    admin: bool,
) -> WorkerProcess:
    release = generation.release
    listener = generation.private_listener
    private = [listener.fileno()] if listener is not None else []
    heartbeat = WorkerTmp(cfg)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        spec = WorkerSpec(
            generation=generation.number,
            age=age,
            arbiter_pid=os.getpid(),
            release=release.describe(),
            from_environment=release.path is None,
            pythonpath=list(release.pythonpath),
            argv=worker_argv(argv, cfg),
            listeners=[sock.fileno() for sock in listeners],
            heartbeat_fd=heartbeat.fileno(),
            channel_fd=theirs.fileno(),
            admin=admin,
            private_listener=private[0] if private else None,
        )
        env = {k: v for k, v in os.environ.items() if k not in SERVICE_ENV}  # the arbiter's
        if release.path is not None:
            env = release_environment(env)
            venv = os.path.join(release.path, "venv")
            env["VIRTUAL_ENV"] = venv
            env["PATH"] = os.path.join(venv, "bin") + os.pathsep + env.get("PATH", "")
        env[SPEC_ENV] = spec.to_json()
        env[CONTROL_ENV] = control_path
        proc = subprocess.Popen(
            [release.python, *bootstrap("beamdeploy_asgi.worker")],
            pass_fds=[*spec.listeners, *private, heartbeat.fileno(), theirs.fileno()],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            **worker_owner(cfg),
        )
    except BaseException:
        ours.close()
        heartbeat.close()
        raise
    finally:
        theirs.close()
    ours.setblocking(False)
    return WorkerProcess(
        generation=generation, age=age, proc=proc, channel=ours, heartbeat=heartbeat
    )


def worker_argv(argv: list[str], cfg: Any) -> list[str]:
    """The arbiter's command line without the options only the arbiter uses.

    Workers parse it again with the beamdeploy-asgi of their own release, which
    may be older than the arbiter's and not know the newer arbiter options.
    """
    flags = {flag for name in ARBITER_ONLY for flag in cfg.settings[name].cli}
    kept: list[str] = []
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
        elif arg.split("=", 1)[0] in flags:
            skip_value = "=" not in arg
        else:
            kept.append(arg)
    return kept


def worker_owner(cfg: Any) -> dict[str, Any]:
    """gunicorn's user/group settings: workers drop privileges, the arbiter keeps them.

    A worker that changes user also gets a new group list, so it keeps none of
    the arbiter's supplementary groups: the user's own groups with
    ``initgroups``, otherwise only ``group``.
    """
    owner: dict[str, Any] = {}
    if cfg.uid != os.geteuid():
        owner["user"] = cfg.uid
        owner["extra_groups"] = [cfg.gid]
        if cfg.initgroups:
            try:
                name = pwd.getpwuid(cfg.uid).pw_name
            except KeyError:
                pass  # a uid without a name has no groups to add
            else:
                owner["extra_groups"] = os.getgrouplist(name, cfg.gid)
    if cfg.gid != os.getegid():
        owner["group"] = cfg.gid
    return owner


def owner_problem(exc: OSError, cfg: Any, python: str, cwd: str | None) -> str:
    """`exc` from starting `python` as the workers' user, with what that user needs."""
    if not isinstance(exc, PermissionError) or cfg.uid == os.geteuid():
        return str(exc)
    try:
        user = pwd.getpwuid(cfg.uid).pw_name
    except KeyError:
        user = f"uid {cfg.uid}"
    return (
        f"{exc}; the workers run as {user} (uid {cfg.uid}, gid {cfg.gid}), who must be "
        f"able to enter {cwd or os.getcwd()} and run {python}, which resolves to "
        f"{os.path.realpath(python)} (build releases with an interpreter that user can "
        "run: --release-python)"
    )
