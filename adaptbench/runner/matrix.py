"""Run a matrix spec: tune cells, then final cells, then the leaderboard.

Resuming is the normal case, not a special one: every cell's record is looked up by its id
before anything runs. A cell whose record says ``success`` or ``n/a`` is never run again; one
whose record says ``failed`` is run again only with ``retry_failed``; a cell without a record
(never run, or lost in flight when the runner was killed) runs. Records are written atomically
by the worker that ran the cell, so a kill at any moment loses at most the cells in flight.

A cell whose adapter cannot run on its backbone (``capabilities.py``) is not run: its ``n/a``
record is written at once, by the same atomic writer, and counted apart from successes and
failures. When every tune cell of a grid search is n/a, so are its final cells.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .capabilities import Capabilities
from .cells import Cell, SearchGroup, choose_grid_point, load_cell_record, record_status, search_groups
from .executors import Executor, LocalExecutor
from .jobs import CellJob, CellOutcome
from .progress import MatrixProgress
from ..records import FAILED, NOT_APPLICABLE, SUCCESS, RunRecord, reason_of
from .spec import MatrixSpec
from .train import RunPlace, record_not_applicable, record_path_for, record_unrun_failure


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
    not_applicable: int = 0  # the adapter cannot run on the backbone: recorded n/a, never run
    skipped: int = 0  # found done (success, n/a, or failed without retry_failed) from an earlier run
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
        self.groups = search_groups(spec, options.accelerator)
        self.console = console or Console()
        self.executor = executor or LocalExecutor(options.workers, plugin_files=options.plugin_files)
        self.capabilities = Capabilities()
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

    def not_applicable(self, cell: Cell) -> str | None:
        """The cell's n/a line: from its n/a record, else from the capabilities; None if it can run."""
        record = load_cell_record(self.out, cell)
        found = None if record is None else record.not_applicable_line()
        return found or self.capabilities.cell_message(cell)

    def search_not_applicable(self, group: SearchGroup) -> str | None:
        """The n/a line of a grid search whose every tune cell is n/a (its finals are n/a too)."""
        lines = [self.not_applicable(cell) for cell in group.tune_cells()]
        return lines[0] if lines and all(lines) else None

    # -- running ------------------------------------------------------------------------------
    def run(self) -> MatrixSummary:
        started = time.perf_counter()
        self.summary.cells = self.cell_count()
        tune = self.tune_cells()
        described = {cell.cell_id: f"{cell.describe()} | tune" for cell in tune}
        # The final cells of a grid search are known once its tune runs are done; the total counts them.
        progress = MatrixProgress(f"{self.spec.name}: {self.summary.cells} cells", self.summary.cells,
                                  describe=described, console=self.console)
        try:
            with progress:
                self._execute(self._todo(tune, progress), progress)
                finals = self.final_cells()
                final_todo = []
                for group, cells, known in finals:
                    described.update({cell.cell_id: cell.describe() for cell in cells})
                    if known:
                        final_todo.extend(self._todo(cells, progress))
                    else:
                        self._settle_unchosen(group, cells, progress)
                self._execute(final_todo, progress)
        finally:
            self.executor.close()
        self.summary.final_records = [record_path_for(self.out, cell.cell_id)
                                      for _, cells, _ in finals for cell in cells]
        self.summary.wall_time_s = time.perf_counter() - started
        if self.options.leaderboard:
            self.summary.leaderboard_files = self._leaderboard()
        return self.summary

    def _todo(self, cells: list[Cell], progress: MatrixProgress, not_applicable=None) -> list[Cell]:
        """The cells to run. The others are counted: found finished by an earlier run (success,
        n/a, or failed without retry_failed), or found n/a now and recorded so, unrun.
        ``not_applicable(cell)``: the cell's n/a line or None (default: ask the capabilities)."""
        not_applicable = not_applicable or self.capabilities.cell_message
        todo, found = [], {SUCCESS: 0, FAILED: 0, NOT_APPLICABLE: 0}
        for cell in cells:
            status = record_status(self.out, cell)
            if status in (SUCCESS, NOT_APPLICABLE) or (status == FAILED and not self.options.retry_failed):
                found[status] += 1
            elif (line := not_applicable(cell)) is not None:
                self._record_not_applicable(cell, line, progress)
            else:
                todo.append(cell)
        self.summary.skipped += sum(found.values())
        self.summary.succeeded += found[SUCCESS]
        self.summary.failed += found[FAILED]
        self.summary.not_applicable += found[NOT_APPLICABLE]
        progress.add_skipped(found[SUCCESS], found[FAILED], found[NOT_APPLICABLE])
        return todo

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
        if outcome.status == SUCCESS:
            self.summary.succeeded += 1
        elif outcome.status == NOT_APPLICABLE:
            self.summary.not_applicable += 1
        else:
            self.summary.failed += 1

    def _record_not_applicable(self, cell: Cell, line: str, progress: MatrixProgress) -> None:
        """Write the cell's n/a record now (nothing runs) and report it like a finished cell."""
        record_not_applicable(cell.config, self.out, line, cell.annotations)
        outcome = CellOutcome(cell.cell_id, NOT_APPLICABLE, line)
        self._count(outcome, ran=False)
        progress.on_outcome(outcome)

    def _settle_unchosen(self, group: SearchGroup, cells: list[Cell], progress: MatrixProgress) -> None:
        """The search chose no grid point: its final cells are n/a when every tune cell was
        (the same reason), and failed otherwise."""
        line = self.search_not_applicable(group)
        if line is None:
            self._record_failed_search(group, cells, progress)
        else:
            self._todo(cells, progress, lambda cell: line)  # runs nothing: every cell gets the line

    def _record_failed_search(self, group: SearchGroup, cells: list[Cell], progress: MatrixProgress) -> None:
        """No tune run of the grid succeeded: the final cells cannot run; record them as failed."""
        error = (f"hyper-parameter search failed: none of the {len(group.tune_cells())} tune runs of "
                 f"{group.adapter.label} on {group.task} succeeded (see their records)")
        for cell in cells:
            if record_status(self.out, cell) is None or self.options.retry_failed:
                record_unrun_failure(cell.config, self.out, error, cell.annotations, "none (not run)")
            outcome = CellOutcome(cell.cell_id, FAILED, error)
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
        boards = build_leaderboards(records, wise=self.spec.leaderboard_wise)
        self.console.print(render_terminal(boards))
        return write_leaderboards(boards, self.spec.leaderboard_out, self.spec.leaderboard_name,
                                  self.spec.leaderboard_formats)


