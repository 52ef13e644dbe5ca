"""The result store (absolute locations, fsspec URLs, leases with heartbeats) and the matrix's
per-search-group scheduling, in-process with a scripted executor (no training)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adaptbench.config import ExecutorSettings
from adaptbench.runner.cells import Cell
from adaptbench.runner.executors import Executor
from adaptbench.runner.jobs import CellJob, CellOutcome
from adaptbench.runner.matrix import MatrixOptions, MatrixRun
from adaptbench.runner.spec import load_spec
from adaptbench.runner.store import Lease, ResultStore
from adaptbench.runner.train import start_record


def _record(config, score: float = 0.5):
    record = start_record(config)
    record.mark_success(metrics={"val200": {"top1": score}, "test": {"top1": score}}, primary_metric="top1",
                        higher_is_better=True, data={"eval_split": "test" if config.stage == "final" else "val200"})
    return record


# -- locations --------------------------------------------------------------------------------
def test_a_relative_location_is_made_absolute_where_the_driver_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = ResultStore.at("results/micro")
    assert store.location == str(tmp_path / "results" / "micro") and store.is_local
    assert ResultStore.at("s3://bucket/results/").location == "s3://bucket/results"


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "fsspec-url"])
def test_records_and_files_go_through_one_store_for_paths_and_urls(tmp_path, as_url):
    from adaptbench.config import RunConfig

    location = f"file://{tmp_path}/store" if as_url else str(tmp_path / "store")
    store = ResultStore.at(location)
    config = RunConfig(task="micro/texture", backbone="vit_tiny_test", adapter="linear")
    record = _record(config)
    assert store.read_record(record.run_id) is None and not store.has_record(record.run_id)
    written = store.write_record(record)
    assert written == store.record_location(record.run_id) and store.has_record(record.run_id)
    assert store.read_record(record.run_id).primary_score() == 0.5
    assert [Path(found).name for found in store.record_locations()] == [f"{record.run_id}.json"]
    with store.local_copy_to(store.adapter_location(record.run_id)) as temporary:
        temporary.write_bytes(b"weights")
    assert (tmp_path / "store" / f"{record.run_id}.adapter.safetensors").read_bytes() == b"weights"
    assert not [p for p in (tmp_path / "store").iterdir() if p.name.endswith(".tmp")]  # nothing half-written


def test_an_unreadable_record_counts_as_none_so_the_cell_runs_again(tmp_path):
    store = ResultStore.at(tmp_path)
    (tmp_path / "abc.json").write_text("{not json")
    assert store.read_record("abc") is None


# -- leases -----------------------------------------------------------------------------------
def _other_process() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _write_lease(store: ResultStore, cell_id: str, **fields) -> None:
    lease = {"cell_id": cell_id, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time(),
             "holder": "worker", **fields}
    store.write_bytes(store.lease_location(cell_id), json.dumps(lease).encode())


def test_a_fresh_lease_of_a_live_process_is_respected_and_a_dead_ones_taken_over(tmp_path):
    store = ResultStore.at(tmp_path)
    assert store.take_lease("c1", timeout_s=60) is None  # free: now ours
    assert store.lease("c1").pid == os.getpid() and store.lease("c1").holder == "driver"
    other = _other_process()
    try:
        _write_lease(store, "c2", pid=other.pid)
        held = store.take_lease("c2", timeout_s=60)
        assert isinstance(held, Lease) and held.pid == other.pid  # still running elsewhere: not ours
    finally:
        other.kill()
        other.wait()
    assert store.take_lease("c2", timeout_s=60) is None  # its holder is gone: taken over at once
    assert store.lease("c2").pid == os.getpid()


def test_a_lease_from_another_host_is_stale_only_after_its_timeout(tmp_path):
    store = ResultStore.at(tmp_path)
    _write_lease(store, "c", host="node-17", pid=1, heartbeat=time.time() - 30)
    assert store.take_lease("c", timeout_s=60) is not None  # renewed 30 s ago: alive
    _write_lease(store, "c", host="node-17", pid=1, heartbeat=time.time() - 90)
    assert store.take_lease("c", timeout_s=60) is None  # silent for 90 s > 60 s: taken over


def test_a_running_cell_renews_its_lease_and_releases_it_when_done(tmp_path):
    store = ResultStore.at(tmp_path)
    with store.keep_lease("c", heartbeat_s=0.05):
        first = store.lease("c").heartbeat
        time.sleep(0.3)
        assert store.lease("c").heartbeat > first
    assert store.lease("c") is None


def test_executor_settings_refuse_a_lease_timeout_within_one_heartbeat():
    with pytest.raises(ValueError, match="lease_timeout_s"):
        ExecutorSettings(heartbeat_s=30, lease_timeout_s=20)


# -- scheduling per search group ----------------------------------------------------------------
class ScriptedExecutor(Executor):
    """Finishes jobs one at a time in submission order, writing a success record for each;
    logs every submit and completion."""

    name = "scripted"

    def __init__(self, settings=None, scores=None):
        super().__init__(settings)
        self.queue: list[CellJob] = []
        self.log: list[tuple[str, str]] = []
        self.scores = scores or {}

    @property
    def pending(self) -> int:
        return len(self.queue)

    def submit(self, job: CellJob) -> None:
        self.log.append(("submit", job.cell_id))
        self.queue.append(job)

    def as_completed(self, on_event, timeout=None) -> Iterator[CellOutcome]:
        while self.queue:
            job = self.queue.pop(0)
            score = self.scores.get(job.config.lr, 0.5)
            ResultStore.at(job.place.out_dir).write_record(_record(job.config, score))
            self.log.append(("done", job.cell_id))
            yield CellOutcome(job.cell_id, "success", score=score)


def _spec(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(body).lstrip())
    return path


SEARCHES = """
    backbones: [vit_tiny_test]
    tasks: [micro/texture, micro/count]
    adapters: [{name: bitfit, grid: {lr: [0.001, 0.01]}}]
    train: {epochs: 1, batch_size: 250}
