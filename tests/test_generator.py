"""Tests for fixtures/generate.py, the seeded synthetic-registry generator.

fixtures/ is not a package, so the module is loaded from its file path under a private name
and never registered in sys.modules or sys.path.
"""

import dataclasses
import doctest
import importlib.util
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"


def _load_generator():
    spec = importlib.util.spec_from_file_location("_idweave_fixture_generator",
                                                  FIXTURES / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()

# The README's first command runs this file, so its text is pinned here verbatim.
DEMO_PROJECT_YAML = """\
store: ../../out/demo.duckdb
threshold: 0.9
attributes:
  first_name: given_name
  last_name: family_name
  full_name: full_name
  birth_date: date
  sex: sex
  postcode: postcode
  ssn: national_id
  phone: phone
  email: email
sources:
  census:
    path: census.csv
    id: person_no
    columns: {first_name: fname, last_name: surname, birth_date: dob, postcode: zip, sex: sex}
    date_format: "%m/%d/%Y"
  tax:
    path: tax.parquet
    id: tin_row
    columns: {first_name: given, last_name: family, birth_date: born, ssn: ssn}
    exclusive: true
  benefits:
    path: benefits.ndjson
    id: claim_id
    columns: {full_name: full_name, birth_date: birth_date, postcode: postcode, phone: phone, email: email, ssn: ssn}
    date_format: "%d/%m/%Y"
"""

DATE_FORMATS = {"census": ("dob", "%m/%d/%Y"), "tax": ("born", "%Y-%m-%d"),
                "benefits": ("birth_date", "%d/%m/%Y")}


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo():
    return gen.generate(400, 7)


@pytest.fixture(scope="module")
def truth():
    """person_id -> canonical row of the demo population."""
    return {row["person_id"]: row for row in gen.population(400, 7).iter_rows(named=True)}


def _norm(name):
    """Compare names as a lenient human would: no accents, case, padding or full stops."""
    return gen.fold_accents(name).strip().strip(".").strip().lower()


def _osa(a, b):
    """Optimal-string-alignment distance (Damerau-Levenshtein without repeated edits)."""
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def _name_pairs(frames):
    """(given as written, family as written, canonical row) for census and tax records."""
    pairs = []
    for source, given_col, family_col in (("census", "fname", "surname"),
                                          ("tax", "given", "family")):
        for row in frames[source].iter_rows(named=True):
            pairs.append((row[given_col], row[family_col], row["true_person"]))
    return pairs


def _dates(frames, truth):
    """(date as read with the source's declared format, canonical birth date) pairs."""
    out = []
    for source, (col, fmt) in DATE_FORMATS.items():
        df = frames[source].select(
            pl.col(col).str.to_date(fmt, strict=False).alias("d"), "true_person")
        for d, pid in df.iter_rows():
            if d is not None:
                out.append((d, truth[pid]["birth_date"]))
    return out


def _digits(value):
    return re.sub(r"\D", "", value or "")


def _assert_frames_equal(left, right):
    assert list(left) == list(right)
    for source in left:
        assert left[source].schema == right[source].schema, source
        assert left[source].equals(right[source]), source


# ----------------------------------------------------------------------------------------------
# determinism and shape
# ----------------------------------------------------------------------------------------------

def test_same_seed_gives_identical_frames():
    _assert_frames_equal(gen.generate(120, 3), gen.generate(120, 3))


def test_different_seed_gives_different_frames():
    a, b = gen.generate(120, 3), gen.generate(120, 4)
    assert all(not a[s].equals(b[s]) for s in gen.SOURCES)


def test_chunk_size_and_source_subset_do_not_change_output():
    full = gen.generate(150, 5)
    _assert_frames_equal(gen.generate(150, 5, chunk_size=7), full)
    subset = gen.generate(150, 5, sources=["benefits"])
    assert list(subset) == ["benefits"]
    assert subset["benefits"].equals(full["benefits"])


def test_schemas_are_exact(demo):
    for source in gen.SOURCES:
        assert demo[source].schema == pl.Schema(gen.SCHEMAS[source])


def test_record_ids_are_unique_and_non_null(demo):
    for frames in (demo, gen.generate(30, 1)):
        for source, df in frames.items():
            ids = df[next(iter(gen.SCHEMAS[source]))]
            assert ids.null_count() == 0, source
            assert ids.n_unique() == df.height, source


def test_tax_has_at_most_one_record_per_person(demo):
    assert not demo["tax"]["true_person"].is_duplicated().any()


def test_census_and_benefits_hold_some_duplicates(demo):
    census_dups = demo["census"]["true_person"].value_counts().filter(pl.col("count") > 1)
    share = census_dups.height / demo["census"]["true_person"].n_unique()
    assert 0.02 <= share <= 0.10
    assert demo["benefits"]["true_person"].is_duplicated().any()


def test_coverage_leaves_people_in_one_two_and_three_sources(demo, truth):
    for source in gen.SOURCES:
        share = demo[source]["true_person"].n_unique() / len(truth)
        assert 0.55 <= share <= 0.85, source
    seen = pl.concat([df.select("true_person").with_columns(source=pl.lit(s))
                      for s, df in demo.items()])
    per_person = seen.group_by("true_person").agg(pl.col("source").n_unique().alias("k"))
    assert set(per_person["k"]) == {1, 2, 3}
    assert set(seen["true_person"]) <= set(truth)


def test_declared_date_formats_parse_every_present_date(demo):
    # Noise may make a date wrong, never unreadable in its source's declared format.
    for source, (col, fmt) in DATE_FORMATS.items():
        present = demo[source].filter(pl.col(col).is_not_null() & (pl.col(col) != ""))
        parsed = present[col].str.to_date(fmt, strict=False)
        assert parsed.null_count() == 0, source


def test_without_noise_records_equal_the_truth(truth):
    # Turning every probability off except coverage shows that noise is the only
    # reason a record differs from its person.
    off = {f.name: 0.0 for f in dataclasses.fields(gen.NoiseRates)}
    off.update(coverage_census=1.0, coverage_tax=1.0, coverage_benefits=1.0,
               accent_keep_census=1.0, accent_keep_tax=1.0, accent_keep_benefits=1.0,
               has_phone=1.0, has_email=1.0)
    rates = gen.NoiseRates(**off)
    frames = gen.generate(80, 11, rates=rates)
    people = {r["person_id"]: r for r in gen.population(80, 11, rates).iter_rows(named=True)}
    assert frames["census"].height == frames["tax"].height == frames["benefits"].height == 80
    for row in frames["census"].iter_rows(named=True):
        p = people[row["true_person"]]
        b = p["birth_date"]
        assert (row["fname"], row["surname"], row["zip"], row["sex"]) == (
            p["given_name"], p["family_name"], p["postcode"], p["sex"])
        assert row["dob"] == f"{b.month:02d}/{b.day:02d}/{b.year}"
    for row in frames["tax"].iter_rows(named=True):
        p = people[row["true_person"]]
        assert (row["given"], row["family"], row["born"], _digits(row["ssn"])) == (
            p["given_name"], p["family_name"], p["birth_date"].isoformat(), p["national_id"])
    for row in frames["benefits"].iter_rows(named=True):
        p = people[row["true_person"]]
        assert row["full_name"] == f"{p['given_name']} {p['family_name']}"
        assert _digits(row["phone"])[-10:] == p["phone"][1:]
        assert row["email"] == p["email"]
        assert _digits(row["ssn"]) == p["national_id"]


def test_noise_rates_are_validated():
    with pytest.raises(ValueError, match="name_typo"):
        gen.NoiseRates(name_typo=1.5)


# ----------------------------------------------------------------------------------------------
# every kind of noise occurs in the demo
# ----------------------------------------------------------------------------------------------

def test_names_with_one_typo_occur(demo, truth):
    typos = [
        (given, family) for given, family, pid in _name_pairs(demo)
        if given and family and (
            _osa(_norm(given), _norm(truth[pid]["given_name"])) == 1
            or _osa(_norm(family), _norm(truth[pid]["family_name"])) == 1)
    ]
    assert len(typos) >= 5


def test_nicknames_occur(demo, truth):
    nicknames = [g for g, _, pid in _name_pairs(demo)
                 if g and _norm(g) in gen.NICKNAMES.get(truth[pid]["given_name"].lower(), ())]
    assert len(nicknames) >= 5


def test_given_and_family_names_swapped_occur(demo, truth):
    swapped = [pid for g, f, pid in _name_pairs(demo)
               if g and f and _norm(g) == _norm(truth[pid]["family_name"])
               and _norm(f).startswith(_norm(truth[pid]["given_name"])[:1])
               and _norm(g) != _norm(truth[pid]["given_name"])]
    assert swapped
    benefits_swapped = [
        row["full_name"] for row in demo["benefits"].iter_rows(named=True)
        if row["full_name"] and "," not in row["full_name"]
        and _norm(row["full_name"]).startswith(_norm(truth[row["true_person"]]["family_name"]))
        and _norm(truth[row["true_person"]]["family_name"])
        != _norm(truth[row["true_person"]]["given_name"])
    ]
    assert benefits_swapped


def test_initials_occur(demo):
    initials = [g for g, _, _ in _name_pairs(demo) if g and re.fullmatch(r"[A-Z]\.?", g)]
    assert len(initials) >= 3


def test_accents_are_both_kept_and_dropped(demo, truth):
    kept = dropped = 0
    for given, family, pid in _name_pairs(demo):
        canonical = truth[pid]["given_name"] + truth[pid]["family_name"]
        if canonical.isascii():
            continue
        written = (given or "") + (family or "")
        if written.isascii():
            dropped += 1
        else:
            kept += 1
    assert kept and dropped


def test_case_changes_occur(demo):
    census = demo["census"].filter(pl.col("fname").str.len_chars() > 2)["fname"]
    assert any(n.islower() for n in census)
    assert any(n.isupper() for n in census)
    tax = demo["tax"].filter(pl.col("given").str.len_chars() > 2)["given"]
    assert any(not n.isupper() for n in tax)  # the tax system's capitals are not universal


def test_extra_whitespace_and_punctuation_occur(demo):
    values = [v for g, f, _ in _name_pairs(demo) for v in (g, f) if v]
    values += [v for v in demo["benefits"]["full_name"] if v]
    padded = [v for v in values if v != v.strip() or "  " in v]
    dotted = [v for v in values if len(v) > 2 and v.rstrip().endswith(".")]
    assert padded and dotted


def test_benefits_full_names_come_in_both_orders(demo):
    names = [n for n in demo["benefits"]["full_name"] if n]
    family_first = [n for n in names if re.fullmatch(r"[^,]+, .+", n)]
    assert family_first and all(n.split(",")[0] == n.split(",")[0].upper()
                                for n in family_first)
    assert len(family_first) < len(names) / 2


def test_dates_with_day_and_month_transposed_occur(demo, truth):
    transposed = [d for d, b in _dates(demo, truth)
                  if d != b and b.day <= 12 and d == date(b.year, b.day, b.month)]
    assert len(transposed) >= 3


def test_dates_a_year_out_or_with_a_wrong_digit_occur(demo, truth):
    year_off = digit = 0
    for d, b in _dates(demo, truth):
        if d == b or (b.day <= 12 and d == date(b.year, b.day, b.month)):
            continue
        if abs(d.year - b.year) == 1 and d.month == b.month:
            year_off += 1
        if sum(x != y for x, y in zip(d.isoformat(), b.isoformat())) == 1:
            digit += 1
    assert year_off >= 2 and digit >= 2


def test_missing_values_occur_as_null_and_empty(demo):
    for source, df in demo.items():
        data = df.drop(next(iter(gen.SCHEMAS[source])), "true_person")
        assert sum(data.null_count().row(0)) > 0, source
    for source in ("tax", "benefits"):
        empties = demo[source].select(
            pl.any_horizontal(pl.col(pl.String) == "").sum()).item()
        assert empties > 0, source


def test_postcodes_with_typos_missing_spaces_and_moves_occur(demo, truth):
    typo = nospace = moved = 0
    for source, col in (("census", "zip"), ("benefits", "postcode")):
        for value, pid in demo[source].select(col, "true_person").iter_rows():
            if not value:
                continue
            p = truth[pid]
            if " " not in value:
                nospace += 1
            compact = value.replace(" ", "").upper()
            here = p["postcode"].replace(" ", "")
            before = (p["prev_postcode"] or "").replace(" ", "")
            if compact == before and before != here:
                moved += 1
            elif compact != here and compact != before and (
                    _osa(compact, here) == 1 or _osa(compact, before) == 1):
                typo += 1
    assert typo >= 2 and nospace >= 10 and moved >= 5


def test_ssn_formats_typos_and_placeholders_occur(demo, truth):
    ssns = [(v, pid) for s in ("tax", "benefits")
            for v, pid in demo[s].select("ssn", "true_person").iter_rows() if v]
    placeholders = [v for v, _ in ssns if v in ("000000000", "999999999")]
    typos = [v for v, pid in ssns if v not in placeholders
             and sum(a != b for a, b in zip(_digits(v), truth[pid]["national_id"])) == 1]
    assert placeholders and typos
    assert any(re.fullmatch(r"\d{3}-\d{2}-\d{4}", v) for v, _ in ssns)
    assert any(re.fullmatch(r"\d{9}", v) and v not in placeholders for v, _ in ssns)
    assert any(re.fullmatch(r"\d{3} \d{2} \d{4}", v) for v, _ in ssns)
    assert demo["tax"]["ssn"].null_count() == 0  # tax writes placeholders, not blanks


def test_phone_formats_and_sex_codes_vary(demo):
    phones = [p for p in demo["benefits"]["phone"] if p]
    assert any(p.startswith("+44 ") for p in phones)
    assert any(re.fullmatch(r"0\d{4}-\d{6}", p) for p in phones)
    sexes = set(demo["census"]["sex"].drop_nulls())
    assert {"M", "F"} <= sexes and sexes & {"Male", "Female"} and sexes & {"male", "female"}


def test_hard_negatives_are_built_in_and_reach_the_sources(demo, truth):
    relations = [(pid, p) for pid, p in truth.items() if p["relation"]]
    kinds = {p["relation"] for _, p in relations}
    assert kinds == {"twin", "namesake", "doppelganger"}
    for pid, p in relations:
        other = truth[p["related_to"]]
        assert p["family_name"] == other["family_name"]
        if p["relation"] == "twin":
            assert p["birth_date"] == other["birth_date"]
            assert p["postcode"] == other["postcode"]
            assert p["given_name"] != other["given_name"]
        elif p["relation"] == "namesake":
            assert p["given_name"] == other["given_name"]
            assert abs(p["birth_date"].year - other["birth_date"].year) >= 19
        else:
            assert p["given_name"] == other["given_name"]
            assert p["birth_date"].year == other["birth_date"].year
            assert p["household"] != other["household"]
    held = set(pl.concat([df.select("true_person") for df in demo.values()])["true_person"])
    both_held = {p["relation"] for pid, p in relations if pid in held and p["related_to"] in held}
    assert both_held == kinds


# ----------------------------------------------------------------------------------------------
# files: the committed fixtures, round trips, the CLI
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "people", "seed"), [("demo", 400, 7), ("tiny", 30, 1)])
def test_committed_fixtures_match_the_generator(name, people, seed):
    folder = FIXTURES / name
    _assert_frames_equal(gen.read(folder), gen.generate(people, seed))
    expected_yaml = DEMO_PROJECT_YAML.replace("demo.duckdb", f"{name}.duckdb")
    assert (folder / "project.yaml").read_text(encoding="utf-8") == expected_yaml
    assert sorted(p.name for p in folder.iterdir()) == [
        "benefits.ndjson", "census.csv", "project.yaml", "tax.parquet"]


