"""Sources: read, map and clean into records. Dates (per-source format, detection, ISO),
cleaning per kind through a whole source, names filled from a full name, the content hash."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import polars as pl
import pytest

from conftest import FIXTURES
from idweave.linkage import SourceError, load_project, project_from_dict
from idweave.linkage.sources import DATE_FORMATS, LoadReport, load_records, parse_dates, records_from_frame

TINY = FIXTURES / "tiny"


def parsed(values: list, fmt: str | None = None) -> tuple[list, str]:
    out, used = parse_dates(pl.Series(values, dtype=pl.Utf8), fmt)
    return out.to_list(), used


# ------------------------------------------------------------------ dates
def test_dates_with_the_source_format() -> None:
    assert parsed(["03/04/1980", "12/01/1979"], "%d/%m/%Y") == (["1980-04-03", "1979-01-12"], "%d/%m/%Y")
    assert parsed(["03/04/1980", "12/01/1979"], "%m/%d/%Y") == (["1980-03-04", "1979-12-01"], "%m/%d/%Y")


def test_day_first_and_month_first_are_told_apart_by_days_above_12() -> None:
    assert parsed(["25/03/1980", "01/02/1979"]) == (["1980-03-25", "1979-02-01"], "%d/%m/%Y")
    assert parsed(["03/25/1980", "01/02/1979"]) == (["1980-03-25", "1979-01-02"], "%m/%d/%Y")


@pytest.mark.parametrize("value, fmt", [
    ("1980-03-25", "%Y-%m-%d"), ("19800325", "%Y%m%d"), ("25-03-1980", "%d-%m-%Y"), ("25.03.1980", "%d.%m.%Y"),
    ("1980/03/25", "%Y/%m/%d"), ("25 Mar 1980", "%d %b %Y"), ("25 March 1980", "%d %B %Y"),
    ("Mar 25 1980", "%b %d %Y"), ("1980-03-25T00:00:00", "%Y-%m-%dT%H:%M:%S"), ("25/03/80", "%d/%m/%y"),
])
def test_common_formats_are_detected(value: str, fmt: str) -> None:
    assert fmt in DATE_FORMATS
    assert parsed([value]) == (["1980-03-25"], fmt)


def test_two_digit_years_are_never_in_the_future() -> None:
    # A birth date written 01/02/45 is 1945, not 2045.
    assert parsed(["01/02/45", "25/03/80", "01/01/05"]) == (["1945-02-01", "1980-03-25", "2005-01-01"], "%d/%m/%y")


def test_a_four_digit_year_format_does_not_read_two_digits() -> None:
    assert parsed(["25/03/80"], "%d/%m/%Y") == ([None], "%d/%m/%Y")


def test_blanks_and_unparseable_values_are_null() -> None:
    assert parsed(["1980-03-25", " ", "", None, "soon"]) == (["1980-03-25", None, None, None, None], "%Y-%m-%d")


def test_native_dates_and_datetimes() -> None:
    out, used = parse_dates(pl.Series([date(1980, 3, 25), None]), None)
    assert (out.to_list(), used) == (["1980-03-25", None], "native")
    out, used = parse_dates(pl.Series([datetime(1980, 3, 25, 13, 5)]), "%d/%m/%Y")
    assert (out.to_list(), used) == (["1980-03-25"], "native")


def test_a_format_polars_cannot_use_parses_nothing() -> None:
    assert parsed(["25/03/1980"], "%d/%m/%Q") == ([None], "%d/%m/%Q")


def test_a_few_bad_dates_are_counted_not_fatal() -> None:
    frame = pl.DataFrame({"id": ["a", "b", "c"], "dob": ["1980-03-25", "1980-02-30", "1979-01-01"]})
    p = project_from_dict({"store": "s.duckdb", "attributes": {"birth_date": "date"},
                           "sources": {"s": {"id": "id", "columns": {"birth_date": "dob"}}}}, sources={"s": frame})
    report = LoadReport()
    recs = load_records(p, report=report)
    assert recs["birth_date"].to_list() == ["1980-03-25", None, "1979-01-01"]
    assert report.unparsed_dates == {"s.dob": 1}
    assert report.date_formats == {"s.dob": "%Y-%m-%d"}
    assert report.rows == {"s": 3}


# ------------------------------------------------------------------ a whole source
RAW = pl.DataFrame({
    "id": ["r1", " r2 ", "r3"],
    "given": ["  JOSÉ ", "Mary-Ann", ""],
    "family": ["O'Brien", "van  der Berg", None],
    "born": ["25/03/1980", "01/12/1975", "31/01/2001"],
    "sex": ["Male", "f", "?"],
    "zip": ["sw1a 2aa", "M14-6FR", ""],
    "ssn": ["219-09-9999", "000000000", "219 09 9998"],
    "tel": ["+44 7700 900123", "07700-900123", None],
    "mail": [" Jose@Example.COM", "bad", None],
    "town": ["  New-York ", None, "Leeds"],
    "addr": ["12 High St.", None, "3 Park Rd"],
    "income": ["1,200", "x", None],
})
KINDS = {"first_name": "given_name", "last_name": "family_name", "birth_date": "date", "sex": "sex",
         "postcode": "postcode", "ssn": "national_id", "phone": "phone", "email": "email", "city": "city",
         "address": "address", "income": "number", "nickname": "given_name"}
COLUMNS = {"first_name": "given", "last_name": "family", "birth_date": "born", "sex": "sex", "postcode": "zip",
           "ssn": "ssn", "phone": "tel", "email": "mail", "city": "town", "address": "addr", "income": "income"}


def test_a_source_is_mapped_and_cleaned_per_kind() -> None:
    p = project_from_dict({"store": "s.duckdb", "attributes": KINDS,
                           "sources": {"reg": {"id": "id", "columns": COLUMNS, "date_format": "%d/%m/%Y"}}},
                          sources={"reg": RAW})
    recs = load_records(p)
    assert recs.columns == ["source", "record_id", *KINDS, "content_hash"]
    assert recs.drop("content_hash").rows(named=True) == [
        {"source": "reg", "record_id": "r1", "first_name": "jose", "last_name": "obrien", "birth_date": "1980-03-25",
         "sex": "m", "postcode": "SW1A2AA", "ssn": "219099999", "phone": "7700900123",
         "email": "jose@example.com", "city": "new york", "address": "12 high street", "income": 1200.0,
         "nickname": None},
        {"source": "reg", "record_id": "r2", "first_name": "mary ann", "last_name": "van der berg",
         "birth_date": "1975-12-01", "sex": "f", "postcode": "M146FR", "ssn": None, "phone": "7700900123",
         "email": None, "city": None, "address": None, "income": None, "nickname": None},
        {"source": "reg", "record_id": "r3", "first_name": None, "last_name": None, "birth_date": "2001-01-31",
         "sex": None, "postcode": None, "ssn": "219099998", "phone": None, "email": None, "city": "leeds",
         "address": "3 park road", "income": None, "nickname": None},
    ]
    # An attribute no source maps is a null column of the right type.
    assert recs.schema["nickname"] == pl.Utf8 and recs.schema["income"] == pl.Float64


def test_record_ids_are_strings_without_surrounding_blanks() -> None:
    src = project_from_dict({"store": "s.duckdb", "attributes": {"first_name": "given_name"},
                             "sources": {"n": {"id": "id", "columns": {"first_name": "fn"}}}},
                            sources={"n": pl.DataFrame({"id": [7, 8], "fn": ["a", "b"]})}).sources["n"]
    recs = records_from_frame(pl.DataFrame({"id": [7, 8], "fn": ["a", "b"]}), src, {"first_name": "given_name"})
    assert recs["record_id"].to_list() == ["7", "8"]


def test_ids_that_differ_only_by_blanks_are_duplicates() -> None:
    frame = pl.DataFrame({"id": ["a1", " a1"], "fn": ["x", "y"]})
    p = project_from_dict({"store": "s.duckdb", "attributes": {"first_name": "given_name"},
                           "sources": {"n": {"id": "id", "columns": {"first_name": "fn"}}}}, sources={"n": frame})
    with pytest.raises(SourceError) as info:
        load_records(p)
    assert str(info.value) == ("<frame n>: column 'id', record 'a1': duplicate record id (2 rows share 1 id); "
                               "record ids must be unique within a source")


def test_the_tiny_fixture_sources() -> None:
    report = LoadReport()
    recs = load_records(load_project(TINY / "project.yaml"), report=report)
    assert report.rows == {"census": 27, "tax": 18, "benefits": 19}
    assert report.date_formats == {"census.dob": "%m/%d/%Y", "tax.born": "%Y-%m-%d",
                                   "benefits.birth_date": "%d/%m/%Y"}
    assert report.unparsed_dates == {}
    assert recs["birth_date"].str.contains(r"^\d{4}-\d{2}-\d{2}$").all()
    # tax writes "unknown" as placeholders, never blank: none survive cleaning.
    assert not recs["ssn"].is_in(["000000000", "999999999"]).any()
    assert recs.filter(pl.col("source") == "census")["record_id"].to_list()[:3] == ["1", "2", "3"]


def test_dates_are_detected_when_no_format_is_given(tmp_path: Path) -> None:
    text = (TINY / "project.yaml").read_text().replace('    date_format: "%m/%d/%Y"\n', "").replace(
        '    date_format: "%d/%m/%Y"\n', "").replace("path: ", f"path: {TINY}/")
    (tmp_path / "p.yaml").write_text(text)
    report = LoadReport()
    detected = load_records(load_project(tmp_path / "p.yaml"), report=report)
    assert report.date_formats == {"census.dob": "%m/%d/%Y", "tax.born": "%Y-%m-%d",
                                   "benefits.birth_date": "%d/%m/%Y"}
    assert detected["birth_date"].equals(load_records(load_project(TINY / "project.yaml"))["birth_date"])


# ------------------------------------------------------------------ names from a full name
NAMES = {"first_name": "given_name", "last_name": "family_name", "full_name": "full_name"}


def _names(frame: pl.DataFrame, columns: dict) -> list[tuple]:
    p = project_from_dict({"store": "s.duckdb", "attributes": NAMES,
                           "sources": {"s": {"id": "id", "columns": columns}}}, sources={"s": frame})
    return load_records(p).select("first_name", "last_name", "full_name").rows()


def test_given_and_family_come_from_a_full_name_where_a_source_has_only_that() -> None:
    frame = pl.DataFrame({"id": ["1", "2", "3", "4"],
                          "name": ["Mary Ann LEE", "SMITH, John A", "Madonna", None]})
    assert _names(frame, {"full_name": "name"}) == [
        ("mary", "lee", "mary ann lee"), ("john", "smith", "john a smith"), ("madonna", None, "madonna"),
        (None, None, None)]


def test_a_full_name_comes_from_given_and_family_where_a_source_has_those() -> None:
    frame = pl.DataFrame({"id": ["1", "2", "3"], "fn": ["Ann", None, "Bo"], "ln": ["Lee", "Fox", None]})
    assert _names(frame, {"first_name": "fn", "last_name": "ln"}) == [
        ("ann", "lee", "ann lee"), (None, "fox", "fox"), ("bo", None, "bo")]


def test_names_a_source_has_are_never_overwritten() -> None:
    frame = pl.DataFrame({"id": ["1"], "fn": ["Ann"], "ln": [None], "name": ["Mary Lee"]})
    assert _names(frame, {"first_name": "fn", "last_name": "ln", "full_name": "name"}) == [("ann", None, "mary lee")]


def test_the_tiny_benefits_source_gets_given_and_family_names() -> None:
    recs = load_records(load_project(TINY / "project.yaml"))
    benefits = recs.filter(pl.col("source") == "benefits")
    assert benefits["first_name"].null_count() == benefits["full_name"].null_count()
    first = benefits.filter(pl.col("record_id") == "BEN-0000001").select(*NAMES).row(0)
    assert first == ("alexander", "ball", "alexander ball")


# ------------------------------------------------------------------ content hash
def test_the_content_hash_follows_the_cleaned_attributes_only() -> None:
    def hashes(frame: pl.DataFrame) -> list[str]:
        p = project_from_dict({"store": "s.duckdb", "attributes": {"first_name": "given_name", "ssn": "national_id"},
                               "sources": {"s": {"id": "id", "columns": {"first_name": "fn", "ssn": "ssn"}}}},
                              sources={"s": frame})
        return load_records(p)["content_hash"].to_list()

    a = hashes(pl.DataFrame({"id": ["1", "2"], "fn": ["Ann", "Bob"], "ssn": ["219-09-9999", None]}))
    b = hashes(pl.DataFrame({"id": ["1", "2"], "fn": [" ANN ", "Bob"], "ssn": ["219099999", ""]}))
    c = hashes(pl.DataFrame({"id": ["1", "2"], "fn": ["Anne", "Bob"], "ssn": ["219099999", "219099998"]}))
    assert a == b  # same cleaned values, same hash
    assert a[0] != c[0] and a[1] != c[1]
    assert a[0] != a[1] and all(len(h) == 32 for h in a)


def test_extra_columns_are_carried_raw_or_null() -> None:
    recs = load_records(load_project(TINY / "project.yaml"), extra_columns=["true_person", "nowhere"])
    assert recs["true_person"].null_count() == 0
    assert recs["true_person"].str.contains(r"^P\d{6}$").all()
    assert recs["nowhere"].null_count() == recs.height


def _stored_from(loaded):
    """A ``stored`` callable over records loaded before (as the store's reuse index would
    give them: ``record_id``, ``raw_hash``, ``rk``, ``content_hash``; rk = row number)."""
    index = loaded.keys.with_row_index("rk").select("source", "record_id", "raw_hash", pl.col("rk").cast(pl.Int64),
                                                    "content_hash")
    by = {s: f.drop("source") for (s,), f in index.partition_by("source", as_dict=True).items()}
    return lambda name: by[name]


_NOTHING_STORED = pl.DataFrame(schema={"record_id": pl.Utf8, "raw_hash": pl.UInt64, "rk": pl.Int64,
                                       "content_hash": pl.Utf8})


def test_reused_rows_are_not_cleaned_again_and_changed_rows_are() -> None:
    project = load_project(FIXTURES / "demo" / "project.yaml")
    first = load_records(project, stored=lambda name: _NOTHING_STORED)
    plain = load_records(project)
    keys = first.keys
    assert keys["_stored_rk"].null_count() == keys.height  # nothing to reuse: everything cleaned,
    assert first.fresh.equals(plain)  # as with no store at all
    assert keys.select("source", "record_id", "content_hash").equals(plain.select("source", "record_id", "content_hash"))
    # Mark every stored row's content hash, so that a reused row shows; then change one raw row.
    marked = type(first)(keys=keys.with_columns(pl.lit("stored").alias("content_hash")), fresh=first.fresh)
    census = pl.read_csv(FIXTURES / "demo" / "census.csv", infer_schema=False)
    changed_id = census[project.sources["census"].id][0]
    name_col = project.sources["census"].columns["first_name"]
    edited = census.with_columns(pl.when(pl.col(project.sources["census"].id) == changed_id)
                                 .then(pl.lit("  Bartholomew ")).otherwise(pl.col(name_col)).alias(name_col))
    project.sources["census"].frame = edited
    again = load_records(project, stored=_stored_from(marked))
    is_changed = (pl.col("source") == "census") & (pl.col("record_id") == changed_id)
    assert again.fresh.height == 1  # only the changed row was cleaned
    row = again.fresh.row(0, named=True)
    assert (row["source"], row["record_id"], row["first_name"]) == ("census", changed_id, "bartholomew")
    key = again.keys.filter(is_changed).row(0, named=True)
    assert key["content_hash"] == row["content_hash"] != "stored" and key["_stored_rk"] is None
    others = again.keys.filter(~is_changed)
    assert others["content_hash"].unique().to_list() == ["stored"]  # every unchanged row was reused,
    stored_rk = keys.with_row_index("rk").filter(~is_changed)["rk"].cast(pl.Int64)
    assert others["_stored_rk"].equals(stored_rk, check_names=False)  # and named by its stored row
    # The row cleaned now equals cleaning everything again.
    assert again.fresh.equals(load_records(project).filter(is_changed))


def test_a_new_mapping_or_date_format_reuses_nothing() -> None:
    p = project_from_dict({"store": "s.duckdb", "attributes": KINDS,
                           "sources": {"reg": {"id": "id", "columns": COLUMNS, "date_format": "%d/%m/%Y"}}},
                          sources={"reg": RAW})
    before = load_records(p, stored=lambda name: _NOTHING_STORED)
    q = project_from_dict({"store": "s.duckdb", "attributes": KINDS,
                           "sources": {"reg": {"id": "id", "columns": COLUMNS, "date_format": "%m/%d/%Y"}}},
                          sources={"reg": RAW})
    with pytest.raises(SourceError):  # day 25 is no month: the data say the format is wrong
        load_records(q, stored=_stored_from(before))
    swapped = {**COLUMNS, "first_name": COLUMNS["last_name"], "last_name": COLUMNS["first_name"]}
    r = project_from_dict({"store": "s.duckdb", "attributes": KINDS,
                           "sources": {"reg": {"id": "id", "columns": swapped, "date_format": "%d/%m/%Y"}}},
                          sources={"reg": RAW})
    after = load_records(r, stored=_stored_from(before))
    assert set(after.keys["raw_hash"]).isdisjoint(set(before.keys["raw_hash"]))
    assert after.keys["_stored_rk"].null_count() == after.keys.height  # nothing reused
    assert after.fresh.equals(load_records(r))
