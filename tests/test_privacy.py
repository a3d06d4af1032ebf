"""Data protection: minimal exports, a private store file, no values in logs or errors, and
pseudonymised identifiers (HMAC-SHA256 with a key from the environment)."""

from __future__ import annotations

import json
import re
import shutil
import stat
from pathlib import Path

import duckdb
import polars as pl
import pytest

from conftest import FIXTURES, Linked, copy_fixture, run_cli
from idweave.linkage import link
from idweave.linkage._db import query_pl
from idweave.linkage.errors import IdweaveError

KEY = "correct horse battery staple 7f3a"


# ------------------------------------------------------------------------------ minimal handling
def test_export_writes_ids_only_by_default_and_says_so(linked_tiny: Linked, tmp_path: Path) -> None:
    out = tmp_path / "e.csv"
    res = run_cli("export", linked_tiny.project, "--out", out)
    assert res.code == 0, res.err
    assert pl.read_csv(out).columns == ["source", "record_id", "entity_id"]
    assert "attributes written: none (ids only)" in res.err


def test_export_names_the_attributes_it_writes(linked_tiny: Linked, tmp_path: Path) -> None:
    out = tmp_path / "all.parquet"
    res = run_cli("export", linked_tiny.project, "--out", out, "--with-attributes")
    cols = pl.read_parquet(out).columns
    assert res.code == 0 and cols[:3] == ["source", "record_id", "entity_id"] and len(cols) > 3
    assert f"attributes written: {', '.join(cols[3:])}" in res.err
    some = tmp_path / "some.csv"
    res = run_cli("export", linked_tiny.project, "--out", some, "--columns", "birth_date,last_name")
    assert res.code == 0, res.err
    assert pl.read_csv(some).columns == ["source", "record_id", "entity_id", "birth_date", "last_name"]
    assert "attributes written: birth_date, last_name" in res.err
    bad = run_cli("export", linked_tiny.project, "--out", tmp_path / "x.csv", "--columns", "birth_date,shoe_size")
    assert bad.code == 2 and "--columns: shoe_size is not a declared attribute" in bad.error
    assert not (tmp_path / "x.csv").exists()


def test_a_new_store_is_readable_by_its_owner_only(tiny: Path) -> None:
    link(tiny)
    mode = stat.S_IMODE((tiny.parent / "out" / "tiny.duckdb").stat().st_mode)
    assert mode == 0o600


def _values(frame: pl.DataFrame, columns: list[str]) -> set[str]:
    """Distinct values at least 5 characters long (shorter ones, like a sex code, occur by
    chance in any text)."""
    out = set()
    for c in columns:
        out |= {str(v) for v in frame[c].drop_nulls().to_list() if len(str(v)) >= 5}
    return out


def test_logs_and_errors_hold_no_attribute_value(tmp_path: Path) -> None:
    project = copy_fixture("tiny", tmp_path / "tiny")
    texts = []
    for args in (("link", project), ("link", project, "--json"), ("link", project, "--full"),
                 ("export", project, "--out", tmp_path / "e.csv"), ("count-pairs", project),
                 ("model", project), ("forget", project, "census:1", "--reason", "asked"), ("link", project)):
        res = run_cli(*args)
        texts.append(res.out + res.err)
    store = tmp_path / "tiny" / "out" / "tiny.duckdb"
    with duckdb.connect(str(store), read_only=True) as con:
        cleaned = query_pl(con, "select * from records")
    raw = pl.concat([pl.read_csv(tmp_path / "tiny" / "census.csv", infer_schema=False)
                     .select(pl.all().exclude("person_no", "true_person"))
                     .unpivot().select("value")], how="vertical")
    values = _values(cleaned, ["first_name", "last_name", "full_name", "birth_date", "postcode", "ssn", "phone",
                               "email"]) | _values(raw, ["value"])
    # and the erased record's values, which the refusing run read again
    values |= {"jennifer kimberly", "Jennifer Kimberly", "Walker", "SW43ZZ", "02/03/1988", "1988-02-03"}
    # errors of bad input (fixtures/bad): their values must not show either
    bad = tmp_path / "bad"
    shutil.copytree(FIXTURES / "bad", bad)
    text = (bad / "project.yaml").read_text()
    for f in ("bad_dates.csv", "dup_ids.csv", "null_ids.csv"):
        (bad / "project.yaml").write_text(text.replace("people.csv", f))
        res = run_cli("link", bad / "project.yaml")
        assert res.code == 2
        texts.append(res.out + res.err)
        values |= _values(pl.read_csv(bad / f, infer_schema=False), ["first", "last", "born"])
    look = run_cli("lookup", project, "--record", '{"first_name": "Quentinella", "shoe": "x"}')
    assert look.code == 2
    texts.append(look.out + look.err)
    values.add("Quentinella")
    blob = "\n".join(texts)
    leaked = sorted(v for v in values if v in blob or v.lower() in blob.lower())
    assert leaked == []


