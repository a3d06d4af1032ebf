"""idweave.linkage: the library API.

>>> from idweave.linkage import link
>>> link("fixtures/tiny/project.yaml").entities.columns
['source', 'record_id', 'entity_id']

The names are imported on first use (PEP 562): ``import idweave.linkage.errors`` (or any
other light module) does not pay for polars, DuckDB and Splink, so a command that finds
nothing to do starts quickly.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from idweave.linkage.errors import (
    IdweaveError, LookupInputError, ModelError, ProjectError, SourceError, StoreBusyError, StoreError,
)

if TYPE_CHECKING:
    from idweave.linkage.pipeline import LinkResult, link
    from idweave.linkage.project import (
        Attribute,
        Project,
        Source,
        load_project,
        project_from_dict,
    )

__version__ = "0.1.0"

__all__ = [
    "IdweaveError", "LookupInputError", "ModelError", "ProjectError", "SourceError", "StoreBusyError",
    "StoreError", "LinkResult", "link", "Attribute", "Project", "Source", "load_project", "project_from_dict",
    "__version__",
]

# name -> the module that defines it, imported when the name is first asked for.
_LAZY = {"LinkResult": "pipeline", "link": "pipeline", "Attribute": "project", "Project": "project",
         "Source": "project", "load_project": "project", "project_from_dict": "project"}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'idweave.linkage' has no attribute {name!r}")
    value = getattr(import_module(f"idweave.linkage.{where}"), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
