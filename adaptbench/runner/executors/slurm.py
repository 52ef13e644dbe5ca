"""The Slurm executor: each cell one Slurm job, submitted through submitit in job arrays.

* **One job per cell.** A cell is one submitit job running
  :func:`~adaptbench.runner.jobs.execute_cell`. The driver keeps at most ``workers`` of them
  in Slurm at a time (queued or running) and submits the cells waiting for a slot together,
  as one job array. A job's end is its cell's end, so the scheduler sees exactly the
  resources in use, and a job that dies (killed, out of memory, a node lost) loses one cell
  only, which is retried (``settings.retries``) and then recorded failed
  (:meth:`Executor.worker_lost`). ``long_lived`` does not apply: a job does not outlive its
  cell, so each job loads torch and its backbone afresh (seconds, against the minutes a
  cell trains on a cluster).
* **Preemption and time limits.** The job's function is checkpointable the way submitit asks
  (:class:`CellTask` has a ``checkpoint`` method): when Slurm signals a preemption or the
  approaching time limit, submitit requeues the job and the same cell runs again, with
  ``RunPlace.resume`` set, so training starts from the adapter-only checkpoint the cell keeps
  in the store (``<store>/.resume/<cell id>``; the frozen backbone is never checkpointed). A
  requeue by Slurm itself (``scontrol requeue``, a preemption in REQUEUE mode) needs nothing
  from submitit: the requeued job runs the same cell again, and resumes the same way.
* **Resources come from the settings only**: ``partition``, ``time_limit_min`` (default: the
  partition's own default time, else its maximum, read with sinfo: what Slurm gives a job that
  asks for none; submitit must be told it or it asks for 5 minutes), ``gpus_per_cell``,
  ``cpus_per_cell``, ``memory_gb``, and ``options``: submitit's ``update_parameters``
  keywords (``slurm_account``, ``slurm_qos``, ``slurm_setup``, ``slurm_additional_parameters``,
  ...), its constructor's ``slurm_python`` and ``slurm_max_num_timeout``, and two of this
  executor's own: ``cluster`` (``slurm``, or ``local`` for submitit's local processes, as the
  tests use) and ``poll_s`` (how often the queue is read). Inside a job torch uses the CPUs
  Slurm grants it (``sched_getaffinity``).
* **Job states come from squeue**, not sacct, so a cluster without accounting works too; a
  job that has left the queue without a result is one that died. Submitit's files (the
  pickled cell, logs) go to ``settings.folder``, by default ``<store>/.slurm``.
* **Jobs outlive a killed driver**: the cell's lease in the store, renewed by the job, keeps a
  re-run from launching it twice. :meth:`SlurmExecutor.close` with jobs still pending (Ctrl-C)
  cancels them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ...config import ExecutorSettings
from ...errors import AdaptbenchError
from ...registry import register_executor
from ..jobs import CellEvent, CellJob, CellOutcome, execute_cell, record_lost_cell
from . import Executor, OnEvent

#: options read by this executor, not passed to submitit
OWN_OPTIONS = ("cluster", "poll_s")
#: options that go to submitit's executor constructor, not to update_parameters
CONSTRUCTOR_OPTIONS = ("slurm_python", "slurm_max_num_timeout")
#: Slurm states from which a job may still run its cell and write its result (PREEMPTED: until
#: a requeue puts it back to PENDING; one preempted for good leaves the queue, and is GONE)
ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED",
                           "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT",
                           "PREEMPTED", "RESV_DEL_HOLD", "SPECIAL_EXIT"})
GONE = "GONE"  # no longer in the queue


def _import_submitit():
    try:
        import submitit
    except ImportError:
        raise AdaptbenchError('executor slurm needs submitit: pip install "adaptbench[slurm]"') from None
    return submitit


@dataclass
class _Submitted:
    """A cell's job in Slurm."""

    job: CellJob
    handle: Any  # a submitit Job
    running: bool = False
    ended_at: float | None = None  # first seen ended with no result (its result may still be arriving)

    @property
    def job_id(self) -> str:
        return self.handle.job_id


