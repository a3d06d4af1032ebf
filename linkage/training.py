"""Training a model on records, without labels, on Splink 5.

u by random sampling, the prior from deterministic rules, then EM over several blocking
passes so every comparison is trained (:func:`train`); around Splink's EM, the guards that
let a pass on small data finish (:func:`_em_guard`, :func:`_em_pass`), the clean-up after it
(:func:`regularise`), the household branches trained apart (:func:`household_shares`,
:func:`add_households`) and the prior re-estimated from the scored pairs
(:func:`refine_prior`). Every use of Splink's internals goes through
:mod:`idweave.linkage._splink`.

>>> MIN_M
0.005
"""

from __future__ import annotations

import copy
import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import duckdb
import polars as pl

from idweave.linkage import _splink
from idweave.linkage._db import query_pl
from idweave.linkage.comparisons import (HOUSEHOLD_SUFFIX, build_settings, comparison_columns, input_columns,
                                         is_branch, level_labels, model_attributes, prepare, tf_columns,
                                         without_households)
from idweave.linkage.engine import Engine, engine_of, get_engine
from idweave.linkage.errors import ModelError
from idweave.linkage.kinds import NAME_KINDS
from idweave.linkage.model import TrainedModel, stored_single_listing
from idweave.linkage.project import Project

__all__ = ["train", "regularise", "household_shares", "add_households", "refine_prior", "single_listing_sources",
           "single_listing", "MIN_M", "SIDE_LEVELS", "SINGLE_LISTING_RATIO"]

# Random pairs sampled to estimate u, unless the project says otherwise.
U_MAX_PAIRS = 1e6


def _em_rules(project: Project, present: set[str]) -> list[tuple[str, Any]]:
    """EM blocking passes (name, Splink ``block_on`` rule, which each engine renders in its
    dialect) so that every compared attribute is trained in at least one pass that does not
    block on it."""
    kinds = {a.name: a.kind for a in project.attributes.values()}
    compared = [a for a in model_attributes(project) if a in present]
    by_kind: dict[str, list[str]] = {}
    for a in compared:
        by_kind.setdefault(kinds[a], []).append(a)
    cands: list[list[str]] = []
    for k in ("date",):
        cands += [[a] for a in by_kind.get(k, [])]
    names = [by_kind[k][0] for k in NAME_KINDS if k in by_kind]
    if "given_name" in by_kind and "family_name" in by_kind:
        cands.append([by_kind["given_name"][0], by_kind["family_name"][0]])
    elif names:
        cands.append(names[:1])
    for k in ("national_id", "email", "phone", "postcode", "address", "city", "full_name", "family_name",
              "given_name", "category", "text", "number", "sex"):
        cands += [[a] for a in by_kind.get(k, [])]
    chosen: list[list[str]] = []
    trained: set[str] = set()
    for cand in cands:
        gain = set(compared) - set(cand) - trained
        if gain:
            chosen.append(cand)
            trained |= gain
        if trained >= set(compared):
            break
    return [(" & ".join(c), _splink.block_on(*c)) for c in chosen]


def _prior_rules(project: Project, present: set[str]) -> list[Any]:
    """Deterministic rules that admit almost no false matches, for the prior (``block_on``
    rules: each engine renders them in its dialect)."""
    kinds = {a.name: a.kind for a in project.attributes.values()}
    by_kind: dict[str, list[str]] = {}
    for a in model_attributes(project):
        if a in present:
            by_kind.setdefault(kinds[a], []).append(a)
    rules = []
    date = by_kind.get("date", [None])[0]
    names = [by_kind[k][0] for k in ("given_name", "family_name") if k in by_kind] or \
        [by_kind[k][0] for k in ("full_name",) if k in by_kind]
    if names and date:
        rules.append([*names, date])
    for k in ("national_id", "email"):
        for a in by_kind.get(k, []):
            rules.append([a, *names[:1]])
    return [_splink.block_on(*r) for r in rules]


