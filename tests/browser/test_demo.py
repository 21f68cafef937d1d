"""The demo as a person sees it: `./start.sh`, its page in a real Chromium, each card clicked.

Headless Chromium from Debian's packages (installed with apt-get when
missing: if that fails, so does this test, saying why), driven by Playwright.
A screenshot per step goes to the test's directory; with
BEAMDEPLOY_UPDATE_SCREENSHOTS=1 they are copied to docs/img/demo-*.png too.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.demo_process import REPO, DemoProcess
from tests.support.apt import debian_program

try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None  # type: ignore[assignment]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEPLOY_TIMEOUT_MS = 120_000  # a build, then a deployment
UPDATE_SCREENSHOTS = "BEAMDEPLOY_UPDATE_SCREENSHOTS"


def chromium() -> Path:
    """Debian's chromium; installed with apt-get when it is missing, or the test fails."""
    return debian_program(CHROMIUM, "chromium")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[DemoProcess]:
    process = DemoProcess(tmp_path)
    try:
        yield process
    finally:
        process.stop()
        print(f"--- {process.log_path} (last 80 lines) ---")
        print("\n".join(process.log().splitlines()[-80:]))


class Screens:
    """A screenshot per step, into the test's directory (and docs/img/ when asked)."""

    def __init__(self, page: Page, directory: Path) -> None:
        self.page = page
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.taken: list[Path] = []

    def take(self, name: str) -> None:
        path = self.directory / f"demo-{len(self.taken) + 1}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)

    def publish(self) -> None:
        if os.environ.get(UPDATE_SCREENSHOTS) != "1":
            return
        target = REPO / "docs" / "img"
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob("demo-*.png"):
            old.unlink()
        for path in self.taken:
            shutil.copy(path, target / path.name)


class DemoPage:
    """What a person reads on the page and clicks there."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.runs = 0

    def text(self, testid: str) -> str:
        return self.page.get_by_test_id(testid).inner_text().strip()

    def serving_pids(self) -> list[int]:
        row = self.page.get_by_test_id("generation-serving")
        return sorted(int(pid) for pid in row.get_by_test_id("worker-pid").all_inner_texts())

    def click(self, testid: str, outcome: str) -> str:
        """Click a card's button and wait for the deployment it starts to end as `outcome`."""
        self.runs += 1
        self.page.get_by_test_id(testid).click()
        result = self.page.get_by_test_id("deploy-outcome")
        expect(result).to_have_attribute("data-run", str(self.runs))
        expect(result).to_have_attribute(
            "data-outcome", re.compile("succeeded|failed"), timeout=DEPLOY_TIMEOUT_MS
        )
        ended = result.get_attribute("data-outcome")
        assert ended == outcome, (
            f"{testid}: {ended}, not {outcome}: {result.inner_text()}\n{self.text('deploy-log')}"
        )
        return result.inner_text()

    def expect_serving(self, label: str, version: str, generation: str) -> None:
        """The header, which the page's background requests keep up to date."""
        timeout = 30_000  # until the old generation's keep-alive connections are gone
        expect(self.page.get_by_test_id("serving-label")).to_have_text(label, timeout=timeout)
        expect(self.page.get_by_test_id("serving-version")).to_have_text(version, timeout=timeout)
        expect(self.page.get_by_test_id("serving-generation")).to_have_text(
            generation, timeout=timeout
        )
        serving = self.page.get_by_test_id("generation-serving")
        expect(serving).to_have_attribute("data-generation", generation, timeout=timeout)
        expect(self.page.get_by_test_id("generation-draining")).to_have_count(0, timeout=timeout)


@pytest.mark.timeout(900)  # up to 2 x 600 s of apt-get when Chromium is missing
def test_the_demo_page_ships_hot_reloads_refuses_and_rolls_back(
    demo: DemoProcess, tmp_path: Path
) -> None:
    if sync_playwright is None:
        pytest.fail("playwright is not installed: pip install -e '.[test]'")
    executable = chromium()
    url = demo.start()
    assert url == f"{demo.base}/#token={demo.token}"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(executable), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 960})
            screens = Screens(page, tmp_path / "screenshots")
            try:
                run(DemoPage(page), url, screens)
            except BaseException:
                page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
                raise
            screens.publish()
            without_the_token_in_the_address(browser.new_page(), demo, tmp_path)
        finally:
            browser.close()


