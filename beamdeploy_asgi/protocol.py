"""The contract between the arbiter, its workers and its clients.

A release pins its own beamdeploy-asgi, so a worker may run another version
than the arbiter that started it. Everything they exchange is named here:
the environment variables, the worker's spec, the messages on a worker's
status channel and the requests on the control socket. Each side checks the
protocol version the other speaks, so a mismatch is a clear boot failure
rather than two programs misunderstanding each other.
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from beamdeploy_asgi.version import __version__

PROTOCOL_VERSION = 1

# -- environment variables ---------------------------------------------------

SPEC_ENV = "BEAMDEPLOY_WORKER"  # a worker's spec, JSON; taken out of the environment at start
CONTROL_ENV = "BEAMDEPLOY_CONTROL"  # the control socket, for the Python API inside a worker
STATE_DIR_ENV = "BEAMDEPLOY_STATE_DIR"
TOKEN_ENV = "BEAMDEPLOY_TOKEN"  # read by the arbiter alone
GENERATION_ENV = "BEAMDEPLOY_GENERATION"  # for the app: which generation runs it
RELEASE_NAME_ENV = "BEAMDEPLOY_RELEASE_NAME"
RELEASE_VERSION_ENV = "BEAMDEPLOY_RELEASE_VERSION"
DAEMONIZED_ENV = "BEAMDEPLOY_DAEMONIZED"
SMOKE_URL_ENV = "BEAMDEPLOY_SMOKE_URL"  # for the smoke command: where the new generation answers


def state_dir_path(given: str | None = None) -> str:
    """The state directory: `given`, else $BEAMDEPLOY_STATE_DIR, else ./.beamdeploy; real path.

    The arbiter, the CLI and the Python API all resolve it this way, so they
    meet at the same control socket.
    """
    chosen = given or os.environ.get(STATE_DIR_ENV) or ".beamdeploy"
    return os.path.realpath(os.path.expanduser(chosen))


# -- a worker's status channel -------------------------------------------------


class Event(str, enum.Enum):
    """What a worker tells its arbiter: ``{"event": EVENT, ...}``."""

    IMPORTED = "imported"  # the app imported, from inside its release (protocol 1, optional)
    READY = "ready"  # booted and checked; fields: protocol, app_file, hot_reload, deploy
    SERVING = "serving"  # accepting connections
    DRAINING = "draining"  # stopped accepting
    FAILED = "failed"  # could not boot; fields: phase, error, traceback
    ADMIN = "admin"  # an admin request to act on; fields: id, token, request
    RELOAD = "reload"  # a hot reload step's answer; fields: id, step, ok, then what it did
    PAUSED = "paused"  # no longer accepting, still booted (deploy 1)
    RESUMED = "resumed"  # accepting again after a pause (deploy 1)
    RESPONSES = "responses"  # cumulative public responses by class: 1xx .. 5xx (deploy 1)


class Command(str, enum.Enum):
    """What the arbiter tells a worker: ``{"cmd": COMMAND, ...}``."""

    SERVE = "serve"  # start accepting
    ADMIN = "admin"  # a reply to an admin request; fields: id, then event, result or error
    RELOAD = "reload"  # a hot reload step; fields: id, step, then what the step needs
    PAUSE = "pause"  # stop accepting, finish connections as in a drain, stay booted
    RESUME = "resume"  # accept again after a pause
    # The host's drain mark, for /_deploy/health; fields: draining, reason. Sent
    # first to every worker, and to all when it changes; older workers ignore it.
    HOST = "host"


HOT_RELOAD_VERSION = 1  # the reload steps a worker understands; READY says it
# PAUSE/RESUME, RESPONSES and the private listener; READY says it as `deploy`
DEPLOY_VERSION = 1
RESPONSE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")  # the fields of RESPONSES


class ReloadStep(str, enum.Enum):
    """The steps of a hot reload, in order; each worker answers each one."""

    PREPARE = "prepare"  # fields: modules, old_paths, new_paths; compile, check, vote
    SUSPEND = "suspend"  # fields: timeout; hold new requests, wait for in-flight ones
    COMMIT = "commit"  # fields: old_version, new_version, release; patch, run the hooks
    RESUME = "resume"  # let held requests go on; answers how long they were held
    UNDO = "undo"  # put the old code back (after a commit), then resume
    ABORT = "abort"  # forget a prepared reload, resume if suspended


class ProtocolMismatch(Exception):
    """The other side speaks another protocol version."""


@dataclass(frozen=True)
class WorkerSpec:
    """How the arbiter describes a worker to the process it starts."""

    generation: int
    age: int
    arbiter_pid: int
    release: dict[str, Any]
    from_environment: bool
    pythonpath: list[str]
    argv: list[str]
    listeners: list[int]
    heartbeat_fd: int
    channel_fd: int
    admin: bool = False  # whether an admin token is set (the token stays in the arbiter)
    # A loopback listener served from READY on, before SERVE: smoke checks reach the
    # generation there before any user does.
    private_listener: int | None = None
    protocol: int = PROTOCOL_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # from a newer arbiter

    def to_json(self) -> str:
        data = asdict(self)
        data.update(data.pop("extra"))
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        data = json.loads(text)
        known = {name for name in cls.__dataclass_fields__ if name != "extra"}
        spec = cls(
            **{k: v for k, v in data.items() if k in known},
            extra={k: v for k, v in data.items() if k not in known},
        )
        return spec

    def check_protocol(self) -> None:
        if self.protocol != PROTOCOL_VERSION:
            raise ProtocolMismatch(mismatch(self.protocol, "the arbiter"))


def mismatch(theirs: Any, who: str) -> str:
    return (
        f"{who} speaks beamdeploy protocol {theirs!r}, and beamdeploy-asgi {__version__} "
        f"here speaks {PROTOCOL_VERSION}: give the release a beamdeploy-asgi that matches "
        "the arbiter's"
    )


# -- requests on the control socket (and forwarded by workers) ------------------


def upgrade_request(
    release: str,
    *,
    follow: bool,
    remove_after: bool = False,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`options`: the deployment's strategy and bake (see deploy_options), if any."""
    request: dict[str, Any] = {"op": "upgrade", "release": release, "follow": follow}
    if remove_after:
        request["remove_after"] = True  # an upload: the arbiter removes it once installed
    if options:
        request["options"] = options
    return request


def rollback_request(
    to: str | None = None, *, follow: bool, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    request: dict[str, Any] = {"op": "rollback", "follow": follow}
    if to is not None:
        request["to"] = to
    if options:
        request["options"] = options
    return request


def hot_reload_request(
    release: str,
    *,
    follow: bool,
    dry_run: bool = False,
    suspend_timeout: float | None = None,
    remove_after: bool = False,
) -> dict[str, Any]:
    request: dict[str, Any] = {"op": "hot_reload", "release": release, "follow": follow}
    if dry_run:
        request["dry_run"] = True
    if suspend_timeout is not None:
        request["suspend_timeout"] = suspend_timeout
    if remove_after:
        request["remove_after"] = True
    return request


def reexec_request(*, follow: bool) -> dict[str, Any]:
    return {"op": "reexec", "follow": follow}


def deployment_request(deployment_id: str, *, follow: bool = False) -> dict[str, Any]:
    request: dict[str, Any] = {"op": "deployment", "id": deployment_id}
    if follow:
        request["follow"] = True
    return request


def simple_request(op: str) -> dict[str, Any]:
    """status, releases, deployments, ping, auth: requests with no arguments."""
    return {"op": op}
