"""Review: the queue, decisions and how they persist (idweave.linkage.review).

Every store test works on a private copy of the linked tiny fixture (``linked_copy``). The
records a test decides about are chosen from the store (the model's grouping is the lead's to
tune), and the expectations are exact about what a decision does to them: which ids they
carry, which events name the decision, and that a later run (incremental, full, retrained)
leaves the decision standing.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from conftest import snapshot
from identity_helpers import entity_sizes_hold, store_of
from idweave.linkage import link, load_project
from idweave.linkage._db import query_pl
from idweave.linkage.errors import IdweaveError
from idweave.linkage.evaluate import evaluate_labels
from idweave.linkage.explain import explain_entity
from idweave.linkage.graph import Store
from idweave.linkage import review
from idweave.linkage import queue as review_queue
from idweave.linkage.review import (
    confirm, constraints, decisions, diff_spans, export_labels, keep_apart, merge, queue, show, split, undo,
)
from idweave.linkage.sources import load_records

Rec = tuple[str, str]
RERUNS = {"incremental": {}, "full": {"full": True}, "retrain": {"retrain": True}}


# ------------------------------------------------------------------------------ helpers
def store_of(project: Path) -> Path:
    return load_project(project).store


def sql(project: Path, query: str, params: list | None = None) -> pl.DataFrame:
    with Store.open(store_of(project), read_only=True) as st:
        return query_pl(st.con, query, params)


def state(project: Path) -> dict[Rec, str]:
    """record -> entity id, as the store has it now."""
    df = sql(project, "select source, record_id, entity_id from records")
    return {(s, r): e for s, r, e in df.iter_rows()}


def members(st: dict[Rec, str]) -> dict[str, set[Rec]]:
    out: dict[str, set[Rec]] = {}
    for rec, e in st.items():
        out.setdefault(e, set()).add(rec)
    return out


def entity(project: Path, eid: str) -> dict:
    return sql(project, "select * from entities where entity_id = ?", [eid]).row(0, named=True)


def events(project: Path, decision_id: int) -> list[tuple]:
    df = sql(project, "select type, entity_id, other_entity_id, source, record_id, detail, run_id from events "
                      "where decision_id = ? order by event_id", [decision_id])
    return [tuple(r) for r in df.iter_rows()]


def truth(project: Path) -> dict[Rec, str]:
    recs = load_records(load_project(project), extra_columns=["true_person"])
    return {(s, r): p for s, r, p in recs.select("source", "record_id", "true_person").iter_rows()}


def older(project: Path, a: str, b: str) -> str:
    ages = {e: (c, e) for e, c in sql(project, "select entity_id, created_run from entities").iter_rows()}
    return min(a, b, key=lambda e: ages[e])


def two_entities(project: Path) -> tuple[str, str]:
    """Two entities of different true people (the two smallest, then by their first record)."""
    m = members(state(project))
    t = truth(project)
    order = sorted(m, key=lambda e: (len(m[e]), min(m[e])))
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            if not ({t[r] for r in m[a]} & {t[r] for r in m[b]}):
                return a, b
    raise AssertionError("the tiny fixture has two entities of different people")


def largest(project: Path) -> str:
    m = members(state(project))
    return min(m, key=lambda e: (-len(m[e]), min(m[e])))


def leaf(project: Path, eid: str) -> Rec:
    """A record the entity's link tree reaches last: splitting it off leaves the rest joined."""
    tree = explain_entity(project, eid).tree
    parents = {ln.parent for ln in tree}
    return min(ln.child for ln in tree if ln.child not in parents)


def near_miss(project: Path) -> tuple[Rec, Rec, float]:
    """The strongest scored pair below the threshold between two entities that an exclusive
    source does not keep apart."""
    st = state(project)
    m = members(st)
    links = sql(project, "select source_l, record_id_l, source_r, record_id_r, match_probability from links "
                         "where match_probability < 0.9 order by match_probability desc, source_l, record_id_l")
    for sl, rl, sr, rr, p in links.iter_rows():
        a, b = (sl, rl), (sr, rr)
        if st[a] != st[b] and not ({s for s, _ in m[st[a]]} & {s for s, _ in m[st[b]]} & {"tax"}):
            return a, b, p
    raise AssertionError("the tiny fixture has a near miss")