def run(demo: DemoPage, url: str, screens: Screens) -> None:
    page = demo.page
    page.goto(url)
    demo.expect_serving("blue", "1.0.0", "1")
    expect(page.get_by_test_id("greeting")).to_have_text("Hello")
    expect(page.get_by_test_id("token-form")).to_be_hidden()
    assert "token" not in page.url, "the page leaves the token in the address bar"
    expect(page.get_by_test_id("generation-serving").get_by_test_id("worker-pid")).to_have_count(2)
    expect(page.get_by_test_id("draining")).to_have_text("No generation draining.")
    screens.take("start")

    # Ship a new release: built, then upgraded blue-green, phase by phase.
    said = demo.click("ship-green", "succeeded")
    assert "demo 1.1.0 (green) serves" in said
    log = demo.text("deploy-log")
    for step in ("built ", "POST /_deploy/upgrade", "installing", "preflight", "promoted", "done"):
        assert step in log, f"{step!r} not in the deployment's log:\n{log}"
    demo.expect_serving("green", "1.1.0", "2")
    screens.take("ship")

    # Hot-reload a new greeting: same processes, requests held for a moment.
    pids = demo.serving_pids()
    said = demo.click("hot-reload", "succeeded")
    assert "demo 1.2.0 (green) serves (hot-reloaded into the same workers)" in said, said
    expect(page.get_by_test_id("greeting")).to_have_text("Bonjour")
    demo.expect_serving("green", "1.2.0", "2")
    assert demo.serving_pids() == pids
    result = page.get_by_test_id("deploy-detail")
    expect(result).to_have_attribute("data-same-pids", "true")
    expect(result.get_by_test_id("hot-pids-before")).to_have_text(
        "Worker pids before: " + ", ".join(map(str, pids))
    )
    expect(result.get_by_test_id("hot-pids-after")).to_contain_text(", ".join(map(str, pids)))
    held = result.get_by_test_id("hot-held").inner_text()
    assert re.search(r"held for \d+\.\d ms", held), held
    expect(result.get_by_test_id("hot-changes")).to_have_text(
        "Patched in place: demo.variant: GREETING."
    )
    assert "committing" in demo.text("deploy-log")
    screens.take("hot-reload")

    # Ship a broken release: refused at preflight with its cause; green keeps serving.
    said = demo.click("ship-broken", "failed")
    assert "Refused: preflight: could not import demo.app:app" in said, said
    assert "HTMLRespons" in said, said
    assert "demo 1.2.0 (green) keeps serving" in said, said
    expect(page.get_by_test_id("refusal-where")).to_have_text(
        "In the new release's demo/variant.py, line 11."
    )
    demo.expect_serving("green", "1.2.0", "2")
    assert demo.serving_pids() == pids
    screens.take("broken")

    # Roll back: ship purple, then back to the release before it.
    demo.click("ship-purple", "succeeded")
    demo.expect_serving("purple", "1.4.0", "4")
    said = demo.click("rollback", "succeeded")
    assert "demo 1.2.0 (green) serves" in said, said
    demo.expect_serving("green", "1.2.0", "5")
    expect(page.get_by_test_id("greeting")).to_have_text("Bonjour")
    screens.take("rollback")

    # Through all of it, the page's own background requests: none failed.
    assert demo.text("requests-failed") == "0", demo.text("last-failure")
    assert int(demo.text("requests-ok")) > 100


def without_the_token_in_the_address(page: Page, demo: DemoProcess, tmp_path: Path) -> None:
    """Opened at plain http://127.0.0.1:PORT/, the page asks for the token; refuses a wrong one."""
    page.goto(demo.base + "/")
    form = page.get_by_test_id("token-form")
    expect(form).to_be_visible()
    expect(page.get_by_test_id("ship-green")).to_be_disabled()
    expect(page.get_by_test_id("serving-label")).to_have_text("green")  # the app itself answers
    page.get_by_test_id("token-input").fill("not-the-token-at-all")
    page.get_by_test_id("token-input").press("Enter")
    expect(form).to_contain_text("refused the token")
    page.screenshot(path=str(tmp_path / "token-form.png"))
    page.get_by_test_id("token-input").fill(demo.token)
    page.get_by_test_id("token-input").press("Enter")
    expect(form).to_be_hidden()
    expect(page.get_by_test_id("ship-green")).to_be_enabled()
    expect(page.get_by_test_id("generation-serving")).to_have_attribute("data-generation", "5")
