"""idweave model: the stored model level by level, with link counts, prior, log and origin."""

from __future__ import annotations

import json
from pathlib import Path


from conftest import Linked, run_cli
from idweave.linkage import link
from idweave.linkage.graph import Store
from idweave.linkage.model import TrainedModel
from idweave.linkage.model_report import ModelReport, in_words, model_report, render_html


def test_levels_weights_and_link_counts(linked_tiny: Linked) -> None:
    rep = model_report(linked_tiny.project)
    with Store.open(linked_tiny.store, read_only=True) as st:
        settings, tf, version = st.latest_model()
        total = st.con.execute("select count(*) from links").fetchone()[0]
        per_level = {c: dict(st.con.execute(f'select coalesce(level_{c}, -1), count(*) from links group by 1')
                             .fetchall()) for c in [x["comparison"] for x in rep.comparisons]}
    assert rep.version == version and rep.links == total
    weights = TrainedModel(settings, tf).weights_table()
    got = [(c["comparison"], lv["level"], lv["m"], lv["u"], lv["weight"]) for c in rep.comparisons for lv in c["levels"]]
    assert got == [tuple(r.values()) for r in weights.iter_rows(named=True)]
    for c in rep.comparisons:
        n = len(c["levels"])
        counts = per_level[c["comparison"]]
        assert [lv["links"] for lv in c["levels"]] == [counts.get(n - 1 - i, 0) for i in range(n)]
        assert sum(lv["links"] for lv in c["levels"]) + c["null_links"] == total
    assert rep.prior == TrainedModel(settings, tf).prior and rep.prior_weight < 0


def test_training_log_and_origin_come_from_the_training_run(tiny: Path) -> None:
    r = link(tiny)
    rep = model_report(tiny)
    assert rep.training_log == r.summary["training_log"] and rep.training_log
    assert rep.origin["run"] == r.run_id == 1 and rep.origin["records"] == r.summary["records"]
    assert rep.origin["records_per_source"] == r.summary["records_per_source"]
    again = link(tiny)  # reuses the model: the log stays the training run's
    assert again.summary["training_log"] == ["reused the stored model"]
    assert model_report(tiny).training_log == r.summary["training_log"]
    assert in_words(rep)[0].startswith("prior: about 1 in ")


def test_cli_table_json_and_chart(linked_tiny: Linked, tmp_path: Path) -> None:
    page = tmp_path / "model.html"
    res = run_cli("model", linked_tiny.project, "--html", page)
    assert res.code == 0, res.err
    rep = model_report(linked_tiny.project)
    assert res.out.startswith(f"model {rep.version}: trained in run 1")
    assert "comparisons, most similar level first" in res.out and "training log:" in res.out
    text = page.read_text()
    assert "<svg" in text and text.count("<rect") >= sum(len(c["levels"]) for c in rep.comparisons)
    low = text.lower()
    for asset in ("<script", "src=", "href=", "http://", "https://", "url("):
        assert asset not in low
    js = run_cli("model", linked_tiny.project, "--json")
    data = json.loads(js.out)
    assert data["version"] == rep.version and len(data["comparisons"]) == len(rep.comparisons)


def test_the_page_escapes_every_label() -> None:
    rep = ModelReport("v<1>", 0.01, -6.6, 0.9, [{"comparison": "<script>x</script>", "null_links": 0, "levels": [
        {"level": "a&b \"q\"", "m": 0.9, "u": 0.1, "weight": 3.17, "term_frequency": False, "links": 1}]}],
        ["log <i>line</i>"], {"run": 1}, 1)
    page = render_html(rep)
    assert "<script>" not in page and "&lt;script&gt;" in page and "<i>" not in page
    assert "a&amp;b &quot;q&quot;" in page


def test_no_store_is_a_clear_error(tiny: Path) -> None:
    res = run_cli("model", tiny)
    assert res.code == 2 and "no store yet: run `idweave link` first" in res.error
