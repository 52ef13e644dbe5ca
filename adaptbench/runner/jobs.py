"""What an executor moves between the runner and its workers: jobs, events, outcomes.

:func:`execute_cell` is the one function every executor runs on its worker, whatever the
worker is (a local process, a Ray actor, a Slurm job). It never raises: a failing cell comes
back as an outcome with its error, and its record says ``failed``; a cell whose adapter turns
out not to apply to its backbone comes back (and is recorded) ``n/a``. Everything a worker
needs travels in the job: the result store's absolute location and the ``--plugin`` files
(loaded here, once per process), so no executor re-implements either. While the cell runs the
worker holds its lease in the store, renewed every ``place.heartbeat_s``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..config import RunConfig
from .train import RunPlace


@dataclass(frozen=True)
class CellJob:
    """Everything a worker needs to run one cell (picklable)."""

    cell_id: str
    config: RunConfig
    place: RunPlace
    annotations: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CellEvent:
    """Progress from a worker: a cell started, or finished an epoch."""

    cell_id: str
    kind: str  # "start" | "epoch"
    worker: int  # the worker's process id
    epoch: int = 0
    epochs: int = 0


@dataclass(frozen=True)
class CellOutcome:
    cell_id: str
    status: str  # "success" | "failed" | "n/a" (records.STATUSES)
    error: str | None = None
    score: float | None = None  # the primary metric on the evaluation split
    wall_time_s: float = 0.0


Report = Callable[[CellEvent], None]


def execute_cell(job: CellJob, report: Report) -> CellOutcome:
    """Run one cell and write its record; any failure is recorded and returned, not raised."""
    from .store import ResultStore

    handed_at = time.time()
    started = time.perf_counter()
    report(CellEvent(job.cell_id, "start", os.getpid()))
    place = replace(job.place, started_at=max(handed_at, process_started_at()))
    with ResultStore.at(place.out_dir).keep_lease(job.cell_id, place.heartbeat_s):
        status, error, score = _run_cell(job, place, report)
    return CellOutcome(job.cell_id, status, error, score=score, wall_time_s=time.perf_counter() - started)


def _run_cell(job: CellJob, place, report: Report) -> tuple[str, str | None, float | None]:
    from ..errors import one_line
    from ..records import FAILED, NOT_APPLICABLE, SUCCESS
    from .train import is_not_applicable, run

    try:
        prepare_worker(place.plugin_files)
    except Exception as err:  # a --plugin file that fails here: the cell still ends with a record
        record_lost_cell(job, one_line(err))
        return FAILED, one_line(err), None
    try:
        result = run(job.config, place, annotations=job.annotations,
                     callbacks=[_epoch_reporter(job.cell_id, report)], record_setup_failures=True)
    except Exception as err:
        # The runner skips the pairs it knows are impossible; this catches one it could not tell.
        return (NOT_APPLICABLE if is_not_applicable(err) else FAILED), one_line(err), None
    return SUCCESS, None, result.record.primary_score()


_LOADED_PLUGIN_FILES: set[str] = set()


def prepare_worker(plugin_files: tuple[str, ...] = ()) -> None:
    """Once per worker process: the user's ``--plugin`` files, and Lightning's banners off."""
    from ..registry import load_plugin_file
    from .train import quiet_lightning

    for path in plugin_files:
        if path not in _LOADED_PLUGIN_FILES:
            load_plugin_file(path)
            _LOADED_PLUGIN_FILES.add(path)
    quiet_lightning()


def process_started_at() -> float:
    """When this process started (time.time() scale; Linux), so that a fresh worker's set-up
    counts its own start; 0.0 where it cannot be told."""
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return 0.0


def _epoch_reporter(cell_id: str, report: Report):
    import lightning as L

    class EpochReporter(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            report(CellEvent(cell_id, "epoch", os.getpid(), trainer.current_epoch + 1, trainer.max_epochs))

    return EpochReporter()


def record_lost_cell(job: CellJob, error: str) -> None:
    """Write a failed record for a cell whose worker died (out of memory, a crash, a signal)."""
    from .train import record_unrun_failure

    record_unrun_failure(job.config, job.place.out_dir, error, job.annotations, "unknown (the worker died)")
    from .store import ResultStore

    ResultStore.at(job.place.out_dir).release_lease(job.cell_id)
