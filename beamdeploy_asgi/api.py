"""The Python API: what an app (or a script) uses to deploy and inspect.

Inside a worker the control socket is found through the environment the
arbiter gave it. Outside the runtime every call raises NotEnabledError,
unless `state_dir` names the arbiter to talk to.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from beamdeploy_asgi.control import ControlClient, socket_path
from beamdeploy_asgi.deploy_options import checked
from beamdeploy_asgi.errors import DeploymentFailed, NotEnabledError
from beamdeploy_asgi.protocol import (
    CONTROL_ENV,
    hot_reload_request,
    reexec_request,
    rollback_request,
    simple_request,
    state_dir_path,
    upgrade_request,
)


def enabled() -> bool:
    """True inside a worker run by the beamdeploy runtime."""
    return bool(os.environ.get(CONTROL_ENV))


def _client(state_dir: str | os.PathLike[str] | None) -> ControlClient:
    if state_dir is not None:
        return ControlClient(socket_path(state_dir_path(os.fspath(state_dir))))
    path = os.environ.get(CONTROL_ENV)
    if not path:
        raise NotEnabledError()
    return ControlClient(path)


def status(*, state_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Serving and draining generations, their workers, and recent deployments."""
    return _client(state_dir).request(simple_request("status"))


def current_release(*, state_dir: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The release the serving generation runs (name, version, app, path)."""
    serving = status(state_dir=state_dir)["serving"]
    return serving["release"] if serving else None


def upgrading(*, state_dir: str | os.PathLike[str] | None = None) -> bool:
    """Whether a deployment is running right now."""
    return bool(status(state_dir=state_dir)["upgrading"])


def _deploy_options(
    strategy: str | None, max_surge: int | None, bake: float | None, rate: float | None
) -> dict[str, Any]:
    """The options given, checked here so that a bad one is refused before anything is sent."""
    given = dict(strategy=strategy, max_surge=max_surge, bake=bake, bake_max_error_rate=rate)
    return {name: value for name, value in checked(given).items() if value is not None}


def drain(*, state_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Mark the host draining: /_deploy/health answers 503, so load balancers stop sending.

    The workers still answer whatever comes. The mark stays across deploys and
    arbiter restarts until undrain(). Returns {"draining": True, "since": unix time}.
    """
    return _client(state_dir).request(simple_request("drain"))


def undrain(*, state_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Remove the drain mark: /_deploy/health answers 200 again."""
    return _client(state_dir).request(simple_request("undrain"))


def upgrade(
    release: str | os.PathLike[str],
    *,
    strategy: str | None = None,
    max_surge: int | None = None,
    bake: float | None = None,
    bake_max_error_rate: float | None = None,
    wait: bool = True,
    timeout: float | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Swap the service to `release` (a release directory or an artifact).

    `strategy` ("blue-green" or "rolling", with `max_surge`) and `bake` (with
    `bake_max_error_rate`) override the server's settings for this upgrade.
    With `wait` (the default) this returns once the new generation serves and
    the old one has stopped accepting, and raises DeploymentFailed with the
    cause if it could not be promoted or was rolled back. Without it, it
    returns the deployment as soon as it started. Blocking: from async code,
    call it in a thread.
    """
    options = _deploy_options(strategy, max_surge, bake, bake_max_error_rate)
    request = upgrade_request(os.path.abspath(os.fspath(release)), follow=wait, options=options)
    result = _client(state_dir).request(request, on_event=on_event, timeout=timeout)
    if wait and result.get("outcome") != "succeeded":
        raise DeploymentFailed(result)
    return result


def rollback(
    to: str | None = None,
    *,
    strategy: str | None = None,
    max_surge: int | None = None,
    bake: float | None = None,
    bake_max_error_rate: float | None = None,
    wait: bool = True,
    timeout: float | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Swap back, blue-green, to the release that served before this one.

    `to` picks any kept release by version instead. Raises like upgrade().
    """
    options = _deploy_options(strategy, max_surge, bake, bake_max_error_rate)
    request = rollback_request(to, follow=wait, options=options)
    result = _client(state_dir).request(request, on_event=on_event, timeout=timeout)
    # During a bake, a rollback ends the upgrade being baked `rolled-back`.
    if wait and result.get("outcome") not in ("succeeded", "rolled-back"):
        raise DeploymentFailed(result)
    return result


def hot_reload(
    release: str | os.PathLike[str],
    *,
    dry_run: bool = False,
    suspend_timeout: float = 3.0,
    wait: bool = True,
    timeout: float | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Patch `release`'s changed app code into the serving workers, state kept.

    All workers or none; anything that cannot be patched in place is refused
    (DeploymentFailed, its error listing ``file:line: rule: why``). With
    `dry_run` it only plans. Outside the arbiter (no `state_dir`, not in a
    worker it runs), it reloads this process: see `beamdeploy_asgi.reload.local`.
    """
    if state_dir is None and not enabled():
        from beamdeploy_asgi.reload.local import reload_here

        return reload_here(release, dry_run=dry_run)
    request = hot_reload_request(
        os.path.abspath(os.fspath(release)),
        follow=wait,
        dry_run=dry_run,
        suspend_timeout=suspend_timeout,
    )
    result = _client(state_dir).request(request, on_event=on_event, timeout=timeout)
    if wait and result.get("outcome") != "succeeded":
        raise DeploymentFailed(result)
    return result


def reexec(
    *,
    wait: bool = True,
    timeout: float | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Replace the arbiter with a new one started from its own interpreter and command line.

    This is how an upgraded beamdeploy-asgi (``pip install -U`` in the
    arbiter's environment) takes effect without a restart: the new arbiter
    boots the current release on the same listening sockets, then the old
    one drains and exits. With `wait` this returns once the new arbiter has
    taken over (``new_arbiter_pid`` in the result), and raises
    DeploymentFailed with the cause if it could not; the old arbiter then
    serves on. Blocking: from async code, call it in a thread.
    """
    result = _client(state_dir).request(
        reexec_request(follow=wait), on_event=on_event, timeout=timeout
    )
    if wait and result.get("outcome") != "succeeded":
        raise DeploymentFailed(result)
    return result