class SlurmExecutor(Executor):
    """Cells as Slurm jobs through submitit, in job arrays (see the module docstring)."""

    def __init__(self, settings: ExecutorSettings | None = None):
        super().__init__(settings)
        self._submitit = _import_submitit()
        self.slots = self.settings.workers or 1
        options = self.settings.options
        self.cluster = _Queue.named(options.get("cluster", "slurm"), options.get("poll_s"))
        self.parameters = submit_parameters(self.settings, self.slots)
        self._engines: dict[Path, Any] = {}  # submitit executor per folder
        self._queued: list[CellJob] = []  # waiting for a slot
        self._submitted: dict[str, _Submitted] = {}  # by submitit job id

    @property
    def pending(self) -> int:
        return len(self._queued) + len(self._submitted)

    def submit(self, job: CellJob) -> None:
        self._queued.append(job)  # submitted to Slurm from as_completed, with the others waiting, as one array

    def as_completed(self, on_event: OnEvent, timeout: float | None = None) -> Iterator[CellOutcome]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.pending:
            self._submit_queued()
            yield from self._collect(on_event)
            pause = self.cluster.poll_s if deadline is None else min(self.cluster.poll_s, deadline - time.monotonic())
            if not self.pending or pause <= 0:
                return
            time.sleep(pause)

    def close(self) -> None:
        """On an interrupted matrix (jobs still pending), cancel this executor's jobs."""
        self.cluster.cancel([submitted.handle for submitted in self._submitted.values()])
        self._submitted.clear()
        self._queued.clear()

    # -- submitting -------------------------------------------------------------------------
    def _submit_queued(self) -> None:
        """Submit the waiting cells that fit in the free slots, one job array per folder."""
        free = max(self.slots - len(self._submitted), 0)
        batch, self._queued = self._queued[:free], self._queued[free:]
        by_folder: dict[Path, list[CellJob]] = {}
        for job in batch:
            by_folder.setdefault(self._folder(job), []).append(job)
        for folder, jobs in by_folder.items():
            self._submit_array(self._engine(folder), jobs)

    def _submit_array(self, engine, jobs: list[CellJob]) -> None:
        submitit = self._submitit
        try:
            with engine.batch():
                handles = [engine.submit(CellTask(job, self.settings.cpus_per_cell)) for job in jobs]
        except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError, OSError) as err:
            raise AdaptbenchError(f"executor slurm: submitting {len(jobs)} cell(s) failed: {_last_line(err)}") from None
        for job, handle in zip(jobs, handles):
            self._submitted[handle.job_id] = _Submitted(job, handle)

    def _folder(self, job: CellJob) -> Path:
        """submitit's folder: ``settings.folder``, else ``.slurm`` in the (local) result store."""
        if self.settings.folder:
            return Path(self.settings.folder).expanduser().absolute()
        store = os.fspath(job.place.out_dir)
        if "://" in store:
            raise AdaptbenchError(f"executor slurm: the result store {store} is not a folder; set the executor's "
                                  "folder: to a folder the nodes share, for submitit's job files")
        return Path(store) / ".slurm"

    def _engine(self, folder: Path):
        """The submitit executor writing to ``folder`` (made on first use, then kept)."""
        if folder not in self._engines:
            self._engines[folder] = self._make_engine(folder)
        return self._engines[folder]

    def _make_engine(self, folder: Path):
        options = self.settings.options
        constructor = {key: options[key] for key in CONSTRUCTOR_OPTIONS if key in options}
        parameters = dict(self.parameters)
        if "timeout_min" not in parameters:
            parameters["timeout_min"] = self.cluster.default_time_limit_min(self.settings.partition)
        try:
            engine = self._submitit.AutoExecutor(folder, cluster=self.cluster.name, **constructor)
            engine.update_parameters(**parameters)
        except RuntimeError as err:  # submitit's "Could not detect srun"
            raise AdaptbenchError(f"executor slurm: no Slurm on this machine ({_last_line(err)})") from None
        except (AssertionError, NameError, TypeError, ValueError) as err:
            raise AdaptbenchError(f"executor slurm: bad settings for submitit: {_first_line(err)}") from None
        return engine

    # -- collecting -------------------------------------------------------------------------
    def _collect(self, on_event: OnEvent) -> Iterator[CellOutcome]:
        """Read the queue once; report cells that started; yield the outcomes of ended jobs."""
        states = self.cluster.states([submitted.handle for submitted in self._submitted.values()])
        for job_id, submitted in list(self._submitted.items()):
            state = None if states is None else states.get(job_id, GONE)
            self._report_start(submitted, state, on_event)
            outcome = self._outcome(submitted, state)
            if outcome is not None:
                yield outcome

    def _report_start(self, submitted: _Submitted, state: str | None, on_event: OnEvent) -> None:
        """A "start" event each time the job is seen running (again, after a requeue)."""
        running = state == "RUNNING"
        if running and not submitted.running:
            on_event(CellEvent(submitted.job.cell_id, "start", _job_number(submitted.job_id)))
        if state is not None:
            submitted.running = running

    def _outcome(self, submitted: _Submitted, state: str | None) -> CellOutcome | None:
        """The cell's outcome once its job has ended (None: not yet, or sent again after a loss)."""
        if submitted.handle.paths.result_pickle.exists() and submitted.handle.done():  # local: its process ended
            del self._submitted[submitted.job_id]
            return self._result(submitted)
        if state is None or state in ACTIVE_STATES:
            submitted.ended_at = None  # unknown this time, or back in the queue (requeued)
            return None
        now = time.monotonic()
        submitted.ended_at = submitted.ended_at or now
        if now - submitted.ended_at < self.cluster.result_grace_s:
            return None
        del self._submitted[submitted.job_id]
        return self._died(submitted, state)

    def _result(self, submitted: _Submitted) -> CellOutcome:
        """What the job's function returned; an exception it raised is a failed record."""
        utils = self._submitit.core.utils
        try:
            return submitted.handle.result()
        except utils.FailedJobError as err:  # execute_cell never raises: submitit gave up (timed out too often)
            error = f"{self.cluster.name} job {submitted.job_id} failed: {_trace_line(err)}"
            record_lost_cell(submitted.job, error)
            return CellOutcome(submitted.job.cell_id, "failed", error)
        except utils.UncompletedJobError:
            return self._died(submitted, "unknown")

    def _died(self, submitted: _Submitted, state: str) -> CellOutcome | None:
        """The job ended without a result: the cell is tried again (queued first) or recorded failed."""
        self.cluster.cancel([submitted.handle])  # one Slurm might still requeue must not run beside its retry
        why = f"{self.cluster.name} job {submitted.job_id} died while running this cell (state {state}, no result)"
        outcome = self.worker_lost(submitted.job, why)
        if outcome is None:
            self._queued.insert(0, submitted.job)
        return outcome


