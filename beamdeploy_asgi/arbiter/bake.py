"""The bake window's verdict: does the new generation answer badly enough to go back?

Pure arithmetic over the response counts the new generation's workers
report, so the threshold is tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
MIN_RESPONSES = 20  # below this many answers, a share of errors says little


@dataclass
class BakeWatch:
    """What the new generation answered since its promotion, against the limits."""

    seconds: float
    max_error_rate: float
    baseline: dict[str, int]  # its counts at promotion (smoke checks use another port)
    crashes: int  # its crash count at promotion
    counts: dict[str, int] = field(default_factory=dict)

    def update(self, totals: dict[str, int]) -> None:
        self.counts = {c: max(totals.get(c, 0) - self.baseline.get(c, 0), 0) for c in CLASSES}

    @property
    def responses(self) -> int:
        return sum(self.counts.values())

    @property
    def errors(self) -> int:
        return self.counts.get("5xx", 0)

    def verdict(self, crashes: int) -> str | None:
        """Why to roll back now, or None."""
        if crashes > self.crashes:
            died = crashes - self.crashes
            return f"{died} worker{'s' if died > 1 else ''} of the new generation crashed"
        total, errors = self.responses, self.errors
        if total >= MIN_RESPONSES and errors > self.max_error_rate * total:
            return (
                f"{errors} of {total} responses were 5xx ({errors / total:.0%}), above "
                f"the {self.max_error_rate:.0%} the bake allows"
            )
        return None

    def describe(self) -> dict[str, object]:
        return {
            "seconds": self.seconds,
            "max_error_rate": self.max_error_rate,
            "responses": self.responses,
            "errors": self.errors,
            "counts": dict(self.counts),
        }
