"""The local executor: cells in worker processes on this machine.

* ``workers`` processes, kept between cells: each forks from a server process that imported
  torch and Lightning once (no CUDA state is forked), and keeps the backbones it built for its
  later cells (``keep_backbones``). On a machine with GPUs each worker is pinned to one device
  (``CUDA_VISIBLE_DEVICES``), so one cell runs per device; on CPU the usable cores
  (``sched_getaffinity``: what Slurm's or a container's cgroup grants) are shared out.
* survives a worker that dies (killed for memory, a crash in native code): only the cell it
  was running is affected -- tried again (``settings.retries``), then recorded failed
  (:meth:`Executor.worker_lost`) -- and a new worker takes its place; the other workers go on.
  (Hence plain processes with one inbox each, not a ``ProcessPoolExecutor``: a pool that loses
  one process fails every running future and kills the other workers' cells with it.)
* takes its workers down with it: on Linux each worker asks the kernel to kill it when the
  runner dies, so ``kill -9`` of the runner leaves no orphan still training. Only the cells
  in flight are lost; their records were never written (records are written atomically),
  and their leases name dead processes, so a re-run takes them over at once.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from ...config import ExecutorSettings
from ...registry import register_executor
from ..jobs import CellJob, CellOutcome, execute_cell
from . import Executor, OnEvent

EVENT_POLL_S = 0.2
#: Workers fork from a server process that imported these once (torch, Lightning and timm cost
#: ~13 s per process on 2 cores): a second worker, or one replacing a dead worker, starts in a
#: fraction of a second. Importing them initialises no CUDA and starts no threads, so forking
#: after them is safe; each worker still pins its own device before CUDA starts.
WORKER_START = "forkserver" if sys.platform.startswith("linux") else "spawn"
WORKER_PRELOAD = ("adaptbench.runner.executors._forkserver", "torch", "lightning", "timm", "adaptbench.runner.train",
                  "adaptbench.runner.jobs")


@dataclass
class _Worker:
    """One worker process, its inbox, and the job it is running (None: idle)."""

    process: object
    inbox: object
    job: CellJob | None = None


class LocalExecutor(Executor):
    """Cells in worker processes on this machine (see the module docstring)."""

    reuses_workers = True  # each worker process runs cell after cell

    def __init__(self, settings: ExecutorSettings | None = None, devices=None):
        super().__init__(settings)
        self.slots = self.settings.workers or 1
        self.devices = tuple(devices) if devices is not None else _visible_gpus()
        self._context = None
        self._results = None  # one queue for every worker's events and outcomes
        self._workers: dict[int, _Worker] = {}  # slot -> its worker
        self._waiting: deque[CellJob] = deque()

    @property
    def pending(self) -> int:
        return len(self._waiting) + sum(worker.job is not None for worker in self._workers.values())

    def submit(self, job: CellJob) -> None:
        self._waiting.append(job)
        self._dispatch()

    def as_completed(self, on_event: OnEvent, timeout: float | None = None) -> Iterator[CellOutcome]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.pending:
            self._dispatch()
            yield from self._read_results(on_event)
            yield from self._replace_dead_workers(on_event)
            if deadline is not None and time.monotonic() >= deadline:
                return

    def close(self) -> None:
        for worker in self._workers.values():
            if worker.job is None and worker.process.is_alive():
                worker.inbox.put(None)  # idle: let it exit cleanly
                worker.process.join(timeout=2)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        self._workers = {}

    # -- internals --------------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Hand waiting jobs to idle workers, starting workers up to ``slots``."""
        for slot in range(self.slots):
            if not self._waiting:
                return
            worker = self._workers.get(slot) or self._start_worker(slot)
            if worker.job is None:
                worker.job = self._waiting.popleft()
                worker.inbox.put(worker.job)

    def _read_results(self, on_event: OnEvent, wait: bool = True) -> Iterator[CellOutcome]:
        """Events and outcomes that arrived (``wait``: up to EVENT_POLL_S for the first)."""
        while True:
            try:
                kind, slot, payload = self._results.get(timeout=EVENT_POLL_S) if wait else self._results.get_nowait()
            except queue.Empty:
                return
            wait = False
            if kind == "event":
                on_event(payload)
                continue
            worker = self._workers.get(slot)
            if worker is not None and worker.job is not None and worker.job.cell_id == payload.cell_id:
                worker.job = None
                yield payload

    def _replace_dead_workers(self, on_event: OnEvent) -> Iterator[CellOutcome]:
        """A worker that died (killed, out of memory, a native crash) loses only its own cell:
        that cell is retried or recorded failed; a new worker takes the slot."""
        for slot, worker in list(self._workers.items()):
            if worker.process.is_alive():
                continue
            yield from self._read_results(on_event, wait=False)  # it may have finished just before dying
            job, worker.job = worker.job, None
            del self._workers[slot]
            if job is None:
                continue
            why = f"the worker process died while running this cell ({_exit_description(worker.process)})"
            outcome = self.worker_lost(job, why)
            if outcome is None:
                self._waiting.appendleft(job)
            else:
                yield outcome

    def _start_worker(self, slot: int) -> _Worker:
        if self._context is None:
            import multiprocessing

            self._context = multiprocessing.get_context(WORKER_START)
            if WORKER_START == "forkserver":
                self._context.set_forkserver_preload(list(WORKER_PRELOAD))
            self._results = self._context.Queue()
        from ...datasets.decoded import usable_cpus

        device = self.devices[slot % len(self.devices)] if self.devices else None
        threads = self.settings.cpus_per_cell or max(1, usable_cpus() // self.slots)
        inbox = self._context.Queue()
        # A worker forks from the server, which kept the environment and folder of the moment it
        # started (a first matrix, maybe in another folder): it takes the runner's current ones.
        surroundings = (dict(os.environ), os.getcwd())
        process = self._context.Process(target=_worker_main, name=f"adaptbench-worker-{slot}", daemon=True,
                                        args=(slot, inbox, self._results, device, threads, surroundings))
        process.start()
        self._workers[slot] = _Worker(process, inbox)
        return self._workers[slot]


def _exit_description(process) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}; out of memory?"
        except ValueError:
            pass
    return f"exit code {code}"


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
def _worker_main(slot: int, inbox, results, device: int | None, threads: int,
                 surroundings: tuple[dict[str, str], str]) -> None:
    """A worker: run the cells it is handed, one after another, until told to stop (None)."""
    _die_with_parent()
    environment, folder = surroundings
    os.environ.clear()
    os.environ.update(environment)
    os.chdir(folder)
    if device is not None:
        # One cell per device: set before torch initialises CUDA in this process.
        os.environ["CUDA_VISIBLE_DEVICES"] = str(device)
    import torch

    torch.set_num_threads(threads)
    while (job := inbox.get()) is not None:
        outcome = execute_cell(job, lambda event: results.put(("event", slot, event)))
        results.put(("outcome", slot, outcome))


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


register_executor("local", LocalExecutor)
