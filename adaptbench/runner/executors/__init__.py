"""Executors: where the cells of a matrix run.

An :class:`Executor` takes cell jobs one at a time (:meth:`~Executor.submit`) and yields their
outcomes as they finish (:meth:`~Executor.as_completed`), forwarding workers' progress events
on the way; the matrix submits a search group's final cells as soon as that group's own tune
cells are done, while the executor is still busy with the others. Workers run
:func:`~adaptbench.runner.jobs.execute_cell`, which writes the cell's record into the result
store itself (``runner/store.py``) and never raises, so an executor only moves jobs, events
and lost workers.

Executors are registered like adapters: the built-ins (``local``, ``ray``, ``slurm``) by the
``register_executor`` call at the bottom of their module in this folder, others through the
entry-point group ``adaptbench.executors`` or ``--plugin``. ``--executor NAME`` or a spec's
``executor:`` block (:class:`~adaptbench.config.ExecutorSettings`: workers, GPUs and CPUs per
cell, partition, time limit, engine extras) chooses one; an executor's constructor takes those
settings and nothing else, and raises AdaptbenchError (one line) when its engine is missing or a
setting cannot work: ``check_matrix`` builds it before any cell runs, without starting work.

What every executor must do (``tests/test_executor_faults.py`` checks each registered one):

* yield every submitted job's outcome exactly once;
* map a worker that dies mid-cell (killed, out of memory, a node lost) to a retry, up to
  ``settings.retries`` times, then to a failed record (:meth:`Executor.worker_lost`);
* leave no cell running after :meth:`close` or the driver's death where the engine allows it
  (local processes, Ray's workers); where it does not (Slurm jobs outlive the driver), the
  cell's lease keeps a re-run from launching it twice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence

from ...config import ExecutorSettings
from ..jobs import CellEvent, CellJob, CellOutcome, record_lost_cell

OnEvent = Callable[[CellEvent], None]


class Executor(ABC):
    """Runs cell jobs somewhere; yields outcomes in the order they finish."""

    name: str = ""  # set by register_executor
    #: how many cells run at the same time (for the progress display)
    slots: int = 1

    def __init__(self, settings: ExecutorSettings | None = None):
        self.settings = settings or ExecutorSettings(name=self.name or "local")
        self._lost: dict[str, int] = {}

    @abstractmethod
    def submit(self, job: CellJob) -> None:
        """Queue ``job``; it starts when a slot is free."""

    @abstractmethod
    def as_completed(self, on_event: OnEvent, timeout: float | None = None) -> Iterator[CellOutcome]:
        """Yield each submitted job's outcome once, as it finishes, including jobs submitted while
        iterating; stop when none is pending, or once ``timeout`` seconds have passed (None: no
        limit). ``on_event`` receives the workers' progress events meanwhile."""

    @property
    @abstractmethod
    def pending(self) -> int:
        """Jobs submitted whose outcome has not been yielded yet."""

    @property
    def reuses_workers(self) -> bool:
        """Whether a worker runs many cells in one process: it then keeps the backbones it
        built for the cells after (``settings.keep_backbones``, ``backbones/kept.py``)."""
        return False

    def close(self) -> None:  # an optional hook: not abstract
        """Release workers (called once the matrix is done or interrupted)."""

    def run(self, jobs: Sequence[CellJob], on_event: OnEvent) -> Iterator[CellOutcome]:
        """Submit ``jobs`` and yield their outcomes (a batch convenience over submit/as_completed)."""
        for job in jobs:
            self.submit(job)
        yield from self.as_completed(on_event)

    # -- shared by every executor ---------------------------------------------------------------
    def worker_lost(self, job: CellJob, why: str) -> CellOutcome | None:
        """A worker died while running ``job``: None when the job should be submitted again,
        else its outcome: the failed one (its record is written here), or the cell's own when
        it wrote its record just before its worker died (so it is never run twice)."""
        from ..store import ResultStore

        finished = ResultStore.at(job.place.out_dir).read_record(job.cell_id)
        if finished is not None and finished.status in ("success", "n/a"):
            return CellOutcome(job.cell_id, finished.status, finished.train_info.error,
                               score=finished.primary_score())
        self._lost[job.cell_id] = self._lost.get(job.cell_id, 0) + 1
        if self._lost[job.cell_id] <= self.settings.retries:
            return None
        tries = self._lost[job.cell_id]
        error = f"{why} ({tries} tr{'y' if tries == 1 else 'ies'})"
        record_lost_cell(job, error)
        return CellOutcome(job.cell_id, "failed", error)


def build_executor(settings: ExecutorSettings) -> Executor:
    """The registered executor ``settings.name``, made from ``settings``."""
    from ...registry import EXECUTORS

    return EXECUTORS.get(settings.name)(settings)
