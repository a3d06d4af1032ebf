"""Screenshots of the review workbench for the README (docs/*.png), from the demo project.

    python docs/screenshots.py

Copies fixtures/demo to a temporary folder, links it, serves the workbench in this process
and lets Playwright (driving Debian's /usr/bin/chromium, never a downloaded browser) take
the queue, entity and model pages. Not a test: run it by hand when the pages change.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def main() -> None:
    from playwright.sync_api import sync_playwright

    from idweave.linkage import link
    from idweave.web.app import BackgroundServer

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "demo"
        shutil.copytree(ROOT / "fixtures" / "demo", folder, ignore=shutil.ignore_patterns("out"))
        project = folder / "project.yaml"
        project.write_text(re.sub(r"(?m)^store: .*$", "store: out/demo.duckdb", project.read_text()))
        link(project)
        srv = BackgroundServer(project, author="ada", truth="true_person")
        try:
            with sync_playwright() as pw:
                # A fresh profile folder (Playwright passes it as --user-data-dir).
                browser = pw.chromium.launch_persistent_context(
                    f"{tmp}/profile", executable_path="/usr/bin/chromium", headless=True, args=FLAGS,
                    viewport={"width": 1400, "height": 900})
                page = browser.new_page()
                page.goto(srv.url)
                page.screenshot(path=str(ROOT / "docs" / "workbench-queue.png"))
                # The entity of the Samuel Spencers (father and son joined by an e-mail user name).
                page.fill("#q", "census:182")
                page.wait_for_timeout(800)
                target = page.locator("#queue .count a").first.get_attribute("href")
                page.goto(srv.base + target)
                page.screenshot(path=str(ROOT / "docs" / "workbench-entity.png"), full_page=True)
                page.goto(srv.base + "/model")
                page.screenshot(path=str(ROOT / "docs" / "workbench-model.png"), full_page=True)
                browser.close()
        finally:
            srv.stop()
    print("wrote docs/workbench-queue.png, docs/workbench-entity.png, docs/workbench-model.png")


if __name__ == "__main__":
    sys.exit(main())
