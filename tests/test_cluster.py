"""Clustering: threshold, exclusivity, cannot-link, must-link, average linkage, determinism."""

from __future__ import annotations

import math
import random

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idweave.linkage.cluster import (Clustering, _descending, _first_strong, _Walk, choose_threshold, cluster,
                                     components)


def links(*edges: tuple[int, int, float]) -> pl.DataFrame:
    return pl.DataFrame({"rid_l": [a for a, _, _ in edges], "rid_r": [b for _, b, _ in edges],
                         "match_probability": [p for _, _, p in edges]},
                        schema={"rid_l": pl.Int64, "rid_r": pl.Int64, "match_probability": pl.Float64})


def labels(edges: pl.DataFrame, rids: list[int], **kw) -> list[int]:
    return cluster(edges, rids, **{"threshold": 0.9, **kw})["cluster"].to_list()


def test_links_at_or_above_the_threshold_join_records() -> None:
    edges = links((0, 1, 0.9), (2, 3, 0.8999), (3, 4, 0.95))
    out = cluster(edges, [0, 1, 2, 3, 4, 5], threshold=0.9)
    assert out.schema == {"rid": pl.Int64, "cluster": pl.Int64}
    # A cluster is labelled by its smallest rid; a record with no link is alone.
    assert out.rows() == [(0, 0), (1, 0), (2, 2), (3, 3), (4, 3), (5, 5)]


def test_rids_keep_the_order_given() -> None:
    assert cluster(links((0, 1, 0.99)), [5, 1, 0], threshold=0.5).rows() == [(5, 5), (1, 0), (0, 0)]


def test_no_links_no_joins() -> None:
    assert labels(links(), [3, 4]) == [3, 4]


def test_links_to_records_not_listed_are_ignored() -> None:
    assert labels(links((0, 1, 0.99), (1, 7, 0.99)), [0, 1]) == [0, 0]


def test_an_exclusive_source_never_has_two_records_in_one_cluster() -> None:
    # 0 and 2 are both in the exclusive tax source; 1 links to both.
    edges = links((0, 1, 0.99), (1, 2, 0.98))
    assert labels(edges, [0, 1, 2], exclusive={0: "tax", 2: "tax"}) == [0, 0, 2]
    # The strongest link wins the shared record.
    edges = links((0, 1, 0.98), (1, 2, 0.99))
    assert labels(edges, [0, 1, 2], exclusive={0: "tax", 2: "tax"}) == [0, 1, 1]


def test_records_of_two_different_exclusive_sources_may_join() -> None:
    edges = links((0, 1, 0.99), (1, 2, 0.98), (2, 3, 0.97))
    assert labels(edges, [0, 1, 2, 3], exclusive={0: "tax", 2: "passports", 3: "tax"}) == [0, 0, 0, 3]


def test_exclusivity_holds_through_chains() -> None:
    # 0 and 3 are exclusive; the chain 0-1-2-3 must break somewhere, at its weakest link.
    edges = links((0, 1, 0.99), (1, 2, 0.95), (2, 3, 0.97))
    assert labels(edges, [0, 1, 2, 3], exclusive={0: "tax", 3: "tax"}) == [0, 0, 2, 2]


def test_cannot_link_is_never_crossed_even_through_a_chain() -> None:
    edges = links((0, 1, 0.99), (1, 2, 0.98))
    assert labels(edges, [0, 1, 2], cannot_link=[(0, 2)]) == [0, 0, 2]
    assert labels(edges, [0, 1, 2], cannot_link=[(2, 0)]) == [0, 0, 2]
    assert labels(edges, [0, 1, 2], cannot_link=[(0, 1)]) == [0, 1, 1]


def test_cannot_link_between_clusters_built_later() -> None:
    edges = links((0, 1, 0.99), (2, 3, 0.99), (1, 2, 0.95))
    assert labels(edges, [0, 1, 2, 3], cannot_link=[(0, 3)]) == [0, 0, 2, 2]