def submit_parameters(settings: ExecutorSettings, slots: int) -> dict[str, Any]:
    """submitit's ``update_parameters`` keywords, from the executor settings alone (without
    ``timeout_min`` when the settings have no time limit: the cluster's default is read later)."""
    parameters = {
        "name": "adaptbench", "timeout_min": settings.time_limit_min, "cpus_per_task": settings.cpus_per_cell,
        "mem_gb": settings.memory_gb, "gpus_per_node": _whole_gpus(settings.gpus_per_cell),
        "slurm_partition": settings.partition, "slurm_array_parallelism": slots,
    }
    parameters.update({key: value for key, value in settings.options.items()
                       if key not in OWN_OPTIONS + CONSTRUCTOR_OPTIONS})
    return {key: value for key, value in parameters.items() if value is not None}


def _whole_gpus(gpus: float | None) -> int | None:
    """Slurm hands out whole GPUs: a fraction (a Ray setting) is refused, not rounded."""
    if gpus is None:
        return None
    if gpus != int(gpus):
        raise AdaptbenchError(f"executor slurm: gpus_per_cell must be a whole number of GPUs, not {gpus}")
    return int(gpus)


def _slurm_minutes(text: str) -> int | None:
    """Whole minutes of a time as sinfo prints it ("D-HH:MM:SS", "HH:MM:SS", "MM:SS"); None for
    "infinite", "n/a" or anything else."""
    days, _, clock = text.partition("-") if "-" in text else ("0", "", text)
    fields = clock.split(":")
    if not (days.isdigit() and len(fields) in (2, 3) and all(field.isdigit() for field in fields)):
        return None
    hours, minutes, seconds = [int(field) for field in ([*["0"] * (3 - len(fields)), *fields])]
    return int(days) * 24 * 60 + hours * 60 + minutes + (seconds > 0)


