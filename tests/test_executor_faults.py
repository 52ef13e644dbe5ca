"""One fault suite for every executor, parametrized over them like the adapter conformance
suite is over adapters: the driver killed with ``kill -9`` again and again and then resumed, a
worker killed mid-cell, NaN and out-of-memory cells, and a cell preempted mid-training.

Each test runs ``adaptbench run`` with the executor named in the spec's ``executor:`` block: a
driver to be killed in a subprocess of its own, one that runs to the end in this process (its
workers are processes of their own either way). Ray runs a real local cluster (``ray.init``), Slurm runs through
submitit's local cluster (``options: {cluster: local}``: the same submitit code path, jobs as
local processes), or the real Slurm that ``.ci/slurm_up.sh`` starts when
``ADAPTBENCH_SLURM_FAULTS=1``.

``ADAPTBENCH_FAULT_KILLS`` sets how many times the driver is killed (CI: 2, for time;
``benchmarks/fault_suite.py`` runs 20 per executor and prints the figures). Every driver or
worker process start costs seconds of imports, so CI runs every test on the local executor and, of the
remote ones, the tests that exercise what is theirs alone: Ray's actors resuming a preempted
cell, and Slurm jobs outliving a killed driver. ``ADAPTBENCH_FAULT_EXECUTORS=all`` runs the
whole matrix of tests x executors.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import adaptbench

FAULTY_PLUGIN = Path(__file__).parent / "plugins" / "faulty_plugin.py"
KILLS = int(os.environ.get("ADAPTBENCH_FAULT_KILLS", "2"))


def _executor_block(name: str) -> str | None:
    """The spec's executor block for ``name``; None when its engine is not installed here. Every
    cell gets one CPU thread everywhere, so runs on different executors compute the same floats."""
    if name == "local":
        return "{name: local, workers: 2, cpus_per_cell: 1}"
    if name == "ray":
        return "{name: ray, workers: 2, cpus_per_cell: 1}" if importlib.util.find_spec("ray") else None
    if name == "slurm":
        if not importlib.util.find_spec("submitit"):
            return None
        # real Slurm only when asked: CI's real cluster serves test_executor_slurm.py, in its time budget
        cluster = "" if os.environ.get("ADAPTBENCH_SLURM_FAULTS") == "1" else ", options: {cluster: local}"
        return ("{name: slurm, workers: 2, cpus_per_cell: 1, time_limit_min: 30, heartbeat_s: 2, lease_timeout_s: 20"
                + cluster + "}")
    raise ValueError(name)


EXECUTORS = ["local", "ray", "slurm"]
#: the (test, executor) pairs CI runs beyond the local executor (see the module docstring)
CI_REMOTE = {("preempted", "ray"), ("driver_killed", "slurm")}


def executor_for(test: str, name: str) -> str:
    """The executor block for one parametrized test, or a skip saying why not here."""
    if os.environ.get("ADAPTBENCH_FAULT_EXECUTORS") != "all" and name != "local" and (test, name) not in CI_REMOTE:
        pytest.skip(f"{test} on {name}: run with ADAPTBENCH_FAULT_EXECUTORS=all (CI runs it on local)")
    block = _executor_block(name)
    if block is None:
        pytest.skip(f"executor {name}: its engine is not installed")
    return block


def write_spec(folder: Path, executor: str, body: str) -> Path:
    path = folder / "spec.yaml"
    path.write_text(textwrap.dedent(body).lstrip() + f"executor: {executor}\nout: results\n")
    return path


def run_driver(spec: Path, *extra: str) -> subprocess.CompletedProcess:
    """``adaptbench run`` to the end, in this process (only its workers need processes of their
    own here; a driver to be killed is started by :func:`start_driver`)."""
    return adaptbench("--plugin", str(FAULTY_PLUGIN), "run", str(spec), "--no-leaderboard", *extra,
                      cwd=spec.parent, check_rc=None)


def start_driver(spec: Path) -> subprocess.Popen:
    """``adaptbench run`` in a process of its own, to be killed."""
    return subprocess.Popen([sys.executable, "-m", "adaptbench.cli", "--plugin", str(FAULTY_PLUGIN), "run", str(spec),
                             "--no-leaderboard"], cwd=spec.parent, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=False)


def read_records(folder: Path) -> dict[str, dict]:
    """Every record file, parsed (a file that does not parse fails the test: a corrupt record)."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}


