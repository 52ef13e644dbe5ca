"""Executors: where the cells of a matrix run.

An :class:`Executor` takes cell jobs and yields their outcomes as they finish, forwarding
progress events on the way. Workers run :func:`~adaptbench.runner.jobs.execute_cell`, which
writes each cell's record itself, so an executor only moves jobs and events. The local
executor below runs cells in worker processes on this machine; an executor on a
distributed engine (Ray, or Slurm through submitit) implements the same two methods.

The local executor:

* runs ``workers`` processes (spawned, so no torch state is forked). On a machine with GPUs
  each worker is pinned to one device (``CUDA_VISIBLE_DEVICES``), so one cell runs per
  device; on CPU the cores are shared out between workers.
* survives a worker that dies (killed for memory, a crash in native code): the cells it was
  running are re-queued once, and recorded as failed if their worker dies again; the cells
  that were only waiting are re-queued.
* takes its workers down with it: on Linux each worker asks the kernel to kill it when the
  runner dies, so ``kill -9`` of the runner leaves no orphan still training. Only the cells
  in flight are lost; their records were never written (records are written atomically).
"""

from __future__ import annotations

import os
import queue
import signal
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from .jobs import CellEvent, CellJob, CellOutcome, execute_cell, record_lost_cell

EVENT_POLL_S = 0.2
LOST_WORKER_RETRIES = 1  # a cell whose worker dies is tried once more before it is recorded failed


class Executor(ABC):
    """Runs cell jobs somewhere; yields outcomes in the order they finish."""

    #: how many cells run at the same time (for the progress display)
    slots: int = 1

    @abstractmethod
    def run(self, jobs: Sequence[CellJob], on_event: Callable[[CellEvent], None]) -> Iterator[CellOutcome]:
        """Run ``jobs``; call ``on_event`` with workers' progress; yield each job's outcome once."""

    def close(self) -> None:  # an optional hook: not abstract
        """Release workers (called once the matrix is done or interrupted)."""


class LocalExecutor(Executor):
    """Cells in ``workers`` local processes (see the module docstring)."""

    def __init__(self, workers: int = 1, plugin_files: Sequence[str] = (), devices: Sequence[int] | None = None):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.slots = workers
        self.plugin_files = tuple(plugin_files)
        self.devices = tuple(devices) if devices is not None else _visible_gpus()
        self._pool: ProcessPoolExecutor | None = None
        self._events = None

    def run(self, jobs: Sequence[CellJob], on_event: Callable[[CellEvent], None]) -> Iterator[CellOutcome]:
        waiting = list(jobs)
        deaths: dict[str, int] = {}
        while waiting:
            pool = self._start_pool()
            futures = {pool.submit(_run_in_worker, job): job for job in waiting}
            waiting = []
            running: set[str] = set()
            broken = False
            while futures:
                done, _ = wait(futures, timeout=EVENT_POLL_S, return_when=FIRST_COMPLETED)
                self._forward_events(on_event, running)
                for future in done:
                    job = futures.pop(future)
                    outcome = _outcome_of(future)
                    if outcome is not None:
                        running.discard(job.cell_id)
                        yield outcome
                        continue
                    broken = True  # the pool lost a worker: every unfinished future fails
                    if job.cell_id not in running:
                        waiting.append(job)
                        continue
                    deaths[job.cell_id] = deaths.get(job.cell_id, 0) + 1
                    if deaths[job.cell_id] <= LOST_WORKER_RETRIES:
                        waiting.append(job)
                        continue
                    error = "the worker process died while running this cell (out of memory?)"
                    record_lost_cell(job, error)
                    yield CellOutcome(job.cell_id, "failed", error)
            if broken:
                self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            for process in list((self._pool._processes or {}).values()):  # no public handle on the workers
                if process.is_alive():
                    process.kill()
            self._pool = None

    # -- internals --------------------------------------------------------------------------
    def _start_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            import multiprocessing

            context = multiprocessing.get_context("spawn")
            self._events = context.Queue()
            counter = context.Value("i", 0)
            self._pool = ProcessPoolExecutor(
                max_workers=self.slots, mp_context=context, initializer=_init_worker,
                initargs=(self._events, counter, self.devices, self.slots, self.plugin_files),
            )
        return self._pool

    def _forward_events(self, on_event: Callable[[CellEvent], None], running: set[str]) -> None:
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            if event.kind == "start":
                running.add(event.cell_id)
            on_event(event)


def _outcome_of(future: Future) -> CellOutcome | None:
    """The job's outcome, or None when its worker process died (the pool is broken)."""
    try:
        return future.result()
    except BrokenProcessPool:
        return None


def _visible_gpus() -> tuple[int, ...]:
    """GPU indices, counted without initialising CUDA in this process (workers use it)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return tuple(i for i, part in enumerate(visible.split(",")) if part.strip())
    try:
        import torch

        return tuple(range(torch.cuda.device_count()))
    except ImportError:
        return ()


# -- the worker side -------------------------------------------------------------------------
_EVENTS = None


def _init_worker(events, counter, devices: tuple[int, ...], workers: int, plugin_files: tuple[str, ...]) -> None:
    global _EVENTS
    _EVENTS = events
    _die_with_parent()
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if devices:
        # One cell per device: set before torch initialises CUDA in this process.
        os.environ["CUDA_VISIBLE_DEVICES"] = str(devices[index % len(devices)])
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    from ..registry import load_plugin_file
    from .train import quiet_lightning

    for path in plugin_files:
        load_plugin_file(path)
    quiet_lightning()


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when the runner dies (even by kill -9)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
    if os.getppid() == 1:  # the runner died before the request took effect
        os._exit(1)


def _run_in_worker(job: CellJob) -> CellOutcome:
    return execute_cell(job, _EVENTS.put)
