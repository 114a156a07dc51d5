"""Regenerate docs/img/demo-*.png: `hoopgw inspect` on a session of the demo's walkthrough.

Starts the demo stack (scripts/demo.py) in a temporary directory and runs, on one
connection as the demo agent, the walkthrough's three statements: one the policy
refuses, one held until the approver approves it (through `hoopgw approvals`), one
whose answer is masked. Then opens that session with `hoopgw inspect` and
photographs mitmweb in Debian's Chromium, headless, driven by playwright
(scripts/ensure_browser.sh installs it; playwright's own browser download is never
used). Run from the repository: `.venv/bin/python -m scripts.screenshots`.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import tomllib
from pathlib import Path

from scripts import demo
from tests import stack

IMAGES = demo.REPO_ROOT / "docs" / "img"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
VIEWPORT = {"width": 1600, "height": 1000}
MAX_BYTES = 200_000


def hoopgw(*args: str) -> str:
    command = [str(stack.BIN / "hoopgw"), *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def record_session(running: demo.DemoStack) -> str:
    """The walkthrough on one connection; returns the recorded session's id."""
    import snowflake.connector
    from snowflake.connector.errors import ProgrammingError

    gateway = ["--gateway", running.gateway.url, "--token-file", str(running.files.approver_token)]
    # the connector reads SNOWFLAKE_HOME once, at import (the demo's seeding imported it)
    entry = tomllib.loads(running.files.connections.read_text())[demo.CONNECTION]
    connection = snowflake.connector.connect(**entry)
    try:
        cursor = connection.cursor()
        try:
            cursor.execute(demo.REFUSED)
            raise SystemExit(f"the policy let {demo.REFUSED!r} through")
        except ProgrammingError:
            pass
        held = threading.Thread(target=cursor.execute, args=(demo.HELD,))
        held.start()

        def pending() -> str | None:
            listed = json.loads(hoopgw("approvals", "list", *gateway, "--format", "json"))
            return next((a["id"] for a in listed if a["state"] == "pending"), None)

        approval = stack.wait_until(pending, 60, "the held UPDATE")
        hoopgw("approvals", "approve", str(approval), *gateway, "--reason", "tier change is fine")
        held.join(60)
        cursor.execute(demo.MASKED).fetchall()
    finally:
        connection.close()

    def stored() -> str | None:
        listed = json.loads(
            hoopgw("sessions", "list", "--store", running.store, "--format", "json")
        )
        return next((s["session_id"] for s in listed if s["statements"] == 3), None)

    return str(stack.wait_until(stored, 60, "the recorded session"))


def open_viewer(session_id: str, store: str, workdir: Path) -> tuple[stack.Proc, str]:
    argv = [str(stack.BIN / "hoopgw"), "inspect", session_id, "--store", store]
    argv += ["--port", str(stack.free_port())]
    proc = stack.Proc("hoopgw-inspect", argv, workdir / "inspect.log", cwd=workdir).start()
    found: list[str] = []

    def url_printed() -> bool:
        found[:] = re.findall(
            r"^mitmweb: (http://127\.0\.0\.1:\d+/\?token=[0-9a-f]+)$", proc.log(), re.M
        )
        return bool(found)

    proc.wait_ready(url_printed, timeout=30)
    return proc, found[0]


def widen_detail(page) -> None:
    """Drag mitmweb's splitter left so the result tables fit beside a narrower flow list."""
    box = page.locator(".splitter").first.bounding_box()
    if box is None:
        return
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(520, y, steps=5)
    page.mouse.up()


def photograph(url: str, images: Path) -> list[Path]:
    from playwright.sync_api import expect, sync_playwright

    taken: list[Path] = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(15_000)

        def shot(name: str) -> None:
            path = images / f"demo-{name}.png"
            page.screenshot(path=str(path))
            taken.append(path)

        def select(comment: str, tab: str) -> None:
            page.locator(
                ".flow-table tbody tr.has-request",
                has=page.locator("td.col-comment", has_text=comment),
            ).click()
            page.locator(".flow-detail nav a", has_text=tab).click()
            expect(page.locator(".flow-detail .contentview pre")).to_be_visible()

        try:
            page.goto(url)
            expect(page.locator(".flow-table td.col-comment", has_text=demo.MASKED)).to_be_visible()
            shot("flow-list")
            select(demo.REFUSED, "Response")
            widen_detail(page)
            expect(page.locator(".flow-detail .contentview pre")).to_contain_text("399003")
            shot("refused")
            select(demo.HELD, "Response")
            shot("held")
            select("query result", "Response")  # the held statement's answer, once approved
            shot("approved")
            select(demo.MASKED, "Response")
            expect(page.locator(".flow-detail .contentview pre")).to_contain_text("[MASKED:email]")
            shot("masked")
        finally:
            browser.close()
    return taken


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=IMAGES, help="where the PNGs go")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        print(f"screenshots: {CHROMIUM} is missing: run scripts/ensure_browser.sh", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="hoopgw-screenshots-") as workdir:
        home = Path(workdir)
        with demo.running(home / "demo") as running:
            session_id = record_session(running)
        viewer, url = open_viewer(session_id, running.store, home)
        try:
            taken = photograph(url, args.images)
        finally:
            viewer.stop()
    for path in taken:
        size = path.stat().st_size
        note = "" if size <= MAX_BYTES else f" (over {MAX_BYTES:,} bytes)"
        print(f"{path}: {size:,} bytes{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
