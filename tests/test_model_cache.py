"""What Splink makes of a model for scoring, kept in the store (``model_sql``).

A run that reuses a stored model takes the compiled form (Splink's scoring SQL, levels and
weights) from the store instead of asking Splink again, so it never imports Splink. The
stored form must score exactly as compiling does (bit for bit, in a fresh process), and it
is keyed by model version, Splink version and compile key (format, compile code, sqlglot):
any other Splink or compile code compiles again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import polars as pl
import pytest

from conftest import Linked
from idweave.linkage import model as model_mod
from idweave.linkage import fingerprint, scoring
from idweave.linkage.graph import Store
from idweave.linkage.project import with_rids
from idweave.linkage.project import load_project
from idweave.linkage.sources import load_records
from test_scoring import all_pairs, assert_same_scores


def run_python(code: str, *args: object, cwd: Path) -> str:
    """Run ``code`` in a fresh interpreter (``sys.argv[1:]`` = ``args``); its stdout."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's compiled models forgotten for the test (and given back after)."""
    monkeypatch.setattr(scoring, "_COMPILED", OrderedDict())


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each call of Splink's compile (scoring._compile), as the model's prior."""
    calls: list[str] = []
    real = scoring._compile

    def counted(settings):
        calls.append(settings["probability_two_random_records_match"])
        return real(settings)

    monkeypatch.setattr(scoring, "_compile", counted)
    return calls


def stored_rows(store: Path) -> list[tuple]:
    with Store.open(store, read_only=True) as st:
        return st.con.execute("select version, splink_version, compile_key from model_sql "
                              "order by created_run").fetchall()


def test_stored_form_reads_back_equal(linked_tiny: Linked, fresh_cache) -> None:
    with Store.open(linked_tiny.store, read_only=True) as st:
        settings, tf, _ = st.latest_model()
    assert tf, "the tiny model has term-frequency tables"
    compiled = scoring._compile(settings)
    back = scoring._compiled_from_json(scoring._compiled_to_json(compiled))
    assert back == compiled
    assert back.sql(frozenset(tf)) == compiled.sql(frozenset(tf))


def test_a_trained_run_stores_the_compiled_model(linked_tiny: Linked) -> None:
    with Store.open(linked_tiny.store, read_only=True) as st:
        version = st.last_run_info()["model_version"]
    assert stored_rows(linked_tiny.store) == [(version, scoring.splink_version(), scoring.compile_key())]


def test_fresh_process_scores_from_the_store_as_compiling_does(linked_tiny: Linked, tmp_path: Path,
                                                               fresh_cache, compiles) -> None:
    out = tmp_path / "scored.parquet"
    got = run_python("""
        import sys
        import polars as pl
        from idweave.linkage import model as model_mod
        from idweave.linkage import scoring
        from idweave.linkage.graph import Store
        from idweave.linkage.project import with_rids
        from idweave.linkage.project import load_project
        from idweave.linkage.sources import load_records

        project, out = sys.argv[1:]
        with Store.open(load_project(project).store, read_only=True) as st:
            settings, tf, _ = scoring.stored_model(st)
        recs = with_rids(load_records(load_project(project)))
        n = recs.height
        idx = pl.int_range(0, n, eager=True)
        pairs = (pl.DataFrame({"rid_l": idx}).join(pl.DataFrame({"rid_r": idx}), how="cross")
                 .filter(pl.col("rid_l") < pl.col("rid_r")).with_columns(pl.lit(0, pl.Int32).alias("rule")))
        scoring.score_pairs(recs, pairs, model_mod.TrainedModel(settings, tf)).write_parquet(out)
        print("splink" in sys.modules)
    """, linked_tiny.project, out, cwd=linked_tiny.folder)
    assert got.strip() == "False"
    with Store.open(linked_tiny.store, read_only=True) as st:
        settings, tf, _ = st.latest_model()
    scoring._COMPILED.clear()  # compile here, with Splink
    recs = with_rids(load_records(load_project(linked_tiny.project)))
    model = model_mod.TrainedModel(settings, tf)
    pairs = all_pairs(recs.height)
    compiled = scoring.score_pairs(recs, pairs, model)
    assert len(compiles) == 1
    stored = pl.read_parquet(out)
    assert_same_scores(stored, compiled)
    assert_same_scores(stored, scoring._score_pairs_splink(recs, pairs, model))


def test_incremental_link_in_a_fresh_process_never_imports_splink(linked_copy: Path) -> None:
    census = linked_copy.parent / "census.csv"
    census.write_text(census.read_text().replace("Walker", "Walkerr", 1))
    got = json.loads(run_python("""
        import io, json, sys
        from contextlib import redirect_stdout
        from idweave.cli.app import main

        out = io.StringIO()
        with redirect_stdout(out):
            try:
                main(["link", sys.argv[1], "--json"])
            except SystemExit as exc:
                assert not exc.code, exc.code
        summary = json.loads(out.getvalue())
        loaded = sorted(m for m in sys.modules if m == "splink" or m.startswith("splink."))
        print(json.dumps({"mode": summary["mode"], "scored": summary["scored_pairs"], "splink": loaded}))
    """, linked_copy, cwd=linked_copy.parent))
    assert got["mode"] == "incremental" and got["scored"] > 0, got
    assert got["splink"] == []


def test_lookup_matcher_takes_the_stored_model(linked_tiny: Linked) -> None:
    got = run_python("""
        import sys
        from idweave.linkage.lookup import Matcher
        from idweave.linkage.project import load_project

        m = Matcher(load_project(sys.argv[1]))
        m.close()
        print("splink" in sys.modules)
    """, linked_tiny.project, cwd=linked_tiny.folder)
    assert got.strip() == "False"


@pytest.mark.parametrize("what", ["splink_version", "compile_key"])
def test_another_splink_or_compile_key_compiles_again(linked_copy: Path, monkeypatch: pytest.MonkeyPatch,
                                                      fresh_cache, compiles, what: str) -> None:
    store = load_project(linked_copy).store
    recs = with_rids(load_records(load_project(linked_copy)))
    pairs = all_pairs(recs.height).head(200)
    with Store.open(store) as st:
        settings, tf, version = scoring.stored_model(st)  # the stored form: no compiling
        reference = scoring.score_pairs(recs, pairs, model_mod.TrainedModel(settings, tf))
        assert compiles == []
    scoring._COMPILED.clear()
    if what == "splink_version":
        monkeypatch.setattr(scoring, "splink_version", lambda: "5.99.0")
    else:
        monkeypatch.setattr(scoring, "compile_key", lambda: "0" * 16)
    with Store.open(store) as st:
        settings, tf, version = scoring.stored_model(st)
        assert scoring.compiled_text(settings) is None  # nothing stored under this key
        again = scoring.score_pairs(recs, pairs, model_mod.TrainedModel(settings, tf))
        assert len(compiles) == 1
        st.begin()
        st.save_model(version, settings, tf, st.last_run() + 1, scoring.splink_version())
        scoring.save_compiled(st, version, settings, st.last_run() + 1)
        st.commit()
    assert_same_scores(again, reference)
    rows = stored_rows(store)
    assert len(rows) == 2 and rows[-1] == (version, scoring.splink_version(), scoring.compile_key())
    scoring._COMPILED.clear()
    with Store.open(store) as st:  # the new row is found under the new key
        scoring.stored_model(st)
        assert scoring.compiled_text(settings) is not None
    assert len(compiles) == 1


def test_compile_key_follows_the_compile_code(monkeypatch: pytest.MonkeyPatch) -> None:
    key = scoring.compile_key.__wrapped__()
    assert key == scoring.compile_key()
    monkeypatch.setattr(scoring, "_COMPILE_FORMAT", scoring._COMPILE_FORMAT + 1)
    assert scoring.compile_key.__wrapped__() != key
    monkeypatch.undo()
    # The code it follows is the one fingerprint's (scoring, comparisons and _splink are
    # state modules): other code there, another fingerprint, another key.
    assert {"linkage/scoring.py", "linkage/comparisons.py", "linkage/_splink.py"} <= set(fingerprint.STATE_MODULES)
    monkeypatch.setattr(scoring, "code_fingerprint", lambda: "0" * 16)
    assert scoring.compile_key.__wrapped__() not in (key, None)


def test_an_unreadable_stored_form_compiles_again(linked_copy: Path, fresh_cache, compiles) -> None:
    store = load_project(linked_copy).store
    with Store.open(store) as st:
        st.con.execute("update model_sql set compiled = '{\"parts\": 1}'")
        settings, _, _ = scoring.stored_model(st)
    assert scoring.compiled_text(settings) is None
    assert scoring.scoring_parts(settings).comparisons
    assert len(compiles) == 1


def test_a_run_that_scores_nothing_does_not_compile(linked_copy: Path, fresh_cache, compiles,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # A store from before model_sql: the row is missing. A run with nothing to score does not
    # load Splink to make it (unless this process has Splink loaded already, as here: then it does).
    import splink  # noqa: F401  (loaded, as after training)

    store = load_project(linked_copy).store
    with Store.open(store) as st:
        st.con.execute("delete from model_sql")
    monkeypatch.delitem(sys.modules, "splink")
    with Store.open(store) as st:
        settings, tf, version = st.latest_model()
        st.begin()
        st.save_model(version, settings, tf, st.last_run() + 1, scoring.splink_version())
        scoring.save_compiled(st, version, settings, st.last_run() + 1)
        st.commit()
    assert compiles == [] and stored_rows(store) == []
    monkeypatch.setitem(sys.modules, "splink", splink)
    with Store.open(store) as st:
        st.begin()
        st.save_model(version, settings, tf, st.last_run() + 1, scoring.splink_version())
        scoring.save_compiled(st, version, settings, st.last_run() + 1)
        st.commit()
    assert len(compiles) == 1 and len(stored_rows(store)) == 1
