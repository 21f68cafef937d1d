"""The `beamdeploy` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from beamdeploy_asgi import deploy_options
from beamdeploy_asgi.control import ControlClient, socket_path
from beamdeploy_asgi.errors import ControlError
from beamdeploy_asgi.protocol import (
    hot_reload_request,
    reexec_request,
    rollback_request,
    simple_request,
    state_dir_path,
    upgrade_request,
)
from beamdeploy_asgi.version import __version__

DESCRIPTION = "Zero-downtime deploys of ASGI apps under a long-lived gunicorn arbiter."
STATE_DIR_HELP = (
    "the arbiter's state directory, which holds its control socket "
    "(default: $BEAMDEPLOY_STATE_DIR, else .beamdeploy)"
)
TIMEOUT_HELP = (
    "give up when the arbiter has sent nothing for SECONDS: exit 1 with 'the arbiter "
    "did not answer in time'; the deployment goes on in the arbiter "
    "(default: wait as long as the deployment takes)"
)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "serve":
        from beamdeploy_asgi.arbiter.application import serve

        serve(args[1:])
        return
    parser = build_parser()
    options = parser.parse_args(args)
    if options.command == "build":
        sys.exit(run_build(options))
    client = ControlClient(socket_path(state_dir_path(options.state_dir)))
    try:
        code = options.run(client, options)
    except ControlError as exc:
        if options.json:
            print(json.dumps({"error": {"code": exc.code, "detail": exc.detail}}))
        else:
            print(f"error: {exc.detail}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def build_parser() -> argparse.ArgumentParser:
    """Every command; `serve` is only listed here, its options are gunicorn's.

    main() hands `serve` to arbiter.application before this parser runs.
    """
    parser = argparse.ArgumentParser(
        prog="beamdeploy",
        description=DESCRIPTION,
        formatter_class=CommandsFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", title="commands"
    )

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=summary, description=description)

    def talks_to_arbiter(sub: argparse.ArgumentParser, json_help: str) -> None:
        sub.add_argument("--state-dir", metavar="DIR", help=STATE_DIR_HELP)
        sub.add_argument("--json", action="store_true", help=json_help)

    command(
        "serve",
        "run the arbiter (takes gunicorn's options: see serve --help)",
        "",
    ).usage = "%(prog)s [GUNICORN OPTIONS] [--release DIR_OR_ARTIFACT] [APP_MODULE]"

    upgrade = command(
        "upgrade",
        "swap the service to a release, blue-green",
        "Boot RELEASE as a new generation next to the serving one, promote it once every "
        "worker is ready, then drain the old one. Prints each phase as it happens; exits 0 "
        "once the new generation serves, 1 with the cause if it failed (the serving "
        "generation is then unchanged).",
    )
    upgrade.add_argument(
        "release",
        metavar="RELEASE",
        help="a release directory (manifest and venv) or an artifact (.tar.gz) built by "
        "beamdeploy build, which is installed into the release store first",
    )
    rollback = command(
        "rollback",
        "swap back to the previous release, blue-green",
        "Swap back, blue-green like upgrade, to the release that served before the "
        "serving one, or to a kept release given with --to.",
    )
    rollback.add_argument(
        "--to",
        metavar="VERSION",
        help="the version of a kept release to swap to, as beamdeploy releases lists them "
        "(default: the release that served before)",
    )
    hot_reload = command(
        "hot-reload",
        "patch a release's code into the running workers, state kept",
        "Compare RELEASE with the serving release; if only the app's own Python code "
        "changed, in ways that can be patched in place, patch it into every running "
        "worker (all or none), holding new requests for the moment it takes. Anything "
        "else is refused with file:line and the rule: deploy those with upgrade. See "
        "docs/hot-reload.md.",
    )
    hot_reload.add_argument(
        "release",
        metavar="RELEASE",
        help="a release directory or an artifact, as for upgrade",
    )
    hot_reload.add_argument(
        "--dry-run",
        action="store_true",
        help="plan and check without touching a worker, and print the plan",
    )
    hot_reload.add_argument(
        "--suspend-timeout",
        metavar="SECONDS",
        type=positive_seconds,
        default=3.0,
        help="how long the workers wait for running requests to finish before the "
        "code changes; requests still running then fail the reload, nothing applied "
        "(default: 3)",
    )
    reexec = command(
        "reexec",
        "replace the arbiter itself, e.g. after upgrading beamdeploy-asgi",
        "Start a new arbiter from the running arbiter's interpreter and command line, "
        "handing it the listening sockets: it boots the current release, and once its "
        "workers serve it takes over the control socket and the pidfile while the old "
        "arbiter drains its workers and exits (also: kill -USR2 <arbiter pid>). Exits 0 "
        "once the new arbiter has taken over, 1 with the cause if it could not (the old "
        "arbiter then serves on).",
    )
    for swapping in (upgrade, rollback):
        swapping.add_argument(
            "--strategy",
            choices=deploy_options.STRATEGIES,
            help="blue-green boots a whole new generation, then moves traffic at once; "
            "rolling replaces a few workers at a time, both releases answering meanwhile "
            "(default: the server's --strategy)",
        )
        swapping.add_argument(
            "--max-surge",
            metavar="N",
            type=option_type(deploy_options.max_surge, int),
            help="rolling: how many new workers boot beyond the generation's size at a time",
        )
        swapping.add_argument(
            "--bake",
            metavar="SECONDS",
            type=option_type(deploy_options.bake, float),
            help="keep the old generation booted this long after the promotion, and go "
            "back to it at once if the new one answers too many 5xx or crashes",
        )
        swapping.add_argument(
            "--bake-max-error-rate",
            metavar="SHARE",
            type=option_type(deploy_options.bake_max_error_rate, float),
            help="the share of 5xx answers (over at least 20) that rolls back (default 0.05)",
        )
    for deploying in (upgrade, rollback, hot_reload, reexec):
        talks_to_arbiter(deploying, "print the deployment record as JSON instead of the phases")
        deploying.add_argument(
            "--no-wait",
            action="store_true",
            help="return once the deployment has started and print its id "
            "(default: follow it until it succeeded or failed)",
        )
        deploying.add_argument(
            "--timeout", metavar="SECONDS", type=positive_seconds, help=TIMEOUT_HELP
        )
    upgrade.set_defaults(run=run_upgrade)
    rollback.set_defaults(run=run_rollback)
    hot_reload.set_defaults(run=run_hot_reload)
    reexec.set_defaults(run=run_reexec)

    status = command(
        "status",
        "show generations, workers and deployments",
        "Show the arbiter, its serving, booting, standby and draining generations with their "
        "workers, and the recent deployments.",
    )
    talks_to_arbiter(status, "print the arbiter's whole status as JSON")
    status.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show, under each worker, the file that defines its app and the "
        "sha256 of the artifact its release was installed from",
    )
    status.set_defaults(run=run_status)

    for name, summary, description in HOST_COMMANDS:
        marking = command(name, summary, description)
        talks_to_arbiter(marking, "print the host's state as JSON")
        marking.set_defaults(run=run_mark_host)

    releases = command(
        "releases",
        "list the releases kept in the store",
        "List the releases of the store, newest first: * marks the current one "
        "(STATE_DIR/current, what a restarted arbiter boots), ! one whose last "
        "deployment failed.",
    )
    talks_to_arbiter(releases, "print the listing as JSON, with each release's flags")
    releases.set_defaults(run=run_releases)

    build = command(
        "build",
        "build a release artifact from a project (no arbiter needed)",
        "Build one artifact holding the app and every wheel it needs, so the host "
        "installs it without network.",
    )
    build.add_argument(
        "project",
        nargs="?",
        default=".",
        metavar="PROJECT_DIR",
        help="the project: a directory with pyproject.toml, or with the app's source "
        "and requirements.txt (default: .)",
    )
    build.add_argument(
        "-o", "--outdir", default="dist", help="where to write the artifact (default: dist)"
    )
    build.add_argument(
        "--app",
        metavar="MODULE:ATTR",
        help="the ASGI app (default: [tool.beamdeploy] app of pyproject.toml)",
    )
    build.add_argument("--name", help="the release name (default: [project] name)")
    build.add_argument("--version", help="the release version (default: [project] version)")

    parser.epilog = "usage of each command (beamdeploy COMMAND --help says more):\n" + "\n".join(
        usage_line(sub) for sub in commands.choices.values()
    )
    return parser


class CommandsFormatter(argparse.RawDescriptionHelpFormatter):
    """Lists the commands without argparse's lone COMMAND line above them."""

    def _format_action(self, action: argparse.Action) -> str:
        if isinstance(action, argparse._SubParsersAction):
            return "".join(self._format_action(sub) for sub in action._get_subactions())
        return super()._format_action(action)


