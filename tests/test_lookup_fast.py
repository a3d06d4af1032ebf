"""The lookup fast paths give exactly what the slow ones give: cleaning a query dict in plain
Python = cleaning it through polars as a source is; comparison levels evaluated in Python =
the levels Splink's SQL gives in DuckDB."""

from __future__ import annotations

import random
from datetime import date, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import JaroWinkler

from identity_helpers import project_copy
from idweave.blocking.keys import canonical_names
from idweave.linkage import link
from idweave.linkage import comparisons
from idweave.linkage._incremental import canonical_scores
from idweave.linkage.errors import LookupInputError
from idweave.linkage.kinds import KINDS
from idweave.linkage._levels import _Compiler, _jaro_winkler
from idweave.linkage._query_clean import clean_frames, RecordCleaner, SlowPath
from idweave.linkage.lookup import Matcher
from idweave.linkage.project import load_project
from idweave.linkage.readers import read_source
from idweave.linkage.sources import DATE_FORMATS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def polars_clean(rows: list[dict], kinds: dict[str, str], fmt: str | None) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "query"} for r in clean_frames(rows, kinds, fmt).iter_rows(named=True)]


def check_batch(rows: list[dict], kinds: dict[str, str], fmt: str | None) -> int:
    """Every row cleaned fast equals the polars cleaning (rows whose values are cleaned
    independently of each other: no date column without a format). Returns how many took the
    fast path."""
    cleaner = RecordCleaner(kinds)
    want = polars_clean(rows, kinds, fmt)
    fast = 0
    for row, w in zip(rows, want):
        got = cleaner.clean(row, fmt)
        if got is not None:
            assert got == w, row
            fast += 1
    return fast


# ------------------------------------------------------------------ cleaning
@pytest.mark.parametrize("fixture", ["demo", "tiny"])
def test_fast_cleaning_is_the_polars_cleaning_on_every_fixture_value(fixture: str) -> None:
    project = load_project(FIXTURES / fixture / "project.yaml")
    kinds = {a.name: a.kind for a in project.attributes.values()}
    total = fast = 0
    for src in project.sources.values():
        raw = read_source(src, list(src.columns.values()))
        rows = [{a: r[c] for a, c in src.columns.items()} for r in raw.iter_rows(named=True)]
        # whole records (name derivation included); dates on their own below
        whole = [{a: v for a, v in r.items() if kinds[a] != "date"} for r in rows]
        fast += check_batch(whole, kinds, src.date_format)
        total += len(whole)
        for a, kind in {a: kinds[a] for a in src.columns}.items():
            values = sorted({r[a] for r in rows if r[a] is not None})
            if kind != "date" or src.date_format:
                fast += check_batch([{a: v} for v in values], kinds, src.date_format)
                total += len(values)
            else:  # no format: the polars path infers one per batch, so one value at a time
                cleaner = RecordCleaner(kinds)
                for v in values:
                    got = cleaner.clean({a: v}, None)
                    assert got == polars_clean([{a: v}], kinds, None)[0]
                    fast += 1
                    total += 1
    assert fast == total


_TEXT = st.lists(st.sampled_from(list("abcXYZ019 ,.-'`’@+/()_#&\t\x1céøßÆ\u0301\xa0Ωİ")
                                 + [" st ", " dr ", "mr ", "00", "44", "1234567890", "jr"]), max_size=10).map("".join)


@settings(max_examples=60, deadline=None)
@given(st.lists(_TEXT, min_size=1, max_size=40), st.sampled_from([k for k in KINDS if k != "date"]))
def test_fast_cleaning_is_the_polars_cleaning_on_random_text(values: list[str], kind: str) -> None:
    kinds = {"v": kind}
    check_batch([{"v": v} for v in values], kinds, None)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True).map(str),
                          st.from_regex(r"-?[0-9]{1,4}(,[0-9]{3})?(\.[0-9]{1,3})?", fullmatch=True), _TEXT),
                min_size=1, max_size=40))
def test_fast_cleaning_of_numbers(values: list[str]) -> None:
    check_batch([{"n": v} for v in values], {"n": "number"}, None)


@settings(max_examples=150, deadline=None)
@given(st.dates(date(900, 1, 1), date(2030, 12, 31)), st.sampled_from(DATE_FORMATS),
       st.sampled_from([None, "given", "%Y-%m-%d"]), st.sampled_from(["", " ", "x", "-30"]))
