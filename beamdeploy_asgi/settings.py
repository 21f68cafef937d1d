"""beamdeploy's own settings, registered with gunicorn's configuration.

Declaring them as gunicorn ``Setting`` classes makes each one a command-line
flag of ``beamdeploy serve`` and a name a gunicorn config file may set, with
the same validation and precedence as gunicorn's own settings.
"""

from __future__ import annotations

import os
from typing import Any

from gunicorn import config as gconfig

from beamdeploy_asgi import deploy_options
from beamdeploy_asgi.protocol import TOKEN_ENV, state_dir_path

SECTION = "BeamDeploy"
MIN_TOKEN_LENGTH = 16


def _positive_float(value: Any) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError(f"must be a positive number, not {value!r}")
    return number


def _non_negative_float(value: Any) -> float:
    number = float(value)
    if number < 0:
        raise ValueError(f"must not be negative, not {value!r}")
    return number


def _optional_path(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"must be an absolute URL path starting with '/', not {value!r}")
    return value


def _optional_pos_int(value: Any) -> int | None:
    if value is None:
        return None
    number = int(value)
    if number <= 0:
        raise ValueError(f"must be a positive integer, not {value!r}")
    return number


def _choice(*choices: str) -> Any:
    def validate(value: Any) -> str:
        value = str(value).lower().strip()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    return validate


class Release(gconfig.Setting):
    name = "release"
    section = SECTION
    cli = ["--release"]
    meta = "DIR"
    validator = gconfig.validate_string
    default = None
    desc = """\
        Release directory or artifact the first generation boots from.

        Without it the first generation runs the APP_MODULE given on the
        command line from the serving environment itself.
        """


class StateDir(gconfig.Setting):
    name = "state_dir"
    section = SECTION
    cli = ["--state-dir"]
    meta = "DIR"
    validator = gconfig.validate_string
    default = None
    desc = """\
        Directory of the control socket, the release store and the history.

        Defaults to ``$BEAMDEPLOY_STATE_DIR``, else ``.beamdeploy`` in the
        working directory.
        """


class BootTimeout(gconfig.Setting):
    name = "boot_timeout"
    section = SECTION
    cli = ["--boot-timeout"]
    meta = "SECONDS"
    validator = _positive_float
    type = float
    default = 60.0
    desc = """\
        How long every worker of a new generation has to report READY.
        """


class HealthPath(gconfig.Setting):
    name = "health_path"
    section = SECTION
    cli = ["--health-path"]
    meta = "PATH"
    validator = _optional_path
    default = None
    desc = """\
        Path each new worker requests in-process before it reports READY.

        The worker only reports READY when the answer is 2xx.
        """


class DrainGrace(gconfig.Setting):
    name = "drain_grace"
    section = SECTION
    cli = ["--drain-grace"]
    meta = "SECONDS"
    validator = _non_negative_float
    type = float
    default = 1.0
    desc = """\
        How long a draining worker keeps idle keep-alive connections open.

        A request that arrives meanwhile is answered with ``Connection: close``,
        so clients never see a connection closed under a request they just sent.
        """


class UvicornHTTP(gconfig.Setting):
    name = "uvicorn_http"
    section = SECTION
    cli = ["--http"]
    meta = "IMPL"
    validator = _choice("auto", "h11", "httptools")
    default = "auto"
    desc = """\
        uvicorn's HTTP implementation: auto, h11 or httptools.
        """


class UvicornWS(gconfig.Setting):
    name = "uvicorn_ws"
    section = SECTION
    cli = ["--ws"]
    meta = "IMPL"
    validator = _choice("auto", "none", "websockets", "websockets-sansio", "wsproto")
    default = "auto"
    desc = """\
        uvicorn's WebSocket implementation.

        One of auto, none, websockets, websockets-sansio or wsproto.
        """


