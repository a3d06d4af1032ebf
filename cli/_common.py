"""What every command shares: the console, error translation and progress display."""

from __future__ import annotations

import os
import re
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

def _console(stderr: bool = False) -> Console:
    """A console; when its output is not a terminal (a pipe, a log file) it is as wide as
    the text, so record ids and rule names are never cut to fit 80 columns."""
    c = Console(stderr=stderr)
    if not c.is_terminal and os.environ.get("IDWEAVE_PROGRESS") != "1":
        c.width = max(c.width, 1000)
    return c


console = _console()
err_console = _console(stderr=True)

# C0 and C1 control characters (ESC starts ANSI and OSC sequences), DEL, and the Unicode
# format characters that reorder or hide text (bidi overrides, zero-width joiners).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def term(value: Any, *, newlines: bool = False) -> str:
    r"""``value`` as text that is safe to write to a terminal: every control character
    (ESC of ANSI/OSC sequences, BEL, CR, NUL, ..., C1) and bidi override is shown as a
    visible escape (``\\x1b``) instead of acting. ``newlines`` keeps line feeds (for
    messages that list problems line by line). Rich markup is left as it is: print the
    result as :class:`rich.text.Text`, or use :func:`safe`.

    >>> term("Ann\x1b]0;owned\x07")
    'Ann\\x1b]0;owned\\x07'
    >>> term(None)
    ''
    """
    if value is None:
        return ""
    text = str(value)

    def sub(m: re.Match) -> str:
        ch = m.group(0)
        if newlines and ch == "\n":
            return ch
        code = ord(ch)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _UNSAFE.sub(sub, text)


def safe(value: Any) -> str:
    r"""``value`` ready for a rich markup string: :func:`term`, then ``[`` escaped, so a
    value like ``[bold]x`` is printed as it is, not read as markup.

    >>> safe("[bold]Ann\x1b[31m")
    '\\[bold]Ann\\x1b[31m'
    """
    return escape(term(value))


def shown_path(path: Any) -> str:
    """A path as the CLI prints it: ``..`` folded, relative to the working folder when it is
    inside it, absolute otherwise."""
    p = os.path.abspath(str(path))
    rel = os.path.relpath(p)
    return rel if not rel.startswith("..") else p


def cell(value: Any) -> Text:
    """A table cell for a value from the data or from a person: safe, never markup."""
    return Text(term(value))

# Set by the --debug option of the app callback.
STATE = {"debug": False}


def fail(message: str, code: int = 2) -> None:
    """Print ``Error: ...`` on stderr and exit (2 for the user's input)."""
    # Escape: messages quote user text ("keys like [first_name, birth_date]") that rich
    # would otherwise take for markup and swallow.
    err_console.print(f"[bold red]Error:[/] {escape(term(message, newlines=True))}", highlight=False,
                      soft_wrap=True)
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