def usage_line(parser: argparse.ArgumentParser) -> str:
    """`parser`'s usage, indented under the top-level help's epilog."""
    lines = parser.format_usage().removeprefix("usage: ").rstrip().splitlines()
    return "\n".join(["  " + lines[0], *(line.removeprefix("     ") for line in lines[1:])])


def positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {value}")
    return seconds


def run_build(options: argparse.Namespace) -> int:
    from beamdeploy_asgi.errors import ReleaseError
    from beamdeploy_asgi.releases.build import build

    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] {message}", flush=True)

    try:
        build(
            options.project,
            options.outdir,
            app=options.app,
            name=options.name,
            version=options.version,
            progress=progress,
        )
    except ReleaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def option_type(check: Callable[[Any], Any], kind: type) -> Callable[[str], Any]:
    """An argparse type: the text as `kind`, checked as the arbiter checks it."""

    def parse(text: str) -> Any:
        try:
            return check(kind(text))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def deploy_changes(options: argparse.Namespace) -> dict[str, Any]:
    """The deployment options given on the command line."""
    given = {name: getattr(options, name) for name in deploy_options.NAMES}
    return {name: value for name, value in given.items() if value is not None}


def run_upgrade(client: ControlClient, options: argparse.Namespace) -> int:
    request = upgrade_request(
        os.path.abspath(options.release),
        follow=not options.no_wait,
        options=deploy_changes(options),
    )
    return follow_deployment(client, request, options)