def test_fast_cleaning_of_dates(day: date, written: str, fmt: str | None, noise: str) -> None:
    kinds = {"born": "date", "name": "given_name"}
    fmt = written if fmt == "given" else fmt
    for value in (day.strftime(written), day.strftime(written) + noise, noise + day.strftime(written)):
        got = RecordCleaner(kinds).clean({"born": value}, fmt)
        try:
            want = polars_clean([{"born": value}], kinds, fmt)[0]
        except LookupInputError:
            assert got is None  # the polars path refuses it (and says where)
            continue
        assert got is None or got == want


# ------------------------------------------------------------------ levels
def test_jaro_winkler_is_duckdbs_to_the_last_bit() -> None:
    rng = random.Random(7)
    alphabets = ["ab", "abc ", "abcdefghij", "aé€b", "abcdefghijklmnopqrstuvwxyz0123456789 "]
    left, right = [], []
    for i in range(60000):
        al = rng.choice(alphabets)
        a = "".join(rng.choice(al) for _ in range(rng.randint(0, 12 if i % 10 else 150)))  # over 64: DuckDB's other loop
        b = list(a)
        for _ in range(rng.randint(0, 3)):
            b.insert(rng.randint(0, len(b)), rng.choice(al)) if rng.random() < .5 or not b else b.pop(rng.randrange(len(b)))
        left.append(a)
        right.append("".join(b) if rng.random() < .7 else "".join(rng.choice(al) for _ in range(rng.randint(0, 12))))
    con = duckdb.connect()
    con.register("t", pa.table({"a": left, "b": right}))
    theirs = [r[0] for r in con.execute("select jaro_winkler_similarity(a, b) from t").fetchall()]
    for a, b, want in zip(left, right, theirs):
        assert _jaro_winkler(a, b) == want, (a, b)
        if a and b:  # the fast path's premise: rapidfuzz differs from DuckDB by rounding only
            assert abs(JaroWinkler.similarity(a, b) - want) < 1e-12, (a, b)


def _ladders() -> list[tuple[str, list[dict]]]:
    kinds = {"g": "given_name", "f": "family_name", "n": "full_name", "d": "date", "p": "postcode",
             "i": "national_id", "ph": "phone", "e": "email", "a": "address", "c": "city", "s": "sex",
             "t": "text", "x": "number"}
    specs = [("g", {"method": "name"}), ("f", {"method": "name"}), ("n", {"method": "full_name"}),
             ("d", {"method": "date"}), ("p", {"method": "postcode"}), ("i", {"method": "identifier"}),
             ("ph", {"method": "phone"}), ("e", {"method": "email"}), ("a", {"method": "address"}),
             ("c", {"method": "exact"}), ("s", {"method": "exact"}), ("t", {"method": "jaro_winkler"}),
             ("t", {"method": "levenshtein", "thresholds": [1, 2, 3]}),
             ("t", {"method": "damerau_levenshtein", "thresholds": [1, 2]}),
             ("x", {"method": "numeric"})]
    return [(c, comparisons._ladder(c, kinds[c], spec, kinds)) for c, spec in specs]


def _random_value(rng: random.Random, column: str):
    if column == "x":
        return rng.choice([None, 0.0, -0.0, 1.0, 100.0, 101.0, 99.0, 110.0, -5.5, 1e300, rng.uniform(-200, 200)])
    if column == "d":
        if rng.random() < 0.1:
            return rng.choice([None, "2020-02-30", "1999-13-01"])
        day = date(1990, 1, 1) + timedelta(days=rng.choice([0, 1, 10, 31, 32, 365, 366, 367, 3653, 3654, 20000]))
        return day.isoformat() if rng.random() < .8 else f"{day.year}-{day.day:02d}-{day.month:02d}"
    alphabet = {"e": "ab@.c", "p": "SW12AB", "i": "0123A", "ph": "0123"}.get(column, "abcde ")
    if rng.random() < 0.05:
        return None
    word = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9)))
    return rng.choice(["bob", "robert", "kate", "katherine", "a", "b", word, word, word])


def _mutate(rng: random.Random, v):
    if v is None or isinstance(v, float) or rng.random() < 0.3:
        return v
    s = list(v)
    i = rng.randrange(len(s))
    op = rng.randint(0, 2)
    if op == 0:
        s[i] = rng.choice("ab 1")
    elif op == 1 and len(s) > 1:
        s.pop(i)
    elif i + 1 < len(s):
        s[i], s[i + 1] = s[i + 1], s[i]
    return "".join(s)


