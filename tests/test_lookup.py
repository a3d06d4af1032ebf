"""Lookup: the same cleaning, blocking and model as a batch run, exact scores, nothing written."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import polars as pl
import pytest

from conftest import run_cli, snapshot
from identity_helpers import copy_store, linked_copy, project_copy, raw_frames, read_table
from idweave.linkage import link
from idweave.linkage import model as model_mod
from idweave.linkage import scoring
from idweave.linkage.errors import LookupInputError, StoreError
from idweave.linkage.graph import Store
from idweave.linkage.lookup import Matcher, lookup
from idweave.linkage.project import load_project
from idweave.linkage.sources import load_records


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    project, store, _ = linked_copy("tiny", tmp_path_factory.mktemp("lookup") / "tiny")
    return project, store


ID_COLUMN = {"census": "person_no", "tax": "tin_row", "benefits": "claim_id"}
# (source, record id): records of each source, with and without a match in the others
HELD_OUT = [("census", "1"), ("census", "7"), ("census", "20"), ("tax", "T0000003"), ("tax", "T0000011"),
            ("benefits", "BEN-0000004"), ("benefits", "BEN-0000012"), ("benefits", "BEN-0000019")]


def cleaned(project: Path) -> pl.DataFrame:
    return load_records(load_project(project))


@pytest.mark.parametrize("source,record_id", HELD_OUT)
def test_a_lookup_finds_and_scores_what_a_run_with_the_record_would(tiny, tmp_path, source, record_id) -> None:
    project, template = tiny
    frames = raw_frames(project)
    rec = cleaned(project).filter((pl.col("source") == source) & (pl.col("record_id") == record_id)).row(0, named=True)
    attrs = list(load_project(project).attributes)
    query = {a: rec[a] for a in attrs if rec[a] is not None}
    # A store without the record ...
    without = copy_store(template, tmp_path / "without.duckdb")
    less = {**frames, source: frames[source].filter(pl.col(ID_COLUMN[source]) != record_id)}
    link(project, sources=less, store=without)
    before = snapshot(tmp_path)
    with Matcher(project, store=without) as m:
        q = m.clean(query)
        cands = m.candidates(q.row(0, named=True), source=source)
        got = m.score(q, [(0, rid, rule) for rid, rule in cands.items()]) if cands else None
        found = {} if got is None else {(m._src[r], m._rid_ids[r]): (p, rule) for r, p, rule in
                                        got.select("rid", "match_probability", "rule").iter_rows()}
        rule_names = [r.name for r in m.rules]
    assert snapshot(tmp_path) == before  # a lookup writes nothing
    # ... and the run that adds it back: its links are the pairs and scores a lookup must give.
    link(project, store=without)
    links = read_table(without, "links").filter(pl.col("rule") != "cluster completion").filter(
        ((pl.col("source_l") == source) & (pl.col("record_id_l") == record_id))
        | ((pl.col("source_r") == source) & (pl.col("record_id_r") == record_id)))
    want = {}
    for row in links.iter_rows(named=True):
        other = (row["source_r"], row["record_id_r"]) if (row["source_l"], row["record_id_l"]) == (source, record_id) \
            else (row["source_l"], row["record_id_l"])
        want[other] = (row["match_probability"], row["rule"])
    assert set(found) == set(want)
    for k, (p, rule) in want.items():
        assert found[k][0] == p  # bit for bit
        assert rule_names[found[k][1]] == rule


def test_scores_equal_splink_scoring_the_same_pairs(tiny) -> None:
    project, store = tiny
    recs = cleaned(project).sort("source", "record_id").with_row_index("rid").with_columns(pl.col("rid").cast(pl.Int64))
    attrs = list(load_project(project).attributes)
    with Store.open(store, read_only=True) as st:
        settings, tf, _ = st.latest_model()
    trained = model_mod.TrainedModel(settings, tf)
    comps = [c["output_column_name"] for c in settings["comparisons"]]
    checked = 0
    with Matcher(project, store=store) as m:
        for i in range(0, recs.height, 4):
            rec = recs.row(i, named=True)
            q = m.clean({a: rec[a] for a in attrs if rec[a] is not None})
            cands = m.candidates(q.row(0, named=True))
            if not cands:
                continue
            ours = m.score(q, [(0, rid, rule) for rid, rule in cands.items()]).sort("rid")
            # Splink's own scoring of (this record, each candidate), through model.score_pairs.
            pairs = pl.DataFrame({"rid_l": [rec["rid"]] * len(cands), "rid_r": sorted(cands),
                                  "rule": [0] * len(cands)}, schema={"rid_l": pl.Int64, "rid_r": pl.Int64,
                                                                     "rule": pl.Int32})
            pairs = pairs.filter(pl.col("rid_l") != pl.col("rid_r"))
            ref = scoring.score_pairs(recs, pairs.with_columns(pl.min_horizontal("rid_l", "rid_r").alias("a"),
                                                                 pl.max_horizontal("rid_l", "rid_r").alias("b"))
                                        .select(pl.col("a").alias("rid_l"), pl.col("b").alias("rid_r"), "rule"),
                                        trained)
            ref = ref.with_columns(pl.when(pl.col("rid_l") == rec["rid"]).then(pl.col("rid_r"))
                                   .otherwise(pl.col("rid_l")).alias("rid")).sort("rid")
            ours = ours.filter(pl.col("rid") != rec["rid"])
            assert ours["rid"].to_list() == ref["rid"].to_list()
            for c in comps:
                assert ours[f"level_{c}"].to_list() == ref[f"level_{c}"].to_list()
                assert ours[f"w_{c}"].to_list() == pytest.approx(ref[f"w_{c}"].to_list(), abs=0, rel=0)
            for a, b in zip(ours["match_weight"].to_list(), ref["match_weight"].to_list()):
                assert math.isclose(a, b, rel_tol=0, abs_tol=1e-12)
            for a, b in zip(ours["match_probability"].to_list(), ref["match_probability"].to_list()):
                assert math.isclose(a, b, rel_tol=0, abs_tol=1e-15)
            checked += len(ours)
    assert checked > 50


def test_every_key_of_every_record_is_the_key_blocking_makes(tiny) -> None:
    from idweave.blocking.pairs import key_frame

    project, store = tiny
    with Matcher(project, store=store) as m:
        recs = m.records
        for ri in m._index:
            for side in ("l", "r"):
                want = key_frame(recs, ri.rule, side).group_by("rid").agg(pl.col("key").sort())
                want = {r: k for r, k in want.iter_rows()}
                for rec in recs.iter_rows(named=True):
                    combos = [m._memo_for(k.left if side == "l" else k.right, k.transforms).get(
                        rec[k.left if side == "l" else k.right] if "+" not in (k.left if side == "l" else k.right)
                        else " ".join(str(rec[p]) for p in (k.left if side == "l" else k.right).split("+")
                                      if rec[p] is not None) or None) for k in ri.rule.keys]
                    from itertools import product
                    ours = sorted("\x1f".join(c) for c in product(*combos)) if all(combos) else []
                    assert ours == sorted(want.get(rec["rid"], [])), (ri.rule.name, side, rec["rid"])


def test_a_stored_record_finds_its_own_entity_first(tiny) -> None:
    project, store = tiny
    census = raw_frames(project)["census"].row(0, named=True)
    hit = lookup(project, {"first_name": census["fname"], "last_name": census["surname"],
                           "birth_date": census["dob"], "postcode": census["zip"], "sex": census["sex"]},
                 date_format="%m/%d/%Y")
    own = read_table(store, "records").filter((pl.col("source") == "census") & (pl.col("record_id") == "1"))
    assert hit["entity_id"][0] == own["entity_id"][0]
    assert (hit["rank"][0], hit["source"][0], hit["record_id"][0], bool(hit["is_match"][0])) == (1, "census", "1", True)
    assert hit["level_first_name"][0] == "exact" and hit["level_birth_date"][0] == "exact"
    assert hit["match_probability"].is_sorted(descending=True)
    assert hit["entity_id"].n_unique() == hit.height <= 5


def test_a_dict_a_list_and_frames_give_the_same_answer(tiny) -> None:
    project, _ = tiny
    a = {"first_name": "Jennifer", "last_name": "Walker", "birth_date": "1988-02-03"}
    b = {"full_name": "Gregory Elliott", "postcode": "SW6 0ZE"}
    one = pl.concat([lookup(project, a), lookup(project, b).with_columns(pl.lit(1, pl.Int64).alias("query"))])
    assert lookup(project, [a, b]).equals(one)
    frame = pl.DataFrame([a, b])
    assert lookup(project, frame).equals(one)
    assert lookup(project, pd.DataFrame([a, b])).equals(one)
    assert lookup(project, [a, b], top=1)["rank"].to_list() == [1, 1]


def test_an_exclusive_source_is_not_matched_with_itself(tiny) -> None:
    project, _ = tiny
    tax = raw_frames(project)["tax"].row(0, named=True)
    q = {"first_name": tax["given"], "last_name": tax["family"], "birth_date": tax["born"], "ssn": tax["ssn"]}
    assert "tax" in set(lookup(project, q, top=50)["source"])
    assert "tax" not in set(lookup(project, q, top=50, source="tax")["source"])


@pytest.mark.parametrize("records,message", [
    ({"first_nam": "Ann"}, "column 'first_nam': unknown attribute 'first_nam'"),
    ([{"first_name": "Ann"}, {"first_nam": "Ann"}], "query record 2, column 'first_nam': unknown attribute"),
    ({}, "the record names no attribute; the project's attributes are first_name, last_name,"),
    ("Ann", "give a record as a mapping of attribute -> value"),
    ({"birth_date": "not a date"}, "column 'birth_date'"),
])
def test_bad_records_are_refused_with_the_place(tiny, records, message) -> None:
    with pytest.raises(LookupInputError) as err:
        lookup(tiny[0], records)
    assert message in str(err.value)
    assert "not a date" not in str(err.value)  # never the value


def test_lookup_needs_a_store(tmp_path: Path) -> None:
    project = project_copy("tiny", tmp_path / "fresh")
    with pytest.raises(StoreError, match="no store yet: run `idweave link` first"):
        lookup(project, {"first_name": "ann"})


def test_the_lookup_command(tiny) -> None:
    project, store = tiny
    own = read_table(store, "records").filter((pl.col("source") == "tax") & (pl.col("record_id") == "T0000001"))
    tax = raw_frames(project)["tax"].row(0, named=True)
    r = run_cli("lookup", project, "--record",
                f'{{"first_name": "{tax["given"]}", "last_name": "{tax["family"]}", "birth_date": "{tax["born"]}"}}')
    assert r.code == 0, r.err
    first = [line for line in r.out.splitlines() if line.startswith("│")][0]
    assert first.split("│")[1].strip() == "1" and own["entity_id"][0] in first
    bad = run_cli("lookup", project, "--record", "{not json")
    assert bad.code == 2 and bad.error.startswith("Error: --record is not valid JSON")
    unknown = run_cli("lookup", project, "--record", '{"shoe_size": "9"}')
    assert unknown.code == 2 and "unknown attribute 'shoe_size'" in unknown.error
    # No stored record shares a blocking key with a lone first name: nothing to print.
    none = run_cli("lookup", project, "--record", '{"first_name": "zzzz"}')
    assert (none.code, none.out.strip()) == (0, "no candidate: no stored record shares a blocking key with this record")
    js = run_cli("lookup", project, "--record", '[{"first_name": "zzzz"}]', "--json")
    assert (js.code, js.out) == (0, "")