def test_must_link_joins_without_a_link_and_below_the_threshold() -> None:
    assert labels(links(), [0, 1, 2], must_link=[(0, 2)]) == [0, 1, 0]
    assert labels(links((0, 1, 0.2)), [0, 1], must_link=[(1, 0)]) == [0, 0]


def test_a_human_merge_wins_over_exclusivity_but_later_links_respect_it() -> None:
    edges = links((1, 2, 0.99))
    out = labels(edges, [0, 1, 2], exclusive={0: "tax", 1: "tax", 2: "tax"}, must_link=[(0, 1)])
    assert out == [0, 0, 2]


def test_average_linkage_does_not_chain_through_one_record() -> None:
    edges = links((0, 1, 0.99), (1, 2, 0.99))
    assert labels(edges, [0, 1, 2], method="components") == [0, 0, 0]
    # {0, 1} and 2: pairs (0, 2) unscored (0) and (1, 2) 0.99: mean 0.495 < 0.5.
    assert labels(edges, [0, 1, 2], method="average") == [0, 0, 2]
    assert labels(edges, [0, 1, 2], method="average", min_average=0.49) == [0, 0, 0]
    edges = links((0, 1, 0.99), (1, 2, 0.99), (0, 2, 0.3))
    assert labels(edges, [0, 1, 2], method="average") == [0, 0, 0]


def test_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown clustering method 'single'; expected components or average"):
        cluster(links(), [0], threshold=0.9, method="single")


@pytest.mark.parametrize("method", ["components", "average"])
def test_the_result_does_not_depend_on_the_order_of_links(method: str) -> None:
    rng = random.Random(3)
    rids = list(range(40))
    edges = [(a, b, round(rng.choice([0.91, 0.95, 0.95, 0.99, 0.5]), 2))
             for a in rids for b in rids if a < b and rng.random() < 0.08]
    exclusive = {r: "tax" for r in rids if r % 5 == 0}
    cannot = [(1, 2), (3, 30)]
    expected = labels(links(*edges), rids, exclusive=exclusive, cannot_link=cannot, method=method)
    assert len(set(expected)) < len(rids)  # some joins happened
    for _ in range(5):  # pairs come with rid_l < rid_r, in any row order
        rng.shuffle(edges)
        assert labels(links(*edges), rids, exclusive=exclusive, cannot_link=cannot, method=method) == expected
    # Exclusivity held everywhere.
    members: dict[int, list[int]] = {}
    for rid, c in zip(rids, expected):
        members.setdefault(c, []).append(rid)
    assert all(sum(r in exclusive for r in m) <= 1 for m in members.values())


def test_ties_are_broken_by_record_ids() -> None:
    edges = links((1, 2, 0.95), (0, 1, 0.95))
    assert labels(edges, [0, 1, 2], exclusive={0: "tax", 2: "tax"}) == [0, 0, 2]


def test_components() -> None:
    assert components(links((0, 1, 0.1), (2, 3, 0.0)), [0, 1, 2, 3, 4])["cluster"].to_list() == [0, 0, 2, 2, 4]


def test_choose_threshold() -> None:
    assert choose_threshold(pl.Series([0.999, 0.998, 0.6, 0.01])) == 0.5
    assert choose_threshold(pl.Series([], dtype=pl.Float64)) == 0.9
    assert choose_threshold(pl.Series([0.95, 0.7]), grid=[0.8, 0.9]) == 0.8


# --- The trace and the replay -------------------------------------------------------------

AVG = {"threshold": 0.9, "method": "average", "with_trace": True}


def test_the_trace_is_the_strong_links_that_joined_in_processing_order() -> None:
    edges = links((2, 1, 0.95), (0, 1, 0.99), (2, 3, 0.97), (4, 5, 0.2))
    out = cluster(edges, range(7), must_link=[(5, 6)], **AVG)
    assert isinstance(out, Clustering)
    assert out.clusters.rows() == cluster(edges, range(7), must_link=[(5, 6)], threshold=0.9,
                                          method="average").rows()
    # (1, 2) is refused ({0, 1} and {2, 3} average 0.95 / 4); the must-link 5-6 is not traced.
    assert out.joined.rows() == [(0, 1, 0.99), (2, 3, 0.97)]
    assert out.joined.schema == {"rid_l": pl.Int64, "rid_r": pl.Int64, "match_probability": pl.Float64}
    assert cluster(links(), [0], **AVG).joined.height == 0


