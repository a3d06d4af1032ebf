"""A corpus of hostile inputs (issue 13): project files, sources, store paths and commands
that a new user, another department's export or a malicious record could bring.

Every case is one row of a table: how to break a small valid project (files written into
``tmp_path`` by the case itself), the command to run, and the words its message must hold
(the key, file, column or row it names). Each case asserts:

* exit code 2 and one ``Error: ...`` message, no traceback;
* the message names what it must (every expected fragment is in it);
* no value of the records appears in the output (the records hold marker values that
  appear nowhere else);
* no store is created, or an existing store's files are byte for byte as they were.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import polars as pl
import pytest

from conftest import Linked, run_cli

# Values of the records: none may ever appear in a message.
SECRETS = ("Zebedee", "Quixote", "Ysolde", "Marchbanks", "1901-02-03", "1902-03-04", "p-secret-1")

PEOPLE = ("id,first,last,born\n"
          "p1,Zebedee,Quixote,1901-02-03\n"
          "p2,Ysolde,Marchbanks,1902-03-04\n"
          "p3,Zebedee,Marchbanks,1901-02-03\n")

VALID = """\
store: out/h.duckdb
threshold: 0.9
attributes:
  first_name: given_name
  last_name: family_name
  birth_date: date
sources:
  people:
    path: people.csv
    id: id
    columns: {first_name: first, last_name: last, birth_date: born}
"""


@dataclass
class Case:
    """One hostile input: ``setup(folder)`` breaks the valid project in ``folder`` and
    returns the command's arguments (after the command name) or None for the default."""

    id: str
    setup: Callable[[Path], list | None]
    expect: tuple[str, ...]
    command: str = "link"


def _write(folder: Path, name: str, data: str | bytes) -> Path:
    p = folder / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return p


def _project(text: str) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        _write(folder, "project.yaml", text)
    return setup


def _replace(old: str, new: str) -> Callable[[Path], None]:
    assert old in VALID, old
    return _project(VALID.replace(old, new))


def _source(name: str, data: str | bytes | Callable[[Path], None], fmt: str | None = None) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        if callable(data):
            data(folder / name)
        else:
            _write(folder, name, data)
        text = VALID.replace("path: people.csv", f"path: {name}")
        if fmt:
            text = text.replace("    id: id\n", f"    id: id\n    format: {fmt}\n")
        _write(folder, "project.yaml", text)
    return setup


