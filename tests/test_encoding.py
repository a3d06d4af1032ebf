"""Sources in another encoding: the ``encoding`` source key (latin-1, cp1252, utf-16 ...).

polars reads UTF-8 only, so a CSV or NDJSON source with an ``encoding`` is read through a
UTF-8 copy made in bounded chunks. The project file names the encoding by a codec name
Python knows; a byte that is not valid in it is one clear error naming the file and line.
All files are written in tmp_path from the tiny fixture.
"""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import polars as pl
import pytest
import yaml

from conftest import copy_fixture, run_cli
from identity_helpers import read_table
from idweave.linkage import SourceError, link, load_project
from idweave.linkage import readers
from idweave.linkage.readers import read_source, source_schema, utf8_copy
from idweave.linkage.sources import load_records

CENSUS_COLS = ["person_no", "fname", "surname", "dob", "zip", "sex"]


def twin(tmp_path: Path, name: str, encoding: str | None, *, bom: bool = False) -> Path:
    """The tiny fixture with its census CSV re-encoded in ``encoding`` (and the key set)."""
    project = copy_fixture("tiny", tmp_path / name)
    census = project.parent / "census.csv"
    text = census.read_text(encoding="utf-8")
    if encoding is not None:
        census.write_bytes(text.encode(encoding))
    data = yaml.safe_load(project.read_text())
    if encoding is not None:
        data["sources"]["census"]["encoding"] = encoding
    project.write_text(yaml.safe_dump(data, sort_keys=False))
    return project


def set_encoding(project: Path, source: str, value: object) -> None:
    data = yaml.safe_load(project.read_text())
    data["sources"][source]["encoding"] = value
    project.write_text(yaml.safe_dump(data, sort_keys=False))


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ reading
@pytest.mark.parametrize("encoding", ["latin-1", "cp1252", "utf-16", "utf-8-sig", "utf-8"])
def test_a_census_in_another_encoding_reads_as_its_utf8_twin(tmp_path: Path, encoding: str) -> None:
    plain = load_project(twin(tmp_path, "plain", None)).sources["census"]
    other = load_project(twin(tmp_path, "other", encoding)).sources["census"]
    assert other.encoding == encoding
    if encoding != "utf-8":
        raw = other.files[0].read_bytes()
        assert raw != plain.files[0].read_bytes()  # the file really is in the other encoding
    assert source_schema(other) == source_schema(plain)
    got, want = read_source(other, CENSUS_COLS), read_source(plain, CENSUS_COLS)
    assert got.equals(want)
    assert "RENÉE" in got["fname"].to_list() and "José" in got["fname"].to_list()


def test_latin1_names_clean_and_link_like_their_utf8_twin(tmp_path: Path) -> None:
    plain, latin = twin(tmp_path, "plain", None), twin(tmp_path, "latin", "latin-1")
    assert b"\xc9" in (latin.parent / "census.csv").read_bytes()  # É in latin-1, one byte
    want = load_records(load_project(plain)).sort("source", "record_id")
    got = load_records(load_project(latin)).sort("source", "record_id")
    assert got.equals(want)  # cleaned names (accents folded the same way), content hashes
    link(plain)
    link(latin)
    parts = []
    for project in (plain, latin):
        recs = read_table(project.parent / "out" / "tiny.duckdb", "records")
        groups = recs.group_by("entity_id").agg(pl.concat_str("source", pl.lit(":"), "record_id").alias("r"))
        parts.append({frozenset(g) for g in groups["r"].to_list()})
        cols = [c for c in recs.columns if c != "entity_id"]
        parts.append(recs.select(cols).sort("source", "record_id"))
    assert parts[0] == parts[2]  # the same entities
    assert parts[1].equals(parts[3])  # the same stored records


def test_an_ndjson_source_in_latin1(tmp_path: Path) -> None:
    project = copy_fixture("tiny", tmp_path / "t")
    ndjson = project.parent / "benefits.ndjson"
    want = read_source(load_project(project).sources["benefits"], ["claim_id", "full_name"])
    text = ndjson.read_text(encoding="utf-8")
    # json.dumps escapes non-ASCII; put real accented letters in so the encoding matters.
    text = text.replace('"full_name": "', '"full_name": "Zoë ', 1).replace('"full_name":"', '"full_name":"Zoë ', 1)
    ndjson.write_bytes(text.encode("latin-1"))
    set_encoding(project, "benefits", "latin-1")
    got = read_source(load_project(project).sources["benefits"], ["claim_id", "full_name"])
    assert got["claim_id"].equals(want["claim_id"])
    assert got["full_name"][0].startswith("Zoë ")


