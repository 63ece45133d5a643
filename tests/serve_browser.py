"""Drive `vlmtune serve`'s page in headless Chromium (Debian's, through Playwright): pick a checkpoint, upload an
image, ask, read the answer the page shows, save a screenshot.

Used by tests/test_infer.py, and by hand for the documentation's screenshot:
    python tests/serve_browser.py http://127.0.0.1:7860 <image> "<question>" docs/img/serve.png [checkpoint name]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

# This machine's network is closed: without these flags Chromium keeps trying to reach Google's services.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def ask_in_browser(url: str, image: Path, question: str, screenshot: Path, checkpoint: str | None = None,
                   timeout_ms: int = 120_000) -> str:
    """The answer the page shows to `question` about `image` (after switching to `checkpoint`, when given)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 820})
            page.set_default_timeout(timeout_ms)
            page.goto(url)
            status = page.locator("#status")
            if checkpoint is not None:
                page.locator("#checkpoint input").click()
                page.get_by_role("option", name=checkpoint, exact=True).click()
                status.get_by_text(f"loaded {checkpoint}").wait_for()
            page.locator("#image input[type=file]").set_input_files(str(image))
            page.locator("#image img").first.wait_for()  # uploaded and shown
            page.locator("#question textarea").fill(question)
            page.locator("#send").click()
            status.get_by_text("answered by").wait_for()
            answer = page.locator("#chat .bot").last.inner_text().strip()
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            return answer
        finally:
            browser.close()


if __name__ == "__main__":
    url, image, question, out = sys.argv[1:5]
    print(ask_in_browser(url, Path(image), question, Path(out), sys.argv[5] if len(sys.argv) > 5 else None))