def _job_number(job_id: str) -> int:
    """The number of a job id ("123", or "123_4" for an array task: 123), for CellEvent.worker."""
    return int(job_id.split("_", 1)[0])


def _last_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _first_line(err: BaseException) -> str:
    """The first line of submitit's message (without the list of every valid parameter)."""
    return str(err).strip().splitlines()[0].split(" Valid arguments:")[0] if str(err).strip() else type(err).__name__


def _trace_line(err: BaseException) -> str:
    """The exception line of the traceback inside submitit's FailedJobError message."""
    parts = str(err).split("-" * 22)
    return _last_line(Exception(parts[1] if len(parts) > 2 else str(err)))


# -- where jobs run: Slurm, or submitit's local processes ----------------------------------
class _Queue:
    """Reads job states and cancels jobs, on one kind of submitit cluster."""

    name = ""
    poll_s = 5.0  # how often the queue is read
    result_grace_s = 0.0  # how long an ended job's result may take to appear here

    def __init__(self, poll_s: float | None = None):
        if poll_s is not None:
            self.poll_s = float(poll_s)

    @staticmethod
    def named(name: str, poll_s: float | None) -> _Queue:
        kinds = {"slurm": _SlurmQueue, "local": _LocalQueue}
        if name not in kinds:
            raise AdaptbenchError(f"executor slurm: options.cluster is {name!r}; expected one of {sorted(kinds)}")
        return kinds[name](poll_s)

    def states(self, handles: list) -> dict[str, str] | None:
        """State by job id (jobs absent: gone from the queue); None when it could not be read."""
        raise NotImplementedError

    def default_time_limit_min(self, partition: str | None) -> int:
        """The time limit of a job whose settings set none."""
        raise NotImplementedError

    def cancel(self, handles: list) -> None:
        raise NotImplementedError