def _bomb(where: str) -> str:
    """A billion-laughs alias bomb placed at ``where`` (a key of the project file)."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _bomb_project(where: str) -> Callable[[Path], None]:
    text = _bomb(where) + VALID
    if where == "threshold":
        text = text.replace("threshold: 0.9", "threshold: *a8")
    elif where == "blocking":
        text += "blocking: *a8\n"
    elif where == "kind":
        text = text.replace("birth_date: date", "birth_date: *a8")
    return _project(text)


def _parquet(frame: pl.DataFrame) -> Callable[[Path], None]:
    return lambda p: frame.write_parquet(p)


def _truncated_parquet(p: Path) -> None:
    pl.read_csv(PEOPLE.encode()).write_parquet(p)
    p.write_bytes(p.read_bytes()[:100])


def _parquet_bytes_as_csv(p: Path) -> None:
    tmp = p.with_suffix(".parquet.tmp")
    pl.read_csv(PEOPLE.encode()).write_parquet(tmp)
    p.write_bytes(tmp.read_bytes())
    tmp.unlink()


def _fifo(p: Path) -> None:
    os.mkfifo(p)


def _loop(p: Path) -> None:
    os.symlink(p.name + ".b", p.with_name(p.name + ".a"))
    os.symlink(p.name + ".a", p.with_name(p.name + ".b"))
    os.symlink(p.name + ".a", p)


def _folder(p: Path) -> None:
    p.mkdir()
    (p / "x.csv").write_text(PEOPLE)


def _deep_list(n: int) -> str:
    return VALID.replace("threshold: 0.9", "threshold: " + "[" * n + "]" * n)


def _deep_map(n: int) -> str:
    return VALID + "training:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(n))


def _dup_key_in_map() -> str:
    return VALID.replace("columns: {first_name: first, last_name: last, birth_date: born}",
                         "columns:\n      first_name: first\n      first_name: last\n      birth_date: born")


def _store_file(kind: str) -> Callable[[Path], None]:
    """A store path that holds something that is not an idweave store."""
    def setup(folder: Path) -> None:
        import duckdb

        _write(folder, "project.yaml", VALID)
        (folder / "out").mkdir(exist_ok=True)
        p = folder / "out" / "h.duckdb"
        if kind == "text":
            p.write_text("not a database: Zebedee\n")
            return
        con = duckdb.connect(str(p))
        if kind == "unrelated":
            con.execute("create table patients (name varchar)")
            con.execute("insert into patients values ('Zebedee Quixote')")
        elif kind == "records":
            con.execute("create table records (source varchar, record_id varchar, name varchar)")
            con.execute("insert into records values ('people', 'p1', 'Zebedee')")
        elif kind == "version":
            con.execute("create table meta (key varchar primary key, value varchar)")
            con.execute("insert into meta values ('schema_version', '99')")
        elif kind == "no_version":
            con.execute("create table meta (key varchar primary key, value varchar)")
            con.execute("create table runs (run_id integer)")
        con.close()
    return setup


def _under_a_file(folder: Path) -> None:
    _write(folder, "blocker", "x")
    _write(folder, "project.yaml", VALID.replace("store: out/h.duckdb", "store: blocker/h.duckdb"))


def _store_folder(folder: Path) -> None:
    (folder / "out" / "h.duckdb").mkdir(parents=True)
    _write(folder, "project.yaml", VALID)


def _args(*extra: str) -> Callable[[Path], list]:
    def setup(folder: Path) -> list:
        _write(folder, "project.yaml", VALID)
        return [*extra[:-1], folder / "project.yaml", extra[-1]] if extra and extra[-1] == "__P__" else \
            [folder / "project.yaml", *extra]
    return setup


KEYWORDS = ("select", "order", "group", "from")

CASES = [
    # ------------------------------------------------------------ the project file: syntax
    Case("yaml-syntax", _project("store: [unclosed\n"), ("malformed YAML at line",)),
    Case("yaml-tab-indent", _project("store: x\n\tattributes: y\n"), ("malformed YAML",)),
    Case("yaml-binary", lambda f: _write(f, "project.yaml", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe"),
         ("not UTF-8 text",)),
    Case("yaml-latin1", lambda f: _write(f, "project.yaml", VALID.replace("people:", "caf\xe9:").encode("latin-1")),
         ("not UTF-8 text", "line 8")),
    Case("yaml-nul", _project(VALID.replace("threshold: 0.9", "threshold: 0.9\x00")), ("NUL byte at line 2",)),
    Case("yaml-escape-char", _project(VALID.replace("people:", "peo\x1b]0;x\x07ple:")),
         ("malformed YAML", "#x001b")),
    Case("yaml-empty", _project(""), ("must hold a mapping",)),
    Case("yaml-list", _project("- store\n- attributes\n"), ("must hold a mapping",)),
    Case("yaml-scalar", _project("just words\n"), ("must hold a mapping",)),
    Case("yaml-dup-top-key", _project(VALID + "store: out/other.duckdb\n"), ("duplicate key 'store'", "line 12")),
    Case("yaml-dup-map-key", _project(_dup_key_in_map()), ("duplicate key 'first_name'", "line 12")),
    Case("yaml-dup-attribute", _project(VALID.replace("  birth_date: date\n", "  birth_date: date\n  first_name: date\n")),
         ("duplicate key 'first_name'",)),
    Case("yaml-python-tag", _project(VALID + "x: !!python/object/apply:os.system ['true']\n"), ("malformed YAML",)),
    Case("yaml-huge-file", lambda f: _write(f, "project.yaml", VALID + "# " + "x" * (5 * 1024 * 1024) + "\n"),
         ("the limit is 4,194,304",)),
    # ------------------------------------------------------------ resource bombs and depth
    Case("bomb-threshold", _bomb_project("threshold"), ("refused", "expands to more than 200,000")),
    Case("bomb-blocking", _bomb_project("blocking"), ("refused", "expands to more than 200,000")),
    Case("bomb-kind", _bomb_project("kind"), ("refused", "expands to more than 200,000")),
    Case("many-aliases", _project("a: &a x\nl: [" + ", ".join(["*a"] * 1500) + "]\n" + VALID),
         ("more than 1000 aliases",)),
    Case("deep-list-100", _project(_deep_list(100)), ("nested more than 64 levels",)),
    Case("deep-list-100000", _project(_deep_list(100_000)), ("nested more than 64 levels",)),
    Case("deep-map-200", _project(_deep_map(200)), ("nested more than 64 levels",)),
    Case("project-is-folder", lambda f: (f / "project.yaml").mkdir(), ("the project file is a folder",)),
    Case("project-is-fifo", lambda f: os.mkfifo(f / "project.yaml"), ("not a regular file",)),
    # ------------------------------------------------------------ the project file: types
    Case("model-int", _project(VALID + "model: 5\n"), ("model: must be a file path", "the int 5")),
    Case("model-list", _project(VALID + "model: [a, b]\n"), ("model: must be a file path", "a list")),
    Case("threshold-word", _replace("threshold: 0.9", "threshold: high"), ("threshold: must be", "'high'")),
    Case("threshold-negative", _replace("threshold: 0.9", "threshold: -1"), ("threshold: must be", "-1")),
    Case("threshold-two", _replace("threshold: 0.9", "threshold: 2"), ("threshold: must be",)),
    Case("threshold-list", _replace("threshold: 0.9", "threshold: [0.5]"), ("threshold: must be", "a list")),
    Case("threshold-bool", _replace("threshold: 0.9", "threshold: true"), ("threshold: must be",)),
    Case("store-int", _replace("store: out/h.duckdb", "store: 5"), ("store: required",)),
    Case("store-map", _replace("store: out/h.duckdb", "store: {a: 1}"), ("store: required",)),
    Case("attributes-list", _project(VALID.replace(
        "attributes:\n  first_name: given_name\n  last_name: family_name\n  birth_date: date\n",
        "attributes: [first_name, last_name]\n")), ("attributes: required",)),
    Case("kind-int", _replace("birth_date: date", "birth_date: 5"), ("attributes.birth_date: unknown kind 5",)),
    Case("kind-unknown", _replace("birth_date: date", "birth_date: dat"), ("attributes.birth_date: unknown kind",)),
    Case("attribute-caps", _project(VALID.replace("  first_name: given_name", "  FirstName: given_name")
                                    .replace("{first_name: first", "{FirstName: first")),
         ("attributes.FirstName: attribute names must be lower_snake_case",)),
    Case("attribute-reserved", _project(VALID.replace("  first_name: given_name", "  record_id: given_name")
                                        .replace("{first_name: first", "{record_id: first")),
         ("attributes.record_id:",)),
    *[Case(f"attribute-keyword-{w}", _project(VALID.replace("first_name", w)),
           (f"attributes.{w}: '{w}' is an SQL keyword",)) for w in KEYWORDS],
    Case("sources-list", _project(VALID.split("sources:")[0] + "sources: [people]\n"), ("sources: required",)),
    Case("source-spec-list", _project(VALID.split("sources:")[0] + "sources:\n  people: [a, b]\n"),
         ("sources.people: must be a mapping",)),
    Case("source-name-spaces", _replace("  people:", "  'my people':"), ("source names may hold",)),
    Case("source-id-missing", _replace("    id: id\n", ""), ("sources.people.id: required",)),
    Case("source-id-int", _replace("    id: id\n", "    id: 5\n"), ("sources.people.id: required",)),
    Case("source-columns-list", _replace("columns: {first_name: first, last_name: last, birth_date: born}",
                                         "columns: [first, last]"), ("sources.people.columns: required",)),
    Case("source-column-int", _replace("birth_date: born}", "birth_date: 5}"),
         ("sources.people.columns.birth_date: must name a column",)),
    Case("source-column-undeclared", _replace("birth_date: born}", "birth_date: born, ssn: x}"),
         ("sources.people.columns.ssn: not a declared attribute",)),
    Case("source-path-int", _replace("path: people.csv", "path: 5"), ("sources.people.path: required",)),
    Case("source-mode", _replace("    id: id\n", "    id: id\n    mode: sometimes\n"), ("sources.people.mode:",)),
    Case("source-exclusive", _replace("    id: id\n", "    id: id\n    exclusive: 'yes'\n"),
         ("sources.people.exclusive: must be true or false",)),
    Case("source-date-format", _replace("    id: id\n", "    id: id\n    date_format: 5\n"),
         ("sources.people.date_format:",)),
    Case("source-unknown-key", _replace("    id: id\n", "    id: id\n    encodnig: utf8\n"),
         ("sources.people.encodnig: unknown key",)),
    Case("engine-spark-section", _project(VALID + "engine: spark\nspark: [local]\n"), ("spark: must be a mapping",)),
    Case("engine-list", _project(VALID + "engine: [duckdb]\n"), ("engine: must be one of",)),
    Case("training-int", _project(VALID + "training: 5\n"), ("training: must be a mapping",)),
    Case("training-seed", _project(VALID + "training: {seed: -1}\n"), ("training.seed:",)),
    Case("clustering-method", _project(VALID + "clustering: {method: magic}\n"), ("clustering.method:",)),
    Case("clustering-min-average", _project(VALID + "clustering: {min_average: 2}\n"), ("clustering.min_average:",)),
    Case("comparisons-int", _project(VALID + "comparisons: 5\n"), ("comparisons: must be a mapping",)),
    Case("blocking-int", _project(VALID + "blocking: 5\n"), ("blocking:",)),
    Case("blocking-unknown-attribute", _project(VALID + "blocking: [[ssn]]\n"), ("blocking:",)),
    Case("unknown-top-key", _project(VALID + "treshold: 0.9\n"), ("treshold: unknown key",)),
    # ------------------------------------------------------------ sources
    Case("source-missing", _source("nowhere.csv", lambda p: None), ("sources.people.path: file not found",)),
    Case("source-folder", _source("people_dir", _folder, fmt="csv"), ("is a folder; give a file, or a glob",)),
    Case("source-fifo", _source("pipe.csv", _fifo), ("is a named pipe (FIFO)",)),
    Case("source-symlink-loop", _source("loop.csv", _loop), ("symbolic link that loops",)),
    Case("source-glob-none", _replace("path: people.csv", "path: 'parts/*.csv'"), ("no file matches",)),
    Case("source-empty", _source("empty.csv", ""), ("empty.csv is empty",)),
    Case("source-header-only", _source("header.csv", "id,first,last,born\n"), ("the source has no rows",)),
    Case("source-latin1", _source("latin.csv", (PEOPLE + "p4,Jos\xe9,Quixote,1901-02-03\n").encode("latin-1")),
         ("latin.csv", "not UTF-8 text", "line 5")),
    Case("source-dup-header", _source("dup.csv", PEOPLE.replace("id,first,last,born", "id,first,first,born")),
         ("dup.csv", "column 'first'", "names this column more than once")),
    Case("source-ragged-short", _source("short.csv", PEOPLE + "p4,Zebedee\n"),
         ("short.csv", "data row 4 (line 5)", "fewer than the header")),
    Case("source-ragged-long", _source("long.csv", PEOPLE + "p4,Zebedee,Quixote,1901-02-03,extra\n"),
         ("long.csv", "data row 4 (line 5)", "more than the header")),
    Case("source-unclosed-quote", _source("quote.csv", PEOPLE.replace("p2,Ysolde", 'p2,"Ysolde')),
         ("quote.csv", "an unclosed quote")),
    Case("source-no-header", _source("nohead.csv", PEOPLE.split("\n", 1)[1]),
         ("sources.people.id: column 'id' not in nohead.csv", "look like data, not a header")),
    Case("source-parquet-bytes-as-csv", _source("fake.csv", _parquet_bytes_as_csv),
         ("fake.csv", "look like data, not a header")),
    Case("source-control-header", _source("ctrl.csv", PEOPLE.replace("id,first,last,born",
                                                                     "id,fi\x1b[2Jrst,last,born")),
         ("sources.people.columns.first_name: column 'first' not in ctrl.csv", "fi?[2Jrst")),
    Case("source-truncated-parquet", _source("trunc.parquet", _truncated_parquet),
         ("trunc.parquet", "not a readable Parquet file")),
    Case("source-list-column", _source("lists.parquet", _parquet(pl.DataFrame(
        {"id": ["p1"], "first": [["Zebedee", "Ysolde"]], "last": ["Quixote"], "born": ["1901-02-03"]}))),
         ("sources.people.columns.first_name: column 'first' of lists.parquet holds List",)),
    Case("source-struct-column", _source("structs.parquet", _parquet(pl.DataFrame(
        {"id": ["p1"], "first": [{"given": "Zebedee"}], "last": ["Quixote"], "born": ["1901-02-03"]}))),
         ("column 'first' of structs.parquet holds Struct",)),
    Case("source-ndjson-bad-line", _source("bad.ndjson", '{"id": "p1", "first": "Zebedee", "last": "Quixote", '
                                                         '"born": "1901-02-03"}\n{"id": "p2", "first": \n'),
         ("bad.ndjson", "line 2 is not a JSON object")),
    Case("source-ndjson-not-object", _source("arr.ndjson", '{"id": "p1", "first": "Zebedee", "last": "Quixote", '
                                                           '"born": "1901-02-03"}\n["Ysolde"]\n'),
         ("arr.ndjson", "line 2")),
    Case("source-dup-ids", _source("dups.csv", PEOPLE.replace("p3,", "p2,")),
         ("dups.csv: column 'id', record 'p2': duplicate record id",)),
    Case("source-empty-ids", _source("noid.csv", PEOPLE.replace("p3,", ",")),
         ("noid.csv: column 'id'", "empty id, first at data row 3")),
    Case("source-bad-dates", _source("dates.csv", PEOPLE.replace("1901-02-03", "Zebedee's day")
                                     .replace("1902-03-04", "never")),
         ("dates.csv: column 'born'", "dates do not parse")),
    Case("source-unknown-extension", _source("people.xlsx", PEOPLE), ("cannot tell the format of people.xlsx",)),
    # ------------------------------------------------------------ store paths
    Case("store-folder", _store_folder, ("is a folder",)),
    Case("store-under-a-file", _under_a_file, ("blocker is a file, not a folder",)),
    Case("store-unrelated-duckdb", _store_file("unrelated"), ("h.duckdb: not an idweave store", "1 other table")),
    Case("store-foreign-records", _store_file("records"),
         ("h.duckdb: not an idweave store: it holds a table 'records' but no idweave marker",)),
    Case("store-text-file", _store_file("text"), ("h.duckdb: not an idweave store: the file is not a DuckDB",)),
    Case("store-other-version", _store_file("version"), ("store schema version 99 is not 1",)),
    Case("store-marker-without-version", _store_file("no_version"), ("its meta table has no schema_version",)),
    Case("export-before-link", _args("--out", "x.csv"), ("no store yet: run `idweave link` first",), command="export"),
    # ------------------------------------------------------------ arguments
    Case("link-threshold-negative", _args("--threshold", "-1"), ("--threshold: must be a match probability", "-1")),
    Case("link-threshold-two", _args("--threshold", "2"), ("--threshold: must be a match probability",)),
    Case("link-threshold-zero", _args("--threshold", "0"), ("--threshold: must be a match probability",)),
    Case("link-threshold-one", _args("--threshold", "1"), ("--threshold: must be a match probability",)),
]


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink() and "duckdb" in p.name}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_gets_one_clear_error(case: Case, tmp_path: Path) -> None:
    folder = tmp_path / "h"
    folder.mkdir()
    _write(folder, "people.csv", PEOPLE)
    args = case.setup(folder)
    args = args if isinstance(args, list) else None
    before = _digests(folder)
    had_store = (folder / "out" / "h.duckdb").exists()
    result = run_cli(case.command, *(args if args is not None else [folder / "project.yaml"]))
    assert result.code == 2, (result.code, result.err[-2000:])
    assert "Traceback" not in result.err
    assert "internal error" not in result.err
    message = result.error
    for fragment in case.expect:
        assert fragment in message, (fragment, message[:2000])
    for secret in SECRETS:
        assert secret not in result.err and secret not in result.out, (secret, message[:2000])
    assert "\x1b" not in result.err  # no raw escape sequence reaches the terminal
    assert _digests(folder) == before
    if not had_store:
        assert not (folder / "out" / "h.duckdb").is_file()


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 80
    assert len({c.id for c in CASES}) == len(CASES)


def test_the_valid_project_links(tmp_path: Path) -> None:
    # The baseline every case breaks: it must itself be fine.
    folder = tmp_path / "h"
    folder.mkdir()
    _write(folder, "people.csv", PEOPLE)
    _write(folder, "project.yaml", VALID)
    result = run_cli("link", folder / "project.yaml")
    assert result.code == 0, result.err


def test_a_bom_and_crlf_csv_is_read(tmp_path: Path) -> None:
    from idweave.linkage import load_project
    from idweave.linkage.sources import load_records

    folder = tmp_path / "h"
    folder.mkdir()
    _write(folder, "people.csv", "\ufeff" + PEOPLE.replace("\n", "\r\n"))
    _write(folder, "project.yaml", VALID)
    recs = load_records(load_project(folder / "project.yaml"))
    assert recs["record_id"].to_list() == ["p1", "p2", "p3"]


def test_sources_may_be_named_by_sql_keywords(tmp_path: Path) -> None:
    # Source names are values in the SQL idweave and Splink write, never identifiers: the four
    # words an attribute may not be called are fine as sources, through link, lookup and export.
    folder = tmp_path / "h"
    folder.mkdir()
    rows = PEOPLE.splitlines()
    text = VALID.split("sources:")[0] + "sources:\n"
    for i, word in enumerate(KEYWORDS):
        _write(folder, f"{word}.csv", "\n".join([rows[0]] + [r.replace("p", f"{word[0]}{i}-", 1) for r in rows[1:]])
               + "\n")
        text += f"  {word}:\n    path: {word}.csv\n    id: id\n" \
                "    columns: {first_name: first, last_name: last, birth_date: born}\n"
    _write(folder, "project.yaml", text)
    result = run_cli("link", folder / "project.yaml")
    assert result.code == 0, result.err
    out = run_cli("export", folder / "project.yaml", "--out", folder / "e.csv")
    assert out.code == 0, out.err
    assert sorted(set(pl.read_csv(folder / "e.csv")["source"])) == sorted(KEYWORDS)
    found = run_cli("lookup", folder / "project.yaml", "--record",
                    '{"first_name": "Zebedee", "last_name": "Quixote", "birth_date": "1901-02-03"}', "--source", "from")
    assert found.code == 0, found.err