def _read_if_present(path: Path) -> RunRecord | None:
    from ..errors import AdaptbenchError

    try:
        return RunRecord.read(path) if path.is_file() else None
    except AdaptbenchError:
        return None


# -- dry run --------------------------------------------------------------------------------
def dry_run_table(run: MatrixRun) -> Table:
    """Every cell with its id and what a run would do with it."""
    table = Table(title=f"{run.spec.name}: {run.cell_count()} cells -> {run.out}")
    for column in ("cell id", "stage", "task", "backbone", "adapter", "seed", "settings", "status"):
        table.add_column(column)
    for cell in run.tune_cells():
        table.add_row(*_row(cell, cell.cell_id, _settings(cell.annotations.get("grid_point", {})),
                            _status_text(run, cell)))
    for group, cells, known in run.final_cells():
        # A search whose every point is n/a has final cells known now: the default point's, n/a.
        search_line = None if known else run.search_not_applicable(group)
        for cell in cells:
            if known or search_line:
                chosen = cell.annotations.get("selection", {}).get("chosen", {})
                table.add_row(*_row(cell, cell.cell_id, _settings(chosen), _status_text(run, cell, search_line)))
            else:
                table.add_row(*_row(cell, "(after search)", "best of the search", "to run"))
    return table


def _row(cell: Cell, cell_id: str, settings: str, status: str) -> list[str]:
    return [cell_id, cell.stage, cell.config.task, cell.config.backbone, escape(cell.label),
            str(cell.config.seed), escape(settings), escape(status)]


def _status_text(run: MatrixRun, cell: Cell, not_applicable: str | None = None) -> str:
    """What a run would do with the cell, in the order ``MatrixRun._todo`` decides it."""
    status = record_status(run.out, cell)
    if status == SUCCESS:
        return "success"
    if status == FAILED and not run.options.retry_failed:
        return "failed: skip (--retry-failed)"
    line = not_applicable or run.not_applicable(cell)
    if line is not None:
        return f"n/a: {reason_of(line)}"
    return "failed: will retry" if status == FAILED else "to run"


def _settings(point: dict[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in point.items()) or "-"
