"""What every command shares: the console, error translation and progress display."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

console = Console()
err_console = Console(stderr=True)

# Set by the --debug option of the app callback.
STATE = {"debug": False}


def fail(message: str, code: int = 2) -> None:
    """Print ``Error: ...`` on stderr and exit (2 for the user's input)."""
    # Escape: messages quote user text ("keys like [first_name, birth_date]") that rich
    # would otherwise take for markup and swallow.
    err_console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise SystemExit(code)


@contextmanager
def stage_progress(enabled: bool = True) -> Iterator:
    """A progress display for the stages of a long command, yielding the callback
    ``progress(stage, "start"|"end")`` that the library functions accept."""
    if not enabled or not console.is_terminal and os.environ.get("IDWEAVE_PROGRESS") != "1":
        # Not a terminal: one line per finished stage, so logs still show where time went.
        started: dict[str, float] = {}

        def plain(stage: str, state: str) -> None:
            if state == "start":
                started[stage] = time.perf_counter()
            else:
                err_console.print(f"  {stage}: {time.perf_counter() - started.get(stage, time.perf_counter()):.1f}s",
                                  highlight=False)

        yield plain
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=err_console, transient=False) as prog:
        tasks: dict[str, int] = {}

        def cb(stage: str, state: str) -> None:
            if state == "start":
                tasks[stage] = prog.add_task(stage, total=1)
            else:
                prog.update(tasks[stage], completed=1)

        yield cb


def debug_enabled() -> bool:
    return STATE["debug"] or os.environ.get("IDWEAVE_DEBUG") == "1"


def excepthook_quiet() -> None:
    """Tracebacks are off unless --debug: they can carry values from the data."""
    if not debug_enabled():
        sys.tracebacklimit = 0
