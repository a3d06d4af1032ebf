"""Clustering leaves a record on its own when it fits two people nearly equally
(cluster._abstain): two clusters that are two people for sure (each holds a record of one
exclusive source, or a person kept them apart), and a record whose best link to the other is
less than cluster.AMBIGUOUS_BITS weaker than its best link at home."""
from __future__ import annotations

import random

import polars as pl
import pytest
from idweave.linkage.cluster import AMBIGUOUS_BITS, cluster


def _p(bits: float) -> float:
    return 1 / (1 + 2 ** -bits)


def test_a_form_that_fits_two_census_people_is_left_alone():
    # 0 and 2: census records of a father and son; 1: a payroll form naming both.
    census = {0: "census", 2: "census"}
    for gap, alone in ((AMBIGUOUS_BITS - 0.5, True), (AMBIGUOUS_BITS + 0.5, False)):
        links = pl.DataFrame({"rid_l": [0, 1], "rid_r": [1, 2], "match_probability": [_p(12), _p(12 - gap)]})
        got = cluster(links, [0, 1, 2], threshold=0.5, method="average", exclusive=census)["cluster"].to_list()
        assert got == ([0, 1, 2] if alone else [0, 0, 2]), gap


def test_nothing_changes_where_the_two_clusters_may_be_one_person():
    # No exclusive source and no decision: only the average keeps {0, 1} and {2, 3} apart.
    links = pl.DataFrame({"rid_l": [0, 1, 2], "rid_r": [1, 2, 3], "match_probability": [0.999, 0.995, 0.999]})
    assert cluster(links, range(4), threshold=0.5, method="average")["cluster"].to_list() == [0, 0, 2, 2]
    # A person's keep-apart makes them two people: then 1 and 2 fit both.
    kept = cluster(links, range(4), threshold=0.5, method="average", cannot_link=[(0, 3)])["cluster"].to_list()
    assert kept == [0, 1, 2, 3]


def test_a_must_link_keeps_its_record():
    links = pl.DataFrame({"rid_l": [0, 1], "rid_r": [1, 2], "match_probability": [0.999, 0.998]})
    got = cluster(links, [0, 1, 2], threshold=0.5, method="average", exclusive={0: "c", 2: "c"},
                  must_link=[(0, 1)])["cluster"].to_list()
    assert got == [0, 0, 2]


@pytest.mark.parametrize("seed", range(6))
def test_a_replay_gives_what_a_run_from_scratch_gives(seed):
    rng = random.Random(seed)
    n = 120
    exclusive = {i: "census" for i in range(n) if i % 3 == 0}
    pairs = {(i, j) for i in range(n) for j in range(i + 1, min(n, i + 6)) if rng.random() < 0.6}
    links = pl.DataFrame([(i, j, rng.choice([0.2, 0.6, 0.9, 0.97, 0.99, 0.999, 0.9999])) for i, j in sorted(pairs)],
                         schema={"rid_l": pl.Int64, "rid_r": pl.Int64, "match_probability": pl.Float64}, orient="row")
    old = links.filter((pl.col("rid_l") < 100) & (pl.col("rid_r") < 100))
    first = cluster(old, range(100), threshold=0.5, method="average", exclusive={k: v for k, v in exclusive.items()
                                                                                  if k < 100}, with_trace=True)
    scratch = cluster(links, range(n), threshold=0.5, method="average", exclusive=exclusive, with_trace=True)
    again = cluster(links, range(n), threshold=0.5, method="average", exclusive=exclusive, with_trace=True,
                    previous_joined=first.joined, dirty=range(100, n))
    assert scratch.clusters.equals(again.clusters) and scratch.joined.equals(again.joined)