def test_a_replay_with_nothing_dirty_repeats_the_previous_run() -> None:
    edges = links((0, 1, 0.99), (1, 2, 0.95), (2, 3, 0.97), (0, 2, 0.6))
    full = cluster(edges, range(4), **AVG)
    again = cluster(edges, range(4), previous_joined=full.joined, dirty=[], **AVG)
    assert again.clusters.equals(full.clusters) and again.joined.equals(full.joined)


def test_a_clean_cluster_the_previous_run_joined_here_becomes_dirty() -> None:
    before = links((0, 1, 0.99), (1, 2, 0.95), (2, 3, 0.97))
    full = cluster(before, range(5), **AVG)
    assert full.joined.rows() == [(0, 1, 0.99), (2, 3, 0.97)]
    # New record 4 takes 3 first; {3, 4} refuses 2, so 2 is dirty from then on, and the
    # later link (1, 2) is judged afresh (refused: 0.95 / 2).
    after = pl.concat([before, links((3, 4, 0.98))])
    replay = cluster(after, range(5), previous_joined=full.joined, dirty=[4], **AVG)
    scratch = cluster(after, range(5), **AVG)
    assert replay.clusters["cluster"].to_list() == scratch.clusters["cluster"].to_list() == [0, 0, 2, 3, 3]
    assert replay.joined.equals(scratch.joined)
    # With a weak (0, 2) the fresh judgement joins {0, 1} and 2 ((0.95 + 0.4) / 2), which the
    # previous run refused ({2, 3}: 1.35 / 4): replaying its "no" would be wrong.
    weak = links((0, 2, 0.4))
    full = cluster(pl.concat([before, weak]), range(5), **AVG)
    after = pl.concat([before, weak, links((3, 4, 0.98))])
    replay = cluster(after, range(5), previous_joined=full.joined, dirty=[4], **AVG)
    assert replay.clusters["cluster"].to_list() == [0, 0, 0, 3, 3]
    assert replay.joined.rows() == cluster(after, range(5), **AVG).joined.rows()


def test_the_caller_owns_the_dirty_set() -> None:
    # Not marking a new record dirty replays the previous run's "no" for its links: wrong.
    full = cluster(links((0, 1, 0.99)), range(3), **AVG)
    after = links((0, 1, 0.99), (1, 2, 0.98), (0, 2, 0.97))
    assert cluster(after, range(3), **AVG).clusters["cluster"].to_list() == [0, 0, 0]
    wrong = cluster(after, range(3), previous_joined=full.joined, dirty=[], **AVG)
    assert wrong.clusters["cluster"].to_list() == [0, 0, 2]
    right = cluster(after, range(3), previous_joined=full.joined, dirty=[2], **AVG)
    assert right.clusters["cluster"].to_list() == [0, 0, 0]


def test_previous_joins_that_are_gone_or_rescored_make_their_ends_dirty() -> None:
    before = links((0, 1, 0.99), (1, 2, 0.98), (0, 2, 0.97), (3, 4, 0.95))
    full = cluster(before, range(5), **AVG)
    # Record 2 is removed and 3-4 re-scored by a dirty 4: 0, 1, 3 are not marked, yet exact.
    after = links((0, 1, 0.99), (3, 4, 0.2))
    replay = cluster(after, [0, 1, 3, 4], previous_joined=full.joined, dirty=[4], **AVG)
    assert replay.clusters["cluster"].to_list() == [0, 0, 3, 4]
    # Without match_probability a re-scored strong link must have its ends marked.
    still = links((0, 1, 0.99), (3, 4, 0.93))
    rows = cluster(still, [0, 1, 3, 4], previous_joined=full.joined.drop("match_probability"),
                   dirty=[3, 4], **AVG)
    assert rows.joined.rows() == cluster(still, [0, 1, 3, 4], **AVG).joined.rows()


