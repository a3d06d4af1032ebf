"""idweave.linkage: the library API.

>>> from idweave.linkage import link
>>> link("fixtures/tiny/project.yaml").entities.columns
['source', 'record_id', 'entity_id']
"""

from idweave.linkage.errors import (
    IdweaveError, LookupInputError, ModelError, ProjectError, SourceError, StoreBusyError, StoreError,
)
from idweave.linkage.pipeline import LinkResult, link
from idweave.linkage.project import Attribute, Project, Source, load_project, project_from_dict

__version__ = "0.1.0"

__all__ = [
    "IdweaveError", "LookupInputError", "ModelError", "ProjectError", "SourceError", "StoreBusyError",
    "StoreError", "LinkResult", "link", "Attribute", "Project", "Source", "load_project", "project_from_dict",
    "__version__",
]
