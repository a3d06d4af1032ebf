"""End-to-end tests of the `idweave` commands on fixtures/tiny (copied to a temp folder).

The tiny fixture is linked once per session (``linked_tiny``, which trains the model); the
read-only commands run on that store, and commands that change a store run on a copy.
What the model decides (links, entities) is the lead's to tune, so these tests pin what the
fixture fixes (record counts, ids, cleaned values, possible pairs, true entities) and check
that every printed figure agrees with the library function the command wraps.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from conftest import Linked, run_cli, store_files
from conftest import table_rows

RECORDS = {"census": 27, "tax": 18, "benefits": 19}
ATTRIBUTES = ["first_name", "last_name", "full_name", "birth_date", "sex", "postcode", "ssn", "phone", "email"]


def two_column(text: str) -> dict[str, str]:
    return {r[0]: r[1] for r in table_rows(text) if len(r) == 2}


# ------------------------------------------------------------------------------ link
def test_link_prints_the_summary(linked_tiny: Linked) -> None:
    out = linked_tiny.link.out
    assert "idweave link: run 1" in out
    summary = two_column(out.split("entity sizes")[0])
    assert [k for k in summary if k.startswith("records in")] == [f"records in {s}" for s in RECORDS]
    for source, n in RECORDS.items():
        assert summary[f"records in {source}"] == str(n)
    assert summary["threshold"] == "0.9"
    assert summary["model"].endswith("(trained)")
    assert list(summary)[-1] == "events"
    # Entity sizes add up to the records and to the entities.
    sizes = two_column(out.split("entity sizes")[1].split("time per stage")[0])
    assert sum(int(k) * int(v) for k, v in sizes.items()) == sum(RECORDS.values())
    assert sum(int(v) for v in sizes.values()) == int(summary["entities"])
    stages = two_column(out.split("time per stage")[1])
    assert list(stages)[0] == "load" and list(stages)[-1] == "store"
    assert {"block", "train", "score", "cluster"} <= set(stages)
    # Without a terminal, each finished stage is one line on stderr (no progress bars).
    assert [line.split(":")[0].strip() for line in linked_tiny.link.err.splitlines()] == list(stages)
    assert store_files(linked_tiny.folder) == [linked_tiny.store, linked_tiny.folder / "out" / "tiny.model.json"]


def test_link_again_reuses_the_model_and_prints_json(linked_tiny: Linked, linked_copy: Path) -> None:
    first = two_column(linked_tiny.link.out)
    result = run_cli("link", "--json", linked_copy)
    assert result.code == 0, result.err
    s = json.loads(result.out)
    assert s["run_id"] == 2
    assert s["records_per_source"] == RECORDS
    assert s["records"] == 64
    assert s["retrained"] is False
    assert s["threshold"] == 0.9 and s["threshold_chosen"] is False
    assert s["date_formats"] == {"census.dob": "%m/%d/%Y", "tax.born": "%Y-%m-%d", "benefits.birth_date": "%d/%m/%Y"}
    assert s["unparsed_dates"] == {}
    assert str(s["entities"]) == first["entities"]
    assert f"{s['candidate_pairs']:,} ({s['pairs_per_record']} per record)" == first["candidate pairs"]
    assert sum(s["pairs_per_rule"]) == s["candidate_pairs"]
    assert len(s["pairs_per_rule"]) == len(s["rules"])
    assert sum(int(k) * v for k, v in s["entity_sizes"].items()) == 64


def test_link_threshold_option(linked_copy: Path) -> None:
    result = run_cli("link", "--json", "--threshold", "0.5", linked_copy)
    assert result.code == 0, result.err
    s = json.loads(result.out)
    assert s["threshold"] == 0.5
    looser = s["entities"]
    result = run_cli("link", "--json", "--threshold", "0.999", linked_copy)
    assert json.loads(result.out)["entities"] >= looser


def test_link_retrain(linked_copy: Path) -> None:
    result = run_cli("link", "--json", "--retrain", linked_copy)
    assert result.code == 0, result.err
    s = json.loads(result.out)
    assert s["retrained"] is True
    # Training is seeded: the same data gives the same model.
    model = json.loads((linked_copy.parent / "out" / "tiny.model.json").read_text())
    assert model["link_type"] == "dedupe_only"
    assert [c["output_column_name"] for c in model["comparisons"]] == [
        a for a in ATTRIBUTES if a != "full_name"]


# ------------------------------------------------------------------------------ export
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize("with_attributes", [False, True], ids=["ids", "with-attributes"])
def test_export(linked_tiny: Linked, tmp_path: Path, suffix: str, with_attributes: bool) -> None:
    out = tmp_path / f"entities{suffix}"
    args = ["export", linked_tiny.project, "--out", out] + (["--with-attributes"] if with_attributes else [])
    result = run_cli(*args)
    assert result.code == 0, result.err
    df = pl.read_csv(out, infer_schema=False) if suffix == ".csv" else pl.read_parquet(out)
    assert df.columns == ["source", "record_id", "entity_id"] + (ATTRIBUTES if with_attributes else [])
    assert df.height == 64
    assert result.out.strip() == f"wrote 64 records in {df['entity_id'].n_unique()} entities to {out}"
    assert dict(df.group_by("source").len().iter_rows()) == RECORDS
    assert df.select("source", "record_id").rows() == sorted(df.select("source", "record_id").rows())
    assert df["record_id"].filter(df["source"] == "census").sort().to_list() == sorted(str(i) for i in range(1, 28))
    assert df["entity_id"].null_count() == 0
    assert not (tmp_path / f"entities{suffix}.tmp").exists()
    if with_attributes:
        row = {r["record_id"]: r for r in df.iter_rows(named=True)}
        # Cleaned values, one record per source.
        assert {a: row["1"][a] for a in ATTRIBUTES} == {
            "first_name": "jennifer kimberly", "last_name": "walker", "full_name": "jennifer kimberly walker",
            "birth_date": "1988-02-03", "sex": "f", "postcode": "SW43ZZ", "ssn": None, "phone": None,
            "email": None}
        assert {a: row["T0000001"][a] for a in ATTRIBUTES} == {
            "first_name": "jennifer", "last_name": "walker", "full_name": "jennifer walker",
            "birth_date": "1988-02-03", "sex": None, "postcode": None, "ssn": "660631428", "phone": None,
            "email": None}
        assert {a: row["BEN-0000001"][a] for a in ATTRIBUTES} == {
            "first_name": "alexander", "last_name": "ball", "full_name": "alexander ball",
            "birth_date": "1970-08-27", "sex": None, "postcode": "YO105NF", "ssn": None, "phone": "7626839792",
            "email": "aball@example.net"}


def test_export_agrees_with_the_store_and_the_summary(linked_tiny: Linked, tmp_path: Path) -> None:
    run_cli("export", linked_tiny.project, "--out", tmp_path / "e.csv")
    df = pl.read_csv(tmp_path / "e.csv", infer_schema=False)
    summary = two_column(linked_tiny.link.out)
    assert df["entity_id"].n_unique() == int(summary["entities"])


def test_export_refuses_an_unknown_format(linked_tiny: Linked, tmp_path: Path) -> None:
    out = tmp_path / "e.txt"
    result = run_cli("export", linked_tiny.project, "--out", out)
    assert result.code == 2
    assert result.error == f"Error: {out}: the output must end in .csv or .parquet"
    assert not out.exists()


# ------------------------------------------------------------------------------ count-pairs
def test_count_pairs(linked_tiny: Linked, tiny: Path) -> None:
    result = run_cli("count-pairs", tiny)
    assert result.code == 0, result.err
    titles = [line.strip() for line in result.out.splitlines() if line.strip().startswith("candidate pairs:")]
    assert titles == ["candidate pairs: benefits-benefits", "candidate pairs: benefits-census",
                      "candidate pairs: benefits-tax", "candidate pairs: census-census", "candidate pairs: census-tax",
                      "candidate pairs: tax-tax", "candidate pairs: all sources"]
    # 27 + 18 + 19 records; tax is exclusive, so its 153 inner pairs are not possible.
    # The same candidate pairs as the link run scored.
    pairs = int(two_column(linked_tiny.link.out)["candidate pairs"].split()[0].replace(",", ""))
    assert result.out.splitlines()[-1] == f"total: {pairs:,} candidate pairs of 1,863 possible ({pairs / 1863:.4%})"
    rows = table_rows(result.out)
    n_rules = len(rows) // len(titles)
    all_rows = rows[-n_rules:]
    assert [int(r[2].replace(",", "")) for r in all_rows][-1] == pairs
    assert sum(int(r[1].replace(",", "")) for r in all_rows) == pairs
    # The tax-tax table adds nothing: an exclusive source is never paired with itself.
    tax_tax = result.out.split("candidate pairs: tax-tax")[1].split("candidate pairs: all sources")[0]
    assert {r[1] for r in table_rows(tax_tax)} == {"0"}
    assert store_files(tiny.parent) == []  # counts only: nothing written


# ------------------------------------------------------------------------------ explain
def test_explain_pair(linked_tiny: Linked) -> None:
    result = run_cli("explain", linked_tiny.project, "census:1", "tax:T0000001")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].strip() == "census:1 vs tax:T0000001"
    rows = {r[0]: r for r in table_rows(result.out)}
    assert list(rows) == ["prior", *[a for a in ATTRIBUTES if a != "full_name"], "total"]
    assert rows["first_name"][1:3] == ["jennifer kimberly", "jennifer"]
    assert rows["birth_date"][1:4] == ["1988-02-03", "1988-02-03", "exact"]
    assert rows["ssn"][1:5] == ["", "660631428", "null", "+0.00"]
    # The total weight is the prior plus the evidence of every comparison.
    total = float(rows["total"][4])
    assert abs(total - sum(float(r[4]) for k, r in rows.items() if k != "total")) < 0.05
    assert rows["total"][3].startswith("probability ")
    after = lines[next(i for i, line in enumerate(lines) if line.startswith("└")) + 1:]
    assert after[0].startswith("blocked by: ") and len(after[0]) > len("blocked by: ")
    assert after[1] in ("scored in the last run: yes", "scored in the last run: no")
    assert after[2].startswith(("same entity: yes (", "same entity: no ("))
    assert after[2].endswith("; threshold 0.9")
    assert all(line.startswith("note: ") for line in after[3:])


def test_explain_pair_that_no_rule_blocks(linked_tiny: Linked) -> None:
    result = run_cli("explain", linked_tiny.project, "census:1", "census:2")
    assert result.code == 0, result.err
    assert "blocked by: no rule: the pair is never compared" in result.out
    assert "scored in the last run: no" in result.out


def test_explain_unknown_record(linked_tiny: Linked) -> None:
    result = run_cli("explain", linked_tiny.project, "census:1", "census:999")
    assert result.code == 2
    assert result.error == "Error: record '999': no record census:999 in the store"


# ------------------------------------------------------------------------------ evaluate
def test_evaluate_with_chart(linked_tiny: Linked, tmp_path: Path) -> None:
    from idweave.linkage.evaluate import evaluate

    chart = tmp_path / "sweep.html"
    result = run_cli("evaluate", linked_tiny.project, "--truth", "true_person", "--chart", chart)
    assert result.code == 0, result.err
    rep = evaluate(linked_tiny.project, truth="true_person")
    m = rep.metrics
    rows = table_rows(result.out)
    assert rows[0] == ["pairwise", f"{m['pairwise_precision']:.4f}", f"{m['pairwise_recall']:.4f}",
                       f"{m['pairwise_f1']:.4f}"]
    assert rows[1] == ["B-cubed", f"{m['bcubed_precision']:.4f}", f"{m['bcubed_recall']:.4f}", f"{m['bcubed_f1']:.4f}"]
    # 30 people were generated; 28 of them are in at least one source.
    assert f"entities: {m['entities']} (true: 28); true pairs kept by blocking: {rep.blocking_recall:.4f}" in result.out
    sweep = rows[2:11]
    assert [r[0] for r in sweep] == ["0.5", "0.7", "0.8", "0.9", "0.95", "0.98", "0.99", "0.995", "0.999"]
    assert [r[3] for r in sweep] == [f"{x:.4f}" for x in rep.sweep["pairwise_f1"]]
    assert result.out.strip().endswith(f"chart written to {chart}")
    html = chart.read_text()
    assert html.startswith("<!doctype html>") and "<svg" in html and "threshold sweep against &#x27;true_person&#x27;" in html
    assert "P000" not in html  # truth labels and record values stay out of the chart


def test_evaluate_without_chart(linked_tiny: Linked) -> None:
    result = run_cli("evaluate", linked_tiny.project, "--truth", "true_person", "--errors", "0")
    assert result.code == 0, result.err
    assert "chart written" not in result.out
    assert "false links" not in result.out and "missed links" not in result.out


def test_evaluate_unknown_truth_column(linked_tiny: Linked) -> None:
    result = run_cli("evaluate", linked_tiny.project, "--truth", "nope")
    assert result.code == 2
    assert result.error == "Error: column 'nope': no source has the truth column 'nope'"


# ------------------------------------------------------------------------------ the app
def test_help_lists_every_command() -> None:
    import typer.main

    from idweave.cli.app import _register, app

    _register()
    result = run_cli("--help")
    assert result.code == 0
    for name in typer.main.get_command(app).commands:
        assert f" {name} " in result.out


def test_unknown_command_is_a_usage_error() -> None:
    result = run_cli("frobnicate")
    assert result.code == 2
    assert "No such command 'frobnicate'" in result.err