def test_a_clean_cluster_that_turns_dirty_late_has_its_later_links_judged_afresh() -> None:
    before = links((0, 1, 0.99), (2, 3, 0.98), (0, 2, 0.95), (1, 3, 0.2), (0, 3, 0.3))
    full = cluster(before, range(4), **AVG)
    assert full.joined.rows() == [(0, 1, 0.99), (2, 3, 0.98)]  # (0, 2): 1.45 / 4 refused
    # The new record 4 joins {0, 1} before (0, 2), which {0, 1, 4} and {2, 3} then pass
    # (3.25 / 6): the replay must visit (0, 2), a link of no dirty record and no previous join.
    after = pl.concat([before, links((1, 4, 0.97), (0, 4, 0.6), (2, 4, 0.9), (3, 4, 0.9))])
    replay = cluster(after, range(5), previous_joined=full.joined, dirty=[4], **AVG)
    scratch = cluster(after, range(5), **AVG)
    assert scratch.joined.rows()[-1] == (0, 2, 0.95)
    assert replay.clusters.equals(scratch.clusters) and replay.joined.equals(scratch.joined)


def test_components_without_a_dirty_record_repeat_their_previous_joins() -> None:
    # {0, 1, 2} (with a must-link 1-2) and {5, 6} are untouched; 8 is new and links to 7.
    before = links((0, 1, 0.99), (5, 6, 0.97), (6, 7, 0.2), (0, 2, 0.9))
    full = cluster(before, range(8), must_link=[(1, 2)], **AVG)
    after = pl.concat([before, links((7, 8, 0.96))])
    replay = cluster(after, range(9), must_link=[(1, 2)], previous_joined=full.joined, dirty=[8], **AVG)
    scratch = cluster(after, range(9), must_link=[(1, 2)], **AVG)
    assert replay.clusters["cluster"].to_list() == [0, 0, 0, 3, 4, 5, 5, 7, 7]
    assert replay.clusters.equals(scratch.clusters) and replay.joined.equals(scratch.joined)


PAIR_SUMS = _Walk.PAIRS


@pytest.mark.parametrize("pairs", [0, PAIR_SUMS])
def test_a_pair_linked_twice_counts_twice(pairs: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Walk, "PAIRS", pairs)  # both ways of summing an average
    once = links((0, 1, 0.99), (1, 2, 0.6), (0, 2, 0.25))
    # {0, 1} and 2: 0.85 / 2 refused; with (0, 2) twice, 1.1 / 2 passes.
    assert labels(once, [0, 1, 2], method="average", threshold=0.5) == [0, 0, 2]
    assert labels(pl.concat([once, links((2, 0, 0.25))]), [0, 1, 2], method="average", threshold=0.5) == [0, 0, 0]


@pytest.mark.parametrize("with_p", [True, False])
@pytest.mark.parametrize("order", [[0, 1, 2], [1, 0, 2], [2, 1, 0]])
def test_a_pair_strong_twice_replays_the_link_that_joined(order: list[int], with_p: bool) -> None:
    # (0, 1) is strong twice: the previous run joined it at 0.99, which the replay must find
    # (not the 0.95 link of the same pair) to keep {0} and {1} joined before 2 arrives.
    rows = [(0, 1, 0.95), (0, 1, 0.99), (1, 2, 0.97)]
    before = links(*rows[:2])
    full = cluster(before, [0, 1], **AVG)
    assert full.joined.rows() == [(0, 1, 0.99)]
    joined = full.joined if with_p else full.joined.drop("match_probability")
    after = links(*(rows[i] for i in order))
    replay = cluster(after, [0, 1, 2], previous_joined=joined, dirty=[2], **AVG)
    scratch = cluster(after, [0, 1, 2], **AVG)
    assert replay.clusters.equals(scratch.clusters) and replay.joined.equals(scratch.joined)


