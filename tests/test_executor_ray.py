"""The Ray executor (``runner/executors/ray.py``) on a real local Ray cluster (2 CPUs).

One cluster and one pair of long-lived actors serve the module: cells run straight through
the executor (events, reuse of an actor, an actor lost before its cell started, jobs submitted
while iterating, the timeout), then a micro matrix whose killed cell is retried on a new actor
and then recorded failed; a last matrix runs cells as one-off tasks (``long_lived: false``). Cells are tiny (the 2-block test
ViT, one epoch): most of the time goes to starting Ray and to importing torch and Lightning
in each new worker process.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import textwrap
import time
from pathlib import Path

import pytest
from rich.console import Console

from adaptbench.config import ExecutorSettings
from adaptbench.errors import AdaptbenchError

ray = pytest.importorskip("ray")

from adaptbench.runner.executors.ray import RayExecutor, plan_slots  # noqa: E402

FAULTY_PLUGIN = Path(__file__).parent / "plugins" / "faulty_plugin.py"

SPEC = """
    name: ray_micro
    backbones: [vit_tiny_test]
    tasks: [micro/texture]
    adapters: {adapters}
    seeds: {seeds}
    train: {{epochs: 1, batch_size: 250}}
    out: results
"""


def write_spec(folder: Path, adapters: str, seeds: int = 1):
    from adaptbench.runner.spec import load_spec

    path = folder / "spec.yaml"
    path.write_text(textwrap.dedent(SPEC.format(adapters=adapters, seeds=seeds)).lstrip())
    return load_spec(path)


def run_matrix(spec, out: Path, executor, plugin_files=()):
    from adaptbench.runner.matrix import MatrixOptions, MatrixRun

    options = MatrixOptions(out=out, leaderboard=False, plugin_files=plugin_files)
    return MatrixRun(spec, options, executor=executor, console=Console(file=io.StringIO())).run()


def records(folder: Path) -> dict[str, dict]:
    found = [json.loads(path.read_text()) for path in folder.glob("*.json")]
    return {r["run_info"]["matrix"]["adapter_label"]: r["train_info"] for r in found}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster for the module; its workers use the tests' data cache, offline."""
    cache = tmp_path_factory.getbasetemp() / "adaptbench-cache"  # conftest's folder
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"ADAPTBENCH_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def actors(cluster):
    """Two long-lived actors shared by the tests below (started once: each imports torch)."""
    executor = RayExecutor(ExecutorSettings(name="ray", workers=2))
    yield executor
    executor.close()



# -- without a cluster -------------------------------------------------------------------------
@pytest.mark.parametrize("nodes, chosen, expected", [
    ([{"CPU": 2}], {}, (2, 1, 0.0)),
    ([{"CPU": 2}], {"workers": 1}, (1, 2, 0.0)),
    ([{"CPU": 16}], {"cpus_per_cell": 4}, (4, 4, 0.0)),
    ([{"CPU": 32, "GPU": 4}, {"CPU": 32, "GPU": 4}], {}, (8, 8, 1.0)),
    ([{"CPU": 32, "GPU": 4}], {"gpus_per_cell": 2}, (2, 16, 2)),
    ([{"CPU": 64}, {"CPU": 8, "GPU": 1}], {}, (1, 8, 1.0)),  # a CPU-only head node hosts no cell
])
def test_slots_and_resources_follow_the_cluster(nodes, chosen, expected):
    assert plan_slots(nodes, ExecutorSettings(name="ray", **chosen)) == expected


def test_without_ray_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(AdaptbenchError) as caught:
        RayExecutor(ExecutorSettings(name="ray"))
    assert str(caught.value) == 'executor ray needs the ray package: pip install "adaptbench[ray]"'


