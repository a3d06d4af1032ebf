"""The root `idweave` Typer app and its global options; the command modules add their
commands to it, and :mod:`idweave.cli.app` imports them (registration) and runs it."""

from __future__ import annotations

import typer

from idweave.cli import _common

app = typer.Typer(
    name="idweave",
    help="Link records across registries into persistent entities.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("idweave")
        except PackageNotFoundError:  # pragma: no cover - run from a source tree
            v = "unknown"
        _common.console.print(f"idweave {v}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors (they may hold data values)."),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version of idweave and exit.")) -> None:
    _common.STATE["debug"] = debug