def test_a_byte_invalid_in_the_declared_encoding_names_file_and_line(tmp_path: Path) -> None:
    project = twin(tmp_path, "bad", "cp1252")
    census = project.parent / "census.csv"
    lines = census.read_bytes().split(b"\n")
    lines[6] = lines[6].replace(b",", b",\x81", 1)  # 0x81 has no character in cp1252
    census.write_bytes(b"\n".join(lines))
    before = digest(project.parent)
    r = run_cli("link", project)
    assert r.code == 2
    assert r.error.endswith("invalid project file: sources.census.path: census.csv: the file is not valid cp1252 "
                            "text: a byte at line 7 cannot be decoded; check the source's encoding")
    assert "Traceback" not in r.err
    first = lines[6].split(b",")[1].decode("cp1252", "replace").strip("\ufffd")
    assert first and first not in r.err  # no value from the file
    assert digest(project.parent) == before  # no store, nothing written
    assert not (project.parent / "out").exists() or not list((project.parent / "out").iterdir())


def test_the_line_is_right_across_chunk_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "_CHUNK", 7)  # multi-byte characters and line breaks split between reads
    f = tmp_path / "x.csv"
    rows = ["id,name"] + [f"{i},Zoë Ærøskøbing" for i in range(40)]
    f.write_bytes("\n".join(rows).encode("utf-16"))
    assert utf8_copy(f, "utf-16").read_text(encoding="utf-8") == "\n".join(rows)
    raw = bytearray("\n".join(rows).encode("utf-16"))
    at = raw.index("\n".join(rows[:30]).encode("utf-16-le"), 2) + len("\n".join(rows[:30]).encode("utf-16-le")) + 2
    raw[at:at + 2] = b"\x00\xdc"  # a lone low surrogate, on line 31
    f.write_bytes(bytes(raw))
    with pytest.raises(SourceError) as err:
        utf8_copy(f, "utf-16")
    assert "line 31" in str(err.value) and "x.csv" in str(err.value)


def test_an_ascii_source_with_a_high_byte(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_bytes(b"id,name\n1,Ann\n2,Bob\n3,Ren\xe9e\n")
    with pytest.raises(SourceError, match=r"^a\.csv: the file is not valid ascii text: a byte at line 4 "):
        utf8_copy(f, "ascii")


def test_the_copy_is_private_made_once_and_remade_when_the_file_changes(tmp_path: Path) -> None:
    f = tmp_path / "p.csv"
    f.write_bytes("id,name\n1,Renée\n".encode("latin-1"))
    first = utf8_copy(f, "latin-1")
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    assert stat.S_IMODE(first.parent.stat().st_mode) == 0o700
    assert utf8_copy(f, "latin1") == first  # the same codec under another name: the same copy
    f.write_bytes("id,name\n1,Renée\n2,Zoë\n".encode("latin-1"))
    second = utf8_copy(f, "latin-1")
    assert second.read_text(encoding="utf-8") == "id,name\n1,Renée\n2,Zoë\n"


def test_without_the_key_a_latin1_file_is_refused_and_the_message_says_what_to_do(tmp_path: Path) -> None:
    project = twin(tmp_path, "nokey", "latin-1")
    set_encoding(project, "census", None)
    data = yaml.safe_load(project.read_text())
    del data["sources"]["census"]["encoding"]
    project.write_text(yaml.safe_dump(data, sort_keys=False))
    r = run_cli("link", project)
    assert r.code == 2
    assert "census.csv" in r.error and "not UTF-8 text" in r.error and "encoding: latin-1" in r.error
    assert "RENÉE" not in r.err and "Ren" not in r.err


# ------------------------------------------------------------------ the project file
@pytest.mark.parametrize("value, message", [
    ("latin-9x", "sources.census.encoding: unknown encoding 'latin-9x'; use a name Python knows "
                 "(e.g. latin-1, cp1252, utf-16)"),
    ("", "sources.census.encoding: must be the name of a text encoding (e.g. latin-1, cp1252, utf-16), got ''"),
    (5, "sources.census.encoding: must be the name of a text encoding (e.g. latin-1, cp1252, utf-16), got 5"),
    (["latin-1"], "sources.census.encoding: must be the name of a text encoding"),
    ("rot13", "sources.census.encoding: 'rot13' is not a text encoding"),
    ("base64", "sources.census.encoding: 'base64' is not a text encoding"),
    ("utf\x00-8", "sources.census.encoding: unknown encoding 'utf\\x00-8'"),  # shown escaped
])
def test_a_bad_encoding_name_is_refused_by_key(tmp_path: Path, value: object, message: str) -> None:
    project = copy_fixture("tiny", tmp_path / "t")
    set_encoding(project, "census", value)
    before = digest(project.parent)
    r = run_cli("link", project)
    assert r.code == 2, r.err
    assert message in r.error
    assert "Traceback" not in r.err
    assert digest(project.parent) == before


def test_encoding_on_a_parquet_source_is_refused(tmp_path: Path) -> None:
    project = copy_fixture("tiny", tmp_path / "t")
    set_encoding(project, "tax", "latin-1")
    r = run_cli("link", project)
    assert r.code == 2
    assert "sources.tax.encoding: only for CSV and NDJSON files (Parquet text is always UTF-8)" in r.error
