"""The review workbench over HTTP (no browser): the access token, CSRF, escaping, the
two-steward conflict, a run holding the store, sign-in, `idweave serve` itself, packaging.

The app runs in-process (Starlette's test client) on a linked copy of fixtures/tiny whose
first census record has the id ``<script>alert(1)</script>``; one record's stored first name
is set to a script tag as well (cleaning would strip it from a source file).
"""

from __future__ import annotations

import doctest
import importlib
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import warnings
from pathlib import Path

import duckdb
import pytest

from conftest import FIXTURES, ROOT, copy_fixture, run_cli

warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
from starlette.testclient import TestClient  # noqa: E402

from idweave.linkage import review, views  # noqa: E402
from idweave.web import make_app  # noqa: E402

XSS_ID = "<script>alert(1)</script>"
XSS_NAME = "<script>window.pwned=1</script>"
TOKEN = "test-token-123"


@pytest.fixture(scope="module")
def linked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("web") / "tiny"
    project = copy_fixture("tiny", folder)
    census = folder / "census.csv"
    lines = census.read_text().splitlines()
    assert lines[1].startswith("1,")
    lines[1] = f'"{XSS_ID}"' + lines[1][1:]
    census.write_text("\n".join(lines) + "\n")
    res = run_cli("link", project)
    assert res.code == 0, res.err
    store = folder / "out" / "tiny.duckdb"
    con = duckdb.connect(str(store))
    con.execute("update records set first_name = ? where source = 'census' and record_id = ?", [XSS_NAME, XSS_ID])
    con.close()
    return project


@pytest.fixture
def project(linked: Path, tmp_path: Path) -> Path:
    """A private copy of the linked folder (tests that decide write to it)."""
    shutil.copytree(linked.parent, tmp_path / "tiny")
    return tmp_path / "tiny" / "project.yaml"