def rerun(project: Path, kind: str, **kw) -> dict:
    return link(project, **RERUNS[kind], **kw).summary


# ------------------------------------------------------------------------------ merge
@pytest.mark.parametrize("kind", list(RERUNS))
def test_merge_keeps_the_older_id_and_survives_a_rerun(linked_copy: Path, kind: str) -> None:
    before = state(linked_copy)
    a, b = two_entities(linked_copy)
    survivor = older(linked_copy, a, b)
    loser = b if survivor == a else a
    m = members(before)
    res = merge(linked_copy, a, b, author="ada", reason="same person, moved house")

    after = state(linked_copy)
    assert res.action == "merge" and res.entities == [survivor]
    assert {after[r] for r in m[a] | m[b]} == {survivor}
    assert {r: e for r, e in after.items() if r not in m[a] | m[b]} == \
        {r: e for r, e in before.items() if r not in m[a] | m[b]}
    row = entity(linked_copy, loser)
    assert (row["status"], row["merged_into"], row["split_from"], row["size"]) == ("merged", survivor, None, 0)
    assert entity(linked_copy, survivor)["size"] == len(m[a] | m[b])
    ev = events(linked_copy, res.decision_id)
    assert ev[0] == ("decision", a, b, None, None, "merge", None)
    assert sorted(e[3:5] for e in ev if e[0] == "record_moved") == sorted(m[loser])
    assert all(e[1:3] == (survivor, loser) for e in ev if e[0] == "record_moved")
    assert [e[:3] for e in ev if e[0] == "entities_merged"] == [("entities_merged", survivor, loser)]
    assert res.events == len(ev) == 1 + len(m[loser]) + 1
    d = decisions(linked_copy).row(0, named=True)
    assert (d["decision_id"], d["author"], d["action"], d["reason"], d["in_force"]) == \
        (res.decision_id, "ada", "merge", "same person, moved house", True)

    summary = rerun(linked_copy, kind)
    again = state(linked_copy)
    assert entity_sizes_hold(store_of(linked_copy), summary)
    assert {again[r] for r in m[a] | m[b]} == {survivor}
    if kind != "retrain":
        # The decision was applied as the next run computes it: that run changes nothing.
        assert again == after and summary["events"] == 0


# ------------------------------------------------------------------------------ split
@pytest.mark.parametrize("kind", list(RERUNS))
def test_split_gives_the_records_a_new_id_and_survives_a_rerun(linked_copy: Path, kind: str) -> None:
    before = state(linked_copy)
    big = largest(linked_copy)
    recs = sorted(members(before)[big])
    one = leaf(linked_copy, big)
    rest = [r for r in recs if r != one]
    res = split(linked_copy, big, [f"{one[0]}:{one[1]}"], author="ada", reason="two people")

    after = state(linked_copy)
    new = after[one]
    assert new != big
    assert all(after[r] == big for r in rest)
    assert {r: e for r, e in after.items() if r not in recs} == {r: e for r, e in before.items() if r not in recs}
    row = entity(linked_copy, new)
    assert (row["status"], row["split_from"], row["size"]) == ("active", big, 1)
    assert entity(linked_copy, big)["size"] == len(rest)
    assert sorted(res.entities) == sorted([big, new])
    ev = events(linked_copy, res.decision_id)
    assert ev == [("decision", big, None, None, None, "split", None),
                  ("entity_created", new, big, None, None, "split", None),
                  ("entity_split", big, new, None, None, None, None),
                  ("record_moved", new, big, one[0], one[1], None, None)]

    summary = rerun(linked_copy, kind)
    again = state(linked_copy)
    assert entity_sizes_hold(store_of(linked_copy), summary)
    assert again[one] == new
    assert not {again[r] for r in rest} & {new}
    if kind != "retrain":
        assert again == after and summary["events"] == 0


