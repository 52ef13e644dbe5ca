"""The Slurm executor (``runner/executors/slurm.py``).

Always: the settings-to-submitit mapping, and through submitit's local cluster (each job a
process on this machine) a cell preempted by submitit's signal (USR2), which requeues its job:
the cell resumes from its adapter-only checkpoint and succeeds; and Ctrl-C (close) cancelling
the jobs. A micro matrix, whose killed cell is retried then recorded failed, runs on a real
Slurm when ``ADAPTBENCH_SLURM=1`` (``eval "$(.ci/slurm_up.sh)"`` starts a single-node one;
``scontrol requeue`` of a running cell is then tested too), else on submitit's local cluster:
the executor's code is the same but for reading the queue, and each job pays ~10 s of CPU to
import torch, so running the matrix on both would not fit CI's time.

Cells are tiny (the 2-block test ViT; one epoch, or 12 of ~0.2 s for a preempted one).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from rich.console import Console

from adaptbench.config import ExecutorSettings
from adaptbench.errors import AdaptbenchError

submitit = pytest.importorskip("submitit")

from adaptbench.runner.executors.slurm import CellTask, SlurmExecutor, _SlurmQueue, submit_parameters  # noqa: E402

FAULTY_PLUGIN = Path(__file__).parent / "plugins" / "faulty_plugin.py"
REAL_SLURM = os.environ.get("ADAPTBENCH_SLURM") == "1" and shutil.which("sbatch") is not None
needs_slurm = pytest.mark.skipif(not REAL_SLURM, reason="no Slurm here: eval \"$(.ci/slurm_up.sh)\" starts one "
                                                        "and sets ADAPTBENCH_SLURM=1")
MATRIX_CLUSTER = "slurm" if REAL_SLURM else "local"

SPEC = """
    name: slurm_micro
    backbones: [vit_tiny_test]
    tasks: [micro/texture]
    adapters:  # the cell killed twice first: its retry then runs while the others still train
      - {name: fault, options: {mode: kill}}
      - linear
      - bitfit
    train: {epochs: 1, batch_size: 250}
    out: results
"""


def settings(cluster: str, options: dict | None = None, **extra) -> ExecutorSettings:
    options = {"cluster": cluster, "poll_s": 0.3 if cluster == "local" else 1.0, **(options or {})}
    # One core per cell: on a small CI machine, cells with a thread per core each would crowd each other out.
    return ExecutorSettings(**{"name": "slurm", "workers": 2, "cpus_per_cell": 1, "retries": 1, "options": options,
                               **extra})



@pytest.fixture
def fast_slurm_results(monkeypatch):
    """Results appear at once on this machine's filesystem: no grace for a shared one."""
    monkeypatch.setattr(_SlurmQueue, "result_grace_s", 1.0)


def records(folder: Path) -> dict[str, dict]:
    found = [json.loads(path.read_text()) for path in folder.glob("*.json")]
    return {r["run_info"]["config"]["adapter"]: r["train_info"] for r in found}


# -- settings ----------------------------------------------------------------------------------
def test_resources_come_from_the_settings_and_options_pass_through_to_submitit():
    chosen = ExecutorSettings(name="slurm", workers=4, gpus_per_cell=1.0, cpus_per_cell=8, memory_gb=32,
                              partition="gpu", time_limit_min=90,
                              options={"slurm_account": "lab", "slurm_qos": "high", "cluster": "slurm",
                                       "poll_s": 2, "slurm_python": "/opt/py", "slurm_additional_parameters":
                                       {"requeue": True}})
    assert submit_parameters(chosen, 4) == {
        "name": "adaptbench", "timeout_min": 90, "cpus_per_task": 8, "mem_gb": 32, "gpus_per_node": 1,
        "slurm_partition": "gpu", "slurm_array_parallelism": 4, "slurm_account": "lab", "slurm_qos": "high",
        "slurm_additional_parameters": {"requeue": True}}
    bare = submit_parameters(ExecutorSettings(name="slurm"), 1)
    assert bare == {"name": "adaptbench", "slurm_array_parallelism": 1}  # the time limit: the partition's


def test_without_a_time_limit_a_job_gets_its_partitions(monkeypatch):
    from adaptbench.runner.executors import slurm

    listing = "debug*|n/a|infinite\ngpu|1:00:00|2-00:00:00\nlong|n/a|3-12:30:00\nshort|30:00|1:00:00\n"
    monkeypatch.setattr(slurm.subprocess, "run", lambda *args, **kwargs: subprocess.CompletedProcess(args, 0, listing))
    queue = _SlurmQueue()
    assert [queue.default_time_limit_min(p) for p in ("gpu", "long", "short")] == [60, 5070, 30]
    with pytest.raises(AdaptbenchError, match="partition debug has no time limit to default to"):
        queue.default_time_limit_min(None)
    with pytest.raises(AdaptbenchError, match="no partition nope"):
        queue.default_time_limit_min("nope")


