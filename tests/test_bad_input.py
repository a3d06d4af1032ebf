"""Bad input: one test per case. Each checks the CLI exits with 2, prints one exact message
naming the file, key, column and record id (never a data value), and leaves no store behind
(or an existing store byte for byte as it was).

The broken inputs are the small files in fixtures/bad/ (see its README), copied to a temp
folder; each test writes the project file it needs next to them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES, run_cli, snapshot, store_files
from idweave.linkage import ProjectError, SourceError, link, load_project

KINDS = ("given_name, family_name, full_name, date, sex, category, postcode, address, city, "
         "national_id, phone, email, text, number")
TOP_KEYS = "attributes, blocking, clustering, comparisons, engine, erasure, model, privacy, sources, spark, store, survivorship, threshold, training"

VALID = """\
store: out/bad.duckdb
threshold: 0.9
attributes:
  first_name: given_name
  last_name: family_name
  birth_date: date
sources:
  people:
    path: {path}
    id: id
    columns: {{first_name: first, last_name: last, birth_date: born}}
"""


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    """A copy of fixtures/bad; tests write their project.yaml into it."""
    folder = tmp_path / "bad"
    shutil.copytree(FIXTURES / "bad", folder)
    return folder


def project(folder: Path, text: str) -> Path:
    p = folder / "project.yaml"
    p.write_text(text)
    return p


def fails(folder: Path, *args: object) -> str:
    """Run idweave; assert exit 2 and that no store file exists; return the message."""
    result = run_cli(*args)
    assert result.code == 2, (result.code, result.err)
    assert "Traceback" not in result.err
    assert store_files(folder) == []
    assert not (folder / "out").exists()
    return result.error


def test_the_valid_project_loads(bad: Path) -> None:
    # The baseline each test breaks: it must itself be fine.
    p = load_project(project(bad, VALID.format(path="people.csv")))
    assert sorted(p.sources) == ["people"]


def test_missing_project_file(bad: Path) -> None:
    missing = bad / "nope.yaml"
    assert fails(bad, "link", missing) == f"Error: {missing}: invalid project file: project file not found: {missing}"


def test_missing_source_file(bad: Path) -> None:
    p = project(bad, VALID.format(path="nowhere.csv"))
    assert fails(bad, "link", p) == (
        f"Error: {p}: invalid project file: sources.people.path: file not found: {bad / 'nowhere.csv'}")


def test_glob_matching_no_file(bad: Path) -> None:
    p = project(bad, VALID.format(path="parts/*.csv"))
    assert fails(bad, "link", p) == (
        f"Error: {p}: invalid project file: sources.people.path: no file matches {bad / 'parts/*.csv'}")


def test_missing_column_lists_the_columns_the_file_has(bad: Path) -> None:
    p = project(bad, VALID.format(path="people.csv").replace("first_name: first", "first_name: fname"))
    assert fails(bad, "link", p) == (
        f"Error: {p}: invalid project file: sources.people.columns.first_name: column 'fname' not in "
        "people.csv; found: id, first, last, born")


def test_missing_id_column(bad: Path) -> None:
    p = project(bad, VALID.format(path="people.csv").replace("id: id", "id: person_no"))
    assert fails(bad, "link", p) == (
        f"Error: {p}: invalid project file: sources.people.id: column 'person_no' not in people.csv; "
        "found: id, first, last, born")


def test_duplicate_record_ids(bad: Path) -> None:
    p = project(bad, VALID.format(path="dup_ids.csv"))
    assert fails(bad, "link", p) == (
        "Error: dup_ids.csv: column 'id', record 'p2': duplicate record id (2 rows share 1 id); "
        "record ids must be unique within a source")


def test_null_record_ids(bad: Path) -> None:
    p = project(bad, VALID.format(path="null_ids.csv"))
    assert fails(bad, "link", p) == (
        "Error: null_ids.csv: column 'id': 1 record(s) have an empty id, first at data row 2")


def test_empty_source(bad: Path) -> None:
    p = project(bad, VALID.format(path="header_only.csv"))
    assert fails(bad, "link", p) == "Error: header_only.csv: the source has no rows"


def test_empty_file(bad: Path) -> None:
    p = project(bad, VALID.format(path="no_bytes.csv"))
    assert fails(bad, "link", p) == (
        f"Error: {p}: invalid project file: sources.people.path: no_bytes.csv is empty (not even a header row)")


def test_unparseable_date_column(bad: Path) -> None:
    p = project(bad, VALID.format(path="bad_dates.csv"))
    # Names the first record whose date fails, never the value itself.
    assert fails(bad, "link", p) == (
        "Error: bad_dates.csv: column 'born', record 'p1': dates do not parse with any common format "
        '(2 of 3 values fail) (set date_format on the source, e.g. date_format: "%d/%m/%Y")')


def test_dates_not_in_the_declared_format(bad: Path) -> None:
    text = VALID.format(path="people.csv").replace("    id: id\n", '    id: id\n    date_format: "%d/%m/%Y"\n')
    p = project(bad, text)
    assert fails(bad, "link", p) == (
        "Error: people.csv: column 'born', record 'p1': dates do not parse with format '%d/%m/%Y' "
        "(3 of 3 values fail) (check the source's date_format)")


def test_unknown_kind(bad: Path) -> None:
    p = project(bad, VALID.format(path="people.csv").replace("birth_date: date", "birth_date: birthday"))
    assert fails(bad, "link", p) == (
        f"Error: {p}: invalid project file: attributes.birth_date: unknown kind 'birthday'; expected one of {KINDS}")


def test_malformed_yaml(bad: Path) -> None:
    p = project(bad, "store: out/bad.duckdb\nattributes: {first_name: given_name\nsources: {}\n")
    assert fails(bad, "link", p) == (
        f"Error: {p}: invalid project file: malformed YAML at line 3, column 8: expected ',' or '}}', but got ':'")


def test_unwritable_store_whose_folder_is_a_file(bad: Path) -> None:
    # Tests run as root in CI, where chmod stops nothing: a folder that is a file stops root too.
    (bad / "taken").write_text("a file, not a folder\n")
    p = project(bad, VALID.format(path="people.csv").replace("store: out/bad.duckdb", "store: taken/bad.duckdb"))
    assert fails(bad, "link", p) == (
        f"Error: {p}: invalid project file: store: cannot create {bad / 'taken/bad.duckdb'}: "
        f"{bad / 'taken'} is a file, not a folder")
    assert (bad / "taken").read_text() == "a file, not a folder\n"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_unwritable_store_where_no_folder_can_be_made(bad: Path) -> None:
    p = project(bad, VALID.format(path="people.csv").replace("store: out/bad.duckdb",
                                                             "store: /proc/idweave-test/bad.duckdb"))
    assert fails(bad, "link", p) == "Error: cannot create, read or write /proc/idweave-test: No such file or directory"


def test_store_path_that_is_a_folder(bad: Path) -> None:
    (bad / "stores").mkdir()
    p = project(bad, VALID.format(path="people.csv").replace("store: out/bad.duckdb", "store: stores"))
    assert fails(bad, "link", p) == (
        f"Error: {p}: invalid project file: store: {bad / 'stores'} is a folder; "
        f"give a file path such as {bad / 'stores/project.duckdb'}")


def test_attribute_mapped_but_not_declared(bad: Path) -> None:
    p = project(bad, VALID.format(path="people.csv").replace("birth_date: born}", "birth_date: born, postcode: zip}"))
    assert fails(bad, "link", p) == (
        f"Error: {p}: invalid project file: sources.people.columns.postcode: not a declared attribute; "
        "declared: first_name, last_name, birth_date")


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2", "high", "true"])
def test_threshold_out_of_range(bad: Path, value: str) -> None:
    p = project(bad, VALID.format(path="people.csv").replace("threshold: 0.9", f"threshold: {value}"))
    shown = {"high": "'high'", "true": "True"}.get(value, value)
    assert fails(bad, "link", p) == (
        f"Error: {p}: invalid project file: threshold: must be a match probability between 0 and 1 "
        f"(exclusive), got {shown}")


def test_unknown_engine(bad: Path) -> None:
    p = project(bad, VALID.format(path="people.csv") + "engine: sqlite\n")
    assert fails(bad, "link", p) == (
        f"Error: {p}: invalid project file: engine: must be one of duckdb, spark, got 'sqlite'")


def test_bad_spark_section(bad: Path) -> None:
    p = project(bad, VALID.format(path="people.csv") + "engine: spark\nspark:\n  master: ''\n  conf: [1]\n")
    assert fails(bad, "link", p) == (
        f"Error: {p}: invalid project file (2 problems):\n"
        "  - spark.master: must be a Spark master URL such as local[*] or yarn, got a string\n"
        "  - spark.conf: must be a mapping of Spark setting -> value, got a list")


def test_unknown_top_level_key(bad: Path) -> None:
    p = project(bad, VALID.format(path="people.csv").replace("threshold: 0.9", "treshold: 0.9"))
    assert fails(bad, "link", p) == f"Error: {p}: invalid project file: treshold: unknown key; expected one of {TOP_KEYS}"


def test_unknown_source_key(bad: Path) -> None:
    p = project(bad, VALID.format(path="people.csv").replace("    id: id\n", "    id: id\n    exclusve: true\n"))
    assert fails(bad, "link", p) == (
        f"Error: {p}: invalid project file: sources.people.exclusve: unknown key; expected one of "
        "columns, date_format, encoding, exclusive, format, id, mode, path")


def test_blocking_rule_with_brackets_is_printed_whole(bad: Path) -> None:
    # The message quotes "[first_name:metaphone, birth_date]": it must not be eaten as markup.
    p = project(bad, VALID.format(path="people.csv") + "blocking: first_name\n")
    assert fails(bad, "link", p) == (
        f"Error: {p}: invalid project file: blocking: must be a list of rules, each a list of keys like "
        "[first_name:metaphone, birth_date]")


def test_every_problem_of_the_file_is_reported_at_once(bad: Path) -> None:
    text = (VALID.format(path="people.csv")
            .replace("threshold: 0.9", "threshold: 2")
            .replace("birth_date: date", "birth_date: birthday")
            .replace("first_name: first", "first_name: fname"))
    p = project(bad, text)
    assert fails(bad, "link", p) == (
        f"Error: {p}: invalid project file (3 problems):\n"
        "  - threshold: must be a match probability between 0 and 1 (exclusive), got 2\n"
        f"  - attributes.birth_date: unknown kind 'birthday'; expected one of {KINDS}\n"
        "  - sources.people.columns.first_name: column 'fname' not in people.csv; found: id, first, last, born")


def test_problems_of_several_sources_are_reported_at_once(bad: Path) -> None:
    text = VALID.format(path="dup_ids.csv") + (
        "  more:\n    path: bad_dates.csv\n    id: id\n    columns: {first_name: first, birth_date: born}\n"
        "  none:\n    path: header_only.csv\n    id: id\n    columns: {first_name: first}\n")
    p = project(bad, text)
    assert fails(bad, "link", p) == (
        "Error: 3 problems in the sources:\n"
        "  - dup_ids.csv: column 'id', record 'p2': duplicate record id (2 rows share 1 id); "
        "record ids must be unique within a source\n"
        "  - bad_dates.csv: column 'born', record 'p1': dates do not parse with any common format "
        '(2 of 3 values fail) (set date_format on the source, e.g. date_format: "%d/%m/%Y")\n'
        "  - header_only.csv: the source has no rows")


def test_read_only_commands_validate_the_same_way(bad: Path) -> None:
    p = project(bad, VALID.format(path="people.csv").replace("birth_date: date", "birth_date: birthday"))
    expected = f"Error: {p}: invalid project file: attributes.birth_date: unknown kind 'birthday'; expected one of {KINDS}"
    assert fails(bad, "count-pairs", p) == expected
    assert fails(bad, "export", p, "--out", bad / "e.csv") == expected
    assert fails(bad, "explain", p, "people:p1", "people:p2") == expected
    assert fails(bad, "evaluate", p, "--truth", "x") == expected
    assert not (bad / "e.csv").exists()


def test_export_before_any_link(bad: Path) -> None:
    p = project(bad, VALID.format(path="people.csv"))
    assert fails(bad, "export", p, "--out", bad / "e.csv") == (
        f"Error: {bad / 'out/bad.duckdb'}: no store yet: run `idweave link` first")


# ----------------------------------------------------------------- an existing store
def _dup_census(folder: Path) -> None:
    lines = (folder / "census.csv").read_text().splitlines(keepends=True)
    (folder / "census.csv").write_text("".join(lines + [lines[1]]))  # record 1 again


def _bad_census_dates(folder: Path) -> None:
    p = folder / "project.yaml"
    p.write_text(p.read_text().replace("%m/%d/%Y", "%Y-%m-%d"))


def _unknown_kind(folder: Path) -> None:
    p = folder / "project.yaml"
    p.write_text(p.read_text().replace("sex: sex\n", "sex: gender\n", 1))


def _malformed(folder: Path) -> None:
    p = folder / "project.yaml"
    p.write_text(p.read_text().replace("attributes:", "attributes: [", 1))


def _missing_column(folder: Path) -> None:
    p = folder / "project.yaml"
    p.write_text(p.read_text().replace("last_name: surname", "last_name: family_name", 1))


def _missing_file(folder: Path) -> None:
    (folder / "tax.parquet").unlink()


def _empty_source(folder: Path) -> None:
    lines = (folder / "census.csv").read_text().splitlines(keepends=True)
    (folder / "census.csv").write_text(lines[0])


@pytest.mark.parametrize("breakage, message", [
    (_dup_census, "Error: census.csv: column 'person_no', record '1': duplicate record id (2 rows share 1 id); "
                  "record ids must be unique within a source"),
    (_bad_census_dates, "Error: census.csv: column 'dob', record '1': dates do not parse with format '%Y-%m-%d' "
                        "(26 of 26 values fail) (check the source's date_format)"),
    (_unknown_kind, "attributes.sex: unknown kind 'gender'"),
    (_malformed, "malformed YAML at line"),
    (_missing_column, "sources.census.columns.last_name: column 'family_name' not in census.csv; "
                      "found: person_no, fname, surname, dob, zip, sex, true_person"),
    (_missing_file, "sources.tax.path: file not found: "),
    (_empty_source, "Error: census.csv: the source has no rows"),
], ids=["duplicate ids", "bad dates", "unknown kind", "malformed yaml", "missing column", "missing file",
        "empty source"])
def test_existing_store_is_unchanged(linked_copy: Path, breakage, message: str) -> None:
    folder = linked_copy.parent
    before = snapshot(folder)
    assert sorted(before) == ["out/tiny.duckdb", "out/tiny.model.json"]
    breakage(folder)
    for args in (["link", linked_copy], ["link", "--retrain", linked_copy]):
        result = run_cli(*args)
        assert result.code == 2, result.err
        assert message in result.error
        assert result.error.startswith("Error: ")
        assert snapshot(folder) == before


# ----------------------------------------------------------------- library and console script
def test_library_raises_one_error_listing_every_problem(bad: Path) -> None:
    p = project(bad, VALID.format(path="people.csv").replace("threshold: 0.9", "threshold: 2")
                .replace("birth_date: date", "birth_date: birthday"))
    with pytest.raises(ProjectError) as info:
        load_project(p)
    assert info.value.problems == [
        "threshold: must be a match probability between 0 and 1 (exclusive), got 2",
        f"attributes.birth_date: unknown kind 'birthday'; expected one of {KINDS}",
    ]
    assert info.value.file == str(p)


def test_library_names_file_column_and_record(bad: Path) -> None:
    with pytest.raises(SourceError) as info:
        link(project(bad, VALID.format(path="dup_ids.csv")))
    err = info.value
    assert (err.file, err.column, err.row) == ("dup_ids.csv", "id", "p2")
    assert store_files(bad) == []


def test_frame_given_for_an_undeclared_source(bad: Path) -> None:
    import polars as pl

    frame = pl.read_csv(bad / "people.csv")
    with pytest.raises(ProjectError) as info:
        load_project(project(bad, VALID.format(path="people.csv")), sources={"peeple": frame})
    assert info.value.problems == ["sources.peeple: a frame was given for a source the project does not declare"]


def test_frame_missing_a_mapped_column(bad: Path) -> None:
    import polars as pl

    frame = pl.read_csv(bad / "people.csv").drop("born")
    with pytest.raises(ProjectError) as info:
        load_project(project(bad, VALID.format(path="people.csv")), sources={"people": frame})
    assert info.value.problems == [
        "sources.people.columns.birth_date: column 'born' not in <frame people>; found: id, first, last"]


def test_console_script_exits_2_without_traceback(bad: Path) -> None:
    p = project(bad, VALID.format(path="dup_ids.csv"))
    script = Path(sys.executable).with_name("idweave")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "idweave.cli.app"]
    proc = subprocess.run([*cmd, "link", str(p)], capture_output=True, text=True, cwd=bad, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith(
        "Error: dup_ids.csv: column 'id', record 'p2': duplicate record id (2 rows share 1 id); "
        "record ids must be unique within a source")
    assert proc.stdout == ""
    assert store_files(bad) == []


def test_debug_shows_the_traceback(bad: Path) -> None:
    # In-process, --debug lets the error propagate (the console script then prints it whole).
    p = project(bad, VALID.format(path="dup_ids.csv"))
    with pytest.raises(SourceError):
        run_cli("--debug", "link", p)
    assert store_files(bad) == []
