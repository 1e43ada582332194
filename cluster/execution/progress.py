"""Progress reporting: a rich bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager

log = logging.getLogger("ostracon")


class _Plain:
    def __init__(self, total: int, label: str, quiet: bool = False):
        self.total, self.label, self.done, self.quiet = total, label, 0, quiet

    def advance(self, n: int = 1, message: str = "") -> None:
        self.done += n
        if message and not self.quiet:
            log.info("%s %d/%d %s", self.label, self.done, self.total, message)


class _Rich:
    def __init__(self, progress, task):
        self.progress, self.task = progress, task

    def advance(self, n: int = 1, message: str = "") -> None:
        self.progress.update(self.task, advance=n, status=message or None)


@contextmanager
def progress_bar(total: int, label: str, enabled: bool = True):
    """Yield an object with ``advance(n, message)``; ``enabled=False`` reports nothing."""
    if not enabled or not sys.stderr.isatty():
        yield _Plain(total, label, quiet=not enabled)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}"))
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(label, total=total, status="")
        yield _Rich(progress, task)