"""


def _ids(cells: list[Cell]) -> list[str]:
    return [cell.cell_id for cell in cells]


def test_a_groups_final_cells_are_submitted_when_its_own_tune_cells_finish(tmp_path):
    spec = load_spec(_spec(tmp_path, SEARCHES))
    executor = ScriptedExecutor(scores={0.001: 0.4, 0.01: 0.6})
    run = MatrixRun(spec, MatrixOptions(out=tmp_path / "results", leaderboard=False), executor=executor)
    summary = run.run()
    assert summary.succeeded == 6 and summary.ran == 6
    texture, count = run.groups
    texture_final = _ids(run.final_cells_of(texture)[0])[0]
    count_tune = _ids(count.tune_cells())
    log = executor.log
    # texture's final is submitted right after texture's own search, before count's search finished
    assert log.index(("submit", texture_final)) < log.index(("done", count_tune[0]))
    assert run.final_cells_of(texture)[0][0].config.lr == 0.01  # the better point was chosen
    assert all(Path(path).is_absolute() for path in summary.final_records)


def test_a_cell_leased_by_a_live_runner_is_not_launched_but_waited_for(tmp_path):
    spec = load_spec(_spec(tmp_path, """
        backbones: [vit_tiny_test]
        tasks: [micro/texture]
        adapters: [linear, bitfit]
        train: {epochs: 1, batch_size: 250}
    """))
    store = ResultStore.at(tmp_path / "results")
    run = MatrixRun(spec, MatrixOptions(out=store.location, leaderboard=False), executor=ScriptedExecutor())
    linear = run.final_cells_of(run.groups[0])[0][0]
    holder = _other_process()  # another runner, still running the linear cell
    _write_lease(store, linear.cell_id, pid=holder.pid)

    def finish_elsewhere():
        time.sleep(1.5)
        store.write_record(_record(linear.config, 0.77))
        holder.kill()

    thread = threading.Thread(target=finish_elsewhere)
    thread.start()
    summary = run.run()
    thread.join()
    holder.wait()
    submitted = [cell_id for event, cell_id in run.executor.log if event == "submit"]
    assert linear.cell_id not in submitted and len(submitted) == 1  # only bitfit ran here
    assert summary.succeeded == 2 and summary.ran == 1
    assert store.read_record(linear.cell_id).primary_score() == 0.77


def test_a_stale_lease_is_taken_over_and_its_cell_runs(tmp_path):
    spec = load_spec(_spec(tmp_path, """
        backbones: [vit_tiny_test]
        tasks: [micro/texture]
        adapters: [linear]
        train: {epochs: 1, batch_size: 250}
    """))
    store = ResultStore.at(tmp_path / "results")
    run = MatrixRun(spec, MatrixOptions(out=store.location, leaderboard=False), executor=ScriptedExecutor())
    linear = run.final_cells_of(run.groups[0])[0][0]
    _write_lease(store, linear.cell_id, host="gone-node", pid=1, heartbeat=time.time() - 3600)
    assert run.run().ran == 1


def test_the_spec_executor_block_is_checked_and_the_command_line_overrides_it(tmp_path):
    from adaptbench.errors import AdaptbenchError
    from adaptbench.runner.matrix import executor_settings

    spec = load_spec(_spec(tmp_path, textwrap.dedent(SEARCHES) + "executor: {name: local, workers: 3, heartbeat_s: 5}\n"))
    assert executor_settings(spec, MatrixOptions()).workers == 3
    assert executor_settings(spec, MatrixOptions(workers=2, executor="local")).workers == 2
    with pytest.raises(AdaptbenchError, match=r"spec.yaml:5: executor.name: unknown executor 'lcoal'.*local"):
        load_spec(_spec(tmp_path, textwrap.dedent(SEARCHES) + "executor: {name: lcoal}\n"))
    with pytest.raises(AdaptbenchError, match=r"spec.yaml:5: executor.gpus_per_cell: expected"):
        load_spec(_spec(tmp_path, textwrap.dedent(SEARCHES) + "executor: {gpus_per_cell: many}\n"))


def test_the_leaderboard_reads_records_from_a_store_url(tmp_path):
    from adaptbench.config import RunConfig
    from adaptbench.leaderboard.records import load_records

    store = ResultStore.at(f"file://{tmp_path}/store")
    config = RunConfig(task="micro/texture", backbone="vit_tiny_test", adapter="linear")
    store.write_record(_record(config))
    store.hold_lease("x")  # the hidden lease folder is not read as records
    (loaded,) = load_records([store.location])
    assert loaded.run_id == _record(config).run_id


def test_a_plugin_executor_is_chosen_by_name_and_runs_the_matrix(tmp_path):
    from adaptbench.api import plan_matrix
    from adaptbench.registry import EXECUTORS, load_plugin_file

    load_plugin_file(Path(__file__).parent / "plugins" / "inline_executor.py")
    assert "inline" in EXECUTORS.names()
    spec = _spec(tmp_path, """
        backbones: [vit_tiny_test]
        tasks: [micro/texture]
        adapters: [linear]
        train: {epochs: 1, batch_size: 250}
    """)
    matrix = plan_matrix(spec, out=tmp_path / "results", executor="inline", leaderboard=False)
    summary = matrix.run()
    assert type(matrix.executor).__name__ == "InlineExecutor" and summary.succeeded == summary.ran == 1
    (record,) = ResultStore.at(tmp_path / "results").record_locations()
    assert json.loads(Path(record).read_text())["train_info"]["timings"]["setup_s"] >= 0


def test_an_unknown_executor_is_one_line_naming_the_known_ones(tmp_path):
    from adaptbench.api import plan_matrix
    from adaptbench.errors import AdaptbenchError

    spec = _spec(tmp_path, SEARCHES)
    with pytest.raises(AdaptbenchError, match=r"unknown executor 'rey' \(did you mean 'ray'\?\); .adaptbench ls executors"):
        plan_matrix(spec, executor="rey")


class QueuedExecutor(ScriptedExecutor):
    """Holds every job 'in a cluster queue' for ``wait_s`` before running it."""

    def __init__(self, wait_s: float):
        super().__init__()
        self.release_at = time.monotonic() + wait_s

    def as_completed(self, on_event, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while time.monotonic() < self.release_at:
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(0.02)
        yield from super().as_completed(on_event, timeout)


def test_the_driver_keeps_the_lease_of_a_cell_waiting_in_a_queue_alive(tmp_path):
    spec = load_spec(_spec(tmp_path, """
        backbones: [vit_tiny_test]
        tasks: [micro/texture]
        adapters: [linear]
        train: {epochs: 1, batch_size: 250}
        executor: {heartbeat_s: 0.1, lease_timeout_s: 0.3}
    """))
    store = ResultStore.at(tmp_path / "results")
    run = MatrixRun(spec, MatrixOptions(out=store.location, leaderboard=False), executor=QueuedExecutor(wait_s=1.5))
    linear = run.final_cells_of(run.groups[0])[0][0]
    ages = []

    def watch():
        while not store.has_record(linear.cell_id):
            if (lease := store.lease(linear.cell_id)) is not None:
                ages.append(time.time() - lease.heartbeat)
            time.sleep(0.02)

    thread = threading.Thread(target=watch)
    thread.start()
    assert run.run().ran == 1
    thread.join()
    assert ages and max(ages) < 0.3, max(ages)  # never stale while queued: another driver would have taken it
