"""Readable `beamdeploy serve --help`.

gunicorn builds each option's help from the first line of the setting's
reStructuredText description and its class default, so the terminal shows
Sphinx roles, sentences cut at a line break and ``[sync]`` for the worker
class beamdeploy replaces.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any

import gunicorn

from beamdeploy_asgi.settings import SECTION
from beamdeploy_asgi.version import __version__

ROLE = re.compile(r":[\w:-]+:`([^`<]*?)\s*(?:<[^`>]*>)?`")
LITERAL = re.compile(r"``(.+?)``")
EMPHASIS = re.compile(r"\*{1,2}([^*\s][^*]*?)\*{1,2}")
INTERPRETED = re.compile(r"`([^`]+)`")

DESCRIPTION = (
    "Run the beamdeploy arbiter: it keeps the listening socket and serves APP_MODULE "
    "(module:attribute) or --release as generations of uvicorn workers. It takes every "
    "gunicorn option and config file; beamdeploy's own options are listed last."
)


def plain(text: str) -> str:
    """reStructuredText inline markup as plain text, on one line."""
    text = ROLE.sub(r"\1", text)
    text = LITERAL.sub(r"\1", text)
    text = EMPHASIS.sub(r"\1", text)
    text = INTERPRETED.sub(r"\1", text)
    return " ".join(text.split())


def option_help(setting: Any, flag: bool) -> str:
    """A setting's description and its current default.

    Only the first paragraph of gunicorn's own descriptions: the rest is
    written for its documentation (examples, code blocks, version notes).
    """
    desc = setting.desc if setting.section == SECTION else setting.desc.split("\n\n")[0]
    text = plain(desc)
    value = setting.get()
    if not flag and value not in (None, "", [], {}):
        if isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value))
        text += f" (default: {value})"
    return text.replace("%", "%%")


def readable(parser: argparse.ArgumentParser, cfg: Any) -> argparse.ArgumentParser:
    """Rewrite the help of every option `parser` got from `cfg`'s settings."""
    parser.description = DESCRIPTION
    for action in parser._actions:
        if isinstance(action, argparse._VersionAction):
            action.version = f"%(prog)s {__version__} (gunicorn {gunicorn.__version__})"
        setting = cfg.settings.get(action.dest)
        if setting is not None and action.help != argparse.SUPPRESS:
            action.help = option_help(setting, flag=action.nargs == 0)
    return parser


def readable_parser(cfg: Any) -> Callable[[], argparse.ArgumentParser]:
    """A drop-in for `cfg.parser` whose parsers have readable help."""
    make_parser = cfg.parser
    return lambda: readable(make_parser(), cfg)