@pytest.mark.parametrize("change, message", [
    ({"gpus_per_cell": 0.5}, "gpus_per_cell must be a whole number"),
    ({"options": {"cluster": "pbs"}}, "options.cluster is 'pbs'"),
])
def test_bad_settings_are_one_line_errors(change, message):
    values = {"name": "slurm", **change}
    with pytest.raises(AdaptbenchError, match=message):
        SlurmExecutor(ExecutorSettings(**values))


def test_unknown_submitit_option_is_named(tmp_path):
    executor = SlurmExecutor(settings("local", {"slurm_colour": 1}, folder=str(tmp_path)))
    with pytest.raises(AdaptbenchError, match="bad settings for submitit: .*colour"):
        executor._engine(tmp_path)


def test_a_store_at_a_url_needs_a_folder_for_submitit():
    from adaptbench.runner.jobs import CellJob
    from adaptbench.runner.train import RunPlace

    executor = SlurmExecutor(settings("local"))
    with pytest.raises(AdaptbenchError, match="s3://bucket/results is not a folder"):
        executor._folder(CellJob("cell", config=None, place=RunPlace(out_dir="s3://bucket/results")))


def test_without_submitit_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(AdaptbenchError) as caught:
        SlurmExecutor(settings("local"))
    assert str(caught.value) == 'executor slurm needs submitit: pip install "adaptbench[slurm]"'


def test_the_task_resumes_its_cell_and_checkpoints_as_itself():
    from adaptbench.runner.jobs import CellJob
    from adaptbench.runner.train import RunPlace

    task = CellTask(CellJob("cell", config=None, place=RunPlace(out_dir="/results")), cpus=3)
    assert task.job.place.resume is True and task.cpus == 3
    again = task.checkpoint()
    assert isinstance(again, submitit.helpers.DelayedSubmission) and again.function is task


def test_slurm_is_a_builtin_found_without_import():
    from adaptbench import _catalogue

    assert _catalogue.builtins("executor")["slurm"][0] == "adaptbench.runner.executors.slurm:SlurmExecutor"


# -- whole runs ----------------------------------------------------------------------------------
def test_micro_matrix_runs_and_a_killed_cell_is_retried_then_recorded_failed(
        tmp_path, faulty_plugin, fast_slurm_results):
    from adaptbench.runner.matrix import MatrixOptions, MatrixRun
    from adaptbench.runner.spec import load_spec

    cluster = MATRIX_CLUSTER
    (tmp_path / "spec.yaml").write_text(textwrap.dedent(SPEC).lstrip())
    spec = load_spec(tmp_path / "spec.yaml")
    options = MatrixOptions(out=tmp_path / "results", leaderboard=False, plugin_files=(faulty_plugin,))
    executor = SlurmExecutor(settings(cluster, workers=3))  # on 2 CPUs Slurm runs 2, the third waits
    summary = MatrixRun(spec, options, executor=executor, console=Console(quiet=True)).run()

    cells = records(tmp_path / "results")
    assert (summary.succeeded, summary.failed) == (2, 1), cells
    assert cells["linear"]["status"] == "success" and cells["bitfit"]["status"] == "success"
    assert cells["fault"]["status"] == "failed"
    assert f"{cluster} job" in cells["fault"]["error"] and "died while running this cell" in cells["fault"]["error"]
    assert "(2 tries)" in cells["fault"]["error"]
    assert not list((tmp_path / "results" / ".leases").glob("*.json"))  # every lease released


def run_and_preempt(executor, job, preempt) -> tuple[list, list]:
    """Run ``job``; once the cell has saved its first resume checkpoint (an epoch done),
    ``preempt(job id, worker pid)`` once. as_completed is read in short slices, so the test
    acts between them."""
    from adaptbench.runner.store import ResultStore

    store = ResultStore.at(job.place.out_dir)
    executor.submit(job)
    events, outcomes, preempted = [], [], False
    deadline = time.monotonic() + 240
    while executor.pending and time.monotonic() < deadline:
        outcomes += list(executor.as_completed(events.append, timeout=0.2))
        lease = store.lease(job.cell_id)
        if not preempted and lease is not None and list(Path(store.path(".resume")).glob("*/last.ckpt")):
            preempt(next(iter(executor._submitted)), lease.pid)
            preempted = True
    assert preempted, "the cell finished before it could be preempted"
    return events, outcomes