def test_first_strong_finds_the_first_link_with_the_probability() -> None:
    key = np.array([3, 5, 5, 5, 9])
    p = np.array([0.9, 0.95, 0.99, 0.99, 0.97])
    want = np.array([5, 9, 5, 4, 3, 12, 5])
    want_p = np.array([0.99, 0.97, 0.95, 0.9, 0.8, 0.9, 0.5])
    assert _first_strong(key, p, want, want_p).tolist() == [2, 4, 1, -1, -1, -1, -1]
    # Without probabilities: the first in processing order, the most probable.
    assert _first_strong(key, p, want, None).tolist() == [2, 4, 2, -1, 0, -1, 2]
    assert _first_strong(key[:0], p[:0], want, want_p).tolist() == [-1] * 7


def test_descending_is_a_stable_sort() -> None:
    rng = np.random.default_rng(3)
    for size in (0, 1, 7, 1000):
        p = rng.choice([0.5, 0.9, 0.9, 0.99, 1.0, 0.0], size)
        assert _descending(p).tolist() == np.argsort(-p, kind="stable").tolist()


def test_rids_far_apart_or_negative() -> None:
    rng = random.Random(5)
    edges = [(a, b, rng.choice([0.2, 0.6, 0.95, 0.99])) for a in range(12) for b in range(a + 1, 12)
             if rng.random() < 0.4]
    expected = cluster(links(*edges), range(12), **AVG)
    assert expected.clusters["cluster"].n_unique() < 12
    # Renaming the records in the same order renames the result.
    for rid in (lambda r: r * 10**12 - 7, lambda r: r - 50):
        got = cluster(links(*((rid(a), rid(b), p) for a, b, p in edges)), [rid(r) for r in range(12)], **AVG)
        assert got.clusters.rows() == [(rid(r), rid(c)) for r, c in expected.clusters.rows()]
        assert got.joined.rows() == [(rid(a), rid(b), p) for a, b, p in expected.joined.rows()]


def test_dirty_needs_previous_joined() -> None:
    with pytest.raises(ValueError, match="dirty is only meaningful with previous_joined"):
        cluster(links(), [0], threshold=0.9, dirty=[0])


def test_the_average_is_an_exact_sum() -> None:
    # 0.1 + 0.2 + 0.3 is 0.6000000000000001 added left to right, 0.6 exactly rounded: the
    # average of {0, 1, 2} and 3 is 0.6 / 3 < 0.2 however {0, 1, 2} was built.
    edges = links((0, 3, 0.1), (1, 3, 0.2), (2, 3, 0.3), (0, 1, 0.99), (1, 2, 0.99), (0, 2, 0.99))
    for order in ([0, 1, 2, 3], [3, 2, 1, 0]):
        out = cluster(edges.sample(fraction=1.0, shuffle=True, seed=order[0]), order,
                      threshold=0.05, method="average", min_average=0.2)
        assert dict(out.rows()) == {0: 0, 1: 0, 2: 0, 3: 3}


PROBS = [0.5, 0.5, 0.6, 0.75, 0.9, 0.9, 0.95, 0.99, 0.3, 0.1, 0.2, 0.0]


