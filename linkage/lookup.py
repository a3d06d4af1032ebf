"""Lookup: records in, the best-matching entities out, writing nothing.

A query record is cleaned as a source row is (:func:`~idweave.linkage.sources.records_from_frame`
with a synthetic source), blocked with the project's rules against the stored records and
scored with the stored model, so a lookup finds the pairs a batch run would make with that
record added and gives them the same scores (the same Splink comparison SQL, the same
term-frequency tables, the same block-size caps).

It is fast because nothing per query builds a Splink linker, a frame or a DuckDB query, or
scans the store: a :class:`Matcher` loads the stored records once and keeps each blocking
rule's keys as sorted 64-bit hashes (a query key is found by binary search). A query dict is
cleaned in plain Python (``_query_clean.py``: the kinds' cleaning for printable-ASCII
values, the polars expressions themselves one value at a time otherwise), and each
comparison's level is Splink's level SQL compiled to Python with DuckDB's semantics
(``_levels.py``; jaro-winkler rounded as DuckDB rounds it). DuckDB runs that SQL itself
only for what the compiler does not know, and lists or frames of queries are cleaned through
polars; ``tests/test_lookup_fast.py`` checks that both paths agree.
The matcher is a snapshot: it holds no lock on the store, so runs go on while it serves, and
:meth:`Matcher.refresh` (or :func:`lookup`, which rebuilds when the store file changes) picks
up a new run.

>>> from idweave.linkage import link
>>> _ = link("fixtures/tiny/project.yaml")
>>> best = lookup("fixtures/tiny/project.yaml", {"first_name": "Jorge", "last_name": "Castillo",
...                                              "birth_date": "1965-07-14"})
>>> best.columns[:5]
['query', 'rank', 'entity_id', 'match_probability', 'match_weight']
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any, Mapping, Sequence

import duckdb
import numpy as np
import polars as pl

from idweave.blocking.keys import canonical_names, key_values
from idweave.blocking.pairs import DEFAULT_MAX_BLOCK
from idweave.blocking.rules import Rule
from idweave.linkage import comparisons, scoring
from idweave.linkage import model as model_mod
from idweave.linkage._levels import compile_comparison, duckdb_fuses, gamma_of
from idweave.linkage._query_clean import check_attributes, clean_frames, RecordCleaner, SlowPath
from idweave.linkage.errors import LookupInputError
from idweave.linkage.graph import Store
from idweave.linkage.privacy import check_store, pseudonymiser
from idweave.linkage.project import Project

__all__ = ["lookup", "Matcher"]

_SEED = 20240917  # any fixed seed: hashes are compared only within one process


def _hash(keys: pl.Series) -> np.ndarray:
    return keys.hash(seed=_SEED).to_numpy()


@dataclass
class _Side:
    """Sorted key hashes of one side of one rule and the rids holding them."""

    h: np.ndarray
    rid: np.ndarray

    @classmethod
    def build(cls, frame: pl.DataFrame) -> "_Side":
        if frame.height == 0:
            return cls(np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64))
        f = frame.select(pl.col("key").hash(seed=_SEED).alias("h"), pl.col("rid").cast(pl.Int64)).sort("h")
        return cls(f["h"].to_numpy(), f["rid"].to_numpy())

    def get(self, h: np.uint64) -> np.ndarray:
        a = np.searchsorted(self.h, h, "left")
        if a == len(self.h) or self.h[a] != h:
            return self.rid[:0]
        b = np.searchsorted(self.h, h, "right")
        return self.rid[a:b]


@dataclass
class _RuleIndex:
    rule: Rule
    cap: int
    left: _Side
    right: _Side  # the same object as left for a symmetric rule
    size_h: np.ndarray
    size_n: np.ndarray

    def size(self, h: np.uint64) -> int:
        i = np.searchsorted(self.size_h, h, "left")
        return int(self.size_n[i]) if i < len(self.size_h) and self.size_h[i] == h else 0


class _KeyMemo:
    """The key values of one transform chain per source value, computed by
    :func:`idweave.blocking.keys.key_values` (so they are the keys batch blocking makes)."""

    def __init__(self, transforms: tuple[str, ...]):
        self.transforms = transforms
        self.cache: dict[Any, tuple[str, ...]] = {}

    def prime(self, values: pl.Series) -> None:
        uniq = values.drop_nulls().unique()
        if uniq.len() == 0:
            return
        kv = key_values(uniq, self.transforms)
        got = kv.group_by("row", maintain_order=True).agg("key")
        vals = uniq.to_list()
        for row, keys in got.iter_rows():
            self.cache[vals[row]] = tuple(keys)
        for v in vals:
            self.cache.setdefault(v, ())

    def get(self, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if not self.transforms and isinstance(value, str):
            return (value,) if value else ()
        hit = self.cache.get(value)
        if hit is None:
            kv = key_values(pl.Series([value]), self.transforms)
            hit = tuple(kv["key"].to_list())
            if len(self.cache) < 2_000_000:
                self.cache[value] = hit
        return hit


def _side_value(rec: Mapping[str, Any], spec: str) -> Any:
    """:meth:`Key.source_values` for one record: an attribute, or several joined by spaces."""
    parts = spec.split("+")
    if len(parts) == 1:
        return rec.get(parts[0])
    words = [str(rec[p]) for p in parts if rec.get(p) is not None]
    return " ".join(words) or None



class Matcher:
    """A read-only, in-memory lookup index over a project's store (see the module docstring).

    >>> from idweave.linkage import link
    >>> _ = link("fixtures/tiny/project.yaml")
    >>> with Matcher("fixtures/tiny/project.yaml") as m:
    ...     m.lookup({"first_name": "x", "last_name": "y"}).height
    0
    """

    def __init__(self, project: Project | str | Path | Mapping[str, Any], *, store: str | Path | None = None):
        from idweave.linkage.project import resolve_project

        self.project = resolve_project(project)
        if store is not None:
            self.project.store = Path(store)
        self.refresh()

    def __enter__(self) -> "Matcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "_con", None) is not None:
            self._con.close()
            self._con = None

    # ------------------------------------------------------------------ building
    def refresh(self) -> None:
        """(Re)load the store's records, model and last threshold, and rebuild the index."""
        from idweave.linkage.project import project_rules

        proj = self.project
        self.close()
        with Store.open(proj.store, read_only=True) as st:
            stored = scoring.stored_model(st.require(records=True, model=True))
            check_store(proj, st)  # a missing or wrong pseudonymisation key: exit 2, before anything is read
            settings, tf_tables, version = stored
            row = st.last_run_threshold()
            records = st.records()
            exclusive = model_mod.exclusive_sources(proj, st)  # as the runs cluster
        self.run_id, self.threshold = row if row else (0, None)
        self.model = model_mod.TrainedModel(settings, tf_tables)
        self.model_version = version
        self.kinds = {a.name: a.kind for a in proj.attributes.values()}
        self._pseudo = pseudonymiser(proj)  # queries are hashed as the sources were (privacy.py)
        records = records.with_row_index("rid").with_columns(pl.col("rid").cast(pl.Int64))
        for a, k in self.kinds.items():
            if a not in records.columns:
                records = records.with_columns(pl.lit(None, dtype=pl.Float64 if k == "number" else pl.Utf8).alias(a))
        self.records = records
        self.rules = project_rules(proj, records)
        self.exclusive = exclusive
        self._sources = set(proj.sources)
        self._build_index(records)
        self._build_scorer(records)

    def _build_index(self, records: pl.DataFrame) -> None:
        from idweave.blocking.pairs import rule_keys  # the exact keys batch blocking makes

        self._index: list[_RuleIndex] = []
        self._memo: dict[tuple[str, tuple[str, ...]], _KeyMemo] = {}
        for rule in self.rules:
            lk, rk = rule_keys(records, rule)
            left = lk.select("rid", "key")
            right = left if rule.symmetric else rk.select("rid", "key")
            holders = left if rule.symmetric else pl.concat([left, right])
            sizes = holders.unique().group_by("key").len().select(
                pl.col("key").hash(seed=_SEED).alias("h"), pl.col("len")).sort("h")
            ls = _Side.build(left)
            self._index.append(_RuleIndex(rule, rule.max_block if rule.max_block is not None else DEFAULT_MAX_BLOCK,
                                          ls, ls if rule.symmetric else _Side.build(right),
                                          sizes["h"].to_numpy(), sizes["len"].to_numpy()))
            for k in rule.keys:
                for spec in {k.left, k.right}:
                    m = self._memo.get((spec, k.transforms))
                    if m is None:
                        m = self._memo[(spec, k.transforms)] = _KeyMemo(k.transforms)
                        if k.transforms:
                            m.prime(k.source_values(records, "l" if spec == k.left else "r"))

    def _build_scorer(self, records: pl.DataFrame) -> None:
        self._parts = scoring.scoring_parts(self.model.settings)
        self._cols = self._parts.columns
        self._tf = {c: dict(t.select(c, f"tf_{c}").iter_rows()) for c, t in self.model.tf_tables.items()}
        prepared = comparisons.prepare(records, self._cols)
        self._right = prepared.select(*self._cols)
        self._right_arrow = self._right.rename({c: f"{c}_r" for c in self._cols}).to_arrow()
        # The term frequencies of stored values, looked up once.
        self._tf_right = {c: records[c].replace_strict(t, default=None, return_dtype=pl.Float64).to_numpy()
                          for c, t in self._tf.items() if c in records.columns}
        self._gamma_sql = ("select " + ", ".join(f"({g.rsplit(' as ', 1)[0]}) as g{i}"
                                                 for i, g in enumerate(self._parts.gamma_sql)) + " from _cand")
        self._entity = records["entity_id"].to_numpy()
        self._src = records["source"].to_numpy()
        self._rid_ids = records["record_id"].to_numpy()
        self._con = duckdb.connect()
        self._con.execute("set threads = 1")  # a few rows: threads only add start-up time
        self._levels = comparisons.level_labels(self.model.settings)
        self._py_levels = [compile_comparison(c) for c in self.model.settings["comparisons"]]
        duckdb_fuses()  # asked once, now, rather than during a query
        self._log_prior = math.log2(self._parts.prior / (1 - self._parts.prior))
        self._cleaner = RecordCleaner(self.kinds)

    # ------------------------------------------------------------------ querying
    def clean(self, records: Mapping[str, Any] | Sequence[Mapping[str, Any]] | Any, *,
              date_format: str | None = None) -> pl.DataFrame:
        """Query records (a dict, a list of dicts or a frame of attributes) cleaned as the
        sources are: one row per query, ``query`` = its position.

        >>> from idweave.linkage import link
        >>> _ = link("fixtures/tiny/project.yaml")
        >>> with Matcher("fixtures/tiny/project.yaml") as m:
        ...     m.clean({"first_name": " Dr. JOSÉ ", "birth_date": "03/25/1980"}, date_format="%m/%d/%Y").row(0)[:4]
        ('jose', None, 'jose', '1980-03-25')
        """
        if isinstance(records, Mapping):
            check_attributes(records, 0, self.kinds)
            rec = self._cleaner.clean(records, date_format)
            if rec is not None:
                rec = self._pseudo.record(rec) if self._pseudo else rec
                return pl.DataFrame([[rec[a]] for a in self.kinds] + [[0]], orient="col",
                                    schema={**{a: pl.Float64 if k == "number" else pl.Utf8 for a, k in self.kinds.items()},
                                            "query": pl.Int64})
        frame = clean_frames(records, self.kinds, date_format)
        return frame.with_columns(**self._pseudo(frame.select(*(self._pseudo.attributes & set(frame.columns))).to_dict())) \
            if self._pseudo else frame

    def candidates(self, rec: Mapping[str, Any], *, source: str | None = None) -> dict[int, int]:
        """Stored rids a batch run would pair with this cleaned record -> the first rule that
        pairs them (block-size caps counted with the record added)."""
        out: dict[int, int] = {}
        keys_by_rule = []
        hashes_needed: list[str] = []
        for ri in self._index:
            sides = []
            for side in ("l", "r") if not ri.rule.symmetric else ("l",):
                combos = []
                for k in ri.rule.keys:
                    spec = k.left if side == "l" else k.right
                    combos.append(self._memo_for(spec, k.transforms).get(_side_value(rec, spec)))
                keys = ["\x1f".join(c) for c in product(*combos)] if all(combos) else []
                sides.append(keys)
                hashes_needed += keys
            keys_by_rule.append(sides)
        if not hashes_needed:
            return out
        # numpy uint64 scalars: a Python int above 2**63 would make searchsorted convert the
        # whole index array on every call.
        hv = dict(zip(hashes_needed, _hash(pl.Series(hashes_needed, dtype=pl.Utf8))))
        for i, (ri, sides) in enumerate(zip(self._index, keys_by_rule)):
            lkeys = sides[0]
            rkeys = sides[0] if ri.rule.symmetric else sides[1]
            held = set(lkeys) | set(rkeys)
            # pairs (query as left, stored as right) and (stored as left, query as right)
            for keys, other in ((lkeys, ri.right), (rkeys, ri.left)):
                for k in keys:
                    h = hv[k]
                    if ri.size(h) + (1 if k in held else 0) > ri.cap:
                        continue
                    for rid in other.get(h).tolist():
                        if rid not in out:
                            out[rid] = i
        if source is not None and source in self.exclusive:
            out = {r: i for r, i in out.items() if self._src[r] != source}
        return out

    def _memo_for(self, spec: str, transforms: tuple[str, ...]) -> _KeyMemo:
        m = self._memo.get((spec, transforms))
        if m is None:
            m = self._memo[(spec, transforms)] = _KeyMemo(transforms)
        return m

    def score(self, query: pl.DataFrame, pairs: Sequence[tuple[int, int, int]]) -> pl.DataFrame:
        """Score (query row, stored rid, rule) pairs with the stored model: ``query``,
        ``rid``, ``rule``, ``level_<c>``, ``w_<c>``, ``match_weight``, ``match_probability``.

        The levels are those of Splink's comparison SQL: evaluated in Python with DuckDB's
        semantics (:class:`_Compiler`), or by DuckDB itself on just these pairs when a level
        or a value is one the Python evaluator does not cover; the weights from the numbers
        Splink's scoring SQL embeds (:func:`~idweave.linkage.model.scoring_parts`), added up
        as :func:`~idweave.linkage._incremental.canonical_scores` does.

        >>> from idweave.linkage import link
        >>> _ = link("fixtures/tiny/project.yaml")
        >>> with Matcher("fixtures/tiny/project.yaml") as m:
        ...     q = m.clean({"first_name": "Gregory", "last_name": "Elliott", "birth_date": "1976-01-12"})
        ...     s = m.score(q, [(0, rid, rule) for rid, rule in m.candidates(q.row(0, named=True)).items()])
        >>> s.columns[:4], s["match_probability"].max() > 0.5
        (['query', 'rid', 'rule', 'level_first_name'], True)
        """
        lefts = {int(r["query"]): r for r in query.iter_rows(named=True)}
        cols = self._score_rows(lefts, pairs)
        schema: dict[str, Any] = {"query": pl.Int64, "rid": pl.Int64, "rule": pl.Int32}
        for c in self._levels:
            schema[f"level_{c}"] = pl.Int32
            schema[f"w_{c}"] = pl.Float64
        schema["match_weight"] = pl.Float64
        schema["match_probability"] = pl.Float64
        return pl.DataFrame([cols[k] for k in schema], schema=schema, orient="col")

    def _score_rows(self, lefts: Mapping[int, Mapping[str, Any]],
                    pairs: Sequence[tuple[int, int, int]]) -> dict[str, list]:
        """:meth:`score` as plain lists, column -> one value per pair."""
        n = len(pairs)
        q_idx = [int(p[0]) for p in pairs]
        rids = [int(p[1]) for p in pairs]
        left = {q: self._prepare_left(rec) for q, rec in lefts.items()}
        gam = None
        if n:
            try:
                gam = self._gammas_py(left, q_idx, rids)
            except SlowPath:
                gam = None
            if gam is None:
                gam = self._gammas_sql(left, q_idx, rids)
        out: dict[str, list] = {"query": q_idx, "rid": rids, "rule": [int(p[2]) for p in pairs]}
        weight = self._parts.weight
        mw = [self._log_prior] * n
        rid_arr = np.asarray(rids, dtype=np.int64)
        for i, comp in enumerate(self._parts.comparisons):
            c = comp["name"]
            g = gam[i] if gam is not None else []
            col = comp["tf_column"]
            if col is not None and col in self._tf_right:
                table = self._tf[col]
                tq = {q: table.get(rec.get(col)) for q, rec in left.items()}
                tr = self._tf_right[col][rid_arr].tolist()
                w = [weight(comp, gi, tq[q], None if (b is None or b != b) else b) for gi, q, b in zip(g, q_idx, tr)]
            else:
                w = [weight(comp, gi, None, None) for gi in g]
            out[f"level_{c}"] = g
            out[f"w_{c}"] = w
            mw = [a + b for a, b in zip(mw, w)]
        out["match_weight"] = mw
        out["match_probability"] = [1.0 / (1.0 + 2.0 ** -x) if x >= 0 else 2.0 ** x / (1.0 + 2.0 ** x) for x in mw]
        return out

    def _prepare_left(self, rec: Mapping[str, Any]) -> dict[str, Any]:
        """:func:`~idweave.linkage.model.prepare` for one cleaned query record."""
        out = {}
        for c in self._cols:
            if c.endswith(comparisons.FORMAL_SUFFIX) and c not in rec:
                v = rec.get(c[: -len(comparisons.FORMAL_SUFFIX)])
                out[c] = None if v is None else canonical_names(v)
            else:
                out[c] = rec.get(c)
        return out

    def _gammas_py(self, left: Mapping[int, dict], q_idx: list[int], rids: list[int]) -> list[list[int]] | None:
        """Each comparison's level per pair, in Python (None when a comparison has SQL the
        evaluator does not know; raises :class:`SlowPath` for a value it cannot vouch for)."""
        if any(c is None for c in self._py_levels):
            return None
        sub = self._right[rids]
        right = {c: sub[c].to_list() for c in self._cols}
        out = []
        one = len(left) == 1
        for levels, rcols, keyed in self._py_levels:
            memo: dict[Any, int] = {}
            got = []
            vals = [right[c] for c in rcols]
            kvals = [vals[i] for i in keyed] if keyed is not None else [range(len(q_idx))]
            lq = left[q_idx[0]] if one else None
            for j, q in enumerate(q_idx):
                key = kvals[0][j] if len(kvals) == 1 else tuple(v[j] for v in kvals)
                if not one:
                    key = (q, key)
                g = memo.get(key)
                if g is None:
                    g = memo[key] = gamma_of(levels, lq if one else left[q], {c: v[j] for c, v in zip(rcols, vals)})
                got.append(g)
            out.append(got)
        return out

    def _gammas_sql(self, left: Mapping[int, dict], q_idx: list[int], rids: list[int]) -> list[list[int]]:
        """Each comparison's level per pair from Splink's SQL, run by DuckDB."""
        import pyarrow as pa

        order = list(left)
        lt = pl.DataFrame([[left[q][c] for q in order] for c in self._cols], orient="col",
                          schema={c: self._right.schema[c] for c in self._cols}).to_arrow()
        pos = {q: i for i, q in enumerate(order)}
        lt = lt.take(pa.array([pos[q] for q in q_idx], type=pa.int64()))
        rt = self._right_arrow.take(pa.array(rids, type=pa.int64()))
        cols = {f"{c}_l": lt.column(c) for c in self._cols}
        cols.update({name: rt.column(name) for name in rt.column_names})
        self._con.register("_cand", pa.table(cols))
        try:
            gam = self._con.execute(self._gamma_sql).fetchnumpy()
        finally:
            self._con.unregister("_cand")
        return [gam[f"g{i}"].astype(np.int64).tolist() for i in range(len(self._parts.comparisons))]

    def lookup(self, records: Mapping[str, Any] | Sequence[Mapping[str, Any]] | Any, *, top: int = 5,
               source: str | None = None, date_format: str | None = None) -> pl.DataFrame:
        """The ``top`` best entities for each query record, best first.

        One row per (query, entity): ``query`` (position of the record in the input),
        ``rank``, ``entity_id``, ``match_probability`` and ``match_weight`` of the entity's
        best-scoring record, ``is_match`` (probability at or above the last run's threshold),
        ``records`` (how many of the entity's records were compared), the best record
        (``source``, ``record_id``), the blocking ``rule`` that found it, and per comparison
        ``c`` the level reached (``level_c``, its label) and its weight in bits (``w_c``).
        ``source`` names the source the query comes from, if any (an exclusive source is
        then never matched with its own records).

        >>> from idweave.linkage import link
        >>> _ = link("fixtures/tiny/project.yaml")
        >>> with Matcher("fixtures/tiny/project.yaml") as m:
        ...     best = m.lookup({"first_name": "Gregory", "last_name": "Elliott", "birth_date": "1976-01-12"})
        >>> best["rank"][0], best["level_last_name"][0]
        (1, 'exact')
        """
        if top < 1:
            raise LookupInputError("top must be at least 1")
        if source is not None and source not in self._sources:
            raise LookupInputError(f"unknown source '{_printable(source)}'; the project's sources are "
                                   f"{', '.join(sorted(self._sources))}", key="--source")
        one = None
        try:
            if isinstance(records, Mapping):
                check_attributes(records, 0, self.kinds)
                one = self._cleaner.clean(records, date_format)
            recs = [one] if one is not None else list(clean_frames(records, self.kinds, date_format)
                                                      .iter_rows(named=True))
        except LookupInputError as exc:
            raise _query_error(exc, single=one is None and isinstance(records, Mapping)) from None
        if self._pseudo:
            recs = [self._pseudo.record(r) for r in recs]
        pairs = []
        for q, rec in enumerate(recs):
            for rid, rule in self.candidates(rec, source=source).items():
                pairs.append((q, rid, rule))
        comps = list(self._levels)
        if not pairs:
            return self._empty(comps)
        cols = self._score_rows(dict(enumerate(recs)), pairs)
        # Best record per (query, entity), in plain Python: a query has few candidates, and
        # a handful of frame operations would cost more than the scoring.
        rid = cols["rid"]
        order = sorted(range(len(rid)), key=lambda i: (cols["query"][i], -cols["match_probability"][i],
                                                       -cols["match_weight"][i], self._src[rid[i]],
                                                       self._rid_ids[rid[i]]))
        seen: dict[tuple[int, str], int] = {}
        counts: dict[tuple[int, str], int] = {}
        ranks: dict[int, int] = {}
        rows = []
        thr = self.threshold
        rule_names = [r.name for r in self.rules]
        for i in order:
            key = (cols["query"][i], self._entity[rid[i]])
            counts[key] = counts.get(key, 0) + 1
            if key in seen:
                continue
            rank = ranks.get(key[0], 0) + 1
            ranks[key[0]] = rank
            seen[key] = len(rows)
            if rank > top:
                continue
            p = cols["match_probability"][i]
            row = {"query": key[0], "rank": rank, "entity_id": key[1], "match_probability": p,
                   "match_weight": cols["match_weight"][i], "is_match": (p >= thr) if thr is not None else None,
                   "records": 0, "source": self._src[rid[i]], "record_id": self._rid_ids[rid[i]],
                   "rule": rule_names[cols["rule"][i]]}
            for c in comps:
                g = cols[f"level_{c}"][i]
                row[f"level_{c}"] = "null" if g is None else self._levels[c][g]
                row[f"w_{c}"] = cols[f"w_{c}"][i]
            rows.append((key, row))
        out = []
        for key, row in rows:
            row["records"] = counts[key]
            out.append(row)
        return pl.DataFrame(out, schema=self._empty(comps).schema) if out else self._empty(comps)

    def _empty(self, comps: list[str]) -> pl.DataFrame:
        schema: dict[str, Any] = {"query": pl.Int64, "rank": pl.Int32, "entity_id": pl.Utf8,
                                  "match_probability": pl.Float64, "match_weight": pl.Float64,
                                  "is_match": pl.Boolean, "records": pl.Int32, "source": pl.Utf8,
                                  "record_id": pl.Utf8, "rule": pl.Utf8}
        for c in comps:
            schema[f"level_{c}"] = pl.Utf8
            schema[f"w_{c}"] = pl.Float64
        return pl.DataFrame(schema=schema)


