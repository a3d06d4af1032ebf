"""One base exception for everything a user can get wrong, with the place it went wrong.

Errors carry *where* (file, column, row id, key in the project file) and never the
personal data itself: a row is named by its record id, not its values.

>>> err = SourceError("duplicate record id", file="census.csv", column="person_no", row="C17")
>>> str(err)
"census.csv: column 'person_no', record 'C17': duplicate record id"
"""

from __future__ import annotations

__all__ = [
    "IdweaveError",
    "ProjectError",
    "SourceError",
    "StoreError",
    "StoreBusyError",
    "ModelError",
    "LookupInputError",
]


class IdweaveError(Exception):
    """Base class: a problem with the user's input or environment, not a bug.

    The CLI prints ``Error: <message>`` and exits with code 2 for these.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        column: str | None = None,
        row: str | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.column = column
        self.row = row
        self.key = key
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.file:
            where.append(str(self.file))
        if self.key:
            where.append(self.key)
        if self.column:
            where.append(f"column '{self.column}'")
        if self.row is not None:
            where.append(f"record '{self.row}'")
        text = (", ".join(where) + ": " if where else "") + self.message
        if where and self.file:
            # "file: column 'x', record 'y': message" reads better than comma-joined file
            text = f"{where[0]}: " + (", ".join(where[1:]) + ": " if len(where) > 1 else "") + self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class ProjectError(IdweaveError):
    """The project file is invalid. ``problems`` lists every problem found at once.

    >>> print(ProjectError(["threshold: must be between 0 and 1", "store: required"], file="p.yaml"))
    p.yaml: invalid project file (2 problems):
      - threshold: must be between 0 and 1
      - store: required
    """

    def __init__(self, problems: list[str], *, file: str | None = None) -> None:
        self.problems = list(problems)
        if len(problems) == 1:
            text = f"invalid project file: {problems[0]}"
        else:
            text = f"invalid project file ({len(problems)} problems):\n  - " + "\n  - ".join(problems)
        super().__init__(text, file=file)


class SourceError(IdweaveError):
    """A source file or frame cannot be read or has bad content."""


class StoreError(IdweaveError):
    """The identity store cannot be opened or written."""


class StoreBusyError(StoreError):
    """Another run holds the store."""


class ModelError(IdweaveError):
    """The model cannot be trained, loaded or applied."""


class LookupInputError(IdweaveError):
    """A record given to lookup is malformed."""
