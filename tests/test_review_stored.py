"""The review queue kept in the store (queue.store_queue / stored_queue): after every kind of
decision, the queue read from the store (the rows decisions left alone, the entities they
changed found again) is exactly the queue built from scratch over the whole store."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from conftest import copy_fixture
from idweave.linkage import link, review
from idweave.linkage.project import resolve_project
from idweave.linkage.queue import queue, store_queue, stored_queue


def _both(project: Path) -> None:
    """The stored queue equals a full build, with and without the reviewed items."""
    for include in (False, True):
        got = [i.to_dict() for i in queue(project, include_reviewed=include)]
        want = [i.to_dict() for i in queue(project, include_reviewed=include, stored=False)]
        assert got == want


def _is_stored(project: Path) -> bool:
    proj, st = review.open_store(project, read_only=True)
    with st:
        return stored_queue(st, proj) is not None


@pytest.fixture(scope="module")
def linked_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = copy_fixture("demo", tmp_path_factory.mktemp("stored") / "demo")
    link(project)
    return project


@pytest.fixture
def demo(linked_demo: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(linked_demo.parent, tmp_path / "demo")
    return tmp_path / "demo" / linked_demo.name


def test_every_decision_then_the_stored_queue_equals_a_full_build(demo: Path) -> None:
    assert store_queue(demo) is True and _is_stored(demo)
    _both(demo)
    items = queue(demo)
    pairs = [i for i in items if i.other_entity_id]
    singles = [i for i in items if i.other_entity_id is None]
    assert len(pairs) >= 3 and singles, "the demo's queue has near misses and entity items"
    done = []
    done.append(review.merge(demo, pairs[0].entity_id, pairs[0].other_entity_id, author="t", reason="one person"))
    _both(demo)  # the merge's entities found again at read time (not folded in yet)
    done.append(review.keep_apart(demo, pairs[1].entity_id, pairs[1].other_entity_id, author="t", reason="two"))
    _both(demo)
    assert store_queue(demo) is True  # folded into the stored rows
    _both(demo)
    split = next((i for i in queue(demo) if i.other_entity_id is None and i.suggested_split), None)
    if split is not None:
        done.append(review.split(demo, split.entity_id, split.suggested_split, author="t", reason="two people"))
        _both(demo)
    one = next(i for i in queue(demo) if i.other_entity_id is None)
    done.append(review.confirm(demo, one.entity_id, author="t"))
    _both(demo)
    review.undo(demo, done[0].decision_id, author="t", reason="after all")  # the merged entity comes back
    _both(demo)
    review.undo(demo, done[1].decision_id, author="t", reason="after all")
    _both(demo)
    assert store_queue(demo) is True
    _both(demo)
    assert store_queue(demo) is False  # nothing left to find again


def test_a_decision_only_takes_the_rows_of_what_it_changed(demo: Path) -> None:
    store_queue(demo)
    proj, st = review.open_store(demo, read_only=True)
    with st:
        before = st.queue_rows().height
    pair = next(i for i in queue(demo) if i.other_entity_id)
    review.keep_apart(demo, pair.entity_id, pair.other_entity_id, author="t", reason="two people")
    proj, st = review.open_store(demo, read_only=True)
    with st:
        dirty = st.queue_dirty()
        after = st.queue_rows().height
    assert {pair.entity_id, pair.other_entity_id} <= dirty and len(dirty) < 10
    assert before - after < 10
    _both(demo)


def test_a_run_makes_the_stored_queue_stale_and_it_is_built_again(demo: Path) -> None:
    store_queue(demo)
    link(demo, full=True)
    assert not _is_stored(demo)  # of the run before: not used
    _both(demo)
    assert store_queue(demo) is True and _is_stored(demo)
    _both(demo)


def test_a_decision_on_a_stale_stored_queue_empties_it(demo: Path) -> None:
    store_queue(demo)
    link(demo, full=True)
    e = queue(demo)[0]
    review.confirm(demo, e.entity_id, author="t")
    with duckdb.connect(str(resolve_project(demo).store), read_only=True) as con:
        assert con.execute("select count(*) from review_queue").fetchone()[0] == 0
    _both(demo)


def test_the_tiny_fixture_too(tmp_path: Path) -> None:
    project = copy_fixture("tiny", tmp_path / "tiny")
    link(project)
    store_queue(project)
    _both(project)
    ents = queue(project, include_reviewed=True)
    if ents:
        review.confirm(project, ents[0].entity_id, author="t")
        _both(project)
