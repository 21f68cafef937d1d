"""The `beamdeploy` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from beamdeploy_asgi.control import ControlClient, socket_path
from beamdeploy_asgi.errors import ControlError

USAGE = """\
beamdeploy serve [GUNICORN OPTIONS] [--release DIR_OR_ARTIFACT] [APP_MODULE]
beamdeploy upgrade RELEASE [--state-dir DIR] [--json] [--no-wait]
beamdeploy rollback [--to VERSION] [--state-dir DIR] [--json] [--no-wait]
beamdeploy status [--state-dir DIR] [--json]
beamdeploy releases [--state-dir DIR] [--json]
beamdeploy build [PROJECT_DIR] [-o OUTDIR] [--app MODULE:ATTR] [--name N] [--version V]
"""


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
    client = ControlClient(socket_path(state_dir(options.state_dir)))
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
    parser = argparse.ArgumentParser(prog="beamdeploy", usage=USAGE)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument(
            "--state-dir",
            help="the arbiter's state directory (default $BEAMDEPLOY_STATE_DIR or .beamdeploy)",
        )
        sub.add_argument("--json", action="store_true", help="print JSON for scripts")
        return sub

    commands.add_parser("serve", help="run the arbiter (takes gunicorn's options)")
    upgrade = command("upgrade", "swap the service to a release, blue-green")
    upgrade.add_argument("release", metavar="RELEASE", help="a release directory or artifact")
    rollback = command("rollback", "swap back to the previous release, blue-green")
    rollback.add_argument("--to", metavar="VERSION", help="any kept release instead")
    for deploying in (upgrade, rollback):
        deploying.add_argument(
            "--no-wait", action="store_true", help="return once the deployment has started"
        )
        deploying.add_argument("--timeout", type=float, default=None, help="stop waiting after")
    upgrade.set_defaults(run=run_upgrade)
    rollback.set_defaults(run=run_rollback)
    status = command("status", "show generations, workers and deployments")
    status.set_defaults(run=run_status)
    releases = command("releases", "list the releases kept in the store")
    releases.set_defaults(run=run_releases)
    build = commands.add_parser("build", help="build a release artifact from a project")
    build.add_argument("project", nargs="?", default=".", metavar="PROJECT_DIR")
    build.add_argument("-o", "--outdir", default="dist", help="where to write it (dist)")
    build.add_argument("--app", help="module:attribute (default [tool.beamdeploy] app)")
    build.add_argument("--name", help="release name (default [project] name)")
    build.add_argument("--version", help="release version (default [project] version)")
    return parser


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


def state_dir(given: str | None) -> str:
    chosen = given or os.environ.get("BEAMDEPLOY_STATE_DIR") or ".beamdeploy"
    return os.path.abspath(chosen)


def run_upgrade(client: ControlClient, options: argparse.Namespace) -> int:
    request = {
        "op": "upgrade",
        "release": os.path.abspath(options.release),
        "follow": not options.no_wait,
    }
    return follow_deployment(client, request, options)


def run_rollback(client: ControlClient, options: argparse.Namespace) -> int:
    request = {"op": "rollback", "follow": not options.no_wait}
    if options.to:
        request["to"] = options.to
    return follow_deployment(client, request, options)


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
    if options.no_wait or result.get("outcome") == "succeeded":
        return 0
    if not options.json:
        print(f"{request['op']} failed: {result.get('error')}", file=sys.stderr)
    return 1


def run_releases(client: ControlClient, options: argparse.Namespace) -> int:
    listed = client.request({"op": "releases"})
    if options.json:
        print(json.dumps(listed, indent=2))
        return 0
    if not listed["releases"]:
        print("no releases in the store")
    for release in listed["releases"]:
        mark = "*" if release["current"] else " "
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(release["installed_at"]))
        print(f"{mark} {release['name']} {release['version']:<12} {when}  {release['path']}")
    return 0


def run_status(client: ControlClient, options: argparse.Namespace) -> int:
    status = client.request({"op": "status"})
    if options.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_status(status))
    return 0


def format_status(status: dict[str, Any]) -> str:
    arbiter = status["arbiter"]
    lines = [
        f"arbiter pid {arbiter['pid']} on {', '.join(arbiter['listeners'])}",
        f"state dir {arbiter['state_dir']}",
    ]

    def generation(title: str, gen: dict[str, Any]) -> None:
        release = gen["release"]
        where = release["path"] or "serving environment"
        lines.append(
            f"{title}: generation {gen['generation']}, {release['name']} "
            f"{release['version']} ({where})"
        )
        for worker in gen["workers"]:
            lines.append(f"  worker {worker['pid']:>7}  {worker['state']}")

    if status["serving"]:
        generation("serving", status["serving"])
    else:
        lines.append("serving: nothing")
    for gen in status["booting"]:
        generation("booting", gen)
    for gen in status["draining"]:
        generation("draining", gen)
    deployment = status["deployment"]
    if deployment:
        lines.append(f"upgrade in progress: {deployment['id']} ({deployment['phase']})")
    if status["deployments"]:
        lines.append("recent deployments:")
        for past in status["deployments"][:5]:
            target = past["to"]
            outcome = past["outcome"] or past["phase"]
            lines.append(
                f"  {past['id']}  {past['kind']:<8} {target['name']} {target['version']:<10} "
                f"{outcome}" + (f": {past['error'].splitlines()[0]}" if past["error"] else "")
            )
    return "\n".join(lines)
