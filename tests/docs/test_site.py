"""The documentation site: `mkdocs build --strict` over mkdocs.yml and docs/.

Strict makes every warning fatal: a broken link or anchor, a page left out of
the nav, a missing image.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
NAV = [
    "Home",
    "Getting started",
    "Runtime",
    "Configuration",
    "Running under systemd",
    "Releases",
    "Deploy strategies",
    "Several hosts",
    "Hot reload",
    "Admin API",
    "Metrics",
    "CLI",
    "Python API",
    "Security",
    "Comparison",
]


def nav() -> list[tuple[str, str]]:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    return [next(iter(entry.items())) for entry in config["nav"]]


def test_the_site_builds_strict_with_every_page(tmp_path: Path):
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert [title for title, _ in nav()] == NAV
    for title, page in nav():
        assert (REPO / "docs" / page).is_file(), page
        html = site / ("index.html" if page == "index.md" else f"{page[:-3]}/index.html")
        assert html.is_file(), f"{page} was not rendered"
        text = html.read_text()
        assert "<h1" in text, page
        if page != "index.md":
            assert f"<title>{title} - beamdeploy-asgi</title>" in text, page
    # The getting-started convention: a code block's title names its file or terminal.
    started = (site / "getting-started" / "index.html").read_text()
    assert '<span class="filename">pyproject.toml</span>' in started
    assert '<span class="filename">Terminal 1</span>' in started


def measured_section() -> str:
    readme = (REPO / "README.md").read_text()
    return readme.split("## Measured", 1)[1].split("\n## ", 1)[0]


def test_the_comparison_copies_the_measured_figures():
    """Every figure on docs/comparison.md is one of the README's measured ones."""
    comparison = (REPO / "docs" / "comparison.md").read_text()
    measured = measured_section()
    tables = re.findall(r"(?:^\|.*\|\n)+", measured, re.M)
    assert len(tables) == 2
    for table in tables:
        assert table in comparison
    for script in ("benchmarks/swap.py", "benchmarks/hot_reload.py", "benchmarks/install.py"):
        assert f".venv/bin/python {script}" in comparison
        assert (REPO / script).is_file()
    # A figure: a number with a decimal point or a unit (not a version such as 0.54.0).
    number = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)((?: ?(?:ms|req/s|MB|wheels|s|x))?)(?!\.?\w)")
    figures = {n + unit for n, unit in number.findall(comparison) if "." in n or unit}
    assert {"0.89 s", "0.86 s", "3.28 s", "0.97 s", "4.92 s", "1160 req/s", "1.19x"} <= figures
    prose = " ".join(measured.split())
    for found in figures:
        assert found in prose, f"{found!r} is on comparison.md but not measured in README.md"