def resumed_from_epoch(tmp_path: Path) -> int:
    (record,) = [json.loads(path.read_text()) for path in (tmp_path / "results").glob("*.json")]
    assert record["train_info"]["status"] == "success", record["train_info"]
    return record["train_info"]["timings"].get("resumed_from_epoch", 0)


def micro_job(tmp_path: Path, epochs: int = 12):
    """A bitfit cell: its epochs (~0.2 s each) leave time to preempt it after its first one."""
    from adaptbench.config import RunConfig
    from adaptbench.runner.jobs import CellJob
    from adaptbench.runner.train import RunPlace, cell_id

    config = RunConfig(backbone="vit_tiny_test", task="micro/texture", adapter="bitfit", epochs=epochs,
                       batch_size=100).for_accelerator("auto")  # as the matrix makes a cell's: its id is its record's
    return CellJob(cell_id(config), config, RunPlace(out_dir=str(tmp_path / "results")))


def job_log(tmp_path: Path) -> str:
    return "".join(path.read_text() for path in (tmp_path / "results" / ".slurm").glob("*_log.out"))


def test_a_preempted_cell_is_requeued_runs_again_and_succeeds(tmp_path, monkeypatch):
    """submitit's preemption signal (USR2) to the job: it checkpoints and requeues itself, and
    the cell resumes from its adapter-only checkpoint."""
    from adaptbench.runner.executors import slurm

    executor, job = SlurmExecutor(settings("local")), micro_job(tmp_path)
    events, outcomes = run_and_preempt(executor, job, lambda job_id, pid: os.kill(pid, signal.SIGUSR2))
    assert [o.status for o in outcomes] == ["success"], outcomes
    assert job_log(tmp_path).count(f"adaptbench: cell {job.cell_id} start") == 2  # ran twice, in one job
    assert [e.kind for e in events] == ["start"]  # the job's process stayed up: submitit restarted its task
    assert resumed_from_epoch(tmp_path) >= 1

    # Requeued once more after it succeeded (a preemption as it finished), the job does not train again.
    monkeypatch.setattr(slurm, "execute_cell", lambda *args: pytest.fail("the finished cell ran again"))
    assert CellTask(job)() == slurm.CellOutcome(job.cell_id, "success", score=outcomes[0].score)


def release_requeue_hold(job_id: str, within_s: float = 30.0) -> None:
    """Slurm holds a requeued job for two minutes (its BeginTime): let it start again now."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        listing = subprocess.run(["squeue", "--noheader", "--format=%T %r", f"--jobs={job_id}"],
                                 capture_output=True, text=True).stdout.split()
        if listing == ["PENDING", "BeginTime"]:
            subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True)
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} was not held for its BeginTime after the requeue")


@needs_slurm
def test_scontrol_requeue_runs_the_cell_again_to_success(tmp_path):
    """A preemption as Slurm does it: the running job is killed and put back in the queue; the
    cell resumes from its adapter-only checkpoint."""
    def requeue(job_id: str, pid: int) -> None:
        subprocess.run(["scontrol", "requeue", job_id], check=True)
        release_requeue_hold(job_id)

    executor = SlurmExecutor(settings("slurm"))
    job = micro_job(tmp_path)
    events, outcomes = run_and_preempt(executor, job, requeue)
    assert [o.status for o in outcomes] == ["success"], outcomes
    assert job_log(tmp_path).count(f"adaptbench: cell {job.cell_id} start") == 2
    assert [e.kind for e in events] == ["start", "start"]  # seen running before and after the requeue
    assert resumed_from_epoch(tmp_path) >= 1


def test_close_with_pending_jobs_cancels_them(tmp_path):
    """Ctrl-C in the driver: close() while a cell runs stops its job, even one that ignores
    SIGINT (started from a background shell: ``nohup adaptbench run ... &``)."""
    executor = SlurmExecutor(settings("local"))
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the job inherits it
    try:
        executor.submit(micro_job(tmp_path, epochs=1))
        assert list(executor.as_completed(lambda event: None, timeout=0.5)) == []
    finally:
        signal.signal(signal.SIGINT, previous)
    (handle,) = [submitted.handle for submitted in executor._submitted.values()]
    executor.close()
    assert executor.pending == 0
    for _ in range(100):
        if handle.state != "RUNNING":
            break
        time.sleep(0.1)
    assert handle.state != "RUNNING"
