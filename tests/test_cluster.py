"""Clustering: threshold, exclusivity, cannot-link, must-link, average linkage, determinism."""

from __future__ import annotations

import random

import polars as pl
import pytest

from idweave.linkage.cluster import choose_threshold, cluster, components


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