# ------------------------------------------------------------------------------ keep apart
@pytest.mark.parametrize("kind", list(RERUNS))
def test_keep_apart_holds_where_a_lower_threshold_would_join(linked_tiny, tmp_path: Path, kind: str) -> None:
    control = linked_tiny.copy(tmp_path / "control")
    decided = linked_tiny.copy(tmp_path / "decided")
    x, y, p = near_miss(decided)
    st = state(decided)
    res = keep_apart(decided, st[x], st[y], author="ada", reason="twins")
    assert res.moved == 0 and state(decided) == st
    assert events(decided, res.decision_id) == [("decision", st[x], st[y], None, None, "keep_apart", None)]
    low = round(p - 0.01, 4)
    # Without the decision, the lower threshold joins the pair ...
    rerun(control, "full", threshold=low)
    assert state(control)[x] == state(control)[y]
    # ... with it, no run does.
    rerun(decided, kind, threshold=low)
    assert state(decided)[x] != state(decided)[y]


def test_keep_apart_of_two_records(linked_copy: Path) -> None:
    x, y, _p = near_miss(linked_copy)
    res = keep_apart(linked_copy, f"{x[0]}:{x[1]}", y, reason="different dates of birth")
    payload = json.loads(sql(linked_copy, "select payload from decisions")["payload"][0])
    assert (payload["left"], payload["right"]) == ([list(x)], [list(y)])
    assert res.action == "keep_apart"


# ------------------------------------------------------------------------------ confirm
def test_confirm_leaves_the_queue_until_its_records_change(linked_copy: Path) -> None:
    # A wide uncertain band puts every multi-record entity in the queue.
    def listed(**kw) -> set[str]:
        return {i.entity_id for i in queue(linked_copy, margin_bits=40, **kw) if i.other_entity_id is None}

    st = state(linked_copy)
    census = {e for (s, _r), e in st.items() if s == "census"}
    # Chosen by its records, not by its id: ids are random, so "the smallest id" named a
    # different entity in each session (and some of them lose the changed record below).
    first_record = {e: min(k for k, x in st.items() if x == e) for e in listed() & census}
    target = min(first_record, key=first_record.get)
    res = confirm(linked_copy, target, author="ada")
    assert res.moved == 0 and state(linked_copy) == st
    assert events(linked_copy, res.decision_id) == [("decision", target, None, None, None, "confirm", None)]
    assert target not in listed() and target in listed(include_reviewed=True)
    link(linked_copy)
    assert target not in listed()
    # Change one of its records (census sex M <-> F): it is back in the queue.
    rid = sorted(r for (s, r), e in st.items() if e == target and s == "census")[0]
    path = linked_copy.parent / "census.csv"
    df = pl.read_csv(path, infer_schema=False)
    df = df.with_columns(pl.when(pl.col("person_no") == rid)
                         .then(pl.when(pl.col("sex").str.to_lowercase().str.starts_with("m")).then(pl.lit("F"))
                               .otherwise(pl.lit("M")))
                         .otherwise(pl.col("sex")).alias("sex"))
    df.write_csv(path)
    link(linked_copy)
    assert state(linked_copy)[("census", rid)] == target
    assert target in listed()