# ------------------------------------------------------------------------------ pseudonymisation
def private_project(folder: Path, key_env: str = "IDWEAVE_TEST_KEY") -> Path:
    project = copy_fixture("tiny", folder)
    project.write_text(project.read_text() +
                       f"privacy: {{pseudonymise: [ssn, email, phone], key_env: {key_env}}}\n")
    return project


def raw_ssns(folder: Path) -> set[str]:
    tax = pl.read_parquet(folder / "tax.parquet")
    ben = pl.read_ndjson(folder / "benefits.ndjson")
    vals = {str(v) for v in tax["ssn"].drop_nulls().to_list()} | {str(v) for v in ben["ssn"].drop_nulls().to_list()}
    return {re.sub(r"[^0-9A-Za-z]", "", v) for v in vals} | vals


def test_pseudonymised_attributes_are_hashed_before_they_are_stored(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDWEAVE_TEST_KEY", KEY)
    project = private_project(tmp_path / "tiny")
    res = run_cli("link", project)
    assert res.code == 0, res.err
    store = tmp_path / "tiny" / "out" / "tiny.duckdb"
    with duckdb.connect(str(store), read_only=True) as con:
        recs = query_pl(con, "select ssn, email, phone, first_name from records")
    for c in ("ssn", "email", "phone"):  # the hash, then the hashes of the one-deletion variants
        assert recs[c].drop_nulls().str.contains(r"^[A-Za-z0-9_-]{12}( [A-Za-z0-9_-]{12})+$").all(), c
    assert not recs["first_name"].drop_nulls().str.contains(r"^[A-Za-z0-9_-]{12}").any()
    blob = store.read_bytes() + (tmp_path / "tiny" / "out" / "tiny.model.json").read_bytes()
    assert KEY.encode() not in blob and KEY not in res.out + res.err
    for ssn in raw_ssns(tmp_path / "tiny"):
        if len(ssn) >= 6:
            assert ssn.encode() not in blob, ssn
    model = json.loads((tmp_path / "tiny" / "out" / "tiny.model.json").read_text())
    assert KEY not in json.dumps(model)
    # The file's bytes are compressed: look in every column of every table too.
    ssns = sorted(s for s in raw_ssns(tmp_path / "tiny") if len(s) >= 6)
    assert ssns and cells_containing(store, [KEY, *ssns]) == []
    # Nor any one-deletion variant of a raw SSN (what the near level is built from), in any
    # text column (a number column may hold an 8-digit run by chance).
    variants = sorted({v[:i] + v[i + 1:] for v in ssns if v.isdigit() for i in range(len(v))} - set(ssns))
    assert variants and cells_containing(store, variants, text_only=True) == []
    assert not any(v in res.out + res.err for v in variants)


def cells_containing(store: Path, needles: list[str], *, text_only: bool = False) -> list[tuple[str, str, str]]:
    found = []
    with duckdb.connect(str(store), read_only=True) as con:
        for (t,) in con.execute("select table_name from information_schema.tables").fetchall():
            for (c, typ) in con.execute("select column_name, data_type from information_schema.columns "
                                        "where table_name = ?", [t]).fetchall():
                if text_only and typ != "VARCHAR" and not typ.startswith("VARCHAR"):
                    continue
                for n in needles:
                    if con.execute(f'select count(*) from "{t}" where contains(cast("{c}" as varchar), ?)',
                                   [n]).fetchone()[0]:
                        found.append((t, c, n))
    return found


def test_exact_matching_works_on_the_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDWEAVE_TEST_KEY", KEY)
    plain = copy_fixture("tiny", tmp_path / "plain")
    hashed = private_project(tmp_path / "hashed")
    a, b = link(plain), link(hashed)
    with duckdb.connect(str(tmp_path / "plain" / "out" / "tiny.duckdb"), read_only=True) as con:
        exact_plain = con.execute("select count(*) from links where level_ssn = 2").fetchone()[0]
    with duckdb.connect(str(tmp_path / "hashed" / "out" / "tiny.duckdb"), read_only=True) as con:
        exact_hashed = con.execute("select count(*) from links where level_ssn = 2").fetchone()[0]
    assert exact_hashed == exact_plain > 0
    ssns = sorted(s for s in raw_ssns(tmp_path / "plain") if len(s) >= 6)
    assert cells_containing(tmp_path / "plain" / "out" / "tiny.duckdb", ssns)  # the scan finds clear values
    assert a.summary["records"] == b.summary["records"]


def test_a_missing_or_wrong_key_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = private_project(tmp_path / "tiny")
    monkeypatch.delenv("IDWEAVE_TEST_KEY", raising=False)
    res = run_cli("link", project)
    assert res.code == 2
    assert "environment variable IDWEAVE_TEST_KEY is not set" in res.error
    monkeypatch.setenv("IDWEAVE_TEST_KEY", KEY)
    assert run_cli("link", project).code == 0
    store = tmp_path / "tiny" / "out" / "tiny.duckdb"
    before = store.read_bytes()
    monkeypatch.setenv("IDWEAVE_TEST_KEY", KEY + "x")
    res = run_cli("link", project)
    assert res.code == 2
    assert "the key in IDWEAVE_TEST_KEY is not the key this store was built with" in res.error
    assert KEY not in res.err
    assert store.read_bytes() == before
    with duckdb.connect(str(store), read_only=True) as con:
        check = con.execute("select value from meta where key = 'privacy_check'").fetchone()[0]
    assert KEY not in check and json.loads(check)["attributes"] == ["email", "phone", "ssn"]


def test_the_privacy_keys_are_validated(tmp_path: Path) -> None:
    project = copy_fixture("tiny", tmp_path / "tiny")
    text = project.read_text()
    project.write_text(text + "privacy: {pseudonymise: [ssn, shoe], colour: red}\nerasure: maybe\n")
    res = run_cli("link", project)
    assert res.code == 2
    assert "privacy.pseudonymise: 'shoe' is not a declared attribute" in res.error
    assert "privacy.colour: unknown key" in res.error
    assert "erasure: must be refuse or suppress, got 'maybe'" in res.error


def test_deletion_neighbourhoods_overlap_within_one_typo() -> None:
    from idweave.linkage.privacy import Pseudonymiser, deletion_hashes

    p = Pseudonymiser({"ssn"}, KEY.encode())
    base = set(deletion_hashes(p, "ssn", "219099999"))
    for near in ("219099998", "21909999", "2190999991", "129099999"):  # substitution, deletion, insertion, swap
        assert base & set(deletion_hashes(p, "ssn", near)), near
    for far in ("219088888", "912099999", "000000000"):
        assert not base & set(deletion_hashes(p, "ssn", far)), far
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{12}", h) for h in base)
    assert not any("219099999" in h for h in base)
    with pytest.raises(IdweaveError):
        from idweave.linkage.privacy import _key

        _key("IDWEAVE_SURELY_UNSET_VARIABLE")


def _one_deletion_each(a: str, b: str) -> bool:
    """The relation the neighbourhoods test, by its definition: deleting at most one
    character from each makes the two equal."""
    da = {a} | {a[:i] + a[i + 1:] for i in range(len(a))}
    db = {b} | {b[:i] + b[i + 1:] for i in range(len(b))}
    return bool(da & db)


def test_the_stored_form_finds_every_pair_one_typo_apart() -> None:
    import random

    from rapidfuzz.distance import DamerauLevenshtein

    from idweave.linkage.privacy import Pseudonymiser

    p = Pseudonymiser({"ssn"}, KEY.encode())
    rng = random.Random(7)
    values = ["".join(rng.choice("0123") for _ in range(rng.randint(3, 6))) for _ in range(160)]
    coded = {v: set(p.encode("ssn", v).split(" ")[1:]) for v in values}
    near = 0
    for i, a in enumerate(values):
        for b in values[i + 1:]:
            share = bool(coded[a] & coded[b])
            assert share == _one_deletion_each(a, b), (a, b)
            if DamerauLevenshtein.distance(a, b) <= 1:  # every pair the plain "one typo" level finds
                assert share, (a, b)
                near += 1
    assert near > 50
    # equal values, equal strings; the padding hides repeated characters (the count is the length + 1)
    assert p.encode("ssn", "111111111") == p.encode("ssn", "111111111")
    assert len(p.encode("ssn", "111111111").split(" ")) == len(p.encode("ssn", "123456789").split(" ")) == 11


def test_the_near_level_fires_on_a_typo_in_a_hashed_ssn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from idweave.linkage.comparisons import HASHED_NEAR
    from idweave.linkage.lookup import Matcher, lookup

    monkeypatch.setenv("IDWEAVE_TEST_KEY", KEY)
    project = private_project(tmp_path / "tiny")
    link(project)
    model = json.loads((tmp_path / "tiny" / "out" / "tiny.model.json").read_text())
    ssn = next(c for c in model["comparisons"] if c["output_column_name"] == "ssn")
    assert HASHED_NEAR in [lv["label_for_charts"] for lv in ssn["comparison_levels"]]
    assert not any("damerau" in lv["sql_condition"] for lv in ssn["comparison_levels"])
    tax = pl.read_parquet(tmp_path / "tiny" / "tax.parquet").filter(pl.col("ssn").is_not_null()).row(0, named=True)
    raw = re.sub(r"[^0-9]", "", tax["ssn"])
    query = {"first_name": tax["given"], "last_name": tax["family"], "birth_date": tax["born"]}
    typo = raw[:4] + str((int(raw[4]) + 1) % 10) + raw[5:]
    exact = lookup(project, dict(query, ssn=tax["ssn"]))
    with duckdb.connect(str(tmp_path / "tiny" / "out" / "tiny.duckdb"), read_only=True) as con:
        entity = con.execute("select entity_id from records where source = 'tax' and record_id = ?",
                             [tax["tin_row"]]).fetchone()[0]
    assert exact["entity_id"][0] == entity and exact["level_ssn"][0].startswith("exact")
    # the tax record itself against the query with its SSN exact, one digit off, and another
    with Matcher(project) as m:
        rid = int(m.records.filter((pl.col("source") == "tax") & (pl.col("record_id") == tax["tin_row"]))["rid"][0])
        labels = m._levels["ssn"]
        got = []
        for s in (tax["ssn"], typo, "000111222"):
            scored = m.score(m.clean(dict(query, ssn=s)), [(0, rid, 0)])
            got.append((labels[scored["level_ssn"][0]], scored["w_ssn"][0]))
    assert got[0][0].startswith("exact") and got[1][0].startswith(HASHED_NEAR) and got[2][0].startswith("else")
    # the evidence in bits (tiny has no pair one edit apart to train that level on: it weighs 0 there)
    assert got[0][1] > got[1][1] >= got[2][1]


def test_lookup_hashes_its_query_with_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDWEAVE_TEST_KEY", KEY)
    project = private_project(tmp_path / "tiny")
    assert run_cli("link", project).code == 0
    tax = pl.read_parquet(tmp_path / "tiny" / "tax.parquet").filter(pl.col("ssn").is_not_null()).row(1, named=True)
    # the raw SSN alone (no name, no date): only the hash can find the person
    query = json.dumps({"ssn": tax["ssn"]})
    res = run_cli("lookup", project, "--record", query, "--json")
    assert res.code == 0, res.err
    assert tax["tin_row"] in res.out and "exact" in res.out
    assert tax["ssn"] not in res.out + res.err and re.sub(r"[^0-9]", "", tax["ssn"]) not in res.out + res.err
    acc = run_cli("subject-access", project, "--record", query, "--json")
    assert acc.code == 0 and tax["tin_row"] in acc.out, acc.err
    monkeypatch.setenv("IDWEAVE_TEST_KEY", KEY + "x")
    res = run_cli("lookup", project, "--record", query)
    assert res.code == 2
    assert "the key in IDWEAVE_TEST_KEY is not the key this store was built with" in res.error
    monkeypatch.delenv("IDWEAVE_TEST_KEY")
    res = run_cli("lookup", project, "--record", query)
    assert res.code == 2 and "environment variable IDWEAVE_TEST_KEY is not set" in res.error
    assert KEY not in res.out + res.err
