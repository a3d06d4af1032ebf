"""The review workbench end to end in a real browser: Playwright for Python driving Debian's
Chromium (/usr/bin/chromium; browsers are never downloaded), headless, off the network.

One server per module, in this process on a free loopback port, over a linked copy of
fixtures/demo (one record's stored first name is a script tag). Each test signs in as a
steward in a fresh browser profile, decides from the pages, and checks the store after.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Iterator

import duckdb
import pytest

from conftest import copy_fixture, run_cli

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium "
                                 "(the README's test command installs it: apt-get install -y chromium)")]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
XSS_NAME = "<script>window.pwned=1</script>"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("browser") / "demo"
    project = copy_fixture("demo", folder)
    res = run_cli("link", project)
    assert res.code == 0, res.err
    with duckdb.connect(str(folder / "out" / "demo.duckdb")) as con:
        con.execute("update records set first_name = ? where source = 'census' and record_id = '7'", [XSS_NAME])
    return project


@pytest.fixture(scope="module")
def server(demo: Path) -> Iterator:
    from idweave.web.app import BackgroundServer

    srv = BackgroundServer(demo)  # no --author: stewards sign in
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def playwright() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        yield pw


@pytest.fixture
def browser(playwright, tmp_path: Path) -> Iterator:
    """Opens fresh browser profiles (one per steward) and closes them after the test."""
    opened = []

    def open_profile(name: str):
        ctx = playwright.chromium.launch_persistent_context(
            str(tmp_path / f"profile-{name}"), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": 1300, "height": 900},
            # The pages' CSP would stop an injected script anyway; bypass it so that the
            # escaping test checks escaping alone (and Playwright may evaluate its waits).
            bypass_csp=True)
        ctx.set_default_timeout(15000)
        opened.append(ctx)
        return ctx

    yield open_profile
    for ctx in opened:
        ctx.close()


def steward(browser, server, name: str):
    """A page signed in as ``name`` on the queue."""
    ctx = browser(name)
    page = ctx.pages[0] if ctx.pages else ctx.new_page()  # the profile's own tab: the one with focus
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url)
    assert page.locator("h1").inner_text() == "Sign in"
    page.fill("input[name=name]", name)
    page.click("form button")
    page.wait_for_selector("table.queue")
    # htmx and keys.js must have wired the page before a test changes a filter or presses a key:
    # on a loaded machine the first event could otherwise come before their listeners.
    page.wait_for_load_state("load")
    page.wait_for_function("window.htmx !== undefined && document.readyState === 'complete'")
    page.js_errors = errors  # type: ignore[attr-defined]
    return page


def store(demo: Path) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(demo.parent / "out" / "demo.duckdb"), read_only=True)


def entity_of(demo: Path, rec: str) -> str:
    s, r = rec.split(":", 1)
    with store(demo) as con:
        return con.execute("select entity_id from records where source = ? and record_id = ?", [s, r]).fetchone()[0]


def members(demo: Path, eid: str) -> set[str]:
    with store(demo) as con:
        return {f"{s}:{r}" for s, r in con.execute("select source, record_id from records where entity_id = ?",
                                                   [eid]).fetchall()}


def last_decision(demo: Path) -> dict:
    with store(demo) as con:
        cols = ["decision_id", "author", "action", "reason", "payload", "undone_by"]
        row = con.execute(f"select {', '.join(cols)} from decisions order by decision_id desc limit 1").fetchone()
    return dict(zip(cols, row)) if row else {}


def pairs(demo: Path, n: int, avoid: set[str]) -> list[tuple[str, str]]:
    """``n`` near-miss pairs of the queue with no entity in common (nor in ``avoid``)."""
    from idweave.linkage import review

    out, used = [], set(avoid)
    for it in review.queue(demo):
        if it.other_entity_id and not {it.entity_id, it.other_entity_id} & used:
            out.append((it.entity_id, it.other_entity_id))
            used |= {it.entity_id, it.other_entity_id}
        if len(out) == n:
            break
    assert len(out) == n
    return out


def submit(page, form: str) -> int:
    """Submit a decision form; the status of the page that comes back."""
    with page.expect_navigation() as nav:
        page.click(f"#{form} button")
    return nav.value.status


# ------------------------------------------------------------------ security
def test_without_the_token_the_browser_gets_403(browser, server) -> None:
    ctx = browser("stranger")
    page = ctx.pages[0] if ctx.pages else ctx.new_page()
    resp = page.goto(server.base + "/")
    assert resp.status == 403 and "no access token" in page.inner_text("body")
    resp = page.goto(server.url.replace("?token=", "?token=x"))
    assert resp.status == 403


def test_a_script_in_a_record_value_renders_as_text(browser, server, demo) -> None:
    page = steward(browser, server, "ada")
    eid = entity_of(demo, "census:7")
    page.goto(f"{server.base}/entity/{eid}")
    assert XSS_NAME in page.inner_text("#records")
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.js_errors == []


# ------------------------------------------------------------------ decisions
def test_confirm_from_the_queue_with_the_keys(browser, server, demo) -> None:
    page = steward(browser, server, "ada")
    page.select_option("select[name=reason]", "conflicting_id")
    page.wait_for_function("document.querySelector('#queue .count').innerText.startsWith('2 of')")
    rows = page.locator("table.queue tr.item")
    first = rows.nth(0).get_attribute("data-href")
    second = rows.nth(1).get_attribute("data-href")
    page.keyboard.press("j")
    assert "selected" in rows.nth(1).get_attribute("class")
    page.keyboard.press("k")
    assert "selected" in rows.nth(0).get_attribute("class")
    page.keyboard.press("j")
    with page.expect_navigation():
        page.keyboard.press("c")
    assert page.url.endswith(second + "#confirm") and first != second
    page.wait_for_function("document.activeElement && document.activeElement.name === 'reason'")
    page.keyboard.type("one person, two ssn typos")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "(confirm) recorded" in page.inner_text("#result")
    d = last_decision(demo)
    assert (d["action"], d["author"], d["reason"]) == ("confirm", "ada", "one person, two ssn typos")
    assert second.split("/")[-1] in d["payload"]
    assert page.js_errors == []


def test_split_with_checkboxes_the_suggestion_is_not_ticked(browser, server, demo) -> None:
    page = steward(browser, server, "ada")
    page.fill("#q", "census:182")
    page.wait_for_selector("#queue .count a")
    page.click("#queue .count a")
    page.wait_for_selector("#records")
    eid = page.locator("h1 .eid").inner_text()
    before = members(demo, eid)
    boxes = page.locator("input[name=records]")
    assert boxes.count() == len(before) and all(not boxes.nth(i).is_checked() for i in range(boxes.count()))
    if page.locator("#split-form .sugg").count():
        assert page.locator("#split-form .sugg").inner_text().startswith("Suggestion:")
    leave = {"benefits:BEN-0000156", "census:182"}  # the son (born 1977) of the demo's truth
    for rec in leave:
        page.check(f"input[name=records][value='{rec}']")
    page.fill("#split-form input[name=reason]", "father and son: born 1947 and 1977")
    assert submit(page, "split-form") == 200
    assert "created" in page.inner_text("ul.changes")
    new = entity_of(demo, "census:182")
    assert new != eid and members(demo, new) == leave and members(demo, eid) == before - leave
    assert last_decision(demo)["action"] == "split"


def test_merge_with_a_search_for_the_other_entity(browser, server, demo) -> None:
    (a, b), = pairs(demo, 1, avoid=set())
    both = members(demo, a) | members(demo, b)
    page = steward(browser, server, "bea")
    page.goto(f"{server.base}/entity/{a}")
    page.fill("#merge-search", b)
    page.wait_for_selector(f"#merge-found input[value='{b}']")
    page.check(f"#merge-found input[value='{b}']")
    page.fill("#merge-form input[name=reason]", "same person, moved house")
    assert submit(page, "merge-form") == 200
    assert "merged into" in page.inner_text("ul.changes")
    survivor = entity_of(demo, sorted(both)[0])
    assert members(demo, survivor) == both
    d = last_decision(demo)
    assert (d["action"], d["author"]) == ("merge", "bea")


def test_keep_apart_a_pair_item_then_undo_it(browser, server, demo) -> None:
    (a, b), = pairs(demo, 1, avoid=set())
    ra, rb = members(demo, a), members(demo, b)
    page = steward(browser, server, "ada")
    page.goto(f"{server.base}/entity/{a}?other={b}")
    assert page.locator("#apart-form select[name=other]").input_value() == b
    page.fill("#apart-form input[name=reason]", "two people, born apart")
    assert submit(page, "apart-form") == 200
    d = last_decision(demo)
    # The records of the two stay apart. (They may change entity: a record that was left alone
    # because it fitted two people equally joins the one it was not kept apart from.)
    assert d["action"] == "keep_apart"
    assert not {entity_of(demo, r) for r in ra} & {entity_of(demo, r) for r in rb}
    # Undo it from the entity page (the u key puts the cursor in the newest undo form).
    page.goto(f"{server.base}/entity/{a}")
    page.keyboard.press("u")
    page.wait_for_function("document.activeElement && document.activeElement.closest('form.undo')")
    page.keyboard.type("kept apart by mistake")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "(undo) recorded" in page.inner_text("#result")
    with store(demo) as con:
        undone_by = con.execute("select undone_by from decisions where decision_id = ?", [d["decision_id"]]).fetchone()[0]
    assert undone_by == last_decision(demo)["decision_id"]


def test_undo_a_merge_puts_the_records_back(browser, server, demo) -> None:
    (a, b), = pairs(demo, 1, avoid=set())
    ra, rb = members(demo, a), members(demo, b)
    page = steward(browser, server, "ada")
    page.goto(f"{server.base}/entity/{a}?other={b}")
    page.fill("#merge-form input[name=reason]", "same person?")
    assert submit(page, "merge-form") == 200
    merged = last_decision(demo)["decision_id"]
    page.goto(f"{server.base}/decisions")
    form = page.locator(f"form.undo:has(input[name=decision_id][value='{merged}'])")
    form.locator("input[name=reason]").fill("not the same person after all")
    with page.expect_navigation():
        form.locator("button").click()
    assert "restored" in page.inner_text("ul.changes")
    assert members(demo, a) == ra and members(demo, b) == rb


# ------------------------------------------------------------------ concurrency
def test_two_stewards_on_one_entity_the_second_gets_a_conflict(browser, server, demo) -> None:
    (a, _b), = pairs(demo, 1, avoid=set())
    ada, bob = steward(browser, server, "ada"), steward(browser, server, "bob")
    for page in (ada, bob):
        page.goto(f"{server.base}/entity/{a}")
    with store(demo) as con:
        n = con.execute("select count(*) from decisions").fetchone()[0]
    ada.fill("#confirm input[name=reason]", "ada checked it")
    bob.fill("#confirm input[name=reason]", "bob checked it")
    assert submit(ada, "confirm") == 200
    assert submit(bob, "confirm") == 409
    assert "Conflict" in bob.inner_text("h1") and "changed since the page was loaded" in bob.inner_text("#conflict")
    with store(demo) as con:
        rows = con.execute("select author, reason from decisions order by decision_id").fetchall()
    assert len(rows) == n + 1 and rows[-1] == ("ada", "ada checked it")
    with bob.expect_navigation():
        bob.click("#reload")
    assert "ada checked it" in bob.inner_text("#decisions")  # the reloaded page shows ada's decision


def test_pin_a_golden_value_from_the_entity_page(browser, server, demo) -> None:
    from idweave.linkage.golden import golden

    with store(demo) as con:
        eid, value = con.execute(
            "select entity_id, min(first_name) from records where first_name is not null group by entity_id "
            "having count(distinct first_name) >= 2 order by entity_id limit 1").fetchone()
    page = steward(browser, server, "ada")
    page.goto(f"{server.base}/entity/{eid}")
    page.select_option("#pin-first_name select[name=value]", value)
    page.fill("#pin-first_name input[name=reason]", "the spelling on the birth certificate")
    assert submit(page, "pin-first_name") == 200
    d = last_decision(demo)
    assert d["action"] == "pin" and d["author"] == "ada" and d["reason"] == "the spelling on the birth certificate"
    row = golden(demo, entity_id=eid).row(0, named=True)
    assert (row["first_name"], row["first_name_source"], row["first_name_record_id"]) == \
        (value, "pinned", f"#{d['decision_id']}")
    page.goto(f"{server.base}/entity/{eid}")
    assert f"pinned by decision #{d['decision_id']}" in page.inner_text("#golden")
    assert f"decision #{d['decision_id']}" in page.inner_text("#history")