def test_demo_fixtures_stay_small():
    assert sum(p.stat().st_size for p in (FIXTURES / "demo").iterdir()) < 1_000_000


def test_project_yaml_for_the_demo_is_exact():
    assert gen.project_yaml(gen.SOURCES, "../../out/demo.duckdb") == DEMO_PROJECT_YAML


@pytest.mark.parametrize("fmt", ["csv", "parquet", "ndjson"])
def test_write_and_read_round_trip_in_every_format(tmp_path, fmt):
    frames = gen.generate(60, 2)
    gen.write(frames, tmp_path)  # native formats first, to check they are replaced
    written = gen.write(frames, tmp_path, fmt=fmt, store="x.duckdb")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)
    _assert_frames_equal(gen.read(tmp_path), frames)
    text = (tmp_path / "project.yaml").read_text(encoding="utf-8")
    assert f"path: census.{fmt}" in text and "store: x.duckdb" in text


def test_cli_writes_a_subset_with_its_project_file(tmp_path):
    out = tmp_path / "subset"
    result = subprocess.run(
        [sys.executable, str(FIXTURES / "generate.py"), "--people", "40", "--seed", "3",
         "--out", str(out), "--sources", "census,tax", "--population"],
        capture_output=True, text=True, check=True)
    assert "census" in result.stdout and "P0000" not in result.stdout  # counts, not records
    assert sorted(p.name for p in out.iterdir()) == [
        "census.csv", "people.parquet", "project.yaml", "tax.parquet"]
    text = (out / "project.yaml").read_text(encoding="utf-8")
    assert "benefits" not in text and "email" not in text and "store: subset.duckdb" in text
    _assert_frames_equal(gen.read(out), gen.generate(40, 3, sources=["census", "tax"]))
    assert pl.read_parquet(out / "people.parquet").equals(gen.population(40, 3))


def test_cli_rejects_unknown_sources(tmp_path):
    result = subprocess.run(
        [sys.executable, str(FIXTURES / "generate.py"), "--out", str(tmp_path),
         "--sources", "census,voters"], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown source(s) voters" in result.stderr


def test_docstring_examples_run(monkeypatch):
    monkeypatch.chdir(ROOT)  # the examples name fixtures/generate.py relative to the repo
    failures, tried = doctest.testmod(gen, verbose=False)
    assert tried > 5 and failures == 0