# ------------------------------------------------------------------------------ undo
def test_undo_of_a_merge_restores_both_ids(linked_copy: Path) -> None:
    before = state(linked_copy)
    a, b = two_entities(linked_copy)
    loser = b if older(linked_copy, a, b) == a else a
    res = merge(linked_copy, a, b, reason="same person")
    back = undo(linked_copy, res.decision_id, author="bob", reason="wrong, twins")
    assert state(linked_copy) == before
    row = entity(linked_copy, loser)
    assert (row["status"], row["merged_into"], row["size"]) == ("active", None, len(members(before)[loser]))
    ev = events(linked_copy, back.decision_id)
    assert ev[0] == ("decision", a, b, None, None, "undo", None)
    assert ("entity_restored", loser, older(linked_copy, a, b), None, None, None, None) in ev
    d = decisions(linked_copy)
    assert d.select("decision_id", "action", "in_force", "undone_by", "undoes").rows() == [
        (res.decision_id, "merge", False, back.decision_id, None),
        (back.decision_id, "undo", False, None, res.decision_id)]
    assert d["author"].to_list()[1] == "bob"
    summary = link(linked_copy).summary
    assert state(linked_copy) == before and summary["events"] == 0
    with pytest.raises(IdweaveError, match=rf"^decision #{res.decision_id} was already undone by #{back.decision_id}$"):
        undo(linked_copy, res.decision_id, reason="again")
    with pytest.raises(IdweaveError, match=rf"^decision #{back.decision_id} is an undo"):
        undo(linked_copy, back.decision_id, reason="redo")


def test_undo_of_a_split_puts_the_records_back(linked_copy: Path) -> None:
    before = state(linked_copy)
    big = largest(linked_copy)
    first = leaf(linked_copy, big)
    res = split(linked_copy, big, [first], reason="another person")
    new = state(linked_copy)[first]
    undo(linked_copy, res.decision_id, reason="same person after all")
    assert state(linked_copy) == before
    row = entity(linked_copy, new)
    assert (row["status"], row["merged_into"], row["split_from"]) == ("merged", big, big)
    link(linked_copy, full=True)
    assert state(linked_copy) == before


def test_undo_of_a_keep_apart_lets_a_run_join_them(linked_copy: Path) -> None:
    x, y, p = near_miss(linked_copy)
    st = state(linked_copy)
    res = keep_apart(linked_copy, st[x], st[y], reason="twins")
    undo(linked_copy, res.decision_id, reason="not twins")
    link(linked_copy, threshold=round(p - 0.01, 4))
    assert state(linked_copy)[x] == state(linked_copy)[y]


# ------------------------------------------------------------------------------ conflicts
def test_a_keep_apart_contradicted_by_new_data_stands_and_enters_the_queue(linked_copy: Path) -> None:
    st = state(linked_copy)
    t = truth(linked_copy)
    census = sorted((r for r in st if r[0] == "census"), key=lambda r: int(r[1]))
    x = census[0]
    y = next(r for r in census[1:] if st[r] != st[x] and t[r] != t[x])
    keep_apart(linked_copy, f"census:{x[1]}", f"census:{y[1]}", reason="different people")
    assert all(i.reason != "decision_conflict" for i in queue(linked_copy))
    # New data: y's row now carries x's values, so the pair scores as near certain.
    path = linked_copy.parent / "census.csv"
    df = pl.read_csv(path, infer_schema=False)
    src = df.filter(pl.col("person_no") == x[1]).row(0, named=True)
    cols = ["fname", "surname", "dob", "zip", "sex"]
    df = df.with_columns([pl.when(pl.col("person_no") == y[1]).then(pl.lit(src[c])).otherwise(pl.col(c)).alias(c)
                          for c in cols])
    df.write_csv(path)
    link(linked_copy)
    p = sql(linked_copy, "select match_probability from links where source_l = 'census' and source_r = 'census' "
                         "and ((record_id_l = ? and record_id_r = ?) or (record_id_l = ? and record_id_r = ?))",
            [x[1], y[1], y[1], x[1]])["match_probability"][0]
    assert p >= review.CONFLICT_PROBABILITY
    now = state(linked_copy)
    assert now[x] != now[y]  # the decision stands
    top = queue(linked_copy)[0]
    assert (top.rank, top.reason) == (1, "decision_conflict")
    assert {top.entity_id, top.other_entity_id} == {now[x], now[y]}
    assert top.detail == f"kept apart by decision #1, but census:{x[1]} and census:{y[1]} now score {p:.4f}"
    # Deciding again, knowing the score, settles it.
    keep_apart(linked_copy, f"census:{x[1]}", f"census:{y[1]}", reason="still different people")
    assert all(i.reason != "decision_conflict" for i in queue(linked_copy))