_CACHE: dict[str, tuple[tuple, Matcher]] = {}


def _stamp(path: Path) -> tuple:
    out = []
    for p in (path, Path(str(path) + ".wal")):
        try:
            st = os.stat(p)
            out.append((st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


def _printable(text: str, limit: int = 60) -> str:
    out = "".join(c if c.isprintable() else "?" for c in str(text))
    return out if len(out) <= limit else out[:limit] + "..."


def _query_error(exc: LookupInputError, *, single: bool) -> LookupInputError:
    """The error about a query record, naming it by its place in the input ("query record
    2", counted from 1) instead of as a stored ``record '1'``; a single record is not named."""
    where = None
    if exc.row is not None and not single:
        try:
            where = f"query record {int(exc.row) + 1}"
        except ValueError:
            where = None
    return LookupInputError(exc.message, key=where, column=exc.column, hint=exc.hint)


def lookup(project: Project | str | Path | Mapping[str, Any],
           records: Mapping[str, Any] | Sequence[Mapping[str, Any]] | Any, *, top: int = 5,
           store: str | Path | None = None, source: str | None = None,
           date_format: str | None = None) -> pl.DataFrame:
    """The best-matching entities for one record (a dict), several (a list of dicts) or a
    frame of them (polars, pandas or Arrow, one column per attribute); see
    :meth:`Matcher.lookup` for the columns. Writes nothing.

    The index is built on the first call and kept until the store file changes; for a
    service, hold a :class:`Matcher` yourself.

    >>> from idweave.linkage import link
    >>> _ = link("fixtures/tiny/project.yaml")
    >>> import polars as pl
    >>> stored = pl.read_csv("fixtures/tiny/census.csv", infer_schema=False).row(0, named=True)
    >>> hit = lookup("fixtures/tiny/project.yaml", {"first_name": stored["fname"],
    ...              "last_name": stored["surname"], "birth_date": stored["dob"]},
    ...              date_format="%m/%d/%Y")
    >>> hit["rank"].to_list()[:1], bool(hit["is_match"][0])
    ([1], True)
    """
    from idweave.linkage.project import resolve_project

    proj = resolve_project(project)
    if store is not None:
        proj.store = Path(store)
    path = Path(proj.store).resolve()
    Store.require_file(proj.store)
    key = str(path)
    priv = pseudonymiser(proj)  # the key is part of what a cached index was built with
    stamp = (_stamp(path), proj.config_hash(), priv.check() if priv else None)
    hit = _CACHE.get(key)
    if hit is None or hit[0] != stamp:
        if hit is not None:
            hit[1].close()
        _CACHE[key] = (stamp, Matcher(proj))
    return _CACHE[key][1].lookup(records, top=top, source=source, date_format=date_format)
