"""The live display of a running matrix (rich): cells done / failed / n/a / left, ETA, and
each running cell's epoch. Every finished cell also prints one line, so a log that is not a
terminal (CI, ``nohup``) still shows the matrix advancing.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .jobs import CellEvent, CellOutcome


class MatrixProgress:
    """Use as a context manager; feed it events and outcomes from the executor."""

    def __init__(self, title: str, total: int, done: int = 0, failed: int = 0,
                 describe: dict[str, str] | None = None, console: Console | None = None,
                 not_applicable: int = 0):
        self.console = console or Console()
        self.describe = describe if describe is not None else {}  # cell id -> "task | backbone | adapter | seed"
        self.total = total
        self.succeeded = done
        self.failed = failed
        self.not_applicable = not_applicable  # cells whose adapter cannot run on their backbone
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self._overall = self._progress.add_task(escape(title), total=total,
                                                completed=done + failed + not_applicable, status=self._status())
        self._running: dict[str, TaskID] = {}

    def __enter__(self) -> MatrixProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        for task in self._running.values():
            self._progress.remove_task(task)
        self._progress.stop()

    def on_event(self, event: CellEvent) -> None:
        task = self._running.get(event.cell_id)
        if task is None:
            task = self._progress.add_task(f"  {escape(self.describe.get(event.cell_id, event.cell_id))}",
                                           total=None, status="starting")
            self._running[event.cell_id] = task
        if event.kind == "epoch":
            self._progress.update(task, total=event.epochs, completed=event.epoch,
                                  status=f"epoch {event.epoch}/{event.epochs}")

    def on_outcome(self, outcome: CellOutcome) -> None:
        task = self._running.pop(outcome.cell_id, None)
        if task is not None:
            self._progress.remove_task(task)
        what = escape(self.describe.get(outcome.cell_id, outcome.cell_id))
        if outcome.status == "success":
            self.succeeded += 1
            score = "-" if outcome.score is None else f"{100 * outcome.score:.2f}"
            self._progress.console.print(f"[green]done[/]   {what} | score {score} | "
                                         f"{outcome.wall_time_s:.1f} s | {outcome.cell_id}")
        elif outcome.status == "n/a":
            self.not_applicable += 1
            self._progress.console.print(f"[yellow]n/a[/]    {what} | {outcome.cell_id} | "
                                         f"{escape(outcome.error or '')}")
        else:
            self.failed += 1
            self._progress.console.print(f"[red]failed[/] {what} | {outcome.cell_id} | {escape(outcome.error or '')}")
        self._progress.update(self._overall, advance=1, status=self._status())

    def add_skipped(self, done: int, failed: int, not_applicable: int = 0) -> None:
        """Cells found finished by an earlier run."""
        self.succeeded += done
        self.failed += failed
        self.not_applicable += not_applicable
        self._progress.update(self._overall, advance=done + failed + not_applicable, status=self._status())

    def _status(self) -> str:
        left = self.total - self.succeeded - self.failed - self.not_applicable
        return f"done {self.succeeded} · failed {self.failed} · {self.not_applicable} n/a · left {left}"