# ------------------------------------------------------------------------------ bad input
def test_bad_decisions_name_the_ids_and_leave_the_store_untouched(linked_copy: Path) -> None:
    folder = linked_copy.parent
    before = snapshot(folder)
    big = largest(linked_copy)
    recs = sorted(members(state(linked_copy))[big])
    a, b = two_entities(linked_copy)
    cases = [
        (lambda: merge(linked_copy, "ENOSUCH", a, reason="x"), "no entity ENOSUCH in the store"),
        (lambda: merge(linked_copy, a, a, reason="x"), f"entities {a} and {a} are already one entity ({a})"),
        (lambda: split(linked_copy, big, [("census", "999")], reason="x"), f"records census:999 are not in entity {big}"),
        (lambda: split(linked_copy, big, recs, reason="x"),
         f"splitting off every record of entity {big} would leave nothing: name fewer records"),
        (lambda: split(linked_copy, big, ["census-1"], reason="x"), "record reference 'census-1' must be SOURCE:ID"),
        (lambda: keep_apart(linked_copy, recs[0], recs[1], reason="x"),
         f"{recs[0][0]}:{recs[0][1]} and {recs[1][0]}:{recs[1][1]} are in one entity ({big}): split it first"),
        (lambda: keep_apart(linked_copy, "tax:T9", b, reason="x"), "no record tax:T9 in the store"),
        (lambda: confirm(linked_copy, "ENOSUCH"), "no entity ENOSUCH in the store"),
        (lambda: undo(linked_copy, 7, reason="x"), "no decision #7 in the store"),
    ]
    for call, message in cases:
        with pytest.raises(IdweaveError) as err:
            call()
        assert str(err.value) == message
    assert snapshot(folder) == before


def test_a_merged_away_id_stands_for_its_survivor(linked_copy: Path) -> None:
    a, b = two_entities(linked_copy)
    survivor = older(linked_copy, a, b)
    loser = b if survivor == a else a
    merge(linked_copy, a, b, reason="same")
    assert show(linked_copy, loser).entity_id == survivor
    assert explain_entity(linked_copy, loser).entity_id == survivor
    with pytest.raises(IdweaveError, match=rf"^no entity {loser}X in the store$"):
        confirm(linked_copy, loser + "X")
    c = next(e for e in sorted(members(state(linked_copy))) if e != survivor)
    res = keep_apart(linked_copy, loser, c, reason="not the same")  # resolved to the survivor
    assert json.loads(sql(linked_copy, f"select payload from decisions where decision_id = {res.decision_id}")
                      ["payload"][0])["entities"] == [survivor, c]


# ------------------------------------------------------------------------------ constraints
def _constraints_of(tmp_path: Path, rows: list[tuple]) -> tuple[list, list]:
    """constraints() over decisions written straight into a store (the table is plain SQL)."""
    st = Store.open(tmp_path / "c.duckdb")
    for did, action, payload, undone_by, undoes in rows:
        st.con.execute("insert into decisions values (?, now(), 'ada', ?, '', ?, ?, ?)",
                       [did, action, json.dumps(payload), undone_by, undoes])
    recs = pl.DataFrame({"rid": [0, 1, 2, 3], "source": ["s"] * 4, "record_id": ["a", "b", "c", "d"]})
    try:
        return constraints(st, recs)
    finally:
        st.close()


A, B, C, GONE = ["s", "a"], ["s", "b"], ["s", "c"], ["s", "zz"]


