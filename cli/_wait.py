"""``--wait SECONDS`` for the commands that use the store (reading it, or deciding): while
another run holds it, wait (saying so once on stderr) and try again, up to that many seconds.
A busy store is found when it is opened, before anything is written, so trying a decision
again cannot apply it twice."""

from __future__ import annotations

import functools
import inspect
import time
from typing import Any, Callable

import typer

from idweave.cli._common import err_console

WAIT_HELP = "Seconds to wait for a run that holds the store (0: fail at once)."


def reads_store(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add a ``--wait SECONDS`` option to a command: a :class:`StoreBusyError` is retried
    every half second until the time is up, then raised as it was."""
    from idweave.linkage.errors import StoreBusyError

    @functools.wraps(fn)
    def wrapper(*args: Any, wait: float = 0.0, **kwargs: Any) -> Any:
        deadline = time.monotonic() + max(0.0, float(wait))
        told = False
        while True:
            try:
                return fn(*args, **kwargs)
            except StoreBusyError:
                if time.monotonic() >= deadline:
                    raise
                if not told:
                    err_console.print(f"waiting up to {wait:g}s for the run that holds the store ...", highlight=False)
                    told = True
                time.sleep(0.5)

    sig = inspect.signature(fn)
    param = inspect.Parameter("wait", inspect.Parameter.KEYWORD_ONLY, annotation=float,
                              default=typer.Option(0.0, "--wait", help=WAIT_HELP))
    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), param])  # type: ignore[attr-defined]
    return wrapper
