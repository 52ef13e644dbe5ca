"""Run a matrix spec: each search group's tune cells, then its final cells, then the leaderboard.

Scheduling is per search group (backbone x adapter x task): a group's final cells are submitted
as soon as its own tune cells are done, while the executor still runs other groups' cells, so
no cell waits for a global barrier (on a cluster the tail of one wave would idle the rest).

Resuming is the normal case, not a special one: every cell's record is looked up in the result
store (``store.py``) by its id before anything runs. A cell whose record says ``success`` or
``n/a`` is never run again; one whose record says ``failed`` is run again only with
``retry_failed``; a cell without a record (never run, or lost in flight when the runner was
killed) runs. Records are written atomically by the worker that ran the cell, so a kill at
any moment loses at most the cells in flight.

Before a cell is submitted its lease is taken in the store. A cell whose lease another runner
still renews (a Slurm job that outlived a killed driver, a second driver on the same store) is
not launched again: the run waits for its record, and takes the cell over if its lease goes
stale.

A cell whose adapter cannot run on its backbone (``capabilities.py``) is not run: its ``n/a``
record is written at once, by the same atomic writer, and counted apart from successes and
failures. When every tune cell of a grid search is n/a, so are its final cells.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..config import ExecutorSettings
from ..records import FAILED, NOT_APPLICABLE, SUCCESS, reason_of
from .capabilities import Capabilities
from .cells import Cell, SearchGroup, choose_grid_point, load_cell_record, record_status, search_groups
from .executors import Executor, build_executor
from .jobs import CellJob, CellOutcome
from .progress import MatrixProgress
from .spec import MatrixSpec
from .store import ResultStore
from .train import RunPlace, record_not_applicable, record_path_for, record_unrun_failure

WATCH_POLL_S = 1.0  # how often cells leased elsewhere are looked at again


@dataclass
class MatrixOptions:
    """How to run a spec (none of it changes a cell's id)."""

    out: Path | str | None = None  # default: the spec's ``out``
    data_root: str | None = None  # default: the spec's ``data_root``
    workers: int | None = None  # default: the spec's executor block's, else 1
    retry_failed: bool = False
    accelerator: str = "auto"
    plugin_files: tuple[str, ...] = ()
    leaderboard: bool = True
    executor: str | None = None  # default: the spec's executor block's name, else local


@dataclass
class MatrixSummary:
    cells: int = 0
    succeeded: int = 0
    failed: int = 0
    not_applicable: int = 0  # the adapter cannot run on the backbone: recorded n/a, never run
    skipped: int = 0  # found done (success, n/a, or failed without retry_failed) from an earlier run
    ran: int = 0
    wall_time_s: float = 0.0
    final_records: list[Path | str] = field(default_factory=list)
    leaderboard_files: list[Path] = field(default_factory=list)


def executor_settings(spec: MatrixSpec, options: MatrixOptions) -> ExecutorSettings:
    """The spec's executor block under the command line's ``--executor`` and ``--workers``."""
    overrides = {key: value for key, value in (("name", options.executor), ("workers", options.workers))
                 if value is not None}
    return spec.executor.model_copy(update=overrides)


class MatrixRun:
    """One invocation of ``adaptbench run``: plan, skip what is done, execute, summarise."""

    def __init__(self, spec: MatrixSpec, options: MatrixOptions, executor: Executor | None = None,
                 console: Console | None = None):
        self.spec = spec
        self.options = options
        self.store = ResultStore.at(options.out or spec.out)  # absolute: workers may start elsewhere
        self.out = Path(self.store.location) if self.store.is_local else self.store.location
        self.groups = search_groups(spec, options.accelerator)
        self.console = console or Console()
        self.settings = executor_settings(spec, options)
        self._executor = executor
        self.capabilities = Capabilities()
        self.summary = MatrixSummary()

    @property
    def executor(self) -> Executor:
        """Built on first use, so that planning and ``--dry-run`` start no cluster."""
        if self._executor is None:
            self._executor = build_executor(self.settings)
        return self._executor

    # -- planning -----------------------------------------------------------------------------
    def tune_cells(self) -> list[Cell]:
        return [cell for group in self.groups for cell in group.tune_cells()]

    def final_cells_of(self, group: SearchGroup) -> tuple[list[Cell], bool]:
        """The group's final cells and whether they are known (False: the search has not chosen)."""
        if not group.has_grid:
            return group.final_cells({}), True
        choice = choose_grid_point(group, self.store)
        if choice is None:
            return group.final_cells(group.default_point()), False
        return group.final_cells(*choice), True

    def final_cells(self) -> list[tuple[SearchGroup, list[Cell], bool]]:
        """Per group: its final cells and whether they are known (False: the search has not chosen)."""
        return [(group, *self.final_cells_of(group)) for group in self.groups]

    def cell_count(self) -> int:
        return len(self.tune_cells()) + len(self.groups) * len(self.spec.seeds)

    def not_applicable(self, cell: Cell) -> str | None:
        """The cell's n/a line: from its n/a record, else from the capabilities; None if it can run."""
        record = load_cell_record(self.store, cell)
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
        self._described = {cell.cell_id: f"{cell.describe()} | tune" for cell in self.tune_cells()}
        # The final cells of a grid search are known once its tune runs are done; the total counts them.
        self._progress = MatrixProgress(f"{self.spec.name}: {self.summary.cells} cells", self.summary.cells,
                                        describe=self._described, console=self.console)
        data_root = self.options.data_root or self.spec.data_root
        if data_root and "://" not in data_root:  # like the store: where the driver runs, not the worker
            data_root = str(Path(data_root).expanduser().absolute())
        self._place = RunPlace(out_dir=self.store.location, data_root=data_root,
                               accelerator=self.options.accelerator, heartbeat_s=self.settings.heartbeat_s,
                               resume=True,  # a preempted or killed cell continues from its last epoch
                               keep_backbones=self.settings.keep_backbones if self.executor.reuses_workers else 0,
                               plugin_files=tuple(str(Path(path).absolute()) for path in self.options.plugin_files))
        self._open_tune: dict[int, set[str]] = {}  # group -> its tune cells still to finish
        self._group_of: dict[str, int] = {}  # tune cell id -> its group
        self._watched: dict[str, Cell] = {}  # cells another runner holds the lease of
        self._submitted: set[str] = set()  # cells submitted here and not finished
        self._finals: list[Cell] = []
        try:
            with self._progress:
                for index in range(len(self.groups)):
                    self._start_group(index)
                self._drain()
        finally:
            if self._executor is not None:
                self._executor.close()
        self.summary.final_records = [record_path_for(self.store, cell.cell_id) for cell in self._finals]
        self.summary.wall_time_s = time.perf_counter() - started
        if self.options.leaderboard:
            self.summary.leaderboard_files = self._leaderboard()
        return self.summary

    def _start_group(self, index: int) -> None:
        """Submit the group's tune cells still to run; with none, go straight to its final cells."""
        group = self.groups[index]
        self._open_tune[index] = set()
        for cell in self._todo(group.tune_cells()):
            self._group_of[cell.cell_id] = index
            self._open_tune[index].add(cell.cell_id)
            self._launch(cell)
        if not self._open_tune[index]:
            self._start_finals(index)

    def _start_finals(self, index: int) -> None:
        """The group's search is over: plan its final cells from the records, and submit them."""
        group = self.groups[index]
        cells, known = self.final_cells_of(group)
        self._finals.extend(cells)
        self._described.update({cell.cell_id: cell.describe() for cell in cells})
        if not known:
            self._settle_unchosen(group, cells)
            return
        for cell in self._todo(cells):
            self._launch(cell)

    def _launch(self, cell: Cell) -> None:
        """Take the cell's lease and submit it; watch it instead when another runner holds it."""
        if self.store.take_lease(cell.cell_id, self.settings.lease_timeout_s) is not None:
            self._watched[cell.cell_id] = cell
            return
        self._submit(cell)

    def _submit(self, cell: Cell) -> None:
        self._submitted.add(cell.cell_id)
        self.executor.submit(CellJob(cell.cell_id, cell.config, self._place, cell.annotations))

    def _drain(self) -> None:
        """Until no cell is pending here or elsewhere: take outcomes, submit what they unlock,
        and keep the leases of cells still queued alive (the worker renews them once it starts)."""
        renewed = time.monotonic()
        while self._watched or (self._executor is not None and self._executor.pending):
            if self._executor is not None and self._executor.pending:
                timeout = min(WATCH_POLL_S if self._watched else self.settings.heartbeat_s, self.settings.heartbeat_s)
                for outcome in self._executor.as_completed(self._progress.on_event, timeout):
                    self._finish(outcome)
            else:
                time.sleep(WATCH_POLL_S)
            self._look_at_watched()
            if time.monotonic() - renewed >= self.settings.heartbeat_s:
                self._renew_queued_leases()
                renewed = time.monotonic()

    def _renew_queued_leases(self) -> None:
        """A cell may wait in a cluster's queue longer than a lease lives: the driver renews the
        leases it still holds (not yet taken over by the cell's worker)."""
        for cell_id in self._submitted:
            lease = self.store.lease(cell_id)
            if lease is not None and lease.holder == "driver" and lease.pid == os.getpid():
                self.store.hold_lease(cell_id, holder="driver")

    def _finish(self, outcome: CellOutcome, ran: bool = True) -> None:
        self._submitted.discard(outcome.cell_id)
        self._count(outcome, ran)
        self._progress.on_outcome(outcome)
        index = self._group_of.pop(outcome.cell_id, None)
        if index is not None:
            self._open_tune[index].discard(outcome.cell_id)
            if not self._open_tune[index]:
                self._start_finals(index)

    def _look_at_watched(self) -> None:
        """Cells leased elsewhere: finished there (their record), or theirs to take over (stale)."""
        for cell_id, cell in list(self._watched.items()):
            record = load_cell_record(self.store, cell)
            if record is not None:
                del self._watched[cell_id]
                self._finish(CellOutcome(cell_id, record.status or FAILED, record.train_info.error,
                                         score=record.primary_score()), ran=False)  # ran elsewhere
            elif self.store.take_lease(cell_id, self.settings.lease_timeout_s) is None:
                del self._watched[cell_id]
                self._submit(cell)

    def _todo(self, cells: list[Cell], not_applicable=None) -> list[Cell]:
        """The cells to run. The others are counted: found finished by an earlier run (success,
        n/a, or failed without retry_failed), or found n/a now and recorded so, unrun.
        ``not_applicable(cell)``: the cell's n/a line or None (default: ask the capabilities)."""
        not_applicable = not_applicable or self.capabilities.cell_message
        todo, found = [], {SUCCESS: 0, FAILED: 0, NOT_APPLICABLE: 0}
        for cell in cells:
            status = record_status(self.store, cell)
            if status in (SUCCESS, NOT_APPLICABLE) or (status == FAILED and not self.options.retry_failed):
                found[status] += 1
            elif (line := not_applicable(cell)) is not None:
                self._record_not_applicable(cell, line)
            else:
                todo.append(cell)
        self.summary.skipped += sum(found.values())
        self.summary.succeeded += found[SUCCESS]
        self.summary.failed += found[FAILED]
        self.summary.not_applicable += found[NOT_APPLICABLE]
        self._progress.add_skipped(found[SUCCESS], found[FAILED], found[NOT_APPLICABLE])
        return todo

    def _count(self, outcome: CellOutcome, ran: bool = True) -> None:
        self.summary.ran += ran
        if outcome.status == SUCCESS:
            self.summary.succeeded += 1
        elif outcome.status == NOT_APPLICABLE:
            self.summary.not_applicable += 1
        else:
            self.summary.failed += 1

    def _record_not_applicable(self, cell: Cell, line: str) -> None:
        """Write the cell's n/a record now (nothing runs) and report it like a finished cell."""
        record_not_applicable(cell.config, self.store, line, cell.annotations)
        outcome = CellOutcome(cell.cell_id, NOT_APPLICABLE, line)
        self._count(outcome, ran=False)
        self._progress.on_outcome(outcome)

    def _settle_unchosen(self, group: SearchGroup, cells: list[Cell]) -> None:
        """The search chose no grid point: its final cells are n/a when every tune cell was
        (the same reason), and failed otherwise."""
        line = self.search_not_applicable(group)
        if line is None:
            self._record_failed_search(group, cells)
        else:
            self._todo(cells, lambda cell: line)  # runs nothing: every cell gets the line

    def _record_failed_search(self, group: SearchGroup, cells: list[Cell]) -> None:
        """No tune run of the grid succeeded: the final cells cannot run; record them as failed."""
        error = (f"hyper-parameter search failed: none of the {len(group.tune_cells())} tune runs of "
                 f"{group.adapter.label} on {group.task} succeeded (see their records)")
        for cell in cells:
            if record_status(self.store, cell) is None or self.options.retry_failed:
                record_unrun_failure(cell.config, self.store, error, cell.annotations, "none (not run)")
            outcome = CellOutcome(cell.cell_id, FAILED, error)
            self._count(outcome, ran=False)
            self._progress.on_outcome(outcome)

    def _leaderboard(self) -> list[Path]:
        from ..leaderboard import (
            build_leaderboards,
            render_terminal,
            write_leaderboards,
        )

        records = [record for cell in self._finals
                   if (record := self.store.read_record(cell.cell_id)) is not None]
        if not records:
            return []
        boards = build_leaderboards(records, wise=self.spec.leaderboard_wise)
        self.console.print(render_terminal(boards))
        return write_leaderboards(boards, self.spec.leaderboard_out, self.spec.leaderboard_name,
                                  self.spec.leaderboard_formats)


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
    status = record_status(run.store, cell)
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
