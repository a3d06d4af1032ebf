"""The `idweave` command: one thin command per library verb (see the README for each).

The Typer app lives in :mod:`idweave.cli.root`; the command modules import it and add their
commands, and :func:`main` imports the command modules (that registers them) and runs it."""

from __future__ import annotations

import typer

from idweave.cli import _common
from idweave.cli._common import fail
from idweave.cli.root import app

__all__ = ["app", "main"]


def _register() -> None:
    # Each module adds its commands to `app`; importing them is what registers them.
    from idweave.cli import commands  # noqa: F401
    from idweave.cli import review_commands  # noqa: F401
    from idweave.cli import graph_commands  # noqa: F401
    from idweave.cli import web_commands  # noqa: F401
    from idweave.cli import accountability_commands  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: user errors print `Error: ...` and exit 2; no tracebacks
    unless --debug.

    ``argv`` (without the program name) defaults to the process arguments; tests pass it
    to run a command in-process exactly as the console script would.
    """
    from idweave.linkage.errors import IdweaveError

    _register()
    try:
        rc = app(args=argv, prog_name="idweave", standalone_mode=False)
    except IdweaveError as exc:
        if _common.debug_enabled():
            raise
        fail(str(exc))
    except (typer.Abort, KeyboardInterrupt):
        fail("interrupted", code=130)
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code)
    except SystemExit:
        raise
    except OSError as exc:
        # The environment refused a file operation (a folder that cannot be created, a full
        # disk, a file removed mid-run): the user's to fix, so exit 2 and name the file.
        if _common.debug_enabled():
            raise
        what = f" {exc.filename}" if exc.filename else ""
        fail(f"cannot create, read or write{what}: {exc.strerror or exc.__class__.__name__}")
    except BaseException as exc:  # a bug (or a library panic): say so briefly, without data values
        # Usage errors from the (vendored) click layer: print them as click would.
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            raise SystemExit(2)
        if _common.debug_enabled():
            raise
        fail(f"internal error ({exc.__class__.__name__}); rerun with --debug for details", code=1)
    if isinstance(rc, int) and rc:
        raise SystemExit(rc)


if __name__ == "__main__":  # pragma: no cover
    main()
