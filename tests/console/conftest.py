"""Browser fixtures for the console tests: Debian's Chromium driven by Playwright."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def log_in(browser: Browser, base_url: str, user: str, start: str) -> tuple[Page, list[str]]:
    """Open ``start`` (a console path), get sent to the login page, log in as ``user``
    (password ``{user}-password``) and land back on ``start``. Returns the page and the list
    that collects every browser console error and page exception from then on."""
    page = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
    errors: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            errors.append(f"{page.url}: {msg.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"{page.url}: {exc}"))
    page.goto(f"{base_url}{start}")
    expect(page).to_have_url(re.compile(r"/console/login"))
    page.get_by_label("User").fill(user)
    page.get_by_label("Password").fill(f"{user}-password")
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(re.escape(start) + "$"))
    return page, errors