def client(project: Path, *, author: str | None = "ada", token: str = TOKEN) -> TestClient:
    c = TestClient(make_app(project, token=token, author=author), base_url="http://127.0.0.1:8765")
    r = c.get(f"/?token={token}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    return c


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def version_of(html: str, form: str) -> str:
    part = html[html.index(f'id="{form}"'):]
    return re.search(r'name="version" value="([^"]+)"', part).group(1)


def multi_record_entity(project: Path) -> str:
    """The largest entity (ties: the highest id)."""
    with duckdb.connect(str(project.parent / "out" / "tiny.duckdb"), read_only=True) as con:
        return con.execute("select entity_id from records group by entity_id "
                           "order by count(*) desc, entity_id desc limit 1").fetchone()[0]


def entity_of(project: Path, source: str, record_id: str) -> str:
    with duckdb.connect(str(project.parent / "out" / "tiny.duckdb"), read_only=True) as con:
        return con.execute("select entity_id from records where source = ? and record_id = ?",
                           [source, record_id]).fetchone()[0]


# ------------------------------------------------------------------ access token
def test_every_request_without_the_token_gets_403(project: Path) -> None:
    c = TestClient(make_app(project, token=TOKEN, author="ada"), base_url="http://127.0.0.1:8765")
    for path in ("/", "/model", "/decisions", "/static/htmx.min.js", "/entity/x", "/?token=wrong"):
        r = c.get(path, follow_redirects=False)
        assert r.status_code == 403, path
        assert "no access token" in r.text
    r = c.post("/decide/confirm", data={"entity": "x"}, follow_redirects=False)
    assert r.status_code == 403


def test_the_token_becomes_an_httponly_cookie_and_leaves_the_address(project: Path) -> None:
    c = TestClient(make_app(project, token=TOKEN, author="ada"), base_url="http://127.0.0.1:8765")
    r = c.get(f"/model?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/model"
    cookies = r.headers.get_list("set-cookie")
    token_cookie = next(h for h in cookies if h.startswith("idweave_token_8765="))
    assert "HttpOnly" in token_cookie and "samesite=strict" in token_cookie.lower()
    r = c.get("/model")
    assert r.status_code == 200 and "Match weight of every comparison level" in r.text
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "script-src 'self'" in r.headers["content-security-policy"]


def test_static_assets_ship_in_the_package(project: Path) -> None:
    c = client(project)
    js = c.get("/static/htmx.min.js")
    assert js.status_code == 200 and "Zero-Clause BSD" in js.text and "htmx" in js.text
    assert c.get("/static/keys.js").status_code == 200
    assert c.get("/static/style.css").status_code == 200
    page = c.get("/").text
    # No asset comes from anywhere but this server.
    assert re.findall(r'(?:src|href)="(https?:)?//', page) == []


# ------------------------------------------------------------------ CSRF
def test_a_decision_without_the_csrf_token_is_refused(project: Path) -> None:
    c = client(project)
    eid = multi_record_entity(project)
    page = c.get(f"/entity/{eid}").text
    version = version_of(page, "confirm")
    for token in ("", "forged"):
        r = c.post("/decide/confirm", data={"csrf": token, "entity": eid, "version": version, "reason": "x"})
        assert r.status_code == 403 and "CSRF" in r.text
    # A token of another session does not do either.
    other = client(project)
    r = other.post("/decide/confirm", data={"csrf": csrf_of(page), "entity": eid, "version": version})
    assert r.status_code == 403
    assert review.decisions(project).height == 0


# ------------------------------------------------------------------ escaping
def test_record_values_and_ids_render_as_text(project: Path) -> None:
    c = client(project)
    eid = entity_of(project, "census", XSS_ID)
    r = c.get(f"/entity/{eid}")
    assert r.status_code == 200
    html = re.sub(r"</?mark>", "", r.text)  # differing characters are marked piece by piece
    assert XSS_ID not in html and XSS_NAME not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in html
    # The search box echoes what was typed, escaped.
    r = c.get("/", params={"q": XSS_NAME})
    assert XSS_NAME not in r.text and "&lt;script&gt;window.pwned=1&lt;/script&gt;" in r.text
    r = c.get("/search", params={"q": "census:" + XSS_ID})
    assert XSS_ID not in r.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text


# ------------------------------------------------------------------ decisions
def test_a_confirm_records_its_author_and_shows_what_changed(project: Path) -> None:
    c = client(project, author="ada")
    eid = multi_record_entity(project)
    page = c.get(f"/entity/{eid}").text
    r = c.post("/decide/confirm", data={"csrf": csrf_of(page), "entity": eid, "version": version_of(page, "confirm"),
                                        "reason": "checked by hand"})
    assert r.status_code == 200 and "Decision #1 (confirm) recorded" in r.text
    d = review.decisions(project).row(0, named=True)
    assert (d["action"], d["author"], d["reason"], d["subject"]) == ("confirm", "ada", "checked by hand", eid)


def test_a_split_takes_the_ticked_records_and_needs_a_reason(project: Path) -> None:
    c = client(project)
    eid = multi_record_entity(project)
    page = c.get(f"/entity/{eid}").text
    boxes = re.findall(r'name="records" value="([^"]+)"', page)
    assert len(boxes) >= 2 and "checked" not in page[page.index('name="records"'):].split(">")[0]
    data = {"csrf": csrf_of(page), "entity": eid, "version": version_of(page, "split-form"), "records": [boxes[0]]}
    r = c.post("/decide/split", data=data)
    assert r.status_code == 400 and "Give a reason" in r.text
    assert review.decisions(project).height == 0
    r = c.post("/decide/split", data={**data, "reason": "another person"})
    assert r.status_code == 200 and "created" in r.text and boxes[0] in r.text
    s, rid = boxes[0].split(":", 1)
    assert entity_of(project, s, rid) != eid


# ------------------------------------------------------------------ concurrency
def test_two_stewards_deciding_on_one_entity_the_second_gets_a_conflict(project: Path) -> None:
    app = make_app(project, token=TOKEN)  # no --author: each steward signs in
    stewards = []
    for name in ("ada", "bob"):
        c = TestClient(app, base_url="http://127.0.0.1:8765")
        r = c.get(f"/?token={TOKEN}")
        assert "Sign in" in r.text
        r = c.post("/signin", data={"csrf": csrf_of(r.text), "name": name, "next": "/"})
        assert r.status_code == 200 and f"deciding as <b>{name}</b>" in r.text
        stewards.append(c)
    eid = multi_record_entity(project)
    pages = [c.get(f"/entity/{eid}").text for c in stewards]
    assert version_of(pages[0], "confirm") == version_of(pages[1], "confirm")
    results: dict[str, int] = {}

    def decide(c: TestClient, page: str, name: str) -> None:
        r = c.post("/decide/confirm", data={"csrf": csrf_of(page), "entity": eid,
                                            "version": version_of(page, "confirm"), "reason": f"by {name}"})
        results[name] = r.status_code
        if r.status_code == 409:
            assert "changed since the page was loaded" in r.text and "reload" in r.text

    threads = [threading.Thread(target=decide, args=(c, p, n)) for c, p, n in zip(stewards, pages, ("ada", "bob"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == [200, 409]
    d = review.decisions(project)
    assert d.height == 1  # applied once, and nothing lost
    winner = next(n for n, code in results.items() if code == 200)
    assert d["author"][0] == winner
    # Reloading shows the other steward's decision, and carries the new version.
    loser = stewards[0] if winner == "bob" else stewards[1]
    page = loser.get(f"/entity/{eid}").text
    assert f"<td>{winner}</td>" in page and f"by {winner}" in page
    assert version_of(page, "confirm") != version_of(pages[0], "confirm")


def test_a_split_after_a_merge_of_the_same_entity_conflicts(project: Path) -> None:
    c = client(project)
    eid = multi_record_entity(project)
    stale = c.get(f"/entity/{eid}").text
    other = next(e for e in views.find_entities(project, "E", limit=50) if e["entity_id"] != eid)["entity_id"]
    page = c.get(f"/entity/{eid}?other={other}").text
    r = c.post("/decide/merge", data={"csrf": csrf_of(page), "entity": eid, "other": other,
                                      "version": version_of(page, "merge-form"), "reason": "same person"})
    assert r.status_code == 200 and "merged" in r.text
    boxes = re.findall(r'name="records" value="([^"]+)"', stale)
    r = c.post("/decide/split", data={"csrf": csrf_of(stale), "entity": eid, "records": [boxes[0]],
                                      "version": version_of(stale, "split-form"), "reason": "stale page"})
    assert r.status_code == 409
    assert review.decisions(project)["action"].to_list() == ["merge"]


def test_a_run_holding_the_store_gives_a_retry_page(project: Path) -> None:
    c = client(project)
    store = project.parent / "out" / "tiny.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time\n"
                               f"con = duckdb.connect({str(store)!r})\nprint('held', flush=True)\ntime.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = c.get("/")
        assert r.status_code == 503 and "A run is writing to the store" in r.text
        assert r.headers["retry-after"] == "3" and 'http-equiv="refresh"' in r.text
    finally:
        holder.kill()
        holder.wait()
    assert c.get("/").status_code == 200


# ------------------------------------------------------------------ sign-in and errors
def test_without_author_pages_ask_for_a_name_first(project: Path) -> None:
    c = client(project, author=None)
    r = c.get("/model", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/signin")
    page = c.get("/signin").text
    r = c.post("/signin", data={"csrf": csrf_of(page), "name": " ", "next": "/"})
    assert r.status_code == 400 and "Give your name" in r.text


def test_an_unknown_entity_is_a_404_page(project: Path) -> None:
    c = client(project)
    r = c.get("/entity/ENOSUCH")
    assert r.status_code == 404 and "no entity ENOSUCH" in r.text


def test_queue_filters_and_search(project: Path) -> None:
    c = client(project)
    items = review.queue(project)
    assert items, "the tiny fixture has a review queue"
    r = c.get("/")
    assert f"{len(items)} of {len(items)} item(s)" in r.text and "<svg class=\"spark\"" in r.text
    it = items[0]
    r = c.get("/", params={"reason": it.reason})
    n = sum(1 for i in items if it.reason in i.reasons)
    assert f"{n} of {len(items)} item(s)" in r.text
    r = c.get("/", params={"q": it.entity_id})
    assert it.entity_id in r.text and "item(s)" in r.text
    r = c.get("/", params={"min_size": 999})
    assert f"0 of {len(items)} item(s)" in r.text


# ------------------------------------------------------------------ the command
def test_serve_prints_its_url_and_serves(linked: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "from idweave.cli.app import main; main()", "serve",
                             str(linked), "--port", "0", "--author", "ada"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().rstrip("\n")
        m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/\?token=([A-Za-z0-9_-]{20,})", line)
        assert m, line
        import httpx
        with httpx.Client() as h:
            assert h.get(f"http://127.0.0.1:{m.group(1)}/").status_code == 403
            r = h.get(line, follow_redirects=True)
            assert r.status_code == 200 and "Review queue" in r.text
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_serve_refuses_a_remote_host_without_allow_remote(linked: Path) -> None:
    res = run_cli("serve", linked, "--host", "0.0.0.0", "--port", "0")
    assert res.code == 2
    assert "--allow-remote" in res.error


def test_serve_needs_a_linked_store(tiny: Path) -> None:
    res = run_cli("serve", tiny, "--port", "0")
    assert res.code == 2 and "no store yet: run `idweave link` first" in res.error


def test_serve_names_a_bad_project_file(tmp_path: Path) -> None:
    res = run_cli("serve", tmp_path / "missing.yaml", "--port", "0")
    assert res.code == 2 and "missing.yaml" in res.error


# ------------------------------------------------------------------ packaging and docstrings
def test_the_web_package_and_its_files_are_packaged() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "idweave.web" in setuptools["packages"] and setuptools["package-dir"]["idweave.web"] == "web"
    import fnmatch
    patterns = setuptools["package-data"]["idweave.web"]
    files = [p.relative_to(ROOT / "web").as_posix() for p in (ROOT / "web").rglob("*")
             if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert {"templates/entity.html", "static/htmx.min.js", "static/keys.js"} <= set(files)
    assert [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)] == []


@pytest.mark.parametrize("name", ["idweave.web", "idweave.web.app", "idweave.web.svg"])
def test_web_docstring_examples(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(FIXTURES, tmp_path / "fixtures", ignore=shutil.ignore_patterns("out", "__pycache__"))
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    if name == "idweave.web.app":
        from idweave.linkage import link
        link("fixtures/tiny/project.yaml")
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for test in doctest.DocTestFinder(exclude_empty=True).find(module, name):
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0, "".join(report)