def run_hot_reload(client: ControlClient, options: argparse.Namespace) -> int:
    request = hot_reload_request(
        os.path.abspath(options.release),
        follow=not options.no_wait,
        dry_run=options.dry_run,
        suspend_timeout=options.suspend_timeout,
    )
    return follow_deployment(client, request, options)


def format_plan(plan: dict[str, Any]) -> str:
    """A hot reload's plan: each changed module and what changes in it."""
    lines = [f"plan: {plan['from']['version']} -> {plan['to']['version']}"]
    for module in plan["modules"]:
        changes = module.get("changes") or {}
        if changes.get("new_module"):
            lines.append(f"  {module['module']}: new module, loaded when first imported")
            continue
        parts = [f"{name}()" for name in changes.get("functions", [])]
        parts += [f"{name} =" for name in changes.get("constants", [])]
        parts += [f"-{name}" for name in changes.get("removed", [])]
        if changes.get("docstring"):
            parts.append("docstring")
        lines.append(f"  {module['module']}: {', '.join(parts) or 'no code change'}")
    more = plan.get("module_count", len(plan["modules"])) - len(plan["modules"])
    if more > 0:
        lines.append(f"  and {more} more modules")
    if not plan["modules"]:
        lines.append("  no module changes")
    return "\n".join(lines)


