"""Headless Chromium for the dashboard tests: finding it, launching it, screenshots.

The tests drive Debian's Chromium through Playwright; Playwright's own browser
download is not used (the machines have no network for it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

__all__ = [
    "CHROMIUM_ARGS",
    "find_chromium",
    "launch_chromium",
    "save_dashboard_screenshot",
]

#: Headless and quiet: the machine has no network, and without these flags
#: Chromium keeps trying to reach Google's services.
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


def find_chromium() -> str:
    """Return the path of the system's Chromium; fail under CI, skip elsewhere, when missing."""
    path = shutil.which("chromium")
    if path is None:
        message = (
            "Chromium is not installed: install it with `apt-get install chromium` "
            "(make test does this)"
        )
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


@asynccontextmanager
async def launch_chromium() -> AsyncIterator[Browser]:
    """Launch headless Chromium for the length of the block."""
    executable = find_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def save_dashboard_screenshot(page: Page, path: Path) -> Path:
    """Save a full-page PNG of the dashboard once it is connected and showing numbers."""
    await page.locator("body[data-connection='open']").wait_for()
    await page.get_by_test_id("daily-percent").filter(has_text="%").wait_for()
    await page.evaluate("document.fonts.ready.then(() => undefined)")
    path.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=path, full_page=True, animations="disabled")
    return path