@st.composite
def two_runs(draw: st.DrawFn) -> dict:
    """A previous run, and a current one on changed data with a dirty set that meets the
    replay's conditions (and no more than it needs: links to dirty records change unmarked)."""
    rid = st.integers(0, 20)
    prob = st.one_of(st.sampled_from(PROBS), st.floats(0.0, 1.0))
    before = sorted(draw(st.sets(rid, min_size=1, max_size=14)))
    pair = st.tuples(st.sampled_from(before), st.sampled_from(before)).filter(lambda t: t[0] != t[1])
    old_links = {tuple(sorted(p)): draw(prob) for p in draw(st.lists(pair, max_size=60))}
    sources = st.sampled_from([None, None, "tax", "passports"])
    excl = {r: s for r in before if (s := draw(sources))}
    must = draw(st.lists(pair, max_size=2))
    cannot = draw(st.lists(pair, max_size=3))

    gone = set(draw(st.sets(st.sampled_from(before), max_size=4)))
    new = sorted(draw(st.sets(rid, max_size=6)) - set(before))
    after = [r for r in before if r not in gone] + new
    dirty = set(new) | set(draw(st.sets(st.sampled_from(before), max_size=3)))
    links_now = {p: v for p, v in old_links.items() if not set(p) & gone}
    # Records whose exclusive source or human decisions change are dirty (a decision on a
    # removed record is withdrawn).
    old_excl = dict(excl)
    dirty |= {r for p in must + cannot if set(p) & gone for r in p}
    for r in draw(st.sets(st.sampled_from(before), max_size=2)):
        excl[r] = draw(sources)
        dirty.add(r)
    must_now, cannot_now = list(must), list(cannot)
    if after and draw(st.booleans()):
        extra = (draw(st.sampled_from(after)), draw(st.sampled_from(after)))
        (must_now if draw(st.booleans()) else cannot_now).append(extra)
        dirty |= set(extra)
    if must and draw(st.booleans()):
        dirty |= set(must_now.pop(0))
    # Links change: added, dropped or re-scored; one end of a change between clean records
    # is marked (a change that touches a dirty record needs nothing).
    with_p = draw(st.booleans())
    for _ in range(draw(st.integers(0, 8))):
        if len(after) < 2:
            break
        a, b = draw(st.sampled_from(after)), draw(st.sampled_from(after))
        if a == b:
            continue
        key = (min(a, b), max(a, b))
        if draw(st.booleans()):
            links_now[key] = draw(prob)
        else:
            links_now.pop(key, None)
        if not with_p:  # then a strong link touching a clean record must keep its probability
            dirty |= {a, b}
        elif not {a, b} & dirty:
            dirty.add(draw(st.sampled_from([a, b])))
    for r in new:
        for other in draw(st.lists(st.sampled_from(after), max_size=4)):
            if other != r:
                links_now[(min(r, other), max(r, other))] = draw(prob)

    # A pair given twice (in both runs) counts twice in averages.
    twice = set(draw(st.lists(st.sampled_from(sorted(old_links)), max_size=3))) if old_links else set()

    def frame(d: dict) -> pl.DataFrame:
        rows = [(b, a, p) if draw(st.booleans()) else (a, b, p) for (a, b), p in d.items()]
        return links(*rows, *((a, b, p) for (a, b), p in d.items() if (a, b) in twice))

    return {"before": before, "after": after, "old_links": frame(old_links), "links": frame(links_now),
            "old": {"exclusive": {r: s for r, s in old_excl.items() if s}, "must_link": must,
                    "cannot_link": cannot},
            "now": {"exclusive": {r: s for r, s in excl.items() if s}, "must_link": must_now,
                    "cannot_link": cannot_now},
            "dirty": sorted(dirty & set(after)), "with_p": with_p}


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(runs=two_runs(), method=st.sampled_from(["average", "average", "components"]),
       min_average=st.sampled_from([0.5, 0.3, 0.75]), scan=st.booleans())
