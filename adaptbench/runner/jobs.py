"""What an executor moves between the runner and its workers: jobs, events, outcomes.

:func:`execute_cell` is the one function every executor runs on its worker, whatever the
worker is (a local process now; a Ray task or a Slurm job later). It never raises: a
failing cell comes back as an outcome with its error, and its record says ``failed``; a cell
whose adapter turns out not to apply to its backbone comes back (and is recorded) ``n/a``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
    from ..errors import one_line
    from ..records import FAILED, NOT_APPLICABLE, SUCCESS
    from .train import is_not_applicable, run

    started = time.perf_counter()
    report(CellEvent(job.cell_id, "start", os.getpid()))
    try:
        result = run(job.config, job.place, annotations=job.annotations,
                     callbacks=[_epoch_reporter(job.cell_id, report)], record_setup_failures=True)
    except Exception as err:
        # The runner skips the pairs it knows are impossible; this catches one it could not tell.
        status = NOT_APPLICABLE if is_not_applicable(err) else FAILED
        return CellOutcome(job.cell_id, status, one_line(err), wall_time_s=time.perf_counter() - started)
    return CellOutcome(job.cell_id, SUCCESS, score=result.record.primary_score(),
                       wall_time_s=time.perf_counter() - started)


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