@pytest.mark.parametrize("rows, must, cannot", [
    # merges join transitively
    ([(1, "merge", {"records_a": [A], "records_b": [B]}, None, None),
      (2, "merge", {"records_a": [B], "records_b": [C]}, None, None)], [(0, 1), (0, 2)], []),
    # a later merge lifts an earlier keep-apart ...
    ([(1, "keep_apart", {"left": [A], "right": [B]}, None, None),
      (2, "merge", {"records_a": [A], "records_b": [B]}, None, None)], [(0, 1)], []),
    # ... and a later keep-apart undoes an earlier merge between its records
    ([(1, "merge", {"records_a": [A], "records_b": [B]}, None, None),
      (2, "keep_apart", {"left": [A], "right": [B]}, None, None)], [], [(0, 1)]),
    # a split takes its records out of a merge and keeps them from the rest
    ([(1, "merge", {"records_a": [A, B], "records_b": [C]}, None, None),
      (2, "split", {"records": [C], "rest": [A, B]}, None, None)], [(0, 1)], [(0, 2)]),
    # the same, with the split undone
    ([(1, "merge", {"records_a": [A, B], "records_b": [C]}, None, None),
      (2, "split", {"records": [C], "rest": [A, B]}, 3, None),
      (3, "undo", {"undoes": 2}, None, 2)], [(0, 1), (0, 2)], []),
    # a split of two records pins them together (and a group's first record stands for it)
    ([(1, "split", {"records": [A, B], "rest": [C]}, None, None)], [(0, 1)], [(0, 2)]),
    ([(1, "keep_apart", {"left": [A, B], "right": [C]}, None, None)], [], [(0, 2), (1, 2)]),
    # confirm adds nothing; records no longer in the sources are skipped
    ([(1, "confirm", {"records": [A, B]}, None, None),
      (2, "merge", {"records_a": [A], "records_b": [GONE]}, None, None),
      (3, "keep_apart", {"left": [GONE], "right": [B]}, None, None)], [], []),
])
def test_constraints_from_decisions(tmp_path: Path, rows: list, must: list, cannot: list) -> None:
    assert _constraints_of(tmp_path, rows) == (must, cannot)


# ------------------------------------------------------------------------------ queue
def test_worst_split_finds_a_weak_bridge() -> None:
    a, b, c, d, e, f = [("s", x) for x in "abcdef"]
    tri = [(0.99, a, b), (0.99, b, c), (0.99, a, c), (0.99, d, e), (0.99, e, f), (0.99, d, f)]
    res = review_queue.worst_split([a, b, c, d, e, f], tri + [(0.95, c, d)], 0.9, 1.0)
    assert (res.side, res.rest, res.crossing, res.edge_p, res.looks) == ([d, e, f], 3, 1, 0.95, 1)
    # one scored pair of nine across, against six of six inside
    assert res.cohesion == pytest.approx((0.95 / 9) / (0.99 * 6 / 6))
    # a second link across: no longer a bridge, still a loose split
    res = review_queue.worst_split([a, b, c, d, e, f], tri + [(0.95, c, d), (0.92, b, e)], 0.9, 1.0)
    assert (res.side, res.crossing, res.looks) == ([d, e, f], 2, 2)