def metrics_of(record: dict) -> dict:
    info = record["train_info"]
    return {split: values for split, values in info["metrics"].items()}


# -- 1. the driver killed again and again --------------------------------------------------
KILL_MATRIX = """
    backbones: [vit_tiny_test]
    tasks: [micro/texture]
    adapters:
      - linear
      - {name: bitfit, grid: {lr: [0.001, 0.01]}}
      - ln
    train: {epochs: 2, batch_size: 100}
"""
KILL_CELLS = 5  # linear, 2 bitfit tune + 1 bitfit final, ln


@dataclass
class KillReport:
    """What ``kill_and_resume`` saw: how often the driver was killed, and what went wrong."""

    kills: int = 0
    records: int = 0
    lost: list[str] = field(default_factory=list)  # expected but absent after the resume
    duplicated: list[str] = field(default_factory=list)  # rewritten after they were first written
    corrupt: list[str] = field(default_factory=list)  # not parseable, or not a success
    different: list[str] = field(default_factory=list)  # metrics differ from an uninterrupted run
    wall_s: float = 0.0


def kill_and_resume(folder: Path, executor: str, kills: int, reference: dict[str, dict], seed: int = 0) -> KillReport:
    """Kill the driver ``kills`` times at random moments, then let it finish; compare with
    ``reference`` (the records of an uninterrupted run, by cell id)."""
    rng = random.Random(seed)
    spec = write_spec(folder, executor, KILL_MATRIX)
    out = folder / "results"
    report, first_seen = KillReport(), {}
    started = time.monotonic()
    for _ in range(kills):
        driver = start_driver(spec)
        time.sleep(rng.uniform(1.0, 10.0))
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        report.kills += 1
        _note_records(out, first_seen, report)
    finished = run_driver(spec)
    assert finished.returncode == 0, finished.stderr[-2000:]
    _note_records(out, first_seen, report)
    report.wall_s = time.monotonic() - started
    found = {}
    for path in sorted(out.glob("*.json")):
        try:
            found[path.stem] = json.loads(path.read_text())
        except ValueError:
            report.corrupt.append(path.name)
    report.records = len(found)
    report.lost = sorted(set(reference) - set(found))
    for cell_id, record in found.items():
        if record["train_info"]["status"] != "success":
            report.corrupt.append(cell_id)
        elif cell_id in reference and metrics_of(record) != metrics_of(reference[cell_id]):
            report.different.append(cell_id)
    return report


def _note_records(out: Path, first_seen: dict[str, bytes], report: KillReport) -> None:
    """A record that changes after it first appeared was run twice: a duplicate."""
    for path in out.glob("*.json"):
        content = path.read_bytes()
        if path.stem not in first_seen:
            first_seen[path.stem] = content
        elif first_seen[path.stem] != content and path.stem not in report.duplicated:
            report.duplicated.append(path.stem)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, dict]:
    """The kill matrix run once, start to end, on the local executor: the reference records."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    spec = write_spec(folder, _executor_block("local"), KILL_MATRIX)
    result = run_driver(spec)
    assert result.returncode == 0, result.stderr[-2000:]
    found = read_records(folder / "results")
    assert len(found) == KILL_CELLS
    return found


@pytest.mark.parametrize("name", EXECUTORS)
def test_driver_killed_at_random_then_resumed_loses_duplicates_and_corrupts_nothing(tmp_path, name, uninterrupted):
    executor = executor_for("driver_killed", name)
    report = kill_and_resume(tmp_path, executor, KILLS, uninterrupted)
    assert report.kills == KILLS and report.records == KILL_CELLS
    assert (report.lost, report.duplicated, report.corrupt, report.different) == ([], [], [], []), report
    assert not list((tmp_path / "results").glob(".*.tmp")), "a half-written file was left"
    leases = tmp_path / "results" / ".leases"
    assert not leases.exists() or not list(leases.iterdir()), "a finished cell kept its lease"


# -- 2. failures recorded while the matrix goes on --------------------------------------------
FAILURE_MATRIX = """
    backbones: [vit_tiny_test]
    tasks: [micro/texture]
    adapters:
      - linear
      - {name: fault, label: fault_nan, options: {mode: nan}}
      - {name: fault, label: fault_oom, options: {mode: oom}}
      - {name: fault, label: fault_kill, options: {mode: kill}}
      - bitfit
    train: {epochs: 1, batch_size: 250}