def run_rollback(client: ControlClient, options: argparse.Namespace) -> int:
    request = rollback_request(
        options.to or None, follow=not options.no_wait, options=deploy_changes(options)
    )
    return follow_deployment(client, request, options)


def run_reexec(client: ControlClient, options: argparse.Namespace) -> int:
    return follow_deployment(client, reexec_request(follow=not options.no_wait), options)


def follow_deployment(client: ControlClient, request: dict, options: argparse.Namespace) -> int:

    def progress(event: dict[str, Any]) -> None:
        if not options.json:
            stamp = time.strftime("%H:%M:%S", time.localtime(event["at"]))
            print(f"{stamp} {event['phase']:<9} {event['message']}", flush=True)

    result = client.request(request, on_event=progress, timeout=options.timeout)
    if options.json:
        print(json.dumps(result, indent=2))
    elif options.no_wait:
        print(f"deployment {result['id']} started")
    elif result.get("plan"):
        print(format_plan(result["plan"]))
    if options.no_wait or result.get("outcome") in succeeded(options.command):
        return 0
    if not options.json:
        how = "was rolled back" if result.get("outcome") == "rolled-back" else "failed"
        print(f"{options.command} {how}: {result.get('error')}", file=sys.stderr)
    return 1


def succeeded(command: str) -> tuple[str, ...]:
    """The outcomes that mean `command` did what it was asked.

    A rollback during a bake ends the upgrade `rolled-back`: what was asked for.
    """
    return ("succeeded", "rolled-back") if command == "rollback" else ("succeeded",)


def run_releases(client: ControlClient, options: argparse.Namespace) -> int:
    listed = client.request(simple_request("releases"))
    if options.json:
        print(json.dumps(listed, indent=2))
    else:
        print(format_releases(listed))
    return 0


def format_releases(listed: dict[str, Any]) -> str:
    """The arbiter's `releases` reply, one line per release in the order given.

    `*` marks the current release, `!` one whose last deployment failed. A
    current release outside the store (a directory given to `serve --release`
    or `upgrade`) gets a line of its own, as nothing else would show it.
    """
    releases = listed.get("releases") or []
    current = listed.get("current")
    lines = []
    if current and not any(release.get("current") for release in releases):
        lines.append(f"* {current}  (current, not in the store)")
    for release in releases:
        failed = release.get("failed")
        mark = "*" if release.get("current") else "!" if failed else " "
        installed_at = release.get("installed_at")
        when = clock(installed_at, "%Y-%m-%d %H:%M") if installed_at else "-"
        line = f"{mark} {release['name']} {release['version']:<12} {when}  {release['path']}"
        if failed:
            phase = failed.get("phase")
            error = (failed.get("error") or "").removeprefix(f"{phase}: ").splitlines()
            line += f"  failed at {phase}" + (f": {error[0]}" if error else "")
        lines.append(line)
    if not lines:
        lines.append("no releases in the store")
    return "\n".join(lines)


HOST_COMMANDS = [
    (
        "drain",
        "mark the host draining: /_deploy/health answers 503 for the load balancer",
        "Mark this host draining, so that /_deploy/health answers 503 and the load "
        "balancer stops sending it traffic. The workers still answer every request that "
        "comes. The mark is kept across deploys and arbiter restarts (STATE_DIR/drained) "
        "until beamdeploy undrain. See docs/multi-host.md.",
    ),
    (
        "undrain",
        "remove the drain mark: /_deploy/health answers 200 again",
        "Remove the drain mark set by beamdeploy drain: /_deploy/health answers 200 "
        "again and the load balancer sends traffic once its health checks pass.",
    ),
]


def run_mark_host(client: ControlClient, options: argparse.Namespace) -> int:
    host = client.request(simple_request(options.command))
    if options.json:
        print(json.dumps(host, indent=2))
    else:
        print(host_line(host))
    return 0