def test_queue_reasons_on_a_made_up_store(tiny: Path) -> None:
    proj = load_project(tiny)
    rec = []

    def add(eid: str, source: str, rid: str, ssn: str | None = None, born: str | None = None) -> None:
        rec.append({"source": source, "record_id": rid, "entity_id": eid, "content_hash": f"h{rid}",
                    "ssn": ssn, "birth_date": born})

    add("E1", "tax", "T1"); add("E1", "tax", "T2"); add("E1", "census", "1")                     # exclusive twice
    add("E2", "census", "2", ssn="123456789"); add("E2", "census", "3", ssn="987654321")        # two ids
    add("E3", "census", "4", ssn="111111112"); add("E3", "census", "5", ssn="111111113")        # a typo only
    for i, born in enumerate(["1950-01-01", "1950-01-02", "1990-05-05", "1990-05-06"]):        # two generations
        add("E4", "census", f"1{i}", born=born)
    for x in "abcdef":                                                                           # a weak bridge
        add("E5", "benefits", x)
    add("E6", "census", "20"); add("E7", "census", "21")                                         # a near miss
    recs = pl.DataFrame(rec)
    links = [("census", "1", "tax", "T1", 0.99), ("census", "1", "tax", "T2", 0.99),
             ("census", "2", "census", "3", 0.999), ("census", "4", "census", "5", 0.999),
             ("census", "10", "census", "11", 0.999), ("census", "11", "census", "12", 0.95),
             ("census", "12", "census", "13", 0.999), ("census", "10", "census", "13", 0.93),
             ("census", "20", "census", "21", 0.85)]
    tri = [("a", "b"), ("b", "c"), ("a", "c"), ("d", "e"), ("e", "f"), ("d", "f")]
    links += [("benefits", x, "benefits", y, 0.999) for x, y in tri] + [("benefits", "c", "benefits", "d", 0.97)]
    lk = pl.DataFrame(links, schema=["source_l", "record_id_l", "source_r", "record_id_r", "match_probability"],
                      orient="row")
    items = review_queue.build_queue(proj, recs, lk, [], 0.9, limit=None, margin_bits=3.0, large_size=5, date_gap_days=730,
                          unscored_weight=1.0, include_reviewed=False)
    got = {(i.entity_id, i.other_entity_id): (i.reason, i.reasons) for i in items}
    assert got == {
        ("E1", None): ("exclusive_twice", ["exclusive_twice"]),
        ("E2", None): ("conflicting_id", ["conflicting_id"]),
        ("E4", None): ("dates_apart", ["dates_apart", "loose_groups"]),
        ("E5", None): ("weak_bridge", ["weak_bridge", "large"]),
        ("E6", "E7"): ("near_miss", ["near_miss"]),
    }
    assert [i.rank for i in items] == [1, 2, 3, 4, 5]
    by = {(i.entity_id, i.other_entity_id): i for i in items}
    assert by[("E2", None)].detail == "2 different values of ssn"
    assert by[("E4", None)].detail == "birth_date values fall in 2 groups up to 40 years apart"
    assert by[("E5", None)].detail.startswith("only one link (p=0.970) joins 3 records (benefits:d, benefits:e, "
                                              "benefits:f) to 3 others")
    assert by[("E5", None)].suggested_split == ["benefits:d", "benefits:e", "benefits:f"]
    assert (by[("E6", "E7")].link, by[("E6", "E7")].score) == (0.85, 0.85)
    assert items[0].score >= items[-1].score
    # A decision that reviewed E5 as it is takes it out.
    rows = [{"decision_id": 1, "action": "confirm", "undone_by": None, "undoes": None,
             "payload": {"records": [["benefits", x] for x in "abcdef"],
                         "reviewed": {"E5": review.entity_digest((("benefits", x, f"h{x}") for x in "abcdef"))}}}]
    items = review_queue.build_queue(proj, recs, lk, rows, 0.9, limit=None, margin_bits=3.0, large_size=5, date_gap_days=730,
                          unscored_weight=1.0, include_reviewed=False)
    assert ("E5", None) not in {(i.entity_id, i.other_entity_id) for i in items}


def test_queue_on_the_linked_fixture_is_ranked_and_explained(linked_tiny) -> None:
    items = queue(linked_tiny.project)
    assert [i.rank for i in items] == list(range(1, len(items) + 1))
    assert [i.score for i in items] == sorted((i.score for i in items), reverse=True)
    assert all(i.reason in review.REASONS and i.reason == i.reasons[0] and i.detail for i in items)
    assert queue(linked_tiny.project, limit=2) == items[:2]


# ------------------------------------------------------------------------------ show, explain
def test_diff_spans_marks_what_differs() -> None:
    assert diff_spans("jonathan", "jonathon") == [(6, 7)]
    assert diff_spans("smith", "smyth") == [(2, 3)]
    assert diff_spans("ann", "anne") == [(3, 4)]
    assert diff_spans("anne", "ann") == []
    assert diff_spans(None, "x") == [(0, 1)] and diff_spans("x", None) == []


