"""Review, in one namespace: the queue (:mod:`idweave.linkage.queue`), the decisions and
the constraints they put on every run (:mod:`idweave.linkage.decisions`), and the read-only
views (:mod:`idweave.linkage.review_views`). Nothing is defined here.

>>> from idweave.linkage.review import merge, queue, show
>>> merge.__module__, queue.__module__, show.__module__
('idweave.linkage.decisions', 'idweave.linkage.queue', 'idweave.linkage.review_views')
"""

from __future__ import annotations

from idweave.linkage.decisions import (CONFLICT_PROBABILITY, DecisionResult, active_entity, apply_decision,
                                       confirm, constraints, decision_rows, decisions, default_author,
                                       entity_digest, keep_apart, merge, open_store, pin, run_info, split, undo)
from idweave.linkage.queue import REASONS, QueueItem, queue, weight
from idweave.linkage.review_views import EntityView, diff_spans, export_labels, show

__all__ = [
    "queue", "QueueItem", "REASONS", "show", "EntityView", "diff_spans",
    "merge", "split", "keep_apart", "confirm", "pin", "undo", "DecisionResult", "decisions",
    "constraints", "export_labels", "entity_digest", "default_author", "CONFLICT_PROBABILITY", "apply_decision",
    "open_store", "run_info", "active_entity", "decision_rows", "weight",
]