def host_line(host: dict[str, Any]) -> str:
    if host.get("draining"):
        since = clock(host["since"], "%Y-%m-%d %H:%M:%S") if host.get("since") else "-"
        return f"host: draining since {since} (health answers 503; the workers still serve)"
    return "host: serving (health answers 200)"


def run_status(client: ControlClient, options: argparse.Namespace) -> int:
    status = client.request(simple_request("status"))
    if options.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_status(status, verbose=options.verbose))
    return 0


def format_status(status: dict[str, Any], verbose: bool = False) -> str:
    """The arbiter's status for people; `verbose` adds what each worker runs.

    Keys newer than the oldest supported arbiter are read with .get() and
    shown as "-" when absent.
    """
    arbiter = status["arbiter"]
    lines = [
        f"arbiter pid {arbiter['pid']} on {', '.join(arbiter['listeners'])}",
        f"state dir {arbiter['state_dir']}",
    ]
    if status.get("host"):
        lines.append(host_line(status["host"]))

    def generation(title: str, gen: dict[str, Any]) -> None:
        release = gen["release"]
        where = release["path"] or "serving environment"
        lines.append(f"{title}: generation {gen['generation']}, {release_label(release)} ({where})")
        for worker in gen["workers"]:
            lines.append(f"  worker {worker['pid']:>7}  {worker['state']}")
            if verbose:
                digest = worker.get("artifact_sha256", release.get("artifact_sha256"))
                lines.append(f"    app file         {worker.get('app_file') or '-'}")
                lines.append(f"    artifact sha256  {digest or '-'}")

    if status["serving"]:
        generation("serving", status["serving"])
    else:
        lines.append("serving: nothing")
    deployment = status["deployment"]
    rolling = bool(deployment) and deployment.get("strategy") == "rolling"
    for gen in status["booting"]:
        generation("rolling in" if rolling else "booting", gen)
    for gen in status.get("standby", []):
        generation("standby (kept booted for the bake)", gen)
    for gen in status["draining"]:
        generation("draining", gen)
    if deployment:
        lines.append(
            f"{deployment.get('kind', 'upgrade')} in progress: {deployment['id']} "
            f"({deployment['phase']}) to {release_label(deployment.get('to'))}"
        )
        bake = deployment.get("bake")
        if bake and deployment["phase"] == "baking":
            lines.append(
                f"  baking {bake['seconds']:g}s: {bake['responses']} responses so far, "
                f"{bake['errors']} of them 5xx (rolls back above {bake['max_error_rate']:.0%})"
            )
        progress = [e for e in deployment.get("events", []) if "new_serving" in e]
        if progress:
            lines.append(
                f"  both releases answer: {progress[-1]['new_serving']} workers on the new one, "
                f"{progress[-1]['old_serving']} on the old one"
            )
    reexec = status.get("reexec")
    if reexec:
        lines.append(
            f"reexec in progress: {reexec['id']} ({reexec['phase']}), "
            f"new arbiter pid {reexec.get('pid') or '-'}"
        )
    if status["deployments"]:
        lines.append("recent deployments:")
        for past in status["deployments"][:5]:
            outcome = past["outcome"] or past["phase"]
            if past.get("dry_run"):
                outcome += " (dry run)"
            error = (past.get("error") or "").splitlines()
            lines.append(
                f"  {past['id']}  {past['kind']:<10} {release_label(past.get('to')):<15} "
                f"{outcome}" + (f": {error[0]}" if error else "")
            )
    return "\n".join(lines)


def release_label(release: dict[str, Any] | None) -> str:
    """Name and version, or the artifact's file name until it is installed (or if it failed)."""
    if not release:
        return "-"
    if "name" not in release and release.get("artifact"):
        return os.path.basename(release["artifact"])
    return f"{release.get('name', '?')} {release.get('version', '?')}"


def clock(epoch: float, fmt: str) -> str:
    return time.strftime(fmt, time.localtime(epoch))