def test_bad_ray_init_options_are_one_line():
    if ray.is_initialized():
        pytest.skip("a cluster is up: the executor would join it, not start one")
    executor = RayExecutor(ExecutorSettings(name="ray", options={"colour": 1}))
    with pytest.raises(AdaptbenchError, match="executor ray could not start a local cluster: .*colour"):
        executor.submit(None)
    assert not ray.is_initialized()


def test_ray_is_a_builtin_found_without_import():
    from adaptbench import _catalogue

    assert _catalogue.builtins("executor")["ray"][0] == "adaptbench.runner.executors.ray:RayExecutor"


# -- on the cluster --------------------------------------------------------------------------
def cell_jobs(spec, out: Path):
    """The spec's final cells as the matrix submits them."""
    from adaptbench.runner.cells import search_groups
    from adaptbench.runner.jobs import CellJob
    from adaptbench.runner.train import RunPlace

    place = RunPlace(out_dir=str(out.absolute()), accelerator="cpu")
    cells = [cell for group in search_groups(spec, "cpu") for cell in group.final_cells({})]
    return [CellJob(cell.cell_id, cell.config, place, cell.annotations) for cell in cells]


def test_actors_report_events_are_reused_and_take_jobs_submitted_while_iterating(actors, tmp_path):
    jobs = cell_jobs(write_spec(tmp_path, "[linear]", seeds=3), tmp_path / "results")
    events = []
    actors.submit(jobs[0])
    actors.submit(jobs[1])
    ray.kill(actors._actors[0])  # dies before its cell starts: the cell goes to a new actor, no try counted
    asked = time.monotonic()
    assert list(actors.as_completed(events.append, timeout=0.5)) == []  # the actors are still starting
    assert time.monotonic() - asked < 3 and actors.pending == 2 and actors.slots == 2
    outcomes = []
    for outcome in actors.as_completed(events.append):
        outcomes.append(outcome)
        if len(outcomes) == 1:
            actors.submit(jobs[2])  # as the matrix submits final cells once their search is done
    assert sorted(o.cell_id for o in outcomes) == sorted(job.cell_id for job in jobs)
    assert {o.status for o in outcomes} == {"success"} and actors.pending == 0
    workers = {event.cell_id: event.worker for event in events if event.kind == "start"}
    assert set(workers) == {job.cell_id for job in jobs}
    assert len(set(workers.values())) == 2  # three cells, two actor processes: one ran two cells
    epochs = [(event.cell_id, event.epoch, event.epochs) for event in events if event.kind == "epoch"]
    assert sorted(epochs) == sorted((job.cell_id, 1, 1) for job in jobs)
    assert not actors._lost


def test_micro_matrix_runs_and_a_killed_actor_is_retried_then_recorded_failed(actors, tmp_path, faulty_plugin):
    spec = write_spec(tmp_path, "[linear, bitfit, {name: fault, label: kill, options: {mode: kill}}]")
    summary = run_matrix(spec, tmp_path / "results", actors, plugin_files=(faulty_plugin,))
    found = records(tmp_path / "results")
    assert found["linear"]["status"] == "success" and found["bitfit"]["status"] == "success"
    assert found["kill"]["status"] == "failed"
    assert "Ray worker died" in found["kill"]["error"] and "(2 tries)" in found["kill"]["error"]
    assert (summary.succeeded, summary.failed) == (2, 1)
    assert ray.is_initialized()  # the executor joined the cluster: close() leaves it up


def test_cells_as_one_off_tasks_and_a_killed_task_worker_is_recorded_failed(cluster, tmp_path, faulty_plugin):
    tasks = RayExecutor(ExecutorSettings(name="ray", workers=2, long_lived=False, retries=0))
    spec = write_spec(tmp_path, "[linear, {name: fault, label: kill, options: {mode: kill}}]")
    run_matrix(spec, tmp_path / "results", tasks, plugin_files=(faulty_plugin,))
    found = records(tmp_path / "results")
    assert found["linear"]["status"] == "success"
    assert found["kill"]["status"] == "failed" and "(1 try)" in found["kill"]["error"]