def test_a_replay_equals_a_run_from_scratch(runs: dict, method: str, min_average: float, scan: bool,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Averages are summed pair by pair or, with scan, by scanning the clusters' links.
    monkeypatch.setattr(_Walk, "PAIRS", 0 if scan else PAIR_SUMS)
    kw = {"threshold": 0.5, "method": method, "min_average": min_average, "with_trace": True}
    prev = cluster(runs["old_links"], runs["before"], **runs["old"], **kw)
    joined = prev.joined if runs["with_p"] else prev.joined.drop("match_probability")
    scratch = cluster(runs["links"], runs["after"], **runs["now"], **kw)
    replay = cluster(runs["links"], runs["after"], **runs["now"], **kw, previous_joined=joined,
                     dirty=runs["dirty"])
    assert replay.clusters.rows() == scratch.clusters.rows()
    assert replay.joined.rows() == scratch.joined.rows()
    # Marking everything dirty is a run from scratch.
    everything = cluster(runs["links"], runs["after"], **runs["now"], **kw, previous_joined=joined,
                         dirty=runs["after"])
    assert everything.clusters.rows() == scratch.clusters.rows()
    # Links as the pipeline gives them (ends ordered, rows sorted by rids) take no sort inside.
    tidy = runs["links"].select(pl.min_horizontal("rid_l", "rid_r").alias("rid_l"),
                                pl.max_horizontal("rid_l", "rid_r").alias("rid_r"),
                                "match_probability").sort("rid_l", "rid_r", maintain_order=True)
    again = cluster(tidy, runs["after"], **runs["now"], **kw, previous_joined=joined, dirty=runs["dirty"])
    assert again.clusters.rows() == scratch.clusters.rows() and again.joined.rows() == scratch.joined.rows()
    if scan:  # both ways of summing an average agree
        monkeypatch.setattr(_Walk, "PAIRS", PAIR_SUMS)
        assert cluster(runs["links"], runs["after"], **runs["now"], **kw).joined.rows() == scratch.joined.rows()


def reference_average(edges: list[tuple[int, int, float]], rids: list[int], threshold: float,
                      min_average: float, exclusive: dict[int, str]) -> list[tuple[int, int, float]]:
    """Average linkage as defined, in plain Python: the trace."""
    weights: dict[frozenset, list[float]] = {}
    for a, b, p in edges:
        if p > 0 and a != b:
            weights.setdefault(frozenset((a, b)), []).append(p)
    of = {r: {r} for r in rids}
    trace = []
    for a, b, p in sorted(((min(a, b), max(a, b), p) for a, b, p in edges if p >= threshold and a != b),
                          key=lambda e: (-e[2], e[0], e[1])):
        ca, cb = of[a], of[b]
        if ca is cb or len({exclusive[r] for r in ca | cb if r in exclusive}) < \
                sum(r in exclusive for r in ca | cb):
            continue
        total = math.fsum(w for x in ca for y in cb for w in weights.get(frozenset((x, y)), ()))
        if total / (len(ca) * len(cb)) >= min_average:
            merged = ca | cb
            for r in merged:
                of[r] = merged
            trace.append((a, b, p))
    return trace


@pytest.mark.parametrize("pairs", [0, PAIR_SUMS])
def test_average_linkage_as_defined_on_random_graphs(pairs: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Walk, "PAIRS", pairs)  # both ways of summing an average
    for seed in range(60):
        rng = random.Random(seed)
        edges = [(a, b, rng.choice([0.1, 0.3, 0.6, 0.95])) for a in range(25) for b in range(a + 1, 25)
                 if rng.random() < 0.1]
        got = cluster(links(*edges), range(25), threshold=0.5, method="average", with_trace=True)
        assert got.joined.rows() == reference_average(edges, list(range(25)), 0.5, 0.5, {})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edges=st.lists(st.tuples(st.integers(0, 24), st.integers(0, 24), st.sampled_from(PROBS)), max_size=120),
       exclusive=st.dictionaries(st.integers(0, 24), st.sampled_from(["tax", "passports"]), max_size=6),
       min_average=st.sampled_from([0.5, 0.3, 0.75]), pairs=st.sampled_from([0, PAIR_SUMS]))
def test_average_linkage_as_defined(edges: list, exclusive: dict, min_average: float, pairs: int,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Walk, "PAIRS", pairs)  # both ways of summing an average
    got = cluster(links(*edges), range(25), threshold=0.5, method="average", min_average=min_average,
                  exclusive=exclusive, with_trace=True)
    assert got.joined.rows() == reference_average(edges, list(range(25)), 0.5, min_average, exclusive)


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 30), edges=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40), st.floats(0, 1)),
                                             max_size=60), threshold=st.floats(0, 1))
def test_components_equal_union_find_clustering(n: int, edges: list, threshold: float) -> None:
    links = pl.DataFrame(edges, schema={"rid_l": pl.Int64, "rid_r": pl.Int64, "match_probability": pl.Float64},
                         orient="row").filter(pl.col("rid_l") != pl.col("rid_r"))
    rids = list(range(0, 2 * n, 2))[::-1]  # some linked rids are not listed; order given is kept
    assert components(links, rids, threshold).equals(cluster(links, rids, threshold=threshold))