def _label_pairs(records: pl.DataFrame, project: Project) -> pl.DataFrame | None:
    """Matching pairs as rids (``rid_l``, ``rid_r``) from the project's
    ``training.m_from_labels`` file or ``training.m_from_column`` truth column, if set."""
    from idweave.linkage.sources import load_records, read_pair_labels

    key = records.select("rid", "source", "record_id")
    if project.training.get("m_from_labels"):
        path = Path(project.training["m_from_labels"])
        path = path if path.is_absolute() else project.base_dir / path
        labels = read_pair_labels(path).filter(pl.col("score") >= 0.5)
        pairs = (labels.join(key.rename({"rid": "unique_id_l", "source": "source_l", "record_id": "record_id_l"}),
                             on=["source_l", "record_id_l"])
                 .join(key.rename({"rid": "unique_id_r", "source": "source_r", "record_id": "record_id_r"}),
                       on=["source_r", "record_id_r"]))
    elif project.training.get("m_from_column"):
        col = str(project.training["m_from_column"])
        truth = load_records(project, extra_columns=[col]).select("source", "record_id", col).drop_nulls(col)
        t = key.join(truth, on=["source", "record_id"])
        pairs = t.join(t, on=col, suffix="_r").filter(pl.col("rid") < pl.col("rid_r")).select(
            pl.col("rid").alias("unique_id_l"), pl.col("rid_r").alias("unique_id_r"))
    else:
        return None
    if pairs.height == 0:
        raise ModelError("the labels name no matching pair of records in the sources", key="training")
    # Splink names label columns after the unique id column (here ``rid``).
    return (pairs.select(pl.col("unique_id_l").alias("rid_l"), pl.col("unique_id_r").alias("rid_r"))
            .unique().sort("rid_l", "rid_r").with_columns(pl.lit(1.0).alias("clerical_match_score")))


def train(records: pl.DataFrame, project: Project, *, seed: int = 42, progress=None,
          engine: str | Engine | None = None) -> TrainedModel:
    """Train a model on records (which need ``rid`` and the compared attributes), no labels.

    Steps: the prior from deterministic rules (recall assumed 0.7); u by random sampling;
    EM over several blocking passes chosen so every comparison is trained in one that does
    not block on it. The term-frequency tables of the training data are kept with the model.

    Training is deterministic: the same records (whatever their row order) give the same
    model, bit for bit, in any process (see :func:`_training_engine`). ``engine`` (default:
    the project's) is where Splink runs (:mod:`idweave.linkage.engine`); a model trained on
    Spark is stored in the same form as one trained on DuckDB, and agrees with it to rounding. A pass that EM cannot
    train (no pairs, or every pair looked like a non-match) is skipped and said so in
    ``training_log``; values Splink's EM cannot go on from are held (see :func:`_em_pass`).

    >>> from idweave.linkage.project import load_project
    >>> from idweave.linkage.sources import load_records
    >>> p = load_project("fixtures/tiny/project.yaml")
    >>> recs = load_records(p).sort("source", "record_id").with_row_index("rid")
    >>> a, b = train(recs, p), train(recs.reverse(), p)
    >>> a.version == b.version, a.training_log[0]
    (True, 'em pass blocked on birth_date')
    """
    wanted = build_settings(project)
    # Splink trains the ladders without their household branches (add_households puts them
    # back): EM would otherwise take the households among its pairs for matches.
    settings = without_households(wanted)
    # Row order must not matter: Splink's sums run in the order rows arrive.
    recs = prepare(records, input_columns(wanted)).sort("rid")
    present = {c for c in comparison_columns(project) if recs[c].null_count() < recs.height}
    log_lines: list[str] = []
    eng = get_engine(engine) if engine else engine_of(project)
    with _training_engine(eng) as con:
        linker, db = eng.linker(con, recs, settings)
        n = recs.height
        total_pairs = n * (n - 1) / 2
        prior_rules = _prior_rules(project, present)
        if prior_rules:
            try:
                linker.training.estimate_probability_two_random_records_match(prior_rules, recall=0.7)
            except ValueError as exc:  # too many deterministic matches for the recall: keep default
                log_lines.append(f"prior: kept default ({exc})")
            else:
                prior = _splink.linker_prior(linker)
                if not 0 < prior < 1:  # no pair met the rules: EM cannot start from a prior of 0
                    _splink.set_linker_prior(linker, settings["probability_two_random_records_match"])
                    log_lines.append(f"prior: kept default {settings['probability_two_random_records_match']:g} "
                                     f"(the deterministic rules gave {prior:g})")
        if progress:
            progress("u")
        # 1e6 sampled pairs gave the same accuracy as 5e6 on all four benchmarks at a third of
        # the time (BENCHMARKS.md); `training: {u_max_pairs: ...}` raises it.
        max_pairs = float(project.training.get("u_max_pairs", min(U_MAX_PAIRS, max(total_pairs, 1))))
        linker.training.estimate_u_using_random_sampling(max_pairs=max_pairs,
                                                         seed=int(project.training.get("seed", seed)))
        labelled = _label_pairs(records, project)
        if labelled is not None:
            # Labels stand in for EM: m is what the labelled matches show, level by level.
            t = eng.register(db, labelled, "idweave_labels")
            linker.training.estimate_m_from_pairwise_labels(t)
            log_lines.append(f"m estimated from {labelled.height:,} labelled matching pairs")
        for name, sql in ([] if labelled is not None else _em_rules(project, present)):
            if progress:
                progress(f"em: {name}")
            log_lines += _em_pass(linker, settings, name, sql)
        trained = eng.canonical(linker.misc.save_model_to_json(None), settings)
        # Splink's random cache id (its table names) is no part of the model.
        trained.pop("linker_uid", None)
        raw = copy.deepcopy(trained)
        log_lines += regularise(trained)
        if any(is_branch(lv) for c in wanted["comparisons"] for lv in c["comparison_levels"]):
            kinds = {a: k for a, k in ((a.name, a.kind) for a in project.attributes.values()) if a in present}
            with _driver_duckdb(eng, con) as dcon:
                shares = household_shares(dcon, recs, wanted, kinds)
            log_lines += add_households(trained, wanted, shares, raw)
        tf_tables = {}
        for col in tf_columns(trained):
            tf_tables[col] = eng.read(linker.table_management.compute_tf_table(col)).sort(col)
    model = TrainedModel(trained, tf_tables, log_lines)
    return model


