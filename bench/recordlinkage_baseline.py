"""recordlinkage (J535D165/recordlinkage) as a classical unsupervised baseline.

One recipe for every dataset, written the way the recordlinkage documentation writes its FEBRL
examples, with the columns of each dataset filled in:

* indexing: the union of three passes, so that one corrupted field does not lose a pair:
  sorted neighbourhood on the family name (window 5: catches typos that keep the sort order),
  exact block on the birth date, exact block on given name + a location field (postcode, or
  city for fake_1000). Blocking on the given name alone was tried first and gives 16M pairs on
  historical_50k (2,780 "william"s), too many for recordlinkage's per-pair Python comparisons.
* comparison: Jaro-Winkler >= 0.85 on names and free-text address fields, exact match on the
  rest; every feature is 0/1 with missing values as 0 (recordlinkage's default).
* classification: ``ECMClassifier`` (Fellegi-Sunter fitted by EM, unsupervised), match when its
  posterior match probability >= 0.5 (the classifier's own decision rule).
* clustering: connected components of the predicted links.

Example::

    from datasets import load
    run = run_baseline(load("fake1000"))
    run.timings      # blocking, training, scoring, clustering seconds
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import recordlinkage as rl
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from _harness import StageTimer, ToolRun
from datasets import BenchDataset

__all__ = ["RLConfig", "CONFIGS", "run_baseline"]

#: the ECM classifier's decision rule: posterior match probability >= 0.5
THRESHOLD = 0.5


@dataclass(frozen=True)
class RLConfig:
    """The columns the recipe needs from one dataset."""

    given: str
    family: str
    birth_date: str
    location: str  # second key next to the given name in the third blocking pass
    fuzzy: tuple[str, ...]  # compared with Jaro-Winkler >= 0.85
    exact: tuple[str, ...]  # compared for equality


_FEBRL = RLConfig(
    given="given_name", family="surname", birth_date="date_of_birth", location="postcode",
    fuzzy=("given_name", "surname", "address_1"),
    exact=("date_of_birth", "soc_sec_id", "street_number", "suburb", "postcode", "state"),
)
CONFIGS: dict[str, RLConfig] = {
    "febrl3": _FEBRL,
    "febrl4": _FEBRL,
    "fake1000": RLConfig(given="first_name", family="surname", birth_date="dob", location="city",
                         fuzzy=("first_name", "surname"), exact=("dob", "city", "email")),
    "hist50k": RLConfig(given="first_name", family="surname", birth_date="dob",
                        location="postcode_fake", fuzzy=("first_name", "surname"),
                        exact=("dob", "birth_place", "postcode_fake", "gender", "occupation")),
}


def run_baseline(ds: BenchDataset) -> ToolRun:
    """Index, compare, classify (ECM) and cluster ``ds`` with recordlinkage."""
    cfg = CONFIGS[ds.name]
    timer = StageTimer()
    sources = list(ds.frames)
    # recordlinkage keys records by the frame index; a link task passes two frames
    frames = [f.set_index(ds.id_column, drop=False) for f in ds.frames.values()]

    with timer("blocking"):
        indexer = rl.Index()
        indexer.sortedneighbourhood(cfg.family, window=5)
        indexer.block(cfg.birth_date)
        indexer.block([cfg.given, cfg.location])
        candidates = indexer.index(*frames)

    with timer("comparing"):  # recordlinkage's feature vectors: part of scoring in Splink terms
        compare = rl.Compare()
        for col in cfg.fuzzy:
            compare.string(col, col, method="jarowinkler", threshold=0.85, label=col)
        for col in cfg.exact:
            compare.exact(col, col, label=col)
        features = compare.compute(candidates, *frames).astype(np.int8)

    with timer("training"):
        ecm = rl.ECMClassifier(binarize=None)
        ecm.fit(features)

    with timer("scoring"):
        prob = np.asarray(ecm.prob(features), dtype=float)

    with timer("clustering"):
        src_l = sources[0]
        src_r = sources[1] if len(sources) > 1 else sources[0]
        ids_l = candidates.get_level_values(0).astype(str)
        ids_r = candidates.get_level_values(1).astype(str)
        entities = _components(ds, sources, ids_l, ids_r, src_l, src_r, prob >= THRESHOLD)

    # Splink's "scoring" computes the comparison vectors and the weights in one SQL pass; the
    # same work here is comparing (feature vectors) + ECM posterior, so both count as scoring.
    # The comparing part alone is kept in config for anyone who wants the split.
    timings = dict(timer.timings)
    comparing = timings.pop("comparing")
    timings["scoring"] += comparing
    pairs = pd.DataFrame({"source_l": src_l, "record_id_l": ids_l, "source_r": src_r,
                          "record_id_r": ids_r, "match_probability": prob})
    config = {
        "indexing": [f"sortedneighbourhood({cfg.family}, window=5)", f"block({cfg.birth_date})",
                     f"block({cfg.given}, {cfg.location})"],
        "comparisons": [f"jarowinkler>=0.85({c})" for c in cfg.fuzzy] + [f"exact({c})" for c in cfg.exact],
        "classifier": "ECMClassifier(binarize=None), match at posterior >= 0.5",
        "clustering": "connected components of predicted links",
        "ecm_p_match": float(getattr(ecm, "p", float("nan"))),
        "comparing_seconds": round(comparing, 3),
    }
    return ToolRun(entities=entities, pairs=pairs, timings=timings, threshold=THRESHOLD,
                   config=config)


def _components(ds: BenchDataset, sources: list[str], ids_l: pd.Index, ids_r: pd.Index,
                src_l: str, src_r: str, is_link: np.ndarray) -> pd.DataFrame:
    """Connected components over the predicted links; every record gets a cluster id."""
    keys = pd.Index(np.concatenate([
        (s + "\x1f" + ds.frames[s][ds.id_column].astype(str)).to_numpy() for s in sources]))
    left = keys.get_indexer(src_l + "\x1f" + ids_l[is_link])
    right = keys.get_indexer(src_r + "\x1f" + ids_r[is_link])
    n = len(keys)
    graph = coo_matrix((np.ones(len(left), dtype=np.int8), (left, right)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    split = keys.str.split("\x1f", n=1)
    return pd.DataFrame({"source": split.str[0], "record_id": split.str[1],
                         "cluster_id": labels.astype(str)})
