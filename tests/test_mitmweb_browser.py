"""`hoopgw inspect` in a real browser: Debian's Chromium, driven by playwright, reads mitmweb.

A session recorded through the gateway is opened with `hoopgw inspect` (mitmweb
on a free loopback port, the offline viewer, no gateway hooks). The browser
finds the flow list with the session's statements, opens a query flow, and
reads the SQL and the result table as the Snowflake view renders them.
Screenshots are saved in the test's temporary directory.

Needs /usr/bin/chromium (scripts/ensure_browser.sh installs it) and the
`playwright` package; playwright's own browser download is never used.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from playwright.sync_api import expect, sync_playwright

from hoopgw.cli.main import main
from hoopgw.recorder.catalog import Archive
from hoopgw.recorder.index import ArchiveIndex
from hoopgw.recorder.store import open_store
from tests import inspection_workload as workload
from tests import stack

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000

RECORDED = pytest.StashKey["Session"]()


@dataclass(frozen=True)
class Session:
    store: str
    session_id: str
    flows: int


@dataclass(frozen=True)
class Viewer:
    url: str
    proc: stack.Proc


@pytest.fixture
def session(
    request, gateway_factory, fakesnow_server, connect, agent_token, unique_name
) -> Session:
    def build() -> Session:
        gateway = gateway_factory(
            fakesnow_server.url, {"hoopgw_body_limit": 32 * 1024 * 1024}, name="browser-gateway"
        )
        database = unique_name("web")
        connection = connect(gateway, agent_token, database=database, schema="app")
        workload.run(connection, database)
        connection.close()
        gateway.stop()
        store = f"file:{gateway.workdir / 'store'}"
        archive = Archive(open_store(store))
        summaries = stack.wait_until(
            ArchiveIndex(archive, store_url="").list_sessions, 30, "the recorded session"
        )
        session_id = summaries[0].session_id
        records = archive.read_session(session_id)
        flows = sum(1 for r in records if r["kind"] in ("request", "refusal") and "method" in r)
        return Session(store, session_id, flows)

    return workload.once(request, RECORDED, build)


@pytest.fixture
def viewer(session: Session, tmp_path: Path) -> Iterator[Viewer]:
    """`hoopgw inspect` as an analyst runs it, on a free loopback port."""
    yield from start_viewer([session.session_id, "--store", session.store], tmp_path)


def start_viewer(arguments: list[str], tmp_path: Path) -> Iterator[Viewer]:
    argv = [str(stack.BIN / "hoopgw"), "inspect", *arguments, "--port", str(stack.free_port())]
    proc = stack.Proc("hoopgw-inspect", argv, tmp_path / "inspect.log", cwd=tmp_path).start()
    found: list[str] = []

    def url_printed() -> bool:
        found[:] = re.findall(
            r"^mitmweb: (http://127\.0\.0\.1:\d+/\?token=[0-9a-f]+)$", proc.log(), re.MULTILINE
        )
        return bool(found)

    proc.wait_ready(url_printed, timeout=30)
    yield Viewer(found[0], proc)
    assert proc.stop() is not None
    assert "Traceback" not in proc.log()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run scripts/ensure_browser.sh (as root)", pytrace=False
        )
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        try:
            yield page
        finally:
            browser.close()


def flow_row(page, comment: str):
    return page.locator(
        ".flow-table tbody tr.has-request",
        has=page.locator("td.col-comment", has_text=comment),
    )


def content_text(page) -> str:
    return page.locator(".flow-detail .contentview pre").inner_text()


def test_analyst_reads_a_recorded_session_in_mitmweb(session, viewer, page, tmp_path):
    page.goto(viewer.url)

    rows = page.locator(".flow-table tbody tr.has-request")
    expect(rows).to_have_count(session.flows)
    # under load mitmweb may draw the rows before their comment cells
    comment_cells = page.locator(".flow-table td.col-comment")
    expect(comment_cells).to_have_count(session.flows)
    comments = comment_cells.all_inner_texts()
    assert comments[0] == "login: agent-1"
    for sql in (workload.SELECT_ADA, workload.LARGE):
        assert sql in comments
    assert f"❌ {workload.FAILING}" in comments
    page.screenshot(path=str(tmp_path / "mitmweb-flow-list.png"))

    flow_row(page, workload.SELECT_ADA).click()
    view = page.locator(".flow-detail .contentview")
    expect(view.locator(".controls h5")).to_contain_text("Snowflake")
    expect(view.locator("pre")).to_contain_text("SQL (formatted)")
    request_text = content_text(page)
    assert "customer = ?" in request_text
    assert "| 1 | TEXT | ada   |" in request_text
    page.screenshot(path=str(tmp_path / "mitmweb-query-request.png"))

    page.locator(".flow-detail nav a", has_text="Response").click()
    expect(view.locator("pre")).to_contain_text("Snowflake query response: success")
    response_text = content_text(page)
    assert "Result: 2 rows" in response_text
    assert "| ID           | CUSTOMER          | AMOUNT       |" in response_text
    assert "|            1 | ada               |        10.50 |" in response_text
    assert f"hoopgw session   {session.session_id}" in response_text
    page.screenshot(path=str(tmp_path / "mitmweb-query-result.png"))

    flow_row(page, workload.FAILING).click()
    expect(view.locator("pre")).to_contain_text("Snowflake query response: FAILED")
    assert "SQL state        42S02" in content_text(page)
    page.screenshot(path=str(tmp_path / "mitmweb-query-error.png"))

    flow_row(page, workload.LARGE).click()
    expect(view.locator("pre")).to_contain_text("Result: first 100 of 100,000 rows")
    assert "|           99 | row 99            |" in content_text(page)
    page.screenshot(path=str(tmp_path / "mitmweb-large-result.png"))

    for name in (
        "mitmweb-flow-list",
        "mitmweb-query-request",
        "mitmweb-query-result",
        "mitmweb-large-result",
    ):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000


def test_replaying_from_the_viewer_never_leaves_it(session, viewer, page):
    """The recorded request points at the upstream: Replay only says why it does nothing,
    and the recorded response stays on screen."""
    page.goto(viewer.url)
    flow_row(page, workload.SELECT_ADA).click()
    page.locator(".flow-detail nav a", has_text="Response").click()
    view = page.locator(".flow-detail .contentview")
    expect(view.locator("pre")).to_contain_text("Snowflake query response: success")

    page.get_by_role("button", name="Replay").click()  # in the Flow menu of the selected flow
    stack.wait_until(
        lambda: "refused to replay recorded flow" in viewer.proc.log(), 15, "the refusal"
    )
    expect(flow_row(page, workload.SELECT_ADA).locator("td.col-status")).to_have_text("200")
    expect(view.locator("pre")).to_contain_text("Snowflake query response: success")
    assert "hoopgw inspect shows recorded flows" not in content_text(page)
    assert "Result: 2 rows" in content_text(page)


def test_the_viewer_has_no_proxy_listener_and_refuses_to_open_one(session, viewer, page):
    """Only the web UI listens; the Options tab cannot turn the proxy server on."""
    assert viewer.proc.process is not None
    listening = _listening_ports(viewer.proc.process.pid)
    assert listening == [_port(viewer.url)], listening
    page.goto(viewer.url)
    expect(page.locator(".flow-table tbody tr.has-request")).to_have_count(session.flows)
    # what the Options tab sends, from the page, with mitmweb's XSRF cookie
    status, text = page.evaluate(
        """async () => {
            const xsrf = document.cookie.match(/_xsrf=([^;]+)/)[1];
            const answer = await fetch("/options", {
                method: "PUT",
                credentials: "same-origin",
                headers: {"Content-Type": "application/json", "X-XSRFToken": xsrf},
                body: JSON.stringify({server: true}),
            });
            return [answer.status, await answer.text()];
        }"""
    )
    assert status == 400, text
    assert "server cannot be changed" in text
    assert _listening_ports(viewer.proc.process.pid) == listening


def _process_tree(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            pending += [int(child) for child in task.read_text().split()]
    return found


def _listening_ports(pid: int) -> list[int]:
    """TCP ports the process and its children listen on, from /proc (no extra tools)."""
    inodes = set()
    for member in _process_tree(pid):
        for link in Path(f"/proc/{member}/fd").iterdir():
            try:
                target = link.readlink().as_posix()
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return sorted(ports)


def test_an_exported_flow_file_opens_the_same_way(session, page, tmp_path):
    """`hoopgw inspect FILE.flows`, from a directory that is not the repository."""
    flows_file = tmp_path / "incident-42.flows"
    exported = CliRunner().invoke(
        main, ["export", session.session_id[:8], "-o", str(flows_file), "--store", session.store]
    )
    assert exported.exit_code == 0, exported.output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for viewer in start_viewer([str(flows_file)], elsewhere):
        assert viewer.proc.process is not None
        assert _listening_ports(viewer.proc.process.pid) == [_port(viewer.url)]
        page.goto(viewer.url)
        expect(page.locator(".flow-table tbody tr.has-request")).to_have_count(session.flows)
        expect(page.locator(".flow-table td.col-comment").first).to_have_text("login: agent-1")
        assert str(flows_file) in viewer.proc.log()


def _port(url: str) -> int:
    return int(url.split(":")[2].split("/")[0])