@contextmanager
def _training_engine(engine: Engine | None = None) -> Iterator[Any]:
    """The engine's session (default DuckDB) with its determinism settings: on DuckDB one
    thread (its parallel aggregation adds floats in whatever order its threads finish, so
    EM's sums of match probabilities would differ in the last bits from run to run, and so
    would the model version); one thread adds them in row order."""
    with (engine or get_engine("duckdb")).session("training", deterministic=True) as con:
        yield con


@contextmanager
def _driver_duckdb(engine: Engine, con: Any) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB for the driver-side statistics of training (:func:`household_shares`, over
    the records in this process): the training connection itself on DuckDB, a private one
    with one thread on another engine (the statistics are counts: the same either way)."""
    if engine.name == "duckdb":
        yield con
        return
    with _splink.engine("household shares") as dcon:
        dcon.execute("SET threads = 1")
        yield dcon


class _DegenerateEM(ValueError):
    """An EM pass that cannot go on (see :func:`_em_pass`)."""


# Splink refuses m below this (float64 cannot hold it reliably); an EM pass that drives a
# level's m to 0 holds it here instead (regularise then raises it to MIN_M).
M_FLOOR = 1e-300
# An EM pass in which every pair looks like a match drives its match probability to 1, from
# which Splink cannot go on (the prior's weight is infinite); it is held just below.
LAMBDA_CEILING = 1 - 1e-9

@contextmanager
def _em_guard(settings: dict[str, Any], held: list[str]) -> Iterator[None]:
    """While it is open, each maximisation step of Splink's EM holds m at :data:`M_FLOOR` at
    least and the pass's match probability at :data:`LAMBDA_CEILING` at most (what was held
    is added to ``held``, once each); a pass in which no pair looks like a match (match
    probability 0, or a comparison's m undefined) raises :class:`_DegenerateEM` instead of
    failing somewhere inside Splink.

    Splink 5 has no option for this: the step is replaced while the block is open
    (:func:`~idweave.linkage._splink.em_step_replaced`). Values Splink accepts pass through unchanged."""

    def note(what: str) -> None:
        if what not in held:
            held.append(what)

    def wrap(original):
        def guarded(df_params):
            records = original(df_params)
            for r in records:
                m = r.get("m_probability")
                if not isinstance(m, (int, float)):  # Splink's "level not observed"
                    continue
                if r["output_column_name"] == "_probability_two_random_records_match":
                    if not m > 0:
                        raise _DegenerateEM("no pair looked like a match")
                    if m > LAMBDA_CEILING:
                        r["m_probability"] = LAMBDA_CEILING
                        note("the match probability below 1 (every pair looked like a match)")
                elif not math.isfinite(m):
                    raise _DegenerateEM(f"no pair with a {r['output_column_name']} looked like a match")
                elif m < M_FLOOR:
                    r["m_probability"] = M_FLOOR
                    note(f"m of {_level_name(settings, r['output_column_name'], int(r['comparison_vector_value']))}"
                         f" at {M_FLOOR:g}")
            return records
        return guarded

    with _splink.em_step_replaced(wrap):
        yield


def _level_name(settings: dict[str, Any], comparison: str, gamma: int) -> str:
    """``comparison: label`` of the level Splink numbers ``gamma`` (the levels after the null
    level count down to 0, the ``else`` level).

    >>> s = {"comparisons": [{"output_column_name": "x", "comparison_levels": [
    ...     {"is_null_level": True}, {"label_for_charts": "exact"}, {"label_for_charts": "else"}]}]}
    >>> _level_name(s, "x", 1), _level_name(s, "x", 0)
    ('x: exact', 'x: else')
    """
    return f"{comparison}: {level_labels(settings)[comparison][gamma]}"


def _em_pass(linker, settings: dict[str, Any], name: str, sql: str) -> list[str]:
    """One EM pass blocked on ``sql``; returns its training-log lines.

    Splink raises when EM drives a level's m below 1e-300 (a level seen only among clear
    non-matches) or when every pair of the pass looks like a match, so on small data whole
    passes used to be lost; here :func:`_em_guard` holds such values and the pass finishes.
    A pass that cannot be trained (no pairs, or no pair looks like a match) is skipped and
    leaves the linker exactly as it was: Splink's session drops the comparisons its rule
    blocks on from the linker's settings and changes their prior before it trains, and puts
    them back only on success (a failed pass used to leave a model without those
    comparisons, which every later run then retrained). The log says what happened.
    """
    before = _splink.linker_settings(linker)
    held: list[str] = []
    try:
        with _em_guard(settings, held):
            linker.training.estimate_parameters_using_expectation_maximisation(
                sql, estimate_without_term_frequencies=True)
    except Exception as exc:  # one pass must not sink the whole model
        _splink.restore_linker_settings(linker, before)
        if _splink.is_em_training_error(exc):
            why = f"no pair of records agrees on {name}"
        elif isinstance(exc, _DegenerateEM):
            why = str(exc)
        else:
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        return [f"em pass blocked on {name} skipped: {why}"]
    lines = [f"em pass blocked on {name}"]
    if held:
        lines.append(f"em pass blocked on {name}: held {', '.join(held)}")
    return lines


# No level may claim that fewer than 1 in 200 true matches reach it: recording errors hit
# every attribute, and EM left alone drives a never-seen level's m to 0, which makes one
# disagreement (a sex typo) veto any match with dozens of negative bits.
MIN_M = 0.005

# Levels that are not a step on the similarity ladder (a name found in the other field):
# they only have to beat the ``else`` level.
SIDE_LEVELS = ("found in the other name field",)


def _lift(lv: dict[str, Any], floor: float) -> None:
    lv["m_probability"] = min(lv["u_probability"] * 2 ** floor, 1.0)


# Pairs sampled (at most) to learn what households share; and the fewest likely non-matching
# pairs with agreeing family names below which a branch is not trusted.
HOUSEHOLD_SAMPLE = 2_000_000
HOUSEHOLD_MIN_PAIRS = 200


def _level_case(c: dict[str, Any]) -> str:
    """SQL giving the position of the first level of comparison ``c`` a pair reaches."""
    whens = " ".join(f"WHEN {lv['sql_condition']} THEN {i}" for i, lv in enumerate(c["comparison_levels"])
                     if lv["sql_condition"] != "ELSE")
    return f"CASE {whens} ELSE {len(c['comparison_levels']) - 1} END"


def household_shares(con: duckdb.DuckDBPyConnection, records: pl.DataFrame, settings: dict[str, Any],
                     kinds: dict[str, str]) -> dict[str, tuple[list[float], int]]:
    """What non-matching members of one family share. For each comparison of ``settings``
    that has a household branch: the share of each of its plain levels (null excluded) among
    pairs of records whose family names agree exactly and that are clearly two people, with
    the number of such pairs.

    "Clearly two people" means given names at the given-name comparison's ``else`` level (both
    present): a match keeps its given name in ~97 % of pairs on every benchmark here, so these
    pairs stand for the non-matches inside families, free of the matches that a plain random
    sample of same-family pairs is full of. Records are sampled by a hash of their
    ``rid`` (deterministic) so that at most :data:`HOUSEHOLD_SAMPLE` pairs are formed.
    """
    plain = {c["output_column_name"]: c for c in without_households(settings)["comparisons"]}
    targets = [c["output_column_name"] for c in settings["comparisons"]
               if any(is_branch(lv) for lv in c["comparison_levels"])]
    first = lambda kind: next((a for a, k in kinds.items() if k == kind and a in plain), None)  # noqa: E731
    family, given = first("family_name"), first("given_name")
    if family is None or given is None or not targets:
        return {}
    sizes = records.group_by(family).len().filter(pl.col(family).is_not_null())["len"].cast(pl.Float64)
    total = float((sizes * (sizes - 1) / 2).sum()) if sizes.len() else 0.0
    if total == 0:
        return {}
    rate = min(1.0, math.sqrt(HOUSEHOLD_SAMPLE / total))
    used = list(dict.fromkeys([*targets, given]))
    cols = sorted({x for a in used for x in input_columns({"comparisons": [plain[a]]})} | {family})
    keep = records.select("rid", *cols).filter(pl.col(family).is_not_null())
    if rate < 1:
        keep = keep.filter((pl.col("rid").hash(seed=7) % 1_000_003) < int(rate * 1_000_003))
    con.register("idweave_household", keep.to_arrow())
    try:
        sel = ", ".join([f'l."{x}" AS "{x}_l", r."{x}" AS "{x}_r"' for x in cols])
        cases = ", ".join(f'{_level_case(plain[a])} AS "{a}"' for a in used)
        rows = query_pl(con, f"""SELECT {cases} FROM (SELECT {sel} FROM idweave_household l
                                 JOIN idweave_household r ON l."{family}" = r."{family}" AND l.rid < r.rid)""")
    finally:
        con.unregister("idweave_household")
    two = rows.filter(pl.col(given) == len(plain[given]["comparison_levels"]) - 1)
    out = {}
    for a in targets:
        levels = plain[a]["comparison_levels"]
        counts = dict(zip(*two[a].value_counts().select(a, "count").to_dict(as_series=False).values()))
        nonnull = [counts.get(i, 0) for i, lv in enumerate(levels) if not lv.get("is_null_level")]
        tot = sum(nonnull)
        out[a] = ([x / tot for x in nonnull] if tot else [], tot)
    return out


def add_households(trained: dict[str, Any], wanted: dict[str, Any],
                   shares: dict[str, tuple[list[float], int]], raw: dict[str, Any] | None = None) -> list[str]:
    """Put the household branches of ``wanted`` (the full settings) into ``trained`` (a model
    trained without them); in place, one note per comparison.

    A branch level means "this similarity, and the family names agree". Its u is what
    :func:`household_shares` measured among non-matching pairs of one family name (never less
    than the plain level's u: a shared family name makes sharing anything else more likely);
    its m is the plain level's, since a match's recording errors in its family name and in its
    address are independent. Fellegi-Sunter then adds the family name's weight and the
    branch's, which is the weight of the two together instead of two independent
    coincidences.

    >>> lv = lambda label, m=None, u=None: {"label_for_charts": label, "sql_condition": label,
    ...                                     "m_probability": m, "u_probability": u}
    >>> wanted = {"comparisons": [{"output_column_name": "address", "comparison_levels": [
    ...     lv("exact, same family name"), lv("else, same family name"), lv("exact"), lv("else")]}]}
    >>> trained = without_households(wanted)
    >>> trained["comparisons"][0]["comparison_levels"] = [lv("exact", 0.9, 0.001), lv("else", 0.1, 0.999)]
    >>> add_households(trained, wanted, {"address": ([0.6, 0.4], 1000)}, raw=copy.deepcopy(trained))
    ['address: household branch from 1,000 pairs of one family name that are clearly two people']
    >>> [(x["label_for_charts"], x["m_probability"], x["u_probability"]) for x in trained["comparisons"][0]["comparison_levels"]][:2]
    [('exact, same family name', 0.9, 0.6), ('else, same family name', 0.1, 0.4)]
    """
    notes = []
    want = {c["output_column_name"]: c for c in wanted["comparisons"]}
    for c in trained["comparisons"]:
        full = want[c["output_column_name"]]["comparison_levels"]
        if not any(is_branch(lv) for lv in full):
            continue
        levels = {lv.get("label_for_charts"): lv for lv in c["comparison_levels"]}
        plain = [lv for lv in c["comparison_levels"] if not lv.get("is_null_level")]
        share, n_pairs = shares.get(c["output_column_name"]) or ([], 0)
        ok = n_pairs >= HOUSEHOLD_MIN_PAIRS and len(share) == len(plain)
        # The branch's m is EM's own (before regularise lifted the plain ladder): the branch
        # is a ladder of its own and is made monotone on its own.
        m_of = {lv.get("label_for_charts"): lv.get("m_probability") for lv in
                next(x for x in raw["comparisons"] if x["output_column_name"] == c["output_column_name"])[
                    "comparison_levels"]} if raw else {}
        u_of = dict(zip([lv.get("label_for_charts") for lv in plain], share)) if ok else {}
        out = []
        for lv in full:
            if not is_branch(lv):
                out.append(levels[lv.get("label_for_charts")])
                continue
            base = levels[lv["label_for_charts"][: -len(HOUSEHOLD_SUFFIX)]]
            new = {k: v for k, v in lv.items() if k not in ("m_probability", "u_probability")}
            new["m_probability"] = m_of.get(base.get("label_for_charts")) if ok else base.get("m_probability")
            u = u_of.get(base.get("label_for_charts"))
            if u is None or base.get("u_probability") is None:
                u = base.get("u_probability")
            elif base.get("label_for_charts") != "else":
                u = max(u, base["u_probability"])
            new["u_probability"] = u
            out.append(new)
        c["comparison_levels"] = out
        if ok:
            notes.append(f"{c['output_column_name']}: household branch from {n_pairs:,} pairs of one family "
                         f"name that are clearly two people")
            notes += _monotone(c["output_column_name"], [lv for lv in out if is_branch(lv)], floor_lifts=False)
        else:
            notes.append(f"{c['output_column_name']}: household branch as the plain levels (only {n_pairs:,} "
                         f"pairs of one family name that are clearly two people)")
    return notes


def regularise(settings: dict[str, Any]) -> list[str]:
    """Make each comparison ladder monotone and flag untrained or degenerate levels.

    A level nearer the top of a ladder means more similar values, so it can never be weaker
    evidence than a level below it. EM sometimes says otherwise for a level it rarely saw
    (m near 0 gives tens of negative bits); such a level is lifted to the weight of the
    level below it. An untrained level (no m or u) gets the weight of the level below it
    too. Side levels (:data:`SIDE_LEVELS`) only have to be no weaker than ``else``.
    Changes ``settings`` in place; returns one message per change.

    >>> s = {"comparisons": [{"output_column_name": "x", "comparison_levels": [
    ...     {"label_for_charts": "exact", "m_probability": 0.9, "u_probability": 0.01},
    ...     {"label_for_charts": "close", "m_probability": 0.01, "u_probability": 0.9},
    ...     {"label_for_charts": "else", "m_probability": 1e-12, "u_probability": 0.09}]}]}
    >>> for note in regularise(s): print(note)
    level x: else: m 1e-12 raised to 0.005
    degenerate level x: close: -6.5 bits is below the next level's -4.2; lifted
    """
    notes = []
    for c in settings["comparisons"]:
        every = [lv for lv in c["comparison_levels"] if not lv.get("is_null_level")]
        # A household branch (see add_households) is a ladder of its own, made monotone as there.
        notes += _monotone(c["output_column_name"], [lv for lv in every if not is_branch(lv)])
        notes += _monotone(c["output_column_name"], [lv for lv in every if is_branch(lv)], floor_lifts=False)
    return notes


def _monotone(comparison: str, levels: list[dict[str, Any]], *, floor_lifts: bool = True) -> list[str]:
    """:func:`regularise` for one ladder (its levels most similar first, ``else`` last).

    ``floor_lifts=False``: a level whose m was raised to :data:`MIN_M` does not lift the
    levels above it (a rare level held at the floor can weigh ten bits or more, and lifting
    the whole ladder to it would call a mere "jaro-winkler >= 0.8" strong evidence)."""
    notes = []
    below: float | None = None
    floor: float | None = None  # the else level's weight
    for lv in reversed(levels):
        name = f"{comparison}: {lv.get('label_for_charts')}"
        side = str(lv.get("label_for_charts")).removesuffix(HOUSEHOLD_SUFFIX) in SIDE_LEVELS
        limit = floor if side else below
        m, u = lv.get("m_probability"), lv.get("u_probability")
        if not m or not u:
            if not u:
                lv["u_probability"] = 0.5
            lv["m_probability"] = lv["u_probability"]
            if limit is not None:
                _lift(lv, limit)
            notes.append(f"untrained level {name}: given the weight of the level below"
                         if limit is not None else f"untrained level {name}: neutral weight")
        raised = lv["m_probability"] < MIN_M
        if raised:
            notes.append(f"level {name}: m {lv['m_probability']:.2g} raised to {MIN_M}")
            lv["m_probability"] = MIN_M
        w = math.log2(lv["m_probability"] / lv["u_probability"])
        if limit is not None and w < limit - 1e-9:
            _lift(lv, limit)
            if w < limit - 0.1:  # lifts of a hair are not worth a person's attention
                notes.append(f"degenerate level {name}: {w:.1f} bits is below the next level's {limit:.1f}; lifted")
            w = math.log2(lv["m_probability"] / lv["u_probability"])
        if floor is None:
            floor = w
        if not side and (floor_lifts or not raised or below is None or w <= below):
            below = w
    return notes


# A source lists each person once when its records agree with one another on a name and a
# strong key (birth date, national id) at most this often for each such agreement with the
# records of another source (pseudopeople's registers, six towns: census 0-0.0008, 1040 returns
# 0-0.0002; social security events 0.021-0.022 and W-2 forms 0.30-0.32 are not single-listing).
SINGLE_LISTING_RATIO = 0.005
# ... and the other source agrees with it so at least this often (fewer cannot tell none in 200
# from a few).
SINGLE_LISTING_MIN = 200


def single_listing_sources(records: pl.DataFrame, project: Project) -> tuple[list[str], list[str]]:
    """The sources that list each person once, told from the records without labels, and one
    training-log line per source looked at.

    A census, a register of returns for one year or a roll of one office lists a person at
    most once; two of its records with the same family name and address are two people of
    one household. Such a source shows it in its data: its records almost never agree with
    each other on given name, family name and a strong key (a birth date, a national id),
    while they agree so with another source's records of the same people all the time. For
    each strong key, the pairs of a source's records that agree on names and key are counted
    within the source and against each other source; a source is single-listing when, on
    every key where another source gives at least :data:`SINGLE_LISTING_MIN` agreements, its
    own agreements are at most :data:`SINGLE_LISTING_RATIO` of the most it has with another
    source (and at most that share of its records on every key). A source the project marks
    ``exclusive`` either way (true or false) is left as written.

    >>> import importlib.util, sys, tempfile
    >>> from idweave.linkage.project import load_project
    >>> from idweave.linkage.sources import load_records
    >>> spec = importlib.util.spec_from_file_location("registers", "fixtures/registers.py")
    >>> reg = sys.modules.setdefault("registers", importlib.util.module_from_spec(spec))
    >>> spec.loader.exec_module(reg)
    >>> p = load_project(reg.registers(600, 11).write(tempfile.mkdtemp()))
    >>> names, notes = single_listing_sources(load_records(p), p)
    >>> names, notes[0]
    (['census', 'benefits'], 'census lists a person once (taken as exclusive): its records agree on names and birth_date 0 times as often as with benefits')
    >>> p = load_project("fixtures/demo/project.yaml")  # 330 census records: too few to tell
    >>> single_listing_sources(load_records(p), p)
    ([], [])
    """
    kinds = {a.name: a.kind for a in project.attributes.values()}

    def first(kind: str) -> str | None:
        return next((a for a, k in kinds.items() if k == kind and a in records.columns), None)

    names = [a for a in (first("given_name"), first("family_name")) if a]
    if len(names) < 2:
        names = [a for a in (first("full_name"),) if a]
    keys = [a for a, k in kinds.items() if k in ("date", "national_id") and a in records.columns]
    written = (getattr(project, "raw", None) or {}).get("sources") or {}
    open_ = [s.name for s in project.sources.values() if not s.exclusive and
             not (isinstance(written.get(s.name), dict) and "exclusive" in written[s.name])]
    if len(project.sources) < 2 or not names or not keys or not open_:
        return [], []
    n_of = dict(records.group_by("source").len().iter_rows())
    verdict: dict[str, list[tuple[str, float, str]]] = {s: [] for s in open_}
    many: set[str] = set()
    for key in keys:
        c = (records.select("source", pl.concat_str([*names, key], separator="\x1f").alias("k"))
             .drop_nulls("k").group_by("k", "source").len())
        within = dict(c.group_by("source").agg((pl.col("len") * (pl.col("len") - 1) // 2).sum()).iter_rows())
        cross = (c.join(c, on="k", suffix="_r").filter(pl.col("source") != pl.col("source_r"))
                 .group_by("source", "source_r").agg((pl.col("len") * pl.col("len_r")).sum().alias("x"))
                 .sort("x", "source_r", descending=[True, False]).group_by("source", maintain_order=True).first())
        best = {s: (t, x) for s, t, x in cross.iter_rows()}
        for s in open_:
            w = int(within.get(s, 0))
            if w > SINGLE_LISTING_RATIO * n_of.get(s, 0):
                many.add(s)
            t, x = best.get(s, (None, 0))
            if x >= SINGLE_LISTING_MIN:
                verdict[s].append((key, w / x, t))
    out, notes = [], []
    for s in open_:
        if not verdict[s]:
            continue
        key, ratio, t = max(verdict[s], key=lambda v: v[1])
        if ratio <= SINGLE_LISTING_RATIO and s not in many:
            out.append(s)
            notes.append(f"{s} lists a person once (taken as exclusive): its records agree on names and {key} "
                         f"{ratio:.2g} times as often as with {t}")
        else:
            notes.append(f"{s} lists a person more than once: its records agree on names and {key} "
                         f"{ratio:.2g} times as often as with {t}")
    return out, notes


def single_listing(project: Project, model: TrainedModel, retrained: bool, records: Any, st: Any
                   ) -> tuple[list[str], list[str]]:
    """The single-listing sources of a run (:func:`single_listing_sources`) and the lines for
    its training log: measured on the records (``records()``, a callable) when the model is
    new, else those the runs of the stored model found (so that a model keeps one list, and
    an incremental run reads no attributes for it); measured again for a store whose runs did
    not record one."""
    if not retrained:
        found = stored_single_listing(st, model.version)
        if found is not None:
            return found, []
    return single_listing_sources(records(), project)


def refine_prior(model: TrainedModel, links: pl.DataFrame, total_pairs: float, *,
                 iterations: int = 50) -> tuple[TrainedModel, pl.DataFrame]:
    """Re-estimate the prior (probability two random records match) from the candidate pairs.

    With m and u fixed, the expected number of matches is the sum of the pairs' match
    probabilities, which depends on the prior: iterate prior = sum(p) / all possible pairs
    to its fixed point (EM on the prior alone). Deterministic rules with an assumed recall
    can be far off on noisy data; this uses every scored pair instead. Pairs blocking never
    proposed count as non-matches, so this errs low, never high. Returns the model with the
    new prior and ``links`` with match weight and probability shifted to it. The sum is
    exactly rounded, so the pairs' row order cannot change the prior.

    >>> m = TrainedModel({"probability_two_random_records_match": 0.01})
    >>> links = pl.DataFrame({"match_weight": [20.0, 20.0, -30.0]})
    >>> m2, out = refine_prior(m, links, total_pairs=100)
    >>> round(m2.prior, 4), refine_prior(m, links.reverse(), 100)[0].prior == m2.prior
    (0.02, True)
    """
    if links.height == 0 or total_pairs <= 0:
        return model, links
    old = model.prior
    old_w = math.log2(old / (1 - old))
    base = links["match_weight"] - old_w  # evidence without the prior
    prior = old
    for _ in range(iterations):
        w = math.log2(prior / (1 - prior))
        p = 1.0 / (1.0 + (2.0 ** -(base + w)))
        # fsum: exactly rounded, so the prior (and the model version) cannot depend on the
        # order or chunking of the pairs.
        new = min(max(math.fsum(p.to_list()) / total_pairs, 1e-12), 0.5)
        if abs(new - prior) <= 1e-4 * prior:
            prior = new
            break
        prior = new
    settings = json.loads(json.dumps(model.settings))
    settings["probability_two_random_records_match"] = prior
    new_w = math.log2(prior / (1 - prior))
    mw = base + new_w
    links = links.with_columns(mw.alias("match_weight"), (1.0 / (1.0 + 2.0 ** (-mw))).alias("match_probability"))
    log = [*model.training_log, f"prior re-estimated from {links.height:,} candidate pairs: {old:.3g} -> {prior:.3g}"]
    return TrainedModel(settings, model.tf_tables, log), links
