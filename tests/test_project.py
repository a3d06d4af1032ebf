"""The project file: the minimal form of issue 2, paths, frames in place of paths, and the
validation of every optional section."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import polars as pl
import pytest

from conftest import FIXTURES, run_cli
from idweave.linkage import ProjectError, link, load_project, project_from_dict
from idweave.linkage.project import Attribute
from idweave.linkage.sources import load_records

# Issue 2's minimal project file, verbatim (comments included).
MINIMAL = """\
store: out/demo.duckdb          # paths are relative to the project file
threshold: 0.9                  # match probability to join records into one entity (optional)
attributes:                     # canonical attribute -> kind
  first_name: given_name
  last_name: family_name
  birth_date: date
  postcode: postcode
  ssn: national_id
sources:
  census:
    path: census.csv            # csv, parquet or ndjson; a glob of several files is allowed
    id: person_no               # column holding the record id, unique within the source
    columns: {first_name: fname, last_name: surname, birth_date: dob, postcode: zip}
    date_format: "%m/%d/%Y"     # optional; common formats are detected when absent
  tax:
    path: tax.parquet
    id: tin_row
    columns: {first_name: given, last_name: family, birth_date: born, ssn: ssn}
    exclusive: true             # optional: at most one record per person in this source
"""

TINY = FIXTURES / "tiny"


@pytest.fixture
def minimal(tmp_path: Path) -> Path:
    """The minimal project file next to the tiny census and tax files."""
    folder = tmp_path / "minimal"
    folder.mkdir()
    for name in ("census.csv", "tax.parquet"):
        shutil.copy(TINY / name, folder / name)
    (folder / "project.yaml").write_text(MINIMAL)
    return folder / "project.yaml"


def test_minimal_form_loads_exactly_as_written(minimal: Path) -> None:
    p = load_project(minimal)
    assert p.attributes == {
        "first_name": Attribute("first_name", "given_name"), "last_name": Attribute("last_name", "family_name"),
        "birth_date": Attribute("birth_date", "date"), "postcode": Attribute("postcode", "postcode"),
        "ssn": Attribute("ssn", "national_id")}
    assert list(p.sources) == ["census", "tax"]
    census, tax = p.sources["census"], p.sources["tax"]
    assert (census.id, census.format, census.date_format, census.exclusive) == ("person_no", "csv", "%m/%d/%Y", False)
    assert census.columns == {"first_name": "fname", "last_name": "surname", "birth_date": "dob", "postcode": "zip"}
    assert (tax.id, tax.format, tax.date_format, tax.exclusive) == ("tin_row", "parquet", None, True)
    assert tax.files == [minimal.parent / "tax.parquet"]
    assert p.store == minimal.parent / "out" / "demo.duckdb"
    assert p.model_file == minimal.parent / "out" / "demo.model.json"
    assert p.threshold == 0.9
    assert (p.engine, p.blocking, p.comparisons, p.training, p.clustering) == ("duckdb", None, None, {}, {})


def test_minimal_form_links_exports_and_explains(minimal: Path, tmp_path: Path) -> None:
    result = run_cli("link", minimal)
    assert result.code == 0, result.err
    assert "records in census" in result.out and "records in tax" in result.out
    out = tmp_path / "entities.csv"
    assert run_cli("export", minimal, "--out", out).code == 0
    df = pl.read_csv(out, infer_schema=False)
    assert df.height == 27 + 18
    # Two tax records are never one entity: the source is exclusive.
    tax_per_entity = df.filter(pl.col("source") == "tax").group_by("entity_id").len()["len"]
    assert tax_per_entity.max() == 1
    explained = run_cli("explain", minimal, "census:1", "tax:T0000001")
    assert explained.code == 0, explained.err
    assert "blocked by:" in explained.out


def test_paths_are_relative_to_the_project_file_not_the_cwd(minimal: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    p = load_project(Path("..") / "minimal" / "project.yaml")
    assert p.sources["census"].files[0].resolve() == (minimal.parent / "census.csv").resolve()
    assert p.store.resolve() == (minimal.parent / "out" / "demo.duckdb").resolve()


def test_absolute_paths_are_kept(minimal: Path, tmp_path: Path) -> None:
    text = MINIMAL.replace("path: census.csv", f"path: {minimal.parent / 'census.csv'}").replace(
        "store: out/demo.duckdb", f"store: {tmp_path / 'abs.duckdb'}")
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(TINY / "tax.parquet", other / "tax.parquet")
    (other / "project.yaml").write_text(text)
    p = load_project(other / "project.yaml")
    assert p.sources["census"].files == [minimal.parent / "census.csv"]
    assert p.store == tmp_path / "abs.duckdb"


def test_a_glob_reads_every_matching_file(tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    lines = (TINY / "census.csv").read_text().splitlines(keepends=True)
    (parts / "census-1.csv").write_text("".join(lines[:11]))  # header + 10 rows
    (parts / "census-2.csv").write_text("".join(lines[:1] + lines[11:]))  # header + 17 rows
    (tmp_path / "p.yaml").write_text(MINIMAL.replace("path: census.csv", "path: parts/census-*.csv")
                                     .replace("path: tax.parquet", f"path: {TINY / 'tax.parquet'}"))
    p = load_project(tmp_path / "p.yaml")
    assert p.sources["census"].files == [parts / "census-1.csv", parts / "census-2.csv"]
    assert p.sources["census"].label == "parts/census-*.csv"
    recs = load_records(p).filter(pl.col("source") == "census")
    assert recs["record_id"].to_list() == [str(i) for i in range(1, 28)]


def test_format_given_explicitly(tmp_path: Path) -> None:
    shutil.copy(TINY / "census.csv", tmp_path / "census.data")
    data = {"store": "s.duckdb", "attributes": {"first_name": "given_name"},
            "sources": {"c": {"path": "census.data", "id": "person_no", "columns": {"first_name": "fname"}}}}
    with pytest.raises(ProjectError) as info:
        project_from_dict(data, base_dir=tmp_path)
    assert info.value.problems == ["sources.c.path: cannot tell the format of census.data; "
                                   "use .csv, .parquet or .ndjson, or set format"]
    data["sources"]["c"]["format"] = "csv"
    assert project_from_dict(data, base_dir=tmp_path).sources["c"].format == "csv"


def test_project_from_dict_resolves_against_base_dir(tmp_path: Path) -> None:
    data = {"store": "out/s.duckdb", "attributes": {"first_name": "given_name"},
            "sources": {"tax": {"path": "tax.parquet", "id": "tin_row", "columns": {"first_name": "given"}}}}
    p = project_from_dict(data, base_dir=TINY)
    assert p.sources["tax"].files == [TINY / "tax.parquet"]
    assert p.store == TINY / "out" / "s.duckdb"
    assert p.file is None


def test_attribute_given_as_a_mapping_with_kind(minimal: Path) -> None:
    p = project_from_dict({"store": "s.duckdb", "attributes": {"dob": {"kind": "date"}},
                           "sources": {"c": {"path": "census.csv", "id": "person_no", "columns": {"dob": "dob"}}}},
                          base_dir=minimal.parent)
    assert p.attributes["dob"] == Attribute("dob", "date")


def test_config_hash_ignores_the_store_but_not_the_settings(minimal: Path) -> None:
    a = load_project(minimal)
    minimal.write_text(MINIMAL.replace("store: out/demo.duckdb", "store: elsewhere.duckdb"))
    b = load_project(minimal)
    minimal.write_text(MINIMAL.replace("threshold: 0.9", "threshold: 0.8"))
    c = load_project(minimal)
    assert a.config_hash() == b.config_hash() != c.config_hash()
    assert len(a.config_hash()) == 16


# ------------------------------------------------------------------ frames in place of paths
def _frames_project() -> dict:
    return {
        "store": "unused.duckdb",
        "attributes": {"first_name": "given_name", "last_name": "family_name", "birth_date": "date",
                       "ssn": "national_id"},
        "sources": {
            "census": {"id": "person_no", "columns": {"first_name": "fname", "last_name": "surname",
                                                      "birth_date": "dob"}, "date_format": "%m/%d/%Y"},
            "tax": {"id": "tin_row", "columns": {"first_name": "given", "last_name": "family", "birth_date": "born",
                                                 "ssn": "ssn"}, "exclusive": True},
        },
    }


def _file_records() -> pl.DataFrame:
    data = _frames_project()
    data["sources"]["census"]["path"] = "census.csv"
    data["sources"]["tax"]["path"] = "tax.parquet"
    return load_records(project_from_dict(data, base_dir=TINY))


@pytest.mark.parametrize("kind", ["polars", "lazy", "pandas", "arrow"])
def test_frames_stand_in_for_paths(kind: str) -> None:
    census = pl.read_csv(TINY / "census.csv", infer_schema=False)
    tax = pl.read_parquet(TINY / "tax.parquet")
    convert = {"polars": lambda f: f, "lazy": lambda f: f.lazy(), "pandas": lambda f: f.to_pandas(),
               "arrow": lambda f: f.to_arrow()}[kind]
    p = project_from_dict(_frames_project(), sources={"census": convert(census), "tax": convert(tax)})
    assert p.sources["census"].files == [] and p.sources["census"].label == "<frame census>"
    assert load_records(p).equals(_file_records())


def test_a_pandas_frame_with_integer_ids() -> None:
    census = pd.read_csv(TINY / "census.csv", dtype={"dob": str})
    assert census["person_no"].dtype.kind == "i"
    data = _frames_project()
    del data["sources"]["tax"]
    p = project_from_dict(data, sources={"census": census})
    recs = load_records(p)
    assert recs["record_id"].to_list()[:3] == ["1", "2", "3"]
    assert recs.filter(pl.col("record_id") == "1")["birth_date"].item() == "1988-02-03"


def test_link_accepts_frames_and_returns_the_entities(tmp_path: Path) -> None:
    data = _frames_project()
    data["store"] = str(tmp_path / "frames.duckdb")
    census = pl.read_csv(TINY / "census.csv", infer_schema=False).to_pandas()
    tax = pl.read_parquet(TINY / "tax.parquet").to_arrow()
    result = link(data, sources={"census": census, "tax": tax})
    assert result.entities.columns == ["source", "record_id", "entity_id"]
    assert result.entities.height == 27 + 18
    assert result.summary["records_per_source"] == {"census": 27, "tax": 18}
    assert (tmp_path / "frames.duckdb").exists()


def test_a_frame_of_the_wrong_type() -> None:
    with pytest.raises(ProjectError) as info:
        project_from_dict(_frames_project(), sources={"census": [1, 2], "tax": pl.read_parquet(TINY / "tax.parquet")})
    assert info.value.problems == [
        "sources.census.path: source 'census' was given a list; "
        "expected a polars, pandas or Arrow table"]


# ------------------------------------------------------------------ optional sections
def _with(**extra) -> dict:
    data = {"store": "s.duckdb", "attributes": {"first_name": "given_name", "birth_date": "date"},
            "sources": {"tax": {"path": "tax.parquet", "id": "tin_row",
                                "columns": {"first_name": "given", "birth_date": "born"}}}}
    data.update(extra)
    return data


def _problems(data: dict) -> list[str]:
    with pytest.raises(ProjectError) as info:
        project_from_dict(data, base_dir=TINY)
    return info.value.problems


def test_every_optional_section_when_valid() -> None:
    p = project_from_dict(_with(
        blocking=[["first_name:metaphone", "birth_date:year"], "birth_date",
                  {"name": "swapped", "keys": ["first_name~first_name"]}],
        comparisons={"first_name": {"method": "jaro_winkler", "thresholds": [0.9]}, "birth_date": "exact"},
        engine="duckdb", model="models/m.json", training={"u_max_pairs": 1000}, clustering={"method": "average"},
    ), base_dir=TINY)
    assert p.blocking[0] == ["first_name:metaphone", "birth_date:year"]
    assert p.comparisons["birth_date"] == "exact"
    assert p.model_file == TINY / "models" / "m.json"
    assert p.training == {"u_max_pairs": 1000} and p.clustering == {"method": "average"}


def test_blocking_problems_name_the_rule() -> None:
    from idweave.blocking import TRANSFORMS

    assert _problems(_with(blocking=[["first_name:metaphone"], ["postcode"], ["birth_date:decade"]])) == [
        "blocking: rule 2: unknown attribute 'postcode'; rule 3: unknown key transform 'decade'; expected one of "
        f"{', '.join(TRANSFORMS)} (e.g. prefix3)"]


def test_comparison_problems() -> None:
    assert _problems(_with(comparisons={"first_name": {"method": "soundex"}, "postcode": "exact",
                                        "birth_date": {"method": "date", "thresholds": "1"}})) == [
        "comparisons.first_name: unknown method 'soundex'; expected one of name, full_name, date, identifier, "
        "postcode, email, phone, address, exact, jaro_winkler, levenshtein, damerau_levenshtein, numeric, off",
        "comparisons.postcode: not a declared attribute",
        "comparisons.birth_date: thresholds must be a list of numbers"]


def test_comparison_switched_off() -> None:
    p = project_from_dict(_with(comparisons={"first_name": False}), base_dir=TINY)
    assert p.comparisons == {"first_name": False}


def test_at_least_one_attribute_is_compared() -> None:
    assert _problems(_with(comparisons={"first_name": "off", "birth_date": {"method": "off"}})) == [
        "comparisons: every attribute is switched off; at least one must be compared"]


def test_engine_training_clustering_and_source_keys() -> None:
    data = _with(engine="spark-sql", training=[1], clustering="average")
    data["sources"]["tax"].update(mode="stream", exclusive="yes", date_format="dd/mm/yyyy")
    assert _problems(data) == [
        "sources.tax.mode: must be 'snapshot' or 'append', got 'stream'",
        "sources.tax.exclusive: must be true or false, got 'yes'",
        "sources.tax.date_format: must be a strftime pattern like '%d/%m/%Y', got 'dd/mm/yyyy'",
        "engine: must be one of duckdb, spark, got 'spark-sql'",
        "training: must be a mapping",
        "clustering: must be a mapping"]


def test_required_sections() -> None:
    assert _problems({}) == [
        "store: required: a path for the identity store (e.g. out/project.duckdb)",
        "attributes: required: a mapping of attribute name -> kind (kinds: given_name, family_name, full_name, "
        "date, sex, category, postcode, address, city, national_id, phone, email, text, number)",
        "sources: required: a mapping of source name -> {path, id, columns}"]


def test_source_needs_path_id_and_columns() -> None:
    assert _problems(_with(sources={"tax": {}, "bad name!": {"path": "x"}})) == [
        "sources.tax.id: required: the column holding the record id",
        "sources.tax.columns: required: a mapping of attribute -> column",
        "sources.tax.path: required: a csv, parquet or ndjson file (or a glob of several)",
        "sources.bad name!: source names may hold letters, digits, '_', '-' and '.' only"]


@pytest.mark.parametrize("name", ["First Name", "record_id", "entity_id", "1st"])
def test_attribute_names(name: str) -> None:
    data = _with()
    data["attributes"][name] = "text"
    assert _problems(data) == [
        f"attributes.{name}: attribute names must be lower_snake_case and not one of "
        "cluster_id, entity_id, match_key, record_id, rid, source, unique_id"]


def test_a_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ProjectError) as info:
        load_project(tmp_path / "p.yaml")
    assert str(info.value) == (f"{tmp_path / 'p.yaml'}: invalid project file: the file must hold a mapping "
                               "(store, attributes, sources, ...)")