class ProxyHeaders(gconfig.Setting):
    name = "proxy_headers"
    section = SECTION
    cli = ["--no-proxy-headers"]
    action = "store_const"
    const = False
    validator = gconfig.validate_bool
    default = True
    desc = """\
        Turn off uvicorn's X-Forwarded-Proto / X-Forwarded-For handling.

        Which peers are trusted is gunicorn's ``forwarded_allow_ips``.
        """


class LimitConcurrency(gconfig.Setting):
    name = "limit_concurrency"
    section = SECTION
    cli = ["--limit-concurrency"]
    meta = "INT"
    validator = _optional_pos_int
    type = int
    default = None
    desc = """\
        Concurrent connections or tasks per worker past which uvicorn answers 503.
        """


def state_dir(cfg: Any) -> str:
    """Where the control socket lives, resolved against the arbiter's cwd."""
    return state_dir_path(cfg.state_dir)


def _admin_prefix(value: Any) -> str | None:
    if value is None or str(value).lower() in ("", "off", "none"):
        return None
    value = str(value).rstrip("/")
    if not value.startswith("/") or value == "":
        raise ValueError(f"must be a URL path like /_deploy, or 'off', not {value!r}")
    return value


def _networks(value: Any) -> list[str]:
    import ipaddress

    if isinstance(value, str):
        value = [value]
    networks = []
    for item in value or []:
        try:
            networks.append(str(ipaddress.ip_network(str(item).strip(), strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
    return networks


def _directories(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    return [os.path.abspath(os.path.expanduser(str(item))) for item in value or []]


class Secret:
    """A setting's value that never shows itself in logs or ``--print-config``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'********'"

    __str__ = __repr__


def _optional_secret(value: Any) -> Secret | None:
    if isinstance(value, Secret):
        return value
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TypeError("must be a string")
    return Secret(value)


class AdminPrefix(gconfig.Setting):
    name = "admin_prefix"
    section = SECTION
    cli = ["--admin-prefix"]
    meta = "PATH"
    validator = _admin_prefix
    default = "/_deploy"
    desc = """\
        Where every worker serves the admin API in front of the app, or ``off``.

        An app that mounts ``beamdeploy_asgi.admin_app()`` itself gets no
        second one.
        """


class AdminToken(gconfig.Setting):
    name = "admin_token"
    section = SECTION
    validator = _optional_secret
    default = None
    desc = """\
        Bearer token of the admin API (config file only; or ``$BEAMDEPLOY_TOKEN``).

        Without a token every admin route except ``/health`` is absent.
        """


class AdminAllow(gconfig.Setting):
    name = "admin_allow"
    section = SECTION
    cli = ["--admin-allow"]
    meta = "CIDR"
    action = "append"
    validator = _networks
    default: list[str] = []
    desc = """\
        Client networks allowed to use the admin API (repeatable); default: any.
        """


def _metrics_bind(value: Any) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    from beamdeploy_asgi.arbiter.metrics_server import parse_address

    parse_address(str(value))
    return str(value).strip()


class MetricsBind(gconfig.Setting):
    name = "metrics_bind"
    section = SECTION
    cli = ["--metrics-bind"]
    meta = "ADDRESS"
    validator = _metrics_bind
    default = None
    desc = """\
        HOST:PORT where the arbiter itself serves ``GET /metrics`` (Prometheus), no token.

        Served by the arbiter, so metrics stay while the app's workers are
        broken. Needs ``beamdeploy-asgi[metrics]``. Default: off.
        """


class MetricsAllow(gconfig.Setting):
    name = "metrics_allow"
    section = SECTION
    cli = ["--metrics-allow"]
    meta = "CIDR"
    action = "append"
    validator = _networks
    default: list[str] = []
    desc = """\
        Client networks that may read ``/_deploy/metrics`` without the token (repeatable).
        """


class ReleaseDirs(gconfig.Setting):
    name = "release_dirs"
    section = SECTION
    cli = ["--release-dir"]
    meta = "DIR"
    action = "append"
    validator = _directories
    default: list[str] = []
    desc = """\
        Directories the admin API may deploy releases from (repeatable).
        """


class MaxUploadSize(gconfig.Setting):
    name = "max_upload_size"
    section = SECTION
    cli = ["--max-upload-size"]
    meta = "BYTES"
    validator = gconfig.validate_pos_int
    type = int
    default = 1024**3
    desc = """\
        Largest release artifact the admin API accepts as a request body.
        """


class UploadTimeout(gconfig.Setting):
    name = "upload_timeout"
    section = SECTION
    cli = ["--upload-timeout"]
    meta = "SECONDS"
    validator = _positive_float
    type = float
    default = 600.0
    desc = """\
        How long the admin API waits for an uploaded artifact to arrive in full.

        An upload that pauses for ``--header-timeout`` seconds is cut sooner.
        Either way the answer is 408 and nothing of the upload is kept.
        """


class HeaderTimeout(gconfig.Setting):
    name = "header_timeout"
    section = SECTION
    cli = ["--header-timeout"]
    meta = "SECONDS"
    validator = _positive_float
    type = float
    default = 30.0
    desc = """\
        How long a connection may take to send a request's headers.

        Counted from the connection's start, or from the end of its last
        response; an idle keep-alive connection is never closed before
        ``keepalive`` + 1 seconds. The admin API also cuts a request body
        that pauses this long.
        """


def admin_token(cfg: Any) -> str | None:
    """The admin token: the config file's, else ``$BEAMDEPLOY_TOKEN``; only the arbiter reads it."""
    configured = cfg.admin_token
    if isinstance(configured, Secret):
        return configured.reveal()
    return os.environ.get(TOKEN_ENV) or None


def token_problem(token: str | None) -> str | None:
    """Why `token` cannot guard the admin API, or None."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        return (
            f"the admin token has {len(token)} characters; it needs at least "
            f"{MIN_TOKEN_LENGTH} (make one with: python -c "
            "'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return None


class KeepReleases(gconfig.Setting):
    name = "keep_releases"
    section = SECTION
    cli = ["--keep-releases"]
    meta = "N"
    validator = gconfig.validate_pos_int
    type = int
    default = 5
    desc = """\
        How many installed releases the store keeps.

        The serving, the current and the previous release are always kept.
        """


class ArtifactMaxSize(gconfig.Setting):
    name = "artifact_max_size"
    section = SECTION
    cli = ["--artifact-max-size"]
    meta = "BYTES"
    validator = gconfig.validate_pos_int
    type = int
    default = 4 * 1024**3
    desc = """\
        Largest total size an artifact may unpack to.
        """


class ArtifactMaxFiles(gconfig.Setting):
    name = "artifact_max_files"
    section = SECTION
    cli = ["--artifact-max-files"]
    meta = "N"
    validator = gconfig.validate_pos_int
    type = int
    default = 20_000
    desc = """\
        Most files an artifact may hold.
        """


class ReleasePython(gconfig.Setting):
    name = "release_python"
    section = SECTION
    cli = ["--release-python"]
    meta = "PATH"
    validator = gconfig.validate_string
    default = None
    desc = """\
        The interpreter that venvs of installed artifacts are built from.

        By default the arbiter's own interpreter when its Python version is the
        one the artifact was built for, else ``pythonX.Y`` from ``PATH``. Set it
        when the workers' user (``--user``) cannot run the arbiter's
        interpreter, as with a Python installed under ``/root``.
        """


# -- how upgrades deploy ------------------------------------------------------


def _strategy(value: Any) -> str:
    return deploy_options.strategy(str(value).strip().lower())


def _max_surge(value: Any) -> int:
    return deploy_options.max_surge(int(value))


def _bake(value: Any) -> float:
    return deploy_options.bake(float(value))


def _error_rate(value: Any) -> float:
    return deploy_options.bake_max_error_rate(float(value))


class Strategy(gconfig.Setting):
    name = "strategy"
    section = SECTION
    cli = ["--strategy"]
    meta = "blue-green|rolling"
    validator = _strategy
    default = "blue-green"
    desc = """\
        How an upgrade replaces the workers, unless the upgrade says otherwise.

        ``blue-green`` boots a whole new generation beside the serving one,
        then moves traffic at once: memory for two generations. ``rolling``
        replaces the workers a few at a time (``--max-surge``): while it runs,
        both releases answer requests.
        """


class MaxSurge(gconfig.Setting):
    name = "max_surge"
    section = SECTION
    cli = ["--max-surge"]
    meta = "N"
    validator = _max_surge
    type = int
    default = 1
    desc = """\
        With the rolling strategy, how many new workers boot beyond the
        generation's size at a time.
        """


class Bake(gconfig.Setting):
    name = "bake"
    section = SECTION
    cli = ["--bake"]
    meta = "SECONDS"
    validator = _bake
    type = float
    default = 0.0
    desc = """\
        After a blue-green promotion, how long the old generation stays booted
        (not accepting) while the new one's answers are watched.

        If the new generation's share of 5xx answers passes
        ``--bake-max-error-rate``, or one of its workers crashes, the old one
        serves again at once and the upgrade ends ``rolled-back``.
        """


class BakeMaxErrorRate(gconfig.Setting):
    name = "bake_max_error_rate"
    section = SECTION
    cli = ["--bake-max-error-rate"]
    meta = "SHARE"
    validator = _error_rate
    type = float
    default = 0.05
    desc = """\
        The share of 5xx answers (over at least 20) that rolls a baking
        upgrade back.
        """


class SmokeCmd(gconfig.Setting):
    name = "smoke_cmd"
    section = SECTION
    cli = ["--smoke-cmd"]
    meta = "COMMAND"
    validator = gconfig.validate_string
    default = None
    desc = """\
        A command run before each new generation takes traffic; if it fails,
        the upgrade fails and the serving generation stays.

        It runs through ``/bin/sh -c`` in the directory ``serve`` started in,
        as the workers' user, with ``BEAMDEPLOY_SMOKE_URL`` set to a loopback
        address only the new generation answers on.
        """


class SmokeTimeout(gconfig.Setting):
    name = "smoke_timeout"
    section = SECTION
    cli = ["--smoke-timeout"]
    meta = "SECONDS"
    validator = _positive_float
    type = float
    default = 120.0
    desc = """\
        How long the smoke command may run before it counts as failed.
        """


class HookTimeout(gconfig.Setting):
    name = "hook_timeout"
    section = SECTION
    cli = ["--hook-timeout"]
    meta = "SECONDS"
    validator = _positive_float
    type = float
    default = 30.0
    desc = """\
        How long a ``beamdeploy_*`` deployment hook may run. One that takes
        longer is reported; ``beamdeploy_before_promote`` then vetoes.
        """


def _deployment_hook(name: str, doc: str) -> type:
    def default(server: Any, deployment: dict[str, Any]) -> None:
        pass

    return type(
        "".join(part.title() for part in name.split("_")),
        (gconfig.Setting,),
        {
            "name": name,
            "section": "Server Hooks",
            "validator": gconfig.validate_callable(2),
            "type": callable,
            "default": staticmethod(default),
            "desc": doc,
        },
    )


DEPLOYMENT_HOOKS = {
    "beamdeploy_deployment_started": "Called when a deployment starts.",
    "beamdeploy_before_promote": (
        "Called once the new generation has booted (and passed the smoke command), "
        "before it takes traffic. Returning False or raising vetoes the promotion."
    ),
    "beamdeploy_promoted": "Called once the new generation serves.",
    "beamdeploy_deployment_failed": "Called when a deployment failed or was rolled back.",
}
for _name, _doc in DEPLOYMENT_HOOKS.items():
    _deployment_hook(
        _name,
        f"""\
        {_doc}

        The callable gets the arbiter and the deployment's record (a dict, as
        ``beamdeploy status`` shows it). It runs in a thread of the arbiter,
        bounded by ``--hook-timeout``.
        """,
    )
