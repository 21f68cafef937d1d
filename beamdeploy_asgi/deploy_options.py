"""How one upgrade deploys: the strategy and the bake window, checked in one place.

The server's settings give the defaults; an upgrade (CLI, HTTP, Python API)
may override them. Every way in ends here, and the arbiter checks them again,
since what reaches its control socket may come from a worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

STRATEGIES = ("blue-green", "rolling")
MAX_SURGE = 64
MAX_BAKE = 24 * 3600.0
NAMES = ("strategy", "max_surge", "bake", "bake_max_error_rate")


class BadOption(ValueError):
    """An option's value is wrong; the message names the option and what it must be."""


@dataclass(frozen=True)
class DeployOptions:
    strategy: str = "blue-green"
    max_surge: int = 1
    bake: float = 0.0  # seconds the old generation stays warm after promotion
    bake_max_error_rate: float = 0.05  # share of 5xx answers that rolls back

    def check(self) -> None:
        """Refuse combinations that cannot work, whatever their source."""
        if self.strategy == "rolling" and self.bake:
            raise BadOption(
                "'bake' keeps the old generation booted beside the new one, and a rolling "
                "upgrade has none left: bake with the blue-green strategy"
            )

    def overridden(self, changes: Mapping[str, Any]) -> DeployOptions:
        """These options with `changes` (checked) applied; None keeps a default."""
        options = replace(self, **{k: v for k, v in checked(changes).items() if v is not None})
        options.check()
        return options

    def describe(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "max_surge": self.max_surge,
            "bake": self.bake,
            "bake_max_error_rate": self.bake_max_error_rate,
        }


def checked(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Each known option's value checked; an unknown name is refused."""
    unknown = sorted(set(changes) - set(NAMES))
    if unknown:
        raise BadOption(f"unknown option {unknown[0]!r}; the options are {', '.join(NAMES)}")
    result: dict[str, Any] = {}
    for name, value in changes.items():
        result[name] = None if value is None else CHECKS[name](value)
    return result


def strategy(value: Any) -> str:
    if value not in STRATEGIES:
        raise BadOption(f"'strategy' must be one of {', '.join(STRATEGIES)}, not {value!r}")
    return str(value)


def max_surge(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SURGE:
        raise BadOption(f"'max_surge' must be a whole number from 1 to {MAX_SURGE}, not {value!r}")
    return value


def bake(value: Any) -> float:
    if not _number(value) or not 0 <= value <= MAX_BAKE:
        raise BadOption(f"'bake' must be seconds, from 0 to {MAX_BAKE:g}, not {value!r}")
    return float(value)


def bake_max_error_rate(value: Any) -> float:
    if not _number(value) or not 0 <= value < 1:
        raise BadOption(
            f"'bake_max_error_rate' must be a share from 0 up to (not including) 1, "
            f"like 0.05, not {value!r}"
        )
    return float(value)


def _number(value: Any) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # NaN
    )


CHECKS = {
    "strategy": strategy,
    "max_surge": max_surge,
    "bake": bake,
    "bake_max_error_rate": bake_max_error_rate,
}


def from_text(values: Mapping[str, str]) -> dict[str, Any]:
    """Options given as text (query parameters, command-line flags), typed and checked."""
    typed: dict[str, Any] = {}
    for name, text in values.items():
        if name == "max_surge":
            typed[name] = _parse(text, int, name)
        elif name in ("bake", "bake_max_error_rate"):
            typed[name] = _parse(text, float, name)
        else:
            typed[name] = text
    return checked(typed)


def _parse(text: str, kind: type, name: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise BadOption(f"{name!r} must be a number, not {text!r}") from None
