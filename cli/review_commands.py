"""Review commands (issue: review and merge of ambiguous clusters)."""

from __future__ import annotations

from pathlib import Path


def print_entity_explanation(project: Path, entity_id: str) -> None:
    """Explain why an entity's records are one entity (the path of links that joins them)."""
    from idweave.linkage.explain import explain_entity  # provided by the review work

    explain_entity(project, entity_id)
