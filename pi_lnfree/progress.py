"""Rich progress bars and consoles. Human output goes to stderr so `--json` stdout stays clean."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def progress(*extra_columns, transient: bool = False, disable: bool | None = None) -> Progress:
    """A progress bar on stderr: description, bar, n/total, elapsed, remaining, extra columns.

    Shown only when stderr is a terminal unless `disable` says otherwise: off a terminal a bar
    would leave its last frame and a blank line in logs and in one-line error output.
    """
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        *extra_columns,
        console=console,
        transient=transient,
        disable=(not console.is_terminal) if disable is None else disable,
    )
