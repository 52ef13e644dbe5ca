"""The Ray executor: cells on a Ray cluster, as long-lived actors or as one task each.

* the cluster: ``settings.address`` is joined; without one a local cluster is started over the
  usable cores (``sched_getaffinity``). ``settings.options`` are extra ``ray.init`` keywords.
  A driver already connected (``ray.init`` called before) is used as it is, and left up:
  :meth:`RayExecutor.close` only shuts down (or disconnects) what it started.
* ``long_lived`` (the default): ``slots`` actors, each running cells one after another in one
  process, so torch, Lightning and timm are imported (and CUDA initialised) once per actor, not
  per cell, the backbones an actor built are kept for its later cells (``keep_backbones``,
  ``backbones/kept.py``), and the decoded-data cache is read from a warm page cache. On a
  cluster with GPUs an actor holds ``gpus_per_cell`` (default 1) of them, so there is one actor
  per GPU; Ray sets its ``CUDA_VISIBLE_DEVICES``. ``long_lived: false``: each cell is a task in
  a fresh worker process (``max_calls=1``), which pays all of that again (the comparison).
* ``slots``: ``settings.workers``, else the cells the cluster's resources fit (GPUs, else
  CPUs, per cell). Each cell holds ``cpus_per_cell`` cores (default: the CPUs of the nodes that
  can host a cell shared out, at most one node's), and torch uses as many threads.
* progress: a worker puts its events into a small buffer actor (no CPU) and waits for it to
  hold them before going on; the driver drains it between waits, and always before taking a
  finished job, so a worker that dies mid-cell is known to have started it.
* failures: a worker process that dies (killed, out of memory, its node lost) is a lost
  worker (:meth:`Executor.worker_lost`: retried on a new actor, then recorded failed) when its
  cell had started, and its job simply runs again when it had not. An exception escaping
  ``execute_cell`` (which never raises), or a worker that cannot start at all (its actor's
  set-up or runtime environment fails), records the cell failed. Ray retries nothing itself.
* ``kill -9`` of the driver: the actors and tasks are owned by the driver, and a local
  cluster's GCS and raylet go down with it, so no cell goes on training (seen by hand: the
  worker is gone within seconds; Ray's idle dashboard and runtime-env agents may linger).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator

from ...config import ExecutorSettings
from ...errors import AdaptbenchError, one_line
from ...records import FAILED
from ...registry import register_executor
from ..jobs import CellEvent, CellJob, CellOutcome, execute_cell, record_lost_cell
from . import Executor, OnEvent

EVENT_POLL_S = 0.2


class RayExecutor(Executor):
    """Cells on a Ray cluster: long-lived actors (one per GPU) or one task each."""

    def __init__(self, settings: ExecutorSettings | None = None):
        super().__init__(settings)
        _import_ray()  # a missing package is said now, not at the first cell
        self._disconnected()

    def _disconnected(self) -> None:
        """The state before the first submit (and again after close)."""
        self.slots = self.settings.workers or 1  # the cluster's fit once connected
        self._ray = None  # the ray module, once connected
        self._owns_cluster = False
        self._events = None  # the _EventBuffer actor
        self._drain = None  # its drain() asked for and not yet forwarded
        self._start_task = None  # long_lived false: the remote function
        self._cpus, self._gpus = 1, 0.0
        self._actors: list = []  # long_lived: per slot, its actor (None: to be made)
        self._waiting: deque[CellJob] = deque()
        self._running: dict = {}  # ObjectRef -> (slot, job)
        self._started: set[str] = set()  # cells whose "start" event arrived

    @property
    def pending(self) -> int:
        return len(self._waiting) + len(self._running)

    @property
    def reuses_workers(self) -> bool:
        return self.settings.long_lived

    def submit(self, job: CellJob) -> None:
        self._connect()
        self._waiting.append(job)
        self._dispatch()

    def as_completed(self, on_event: OnEvent, timeout: float | None = None) -> Iterator[CellOutcome]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.pending:
            self._dispatch()
            done, _ = self._ray.wait(list(self._running), num_returns=1, timeout=_seconds_left(deadline, EVENT_POLL_S))
            if not done:
                self._poll_events(on_event)
            elif self._flush_events(on_event, deadline):  # a cell's events come before its outcome
                outcome = self._settle(done[0])
                if outcome is not None:
                    yield outcome
            if deadline is not None and time.monotonic() >= deadline:
                return

    def close(self) -> None:
        """Stop every cell still running and the actors; shut down a cluster started here."""
        ray = self._ray
        if ray is None:
            return
        if not self.settings.long_lived:
            for ref in self._running:
                ray.cancel(ref, force=True)
        for actor in [*self._actors, self._events]:
            if actor is not None:
                ray.kill(actor)
        if self._owns_cluster:
            ray.shutdown()
        self._disconnected()

    # -- the cluster ----------------------------------------------------------------------------
    def _connect(self) -> None:
        """Join (or start) the cluster once, and size the slots to it."""
        if self._ray is not None:
            return
        ray = _import_ray()
        if not ray.is_initialized():
            self._start_cluster(ray)
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        self.slots, self._cpus, self._gpus = plan_slots(nodes, self.settings)
        self._events = _start_event_buffer(ray)
        if self.settings.long_lived:
            self._actors = [None] * self.slots
        else:
            task = ray.remote(max_calls=1, max_retries=0)(_run_cell_task)
            self._start_task = task.options(num_cpus=self._cpus, num_gpus=self._gpus)
        self._ray = ray

    def _start_cluster(self, ray) -> None:
        """``ray.init``: bad options or a cluster out of reach are one line for the user."""
        try:
            ray.init(**self._init_keywords())
        except Exception as err:
            where = f"join the cluster at {self.settings.address}" if self.settings.address else "start a local cluster"
            raise AdaptbenchError(f"executor ray could not {where}: {one_line(err)}") from err
        self._owns_cluster = True

    def _init_keywords(self) -> dict:
        import logging

        from ...datasets.decoded import usable_cpus

        if self.settings.address:
            keywords = {"address": self.settings.address}
        else:
            keywords = {"num_cpus": usable_cpus(), "include_dashboard": False}
        return {**keywords, "log_to_driver": False, "logging_level": logging.WARNING, **self.settings.options}

    # -- jobs -------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Start waiting jobs on the free slots (one cell per slot at a time)."""
        busy = {slot for slot, _ in self._running.values()}
        for slot in range(self.slots):
            if not self._waiting:
                return
            if slot not in busy:
                job = self._waiting.popleft()
                self._running[self._start(slot, job)] = (slot, job)

    def _start(self, slot: int, job: CellJob):
        if not self.settings.long_lived:
            return self._start_task.remote(job, self._events)
        if self._actors[slot] is None:
            worker = self._ray.remote(_CellWorker).options(num_cpus=self._cpus, num_gpus=self._gpus,
                                                           max_restarts=0, max_task_retries=0)
            self._actors[slot] = worker.remote(self._events, self._cpus)
        return self._actors[slot].run.remote(job)

    def _settle(self, ref) -> CellOutcome | None:
        """A finished job's outcome; None when it goes back to the queue (its worker died)."""
        slot, job = self._running.pop(ref)
        started = job.cell_id in self._started
        self._started.discard(job.cell_id)
        exceptions = self._ray.exceptions
        try:
            return self._ray.get(ref)
        except exceptions.RayTaskError as err:  # execute_cell raised: it never should
            return _recorded_failure(job, "the worker raised " + one_line(_cause(err)))
        except exceptions.RayError as err:
            if isinstance(err, exceptions.RuntimeEnvSetupError) or getattr(err, "actor_init_failed", False):
                # every cell would fail alike: record it rather than start workers forever
                self._drop_actor(slot)
                return _recorded_failure(job, "the Ray worker could not start: " + one_line(_cause(err)))
            return self._worker_died(slot, job, started, err)  # a worker crash, out of memory, a node lost

    def _worker_died(self, slot: int, job: CellJob, started: bool, err: Exception) -> CellOutcome | None:
        """The worker died: a cell that had started is retried, then failed; one that had not
        goes back to the queue without counting a try."""
        self._drop_actor(slot)
        outcome = self.worker_lost(job, f"the Ray worker died while running this cell ({type(err).__name__})") \
            if started else None
        if outcome is None:
            self._waiting.appendleft(job)
        return outcome

    def _drop_actor(self, slot: int) -> None:
        """Forget a dead actor; the slot's next job makes a new one."""
        if self._actors and self._actors[slot] is not None:
            self._ray.kill(self._actors[slot])
            self._actors[slot] = None

    def _poll_events(self, on_event: OnEvent) -> None:
        """Forward the last drain's events if they have come, and ask again: waiting for cells
        never waits on the buffer actor (it may still be starting)."""
        if self._drain is None or self._forward_drain(on_event, time.monotonic()):
            self._drain = self._events.drain.remote()

    def _flush_events(self, on_event: OnEvent, deadline: float | None) -> bool:
        """Forward every event put so far (workers put theirs before going on), so a lost
        worker's "start" is known; False when the buffer has not answered by ``deadline``."""
        if self._drain is not None and not self._forward_drain(on_event, deadline):
            return False
        self._drain = self._events.drain.remote()
        return self._forward_drain(on_event, deadline)

    def _forward_drain(self, on_event: OnEvent, deadline: float | None) -> bool:
        """Forward the events of the drain asked for, once it answers (False: not by ``deadline``)."""
        if not self._ray.wait([self._drain], timeout=_seconds_left(deadline))[0]:
            return False
        events, self._drain = self._ray.get(self._drain), None
        for event in events:
            if event.kind == "start":
                self._started.add(event.cell_id)
            on_event(event)
        return True