"""


@pytest.mark.parametrize("name", EXECUTORS)
def test_nan_out_of_memory_and_killed_workers_are_recorded_failed_and_the_matrix_goes_on(tmp_path, name):
    executor = executor_for("failures", name)
    spec = write_spec(tmp_path, executor, FAILURE_MATRIX)
    result = run_driver(spec)
    assert result.returncode == 1 and "3 of 5 cells failed" in result.stderr, result.stderr[-2000:]
    cells = {r["run_info"]["matrix"]["adapter_label"]: r["train_info"] for r in read_records(tmp_path / "results").values()}
    assert cells["linear"]["status"] == cells["bitfit"]["status"] == "success"
    assert cells["fault_nan"]["status"] == "failed" and "loss is nan" in cells["fault_nan"]["error"]
    assert cells["fault_oom"]["status"] == "failed" and "allocate" in cells["fault_oom"]["error"]
    killed = cells["fault_kill"]
    assert killed["status"] == "failed" and "died" in killed["error"] and "2 tries" in killed["error"], killed["error"]


# -- 3. a cell preempted mid-training resumes from its checkpoint --------------------------------
PREEMPT_MATRIX = """
    backbones: [vit_tiny_test]
    tasks: [micro/texture]
    adapters: [bitfit]
    train: {epochs: 4, batch_size: 100}
"""


@pytest.fixture(scope="module")
def never_preempted(tmp_path_factory) -> tuple[str, dict]:
    """The preemption matrix's one cell run start to end on the local executor: (id, record)."""
    folder = tmp_path_factory.mktemp("never_preempted")
    result = run_driver(write_spec(folder, _executor_block("local"), PREEMPT_MATRIX))
    assert result.returncode == 0, result.stderr[-2000:]
    (cell_id, record), = read_records(folder / "results").items()
    return cell_id, record


@pytest.mark.parametrize("name", EXECUTORS)
def test_a_cell_preempted_mid_training_resumes_from_its_checkpoint_with_the_same_metrics(tmp_path, name,
                                                                                      never_preempted):
    from adaptbench.runner.store import ResultStore

    executor = executor_for("preempted", name)
    cell_id, expected = never_preempted

    spec = write_spec(tmp_path, executor, PREEMPT_MATRIX)
    store = ResultStore.at(tmp_path / "results")
    driver = start_driver(spec)
    checkpoint = Path(store.resume_location(cell_id)) / "last.ckpt"
    deadline = time.monotonic() + 300
    while not checkpoint.is_file() and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.05)
    lease = store.lease(cell_id)
    assert checkpoint.is_file() and lease is not None, "the cell never wrote a resume checkpoint"
    os.kill(lease.pid, signal.SIGKILL)  # the process running the cell is preempted
    assert driver.wait(timeout=600) == 0  # the executor runs the cell again: it resumes
    (record,) = read_records(tmp_path / "results").values()
    info = record["train_info"]
    assert info["status"] == "success" and info["timings"].get("resumed_from_epoch", 0) >= 1, info["timings"]
    assert metrics_of(record) == metrics_of(expected)
    assert not checkpoint.exists()  # deleted once the record was written