class _SlurmQueue(_Queue):
    name = "slurm"
    poll_s = 5.0
    result_grace_s = 15.0  # a shared filesystem may show the node's result file to this host late

    def states(self, handles: list) -> dict[str, str] | None:
        if not handles:
            return {}
        command = ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T", f"--user={os.getuid()}"]
        try:
            listing = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return None  # slurmctld busy or restarting: read it again next time
        return dict(line.strip().split("|", 1) for line in listing.splitlines() if "|" in line)

    def default_time_limit_min(self, partition: str | None) -> int:
        """What Slurm gives a job that asks for no time: the partition's DefaultTime, else its MaxTime."""
        try:
            listing = subprocess.run(["sinfo", "--noheader", "--format=%P|%L|%l"], capture_output=True, text=True,
                                     timeout=60, check=True).stdout
        except (OSError, subprocess.SubprocessError) as err:
            raise AdaptbenchError(f"executor slurm: sinfo failed ({_last_line(err)}); set time_limit_min") from None
        for line in listing.splitlines():
            name, default, maximum = line.strip().split("|")
            if name.rstrip("*") == partition or (partition is None and name.endswith("*")):
                minutes = _slurm_minutes(default) or _slurm_minutes(maximum)
                if minutes is None:
                    raise AdaptbenchError(f"executor slurm needs time_limit_min: partition {name.rstrip('*')} "
                                          "has no time limit to default to")
                return minutes
        raise AdaptbenchError(f"executor slurm: sinfo lists no partition {partition or '(default)'}")

    def cancel(self, handles: list) -> None:
        if handles:
            subprocess.run(["scancel", *(handle.job_id for handle in handles)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)


class _LocalQueue(_Queue):
    """submitit's local cluster: each job a process on this machine (tests, debugging)."""

    name = "local"
    poll_s = 0.5
    NO_LIMIT_MIN = 365 * 24 * 60  # "no time limit": submitit's local jobs need a number
    CANCEL_GRACE_S = 5.0  # a cancelled job's time to stop on SIGINT before it is killed

    def default_time_limit_min(self, partition: str | None) -> int:
        return self.NO_LIMIT_MIN

    def states(self, handles: list) -> dict[str, str] | None:
        return {handle.job_id: handle.state for handle in handles}

    def cancel(self, handles: list) -> None:
        """SIGINT, as submitit cancels a local job; then SIGKILL to a job still running after
        ``CANCEL_GRACE_S``, as ``scancel`` does after Slurm's KillWait. A job started from a
        shell's background (``nohup adaptbench run ... &``) inherits SIGINT ignored, so
        submitit's cancel alone would leave it training."""
        for handle in handles:
            handle.cancel()
        deadline = time.monotonic() + self.CANCEL_GRACE_S
        running = list(handles)
        while running and time.monotonic() < deadline:
            time.sleep(0.1)
            running = [handle for handle in running if handle.state == "RUNNING"]
        for handle in running:
            try:
                os.kill(int(handle.job_id), signal.SIGKILL)  # a local job's id is its process id
            except (ProcessLookupError, ValueError):
                pass


# -- the job's side ---------------------------------------------------------------------------
class CellTask:
    """What a job runs: one cell. Checkpointable the way submitit asks (a ``checkpoint``
    method; subclassing its ``Checkpointable`` would import submitit with this module): on
    preemption or near the time limit submitit requeues the job with this same task."""

    def __init__(self, job: CellJob, cpus: int | None = None):
        # Resume: the cell keeps an adapter-only checkpoint per epoch and starts from it when requeued.
        self.job = replace(job, place=replace(job.place, resume=True))
        self.cpus = cpus  # the cores the settings ask for (cpus_per_cell), if any

    def __call__(self) -> CellOutcome:
        done = self._already_done()
        if done is not None:
            return done
        import torch

        from ...datasets.decoded import usable_cpus

        # The CPUs Slurm granted this job, and no more than it asked for (a cluster that does not
        # bind tasks to their cores shows each job every core of the node).
        torch.set_num_threads(min(usable_cpus(), self.cpus or usable_cpus()))
        return execute_cell(self.job, _log_event)

    def _already_done(self) -> CellOutcome | None:
        """A job requeued after its cell succeeded (the preemption came as it finished) does
        not train it again."""
        from ..store import ResultStore

        record = ResultStore.at(self.job.place.out_dir).read_record(self.job.cell_id)
        if record is None or record.status != "success":
            return None
        return CellOutcome(self.job.cell_id, "success", score=record.primary_score())

    def checkpoint(self, *args: Any, **kwargs: Any):
        """The same task again: the cell's training state is in the store, not in this object."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def _log_event(event: CellEvent) -> None:
    """Progress into the job's log (the driver learns a cell started from the queue)."""
    epochs = f" {event.epoch}/{event.epochs}" if event.kind == "epoch" else ""
    print(f"adaptbench: cell {event.cell_id} {event.kind}{epochs}", flush=True)


register_executor("slurm", SlurmExecutor)
