"""The `serve` command: the review workbench in a browser (idweave.web.serve)."""

from __future__ import annotations

from typing import Optional

import typer

from idweave.cli.root import app

PROJECT = typer.Argument(..., help="The project file (YAML).", exists=False)


@app.command("serve")
def serve_command(
    project: str = PROJECT,
    port: int = typer.Option(8765, "--port", help="Port to listen on (0: any free port)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback unless --allow-remote)."),
    allow_remote: bool = typer.Option(False, "--allow-remote",
                                      help="Allow a --host other machines can reach (the token still guards it)."),
    author: Optional[str] = typer.Option(None, "--author",
                                         help="Record every decision with this name (otherwise each steward signs in)."),
    truth: Optional[str] = typer.Option(None, "--truth",
                                        help="A truth column of the sources: the model page shows the threshold sweep."),
) -> None:
    """The review workbench: a local web app over the store. Prints its URL (with the
    access token) on a line of its own as soon as it listens; Ctrl-C stops it."""
    from idweave.web import serve

    serve(project, host=host, port=port, author=author, truth=truth, allow_remote=allow_remote)