def plan_slots(nodes: list[dict[str, float]], settings: ExecutorSettings) -> tuple[int, int, float]:
    """(slots, CPUs per cell, GPUs per cell) for the alive nodes' resources: one cell per
    ``gpus_per_cell`` GPUs where the cluster has GPUs, else per ``cpus_per_cell`` cores. The
    default CPUs per cell never exceed one node's, so every cell can be placed."""
    has_gpus = any(node.get("GPU", 0) for node in nodes)
    gpus = settings.gpus_per_cell if settings.gpus_per_cell is not None else float(has_gpus)
    if gpus:
        fit = sum(int(node.get("GPU", 0) // gpus) for node in nodes)
    else:
        fit = sum(int(node.get("CPU", 0) // (settings.cpus_per_cell or 1)) for node in nodes)
    slots = settings.workers or max(1, fit)
    hosts = [node for node in nodes if node.get("GPU", 0) >= gpus] or nodes  # where a cell can go
    largest = max((node.get("CPU", 0) for node in hosts), default=1)
    total_cpus = sum(node.get("CPU", 0) for node in hosts)
    cpus = settings.cpus_per_cell or max(1, int(min(total_cpus // slots, largest)))
    return slots, cpus, gpus


def _seconds_left(deadline: float | None, most: float | None = None) -> float | None:
    """Seconds until ``deadline`` (None: no deadline), at least 0 and at most ``most``."""
    if deadline is None:
        return most
    left = max(0.0, deadline - time.monotonic())
    return left if most is None else min(left, most)


def _start_event_buffer(ray):
    """The events' buffer actor, on the driver's node where it can go (losing a worker node
    must not lose it), holding no CPU."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return ray.remote(num_cpus=0, scheduling_strategy=here)(_EventBuffer).remote()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise AdaptbenchError('executor ray needs the ray package: pip install "adaptbench[ray]"') from None
    return ray


def _cause(err: Exception) -> BaseException:
    """The exception a Ray error wraps (a worker's own), else the error itself."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) else err


def _recorded_failure(job: CellJob, error: str) -> CellOutcome:
    record_lost_cell(job, error)
    return CellOutcome(job.cell_id, FAILED, error)


# -- the worker side -------------------------------------------------------------------------
class _EventBuffer:
    """Workers' progress events, held until the driver's next poll (an actor without CPUs)."""

    def __init__(self):
        self._events: list[CellEvent] = []

    def put(self, event: CellEvent) -> None:
        self._events.append(event)

    def drain(self) -> list[CellEvent]:
        events, self._events = self._events, []
        return events


class _CellWorker:
    """A long-lived actor: cells one after another in one process, so what a cell loads
    (torch, Lightning, timm's cache, decoded data) stays loaded for the next."""

    def __init__(self, events, threads: int):
        import torch

        torch.set_num_threads(threads)
        self._report = _reporter(events)

    def run(self, job: CellJob) -> CellOutcome:
        return execute_cell(job, self._report)


def _run_cell_task(job: CellJob, events) -> CellOutcome:
    """One cell in a fresh worker process (a task with ``max_calls=1``): nothing is reused.
    Torch is first imported inside the cell, so its set-up counts the import; its threads
    follow ``OMP_NUM_THREADS``, which Ray sets to the task's CPUs."""
    return execute_cell(job, _reporter(events))


def _reporter(events):
    """The worker's ``report``: waits until the buffer holds the event, so the driver knows a
    cell started before the cell can take its worker down."""
    import ray

    def report(event: CellEvent) -> None:
        ray.get(events.put.remote(event))

    return report


register_executor("ray", RayExecutor)
