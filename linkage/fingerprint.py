"""What code produced a stored state: one fingerprint.

A store keeps state that idweave's code computed: cleaned records and their raw-row hashes,
block keys, scored links, clusters and their trace, compiled models. When that code changes,
the state is stale: an incremental run would mix old and new results. :func:`code_fingerprint`
hashes the source of every module that decides that state (``STATE_MODULES``) and the
versions of the libraries that compute part of it; the run signature, the raw-row hash seed
and the compiled-model key all include it, so a change to any of those modules makes the next
run full, cleans every row again and compiles the model again.

Every module the run imports is either in ``STATE_MODULES`` or in ``NEUTRAL_MODULES`` (it
cannot change stored state: messages, file handles, presentation); ``tests/test_structure.py``
fails when a module is in neither, so a new module is classified when it is added.

>>> len(code_fingerprint()), code_fingerprint() == code_fingerprint()
(16, True)
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = ["STATE_MODULES", "NEUTRAL_MODULES", "code_fingerprint"]

# Modules (paths under the repository / installed package root) whose code decides what a run
# stores: how records are read and cleaned, which pairs exist, how they score, how they
# cluster, which ids they get, how decisions constrain them.
STATE_MODULES = (
    "blocking/__init__.py", "blocking/keys.py", "blocking/pairs.py", "blocking/rules.py",
    "linkage/project.py", "linkage/readers.py", "linkage/sources.py", "linkage/kinds.py", "linkage/privacy.py",
    "linkage/model.py", "linkage/comparisons.py", "linkage/training.py", "linkage/scoring.py", "linkage/_splink.py",
    "linkage/cluster.py", "linkage/_blockkeys.py", "linkage/_incremental.py", "linkage/pipeline.py",
    "linkage/graph.py", "linkage/forget.py", "linkage/review.py", "linkage/decisions.py",
    "linkage/engine.py", "linkage/_levels.py", "linkage/_spill.py",
)

# Modules a run imports that cannot change what it stores (with why).
NEUTRAL_MODULES = {
    "linkage/__init__.py": "re-exports",
    "linkage/errors.py": "error messages",
    "linkage/_db.py": "DuckDB connection helpers",
    "linkage/csvsafe.py": "CSV writing for people (exports, labels)",
    "linkage/fingerprint.py": "this module",
    "linkage/explain.py": "explanations of stored state, read only",
    "linkage/store_queries.py": "the store's read-only queries for the side doors (explain, history, views...)",
    "linkage/_query_clean.py": "lookup's query cleaning; a run reads only its date pattern and fallback signal",
}

# Libraries that compute part of the stored state (polars hashes rows and block keys; DuckDB
# and Splink score; sqlglot writes Splink's SQL).
_LIBRARIES = ("polars", "duckdb", "splink", "sqlglot")


def _root() -> Path:
    return Path(__file__).resolve().parent.parent


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A hash of the source of every module in ``STATE_MODULES`` and of the versions of the
    libraries that compute stored state (read once per process: the code that runs is the
    code that was imported). A module that cannot be read hashes as missing, so a frozen
    install gets a fingerprint of its own rather than another install's."""
    h = hashlib.sha256(b"idweave state fingerprint 1\n")
    root = _root()
    for rel in STATE_MODULES:
        f = root / rel
        h.update(rel.encode() + b"\n")
        try:
            h.update(f.read_bytes())
        except OSError:
            h.update(b"(missing)")
    for lib in _LIBRARIES:
        try:
            h.update(f"{lib} {version(lib)}\n".encode())
        except PackageNotFoundError:
            h.update(f"{lib} ?\n".encode())
    return h.hexdigest()[:16]
