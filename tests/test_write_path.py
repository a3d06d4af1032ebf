"""One write path for identity changes (issue 12): a decision applied at once, then a full
rerun, leaves exactly the events, entities and records that the run path writes for the
same decision (recorded, then applied by a full run through ``constraints``).

Both stores start as copies of one linked store. Compared: every event after that start
(type, entity ids, record, detail, in order; the ``decision`` marker event left out, as a
run writes none), every entities row and every records row (all columns). Left out because
they necessarily differ: event ids, run and decision ids and times of events, and the
entities' ``created_run``/``changed_run`` (a decision stamps the last run, the run its own
id). Entity ids minted after the start are named by their first record (both sides mint
their own random ids).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from idweave.linkage import link
from idweave.linkage._db import query_pl
from idweave.linkage.decisions import keep_apart, merge, split
from idweave.linkage.graph import Store
from identity_helpers import store_of
from test_review import largest, leaf, two_entities


def _tables(project: Path, base_events: int, base_ids: set[str]) -> dict[str, list[tuple[Any, ...]]]:
    with Store.open(store_of(project), read_only=True) as st:
        records = query_pl(st.con, "select * from records order by source, record_id")
        entities = query_pl(st.con, "select * from entities order by entity_id")
        events = query_pl(st.con, "select type, entity_id, other_entity_id, source, record_id, detail from events "
                                  "where event_id > ? and type <> 'decision' order by event_id", [base_events])
    first: dict[str, str] = {}
    for s, r, e in records.select("source", "record_id", "entity_id").iter_rows():
        first.setdefault(e, f"{s}:{r}")

    def name(e: str | None) -> str | None:
        return e if e is None or e in base_ids else f"new entity of {first.get(e, '?')}"

    ent = sorted(tuple(name(x) if c in ("entity_id", "merged_into", "split_from") else x
                       for c, x in zip(entities.columns, row))
                 for row in entities.drop("created_run", "changed_run").iter_rows())
    rec_cols = records.columns
    rec = [tuple(name(x) if c == "entity_id" else x for c, x in zip(rec_cols, row)) for row in records.iter_rows()]
    ev = [(t, name(e), name(o), s, r, d) for t, e, o, s, r, d in events.iter_rows()]
    return {"events": ev, "entities": ent, "records": rec}


def _base(project: Path) -> tuple[int, set[str]]:
    with Store.open(store_of(project), read_only=True) as st:
        n = int(st.con.execute("select coalesce(max(event_id), 0) from events").fetchone()[0])
        ids = {e for (e,) in st.con.execute("select entity_id from entities").fetchall()}
    return n, ids


DECISIONS: dict[str, Callable[[Path], Any]] = {
    "merge": lambda p: merge(p, *two_entities(p), author="ada", reason="same person"),
    "split": lambda p: split(p, largest(p), [leaf(p, largest(p))], author="ada", reason="another person"),
    "keep_apart": lambda p: keep_apart(p, *two_entities(p), author="ada", reason="two people"),
}


@pytest.mark.parametrize("action", sorted(DECISIONS))
def test_a_decision_writes_what_the_run_path_writes(action: str, linked_tiny, tmp_path: Path) -> None:
    now = linked_tiny.copy(tmp_path / "now")
    later = linked_tiny.copy(tmp_path / "later")
    base_events, base_ids = _base(now)

    # Applied at once (the decision write path), then a full rerun.
    res = DECISIONS[action](now)
    link(now, full=True)

    # The same decision recorded only, then applied by a full run (the run write path).
    with Store.open(store_of(now), read_only=True) as st:
        d = st.decision_rows()[-1]
    assert d["decision_id"] == res.decision_id
    with Store.open(store_of(later)) as st:
        st.begin()
        st.record_decision(d["decision_id"], d["author"], d["action"], d["reason"], d["payload"], d["undoes"])
        st.commit()
    link(later, full=True)

    got, want = _tables(now, base_events, base_ids), _tables(later, base_events, base_ids)
    if action != "keep_apart":  # two entities already apart: nothing to change
        assert want["events"], "the decision changed nothing: the test would compare nothing"
    assert got["events"] == want["events"]
    assert got["entities"] == want["entities"]
    assert got["records"] == want["records"]