def test_show_lays_the_records_side_by_side(linked_tiny) -> None:
    p = linked_tiny.project
    big = largest(p)
    v = show(p, big)
    recs = sorted(members(state(p))[big])
    assert v.entity_id == big and v.status == "active"
    assert [tuple(r) for r in v.records.select("source", "record_id").rows()] == recs
    assert "birth_date" in v.attributes
    for (i, attr), spans in v.diffs.items():
        value = v.records[attr][i]
        assert spans == diff_spans(v.reference[attr], value) != []
    links = sql(p, "select count(*) as n from links l join records a on a.source = l.source_l and "
                   "a.record_id = l.record_id_l join records b on b.source = l.source_r and "
                   "b.record_id = l.record_id_r where a.entity_id = ? and b.entity_id = ?", [big, big])["n"][0]
    assert len(v.links) == links
    assert all(ln["evidence"] and ln["left"] in recs for ln in v.links)


def test_explain_entity_gives_the_tree_and_its_weakest_link(linked_tiny) -> None:
    p = linked_tiny.project
    big = largest(p)
    ex = explain_entity(p, big)
    recs = sorted(members(state(p))[big])
    assert ex.records == recs and ex.unjoined == []
    assert sorted([ex.root] + [ln.child for ln in ex.tree]) == recs
    assert ex.weakest == min(ex.tree, key=lambda ln: ln.match_probability)
    assert all(ln.match_probability >= 0.9 and ln.decision is None for ln in ex.tree)
    a, b = recs[0], recs[-1]
    path = ex.path(a, b)
    walk = [a]
    for ln in path:  # each link leads on from where the last one ended
        assert walk[-1] in (ln.parent, ln.child)
        walk.append(ln.child if walk[-1] == ln.parent else ln.parent)
    assert walk[-1] == b and len(set(walk)) == len(walk)


def test_explain_entity_shows_a_merge_as_a_decision(linked_copy: Path) -> None:
    a, b = two_entities(linked_copy)
    res = merge(linked_copy, a, b, reason="same")
    ex = explain_entity(linked_copy, a)
    assert [ln.decision for ln in ex.tree if ln.decision is not None] != []
    assert {ln.decision for ln in ex.tree if ln.decision is not None} == {res.decision_id}


# ------------------------------------------------------------------------------ feedback
def test_export_labels_and_evaluate_against_them(linked_copy: Path, tmp_path: Path) -> None:
    st = state(linked_copy)
    a, b = two_entities(linked_copy)
    ma, mb = sorted(members(st)[a]), sorted(members(st)[b])
    merge(linked_copy, a, b, reason="same")
    x, y, _p = near_miss(linked_copy)
    st2 = state(linked_copy)
    keep_apart(linked_copy, x, y, reason="different")
    out = tmp_path / "labels.csv"
    df = export_labels(linked_copy, out)
    merged = sorted(ma + mb)
    want = {(l, r): 1.0 for i, l in enumerate(merged) for r in merged[i + 1:]}
    want[tuple(sorted([x, y]))] = 0.0
    got = {((sl, il), (sr, ir)): s for il, sl, ir, sr, s in df.iter_rows()}
    assert got == want
    assert pl.read_csv(out, infer_schema=False).columns == [
        "unique_id_l", "source_dataset_l", "unique_id_r", "source_dataset_r", "clerical_match_score"]
    rep = evaluate_labels(linked_copy, out)
    n1 = sum(1 for v in want.values() if v == 1.0)
    assert rep.metrics == {
        "labelled_pairs": len(want), "pairs_in_store": len(want), "pairs_missing_records": 0,
        "true_positives": n1, "false_positives": 0, "false_negatives": 0, "true_negatives": len(want) - n1,
        "precision": 1.0, "recall": 1.0, "f1": 1.0, "accuracy": 1.0}
    assert rep.disagreements.height == 0
    assert st2[x] != st2[y]