@pytest.mark.parametrize("column,levels", _ladders(), ids=[f"{c}-{i}" for i, (c, _) in enumerate(_ladders())])
def test_every_level_is_the_sql_level_on_random_pairs(column: str, levels: list[dict]) -> None:
    rng = random.Random(hash(column) % 1000)
    reads = sorted({name for lv in levels for name in comparisons.input_columns(
        {"comparisons": [{"comparison_levels": [lv]}]})})
    rows = []
    for _ in range(3000):
        row = {}
        for c in reads:
            base = c[: -len(comparisons.FORMAL_SUFFIX)] if c.endswith(comparisons.FORMAL_SUFFIX) else c
            if c != base:
                continue
            a = _random_value(rng, base)
            row[f"{base}_l"], row[f"{base}_r"] = a, (_mutate(rng, a) if rng.random() < .7 else _random_value(rng, base))
        for c in reads:
            if c.endswith(comparisons.FORMAL_SUFFIX):
                base = c[: -len(comparisons.FORMAL_SUFFIX)]
                for side in ("_l", "_r"):
                    v = row[base + side]
                    row[c + side] = None if v is None else canonical_names(v)
        rows.append(row)
    frame = pl.DataFrame(rows, infer_schema_length=None)
    con = duckdb.connect()
    con.register("t", frame.to_arrow())
    checked = 0
    for lv in levels:
        if lv["sql_condition"] == "ELSE":
            continue
        want = [r[0] for r in con.execute(f"select ({lv['sql_condition']}) from t").fetchall()]
        test = _Compiler(lv["sql_condition"]).compile()
        for row, w in zip(rows, want):
            left = {k[:-2]: v for k, v in row.items() if k.endswith("_l")}
            right = {k[:-2]: v for k, v in row.items() if k.endswith("_r")}
            try:
                got = test(left, right)
            except SlowPath:
                continue
            assert (got is True) == (w is True), (lv["sql_condition"], row, got, w)
            checked += 1
    assert checked > 0.8 * 3000 * (len(levels) - 1)  # the rest: values cleaning never makes (dates not ISO)


# ------------------------------------------------------------------ stores
@pytest.fixture(scope="module", params=["tiny", "demo"])
def linked(request, tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = project_copy(request.param, tmp_path_factory.mktemp("fast") / request.param)
    link(project)
    return project


def test_python_levels_are_the_sql_levels_on_every_pair_of_fixture_records(linked: Path) -> None:
    with Matcher(linked) as m:
        recs = m.records
        n = recs.height
        rng = random.Random(3)
        queries = list(range(n)) if n <= 80 else rng.sample(range(n), 80)
        lefts = {q: m._prepare_left(recs.row(q, named=True)) for q in queries}
        q_idx = [q for q in queries for _ in range(n)]
        rids = [r for _ in queries for r in range(n)]
        fast = m._gammas_py(lefts, q_idx, rids)
        assert fast is not None
        assert fast == m._gammas_sql(lefts, q_idx, rids)
        # and the scores are canonical_scores' to the last bit
        got = m._score_rows(lefts, [(q, r, 0) for q, r in zip(q_idx, rids)])
        frame = pl.DataFrame({k: v for k, v in got.items() if k.startswith("w_")}).with_columns(
            pl.lit(0.0).alias("match_weight"))
        want = canonical_scores(frame, m._parts.prior)
        assert got["match_weight"] == want["match_weight"].to_list()
        assert got["match_probability"] == want["match_probability"].to_list()


def test_scores_do_not_depend_on_the_path(linked: Path) -> None:
    with Matcher(linked) as m:
        rec = m.records.row(5, named=True)
        query = {a: rec[a] for a in m.kinds if rec[a] is not None}
        q = m.clean(query)
        pairs = [(0, rid, rule) for rid, rule in m.candidates(q.row(0, named=True)).items()]
        fast = m.score(q, pairs)
        m._py_levels[0] = None  # a comparison the Python evaluator does not know: DuckDB scores
        slow = m.score(q, pairs)
        assert fast.equals(slow) and fast.height == len(pairs) > 0
        # the frames path gives the same answer as the single-dict path
        assert m.clean(query).equals(clean_frames(query, m.kinds, None))
        assert m.lookup(query).equals(m.lookup([query]))
