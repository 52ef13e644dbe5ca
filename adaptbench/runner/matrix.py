"""Run a matrix spec: tune cells, then final cells, then the leaderboard.

Resuming is the normal case, not a special one: every cell's record is looked up by its id
before anything runs. A cell whose record says ``success`` is never run again; one whose
record says ``failed`` is run again only with ``retry_failed``; a cell without a record (never
run, or lost in flight when the runner was killed) runs. Records are written atomically by
the worker that ran the cell, so a kill at any moment loses at most the cells in flight.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .cells import Cell, SearchGroup, choose_grid_point, record_status, search_groups
from .executors import Executor, LocalExecutor
from .jobs import CellJob, CellOutcome
from .progress import MatrixProgress
from .spec import MatrixSpec
from .train import RunPlace, record_path_for, record_unrun_failure


@dataclass
class MatrixOptions:
    """How to run a spec (none of it changes a cell's id)."""

    out: Path | None = None  # default: the spec's ``out``
    data_root: str | None = None  # default: the spec's ``data_root``
    workers: int = 1
    retry_failed: bool = False
    accelerator: str = "auto"
    plugin_files: tuple[str, ...] = ()
    leaderboard: bool = True


@dataclass
class MatrixSummary:
    cells: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0  # found done (or failed, without retry_failed) from an earlier run
    ran: int = 0
    wall_time_s: float = 0.0
    final_records: list[Path] = field(default_factory=list)
    leaderboard_files: list[Path] = field(default_factory=list)


class MatrixRun:
    """One invocation of ``adaptbench run``: plan, skip what is done, execute, summarise."""

    def __init__(self, spec: MatrixSpec, options: MatrixOptions, executor: Executor | None = None,
                 console: Console | None = None):
        self.spec = spec
        self.options = options
        self.out = Path(options.out or spec.out)
        self.groups = search_groups(spec)
        self.console = console or Console()
        self.executor = executor or LocalExecutor(options.workers, plugin_files=options.plugin_files)
        self.summary = MatrixSummary()

    # -- planning -----------------------------------------------------------------------------
    def tune_cells(self) -> list[Cell]:
        return [cell for group in self.groups for cell in group.tune_cells()]

    def final_cells(self) -> list[tuple[SearchGroup, list[Cell], bool]]:
        """Per group: its final cells and whether they are known (False: the search has not chosen)."""
        planned = []
        for group in self.groups:
            if not group.has_grid:
                planned.append((group, group.final_cells({}), True))
                continue
            choice = choose_grid_point(group, self.out)
            if choice is None:
                planned.append((group, group.final_cells(group.default_point()), False))
            else:
                planned.append((group, group.final_cells(*choice), True))
        return planned

    def cell_count(self) -> int:
        return len(self.tune_cells()) + len(self.groups) * len(self.spec.seeds)

    # -- running ------------------------------------------------------------------------------
    def run(self) -> MatrixSummary:
        started = time.perf_counter()
        self.summary.cells = self.cell_count()
        tune = self.tune_cells()
        tune_todo, done, failed = self._todo(tune)
        described = {cell.cell_id: f"{cell.describe()} | tune" for cell in tune}
        # The final cells of a grid search are known once its tune runs are done; the total counts them.
        progress = MatrixProgress(f"{self.spec.name}: {self.summary.cells} cells", self.summary.cells,
                                  done=done, failed=failed, describe=described, console=self.console)
        try:
            with progress:
                self._execute(tune_todo, progress)
                finals = self.final_cells()
                final_todo = []
                for group, cells, known in finals:
                    described.update({cell.cell_id: cell.describe() for cell in cells})
                    if not known:
                        self._record_failed_search(group, cells, progress)
                        continue
                    todo, done, failed = self._todo(cells)
                    progress.add_skipped(done, failed)
                    final_todo.extend(todo)
                self._execute(final_todo, progress)
        finally:
            self.executor.close()
        self.summary.final_records = [record_path_for(self.out, cell.cell_id)
                                      for _, cells, _ in finals for cell in cells]
        self.summary.wall_time_s = time.perf_counter() - started
        if self.options.leaderboard:
            self.summary.leaderboard_files = self._leaderboard()
        return self.summary

    def _todo(self, cells: list[Cell]) -> tuple[list[Cell], int, int]:
        """(cells to run, skipped as done, skipped as failed): failed ones run only with retry_failed."""
        todo, done, failed = [], 0, 0
        for cell in cells:
            status = record_status(self.out, cell)
            if status == "success":
                done += 1
            elif status == "failed" and not self.options.retry_failed:
                failed += 1
            else:
                todo.append(cell)
        self.summary.skipped += done + failed
        self.summary.succeeded += done
        self.summary.failed += failed
        return todo, done, failed

    def _execute(self, cells: list[Cell], progress: MatrixProgress) -> None:
        if not cells:
            return
        place = RunPlace(out_dir=self.out, data_root=self.options.data_root or self.spec.data_root,
                         accelerator=self.options.accelerator)
        jobs = [CellJob(cell.cell_id, cell.config, place, cell.annotations) for cell in cells]
        for outcome in self.executor.run(jobs, progress.on_event):
            self._count(outcome)
            progress.on_outcome(outcome)

    def _count(self, outcome: CellOutcome, ran: bool = True) -> None:
        self.summary.ran += ran
        if outcome.status == "success":
            self.summary.succeeded += 1
        else:
            self.summary.failed += 1

    def _record_failed_search(self, group: SearchGroup, cells: list[Cell], progress: MatrixProgress) -> None:
        """No tune run of the grid succeeded: the final cells cannot run; record them as failed."""
        error = (f"hyper-parameter search failed: none of the {len(group.tune_cells())} tune runs of "
                 f"{group.adapter.label} on {group.task} succeeded (see their records)")
        for cell in cells:
            if record_status(self.out, cell) is None or self.options.retry_failed:
                record_unrun_failure(cell.config, self.out, error, cell.annotations, "none (not run)")
            outcome = CellOutcome(cell.cell_id, "failed", error)
            self._count(outcome, ran=False)
            progress.on_outcome(outcome)

    def _leaderboard(self) -> list[Path]:
        from ..leaderboard import (
            build_leaderboards,
            render_terminal,
            write_leaderboards,
        )

        records = [record for path in self.summary.final_records
                   if (record := _read_if_present(path)) is not None]
        if not records:
            return []
        boards = build_leaderboards(records)
        self.console.print(render_terminal(boards))
        return write_leaderboards(boards, self.spec.leaderboard_out, self.spec.leaderboard_name,
                                  self.spec.leaderboard_formats)


def _read_if_present(path: Path) -> dict[str, Any] | None:
    from .records import read_record

    try:
        return read_record(path)
    except (OSError, ValueError):
        return None


# -- dry run --------------------------------------------------------------------------------
def dry_run_table(run: MatrixRun) -> Table:
    """Every cell with its id and what a run would do with it."""
    table = Table(title=f"{run.spec.name}: {run.cell_count()} cells -> {run.out}")
    for column in ("cell id", "stage", "task", "backbone", "adapter", "seed", "settings", "status"):
        table.add_column(column)
    for cell in run.tune_cells():
        table.add_row(*_row(run, cell, cell.cell_id, _settings(cell.annotations.get("grid_point", {}))))
    for _group, cells, known in run.final_cells():
        for cell in cells:
            cell_id = cell.cell_id if known else "(after search)"
            chosen = cell.annotations.get("selection", {}).get("chosen", {})
            table.add_row(*_row(run, cell, cell_id, _settings(chosen) if known else "best of the search"))
    return table


def _row(run: MatrixRun, cell: Cell, cell_id: str, settings: str) -> list[str]:
    status = record_status(run.out, cell) if cell_id == cell.cell_id else None
    if status == "failed" and run.options.retry_failed:
        status = "failed: will retry"
    elif status == "failed":
        status = "failed: skip (--retry-failed)"
    return [cell_id, cell.stage, cell.config.task, cell.config.backbone, escape(cell.label),
            str(cell.config.seed), escape(settings), status or "to run"]


def _settings(point: dict[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in point.items()) or "-"

