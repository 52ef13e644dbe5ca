"""``adaptbench run`` end to end, as a user runs it (the CLI in this process, its workers in their
own; ``--dry-run`` through the entry point in a subprocess): resume, retries,
failures recorded while the matrix goes on, ``--dry-run`` and ``validate``. The faults every
executor must survive (a worker killed mid-cell, NaN and out-of-memory cells, the runner
killed with SIGKILL again and again, preemption) are in ``test_executor_faults.py``,
parametrized over the executors.

Cells are tiny (the 2-block test ViT, one epoch) so each test takes seconds.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from helpers import adaptbench

FAULTY_PLUGIN = Path(__file__).parent / "plugins" / "faulty_plugin.py"


def write_spec(folder: Path, body: str, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body).lstrip())
    return path


def records(folder: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}


def by_label(found: dict[str, dict]) -> dict[tuple, dict]:
    return {(r["run_info"]["matrix"]["adapter_label"], r["run_info"]["config"]["task"],
             r["run_info"]["config"]["seed"], r["run_info"]["config"]["stage"],
             json.dumps(r["run_info"]["matrix"].get("grid_point"))): r for r in found.values()}


MATRIX = """
    name: tiny
    backbones: [vit_tiny_test]
    tasks: [micro/texture, micro/count]
    adapters:
      - linear
      - name: bitfit
        grid: {lr: [0.001, 0.01]}
      - name: fault
        label: fault_raise
        options: {mode: raise}
      - name: fault
        label: fault_nan
        options: {mode: nan}
    seeds: 1
    train: {epochs: 1, batch_size: 250}
    out: results
    leaderboard: {out: boards, formats: [md, csv]}
"""


def test_failed_cells_are_recorded_the_matrix_goes_on_and_a_rerun_repeats_nothing(tmp_path):
    spec = write_spec(tmp_path, MATRIX)
    first = adaptbench("--plugin", str(FAULTY_PLUGIN), "run", str(spec), cwd=tmp_path, check_rc=1)
    assert "4 of 12 cells failed" in first.stderr
    found = records(tmp_path / "results")
    assert len(found) == 12  # 2 tasks x (linear + 2 bitfit tune + bitfit final + 2 faults)
    cells = by_label(found)
    for task in ("micro/texture", "micro/count"):
        raised = cells[("fault_raise", task, 0, "final", "null")]["train_info"]
        assert raised["status"] == "failed" and "deliberate failure" in raised["error"]
        nan = cells[("fault_nan", task, 0, "final", "null")]["train_info"]
        assert nan["status"] == "failed" and "training loss is nan" in nan["error"]
        assert cells[("linear", task, 0, "final", "null")]["train_info"]["status"] == "success"
        final = cells[("bitfit", task, 0, "final", "null")]
        tune = [cells[("bitfit", task, 0, "tune", json.dumps({"lr": lr}))] for lr in (0.001, 0.01)]
        assert all(t["train_info"]["data"]["eval_split"] == "val200" for t in tune)
        scores = [t["train_info"]["metrics"]["val200"]["top1"] for t in tune]
        best = tune[0] if scores[0] >= scores[1] else tune[1]
        assert final["run_info"]["config"]["lr"] == best["run_info"]["config"]["lr"]
        assert final["run_info"]["matrix"]["selection"]["chosen_run_id"] == best["run_info"]["run_id"]
        assert final["train_info"]["data"]["eval_split"] == "test"
    board = (tmp_path / "boards" / "tiny.md").read_text()
    assert "failed" in board and "bitfit" in board
    assert (tmp_path / "boards" / "tiny.csv").is_file()

    # A re-run finds every record: nothing runs, nothing is rewritten.
    stamps = {path.name: path.stat().st_mtime_ns for path in (tmp_path / "results").glob("*.json")}
    again = adaptbench("--plugin", str(FAULTY_PLUGIN), "run", str(spec), "--no-leaderboard", cwd=tmp_path, check_rc=1)
    assert "0 run now, 12 found done" in again.stdout.replace("\n", " ")
    assert stamps == {path.name: path.stat().st_mtime_ns for path in (tmp_path / "results").glob("*.json")}

    # --retry-failed runs the failed cells only.
    retried = adaptbench("--plugin", str(FAULTY_PLUGIN), "run", str(spec), "--retry-failed", "--no-leaderboard",
                         cwd=tmp_path, check_rc=1)
    assert "4 run now, 8 found done" in retried.stdout.replace("\n", " ")
    changed = {name for name, stamp in stamps.items()
               if (tmp_path / "results" / name).stat().st_mtime_ns != stamp}
    assert changed == {f"{k}.json" for k, r in found.items() if r["train_info"]["status"] == "failed"}


def test_dry_run_lists_cells_and_runs_nothing(tmp_path):
    spec = write_spec(tmp_path, """
        backbones: [vit_tiny_test]
        tasks: [micro/digits]
        adapters: [linear, {name: lora, grid: {lr: [0.001, 0.01]}}]
        seeds: [0, 1]
        out: results
    """)
    result = adaptbench("run", str(spec), "--dry-run", cwd=tmp_path, in_process=False)  # the entry point itself
    text = result.stdout
    assert "6 cells" in text and text.count("tune") == 2 and "(after search)" in text
    assert not (tmp_path / "results").exists()


def test_validate_reports_missing_data_and_weights_and_run_refuses(tmp_path):
    spec = write_spec(tmp_path, """
        backbones:
          - {name: vit_tiny_test}
          - {name: "timm:vit_tiny_patch16_224", weights: missing/weights.safetensors}
        tasks: [vtab1k/dtd, micro/digits]
        adapters: [linear, {name: lora, options: {r: 4}}]
        data_root: no-such-root
    """)
    result = adaptbench("validate", str(spec), cwd=tmp_path, check_rc=2)
    assert "2 of 6 checks failed" in result.stderr
    assert result.stderr.count("\n") == 1  # one line
    table = result.stdout
    assert "weights file missing/weights.safetensors does not exist" in table
    assert "no-such-root/dtd does not exist" in table
    assert "embedded" in table
    refused = adaptbench("run", str(spec), cwd=tmp_path, check_rc=2)
    assert "weights file missing/weights.safetensors does not exist" in refused.stderr
    assert not (tmp_path / "results").exists()


def test_a_bad_adapter_option_or_grid_option_names_its_line(tmp_path):
    spec = write_spec(tmp_path, "backbones: [vit_tiny_test]\ntasks: [micro/digits]\n"
                                "adapters:\n  - {name: lora, options: {r: 0}}\n")
    result = adaptbench("validate", str(spec), cwd=tmp_path, check_rc=2)
    assert "spec.yaml:4: adapters[0].options.r: lora option r=0: expected an integer >= 1" in result.stderr
    spec = write_spec(tmp_path, "backbones: [vit_tiny_test]\ntasks: [micro/digits]\nadapters: [lora]\n"
                                "grid:\n  options.rank: [4, 8]\n")
    result = adaptbench("run", str(spec), cwd=tmp_path, check_rc=2)
    assert "spec.yaml:5: grid.options.rank: adapter 'lora' has no option 'rank'" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("workers", ["0", "x"])
def test_bad_worker_counts_are_refused(tmp_path, workers):
    spec = write_spec(tmp_path, "backbones: [vit_tiny_test]\ntasks: [micro/digits]\nadapters: [linear]\n")
    result = adaptbench("run", str(spec), "--workers", workers, cwd=tmp_path, check_rc=2)
    assert "workers" in result.stderr


def test_local_workers_take_the_environment_of_the_run_that_starts_them(tmp_path, monkeypatch):
    """Workers fork from a server process that keeps the environment and folder of the moment
    it started (an earlier matrix in this process): each run's workers take the runner's own."""
    from adaptbench.api import plan_matrix

    spec = write_spec(tmp_path, """
        backbones: [vit_tiny_test]
        tasks: [micro/texture]
        adapters: [linear]
        train: {epochs: 1, batch_size: 250}
    """)
    for run in ("first", "second"):
        folder = tmp_path / run
        folder.mkdir()
        monkeypatch.chdir(folder)
        monkeypatch.setenv("ADAPTBENCH_CACHE", str(folder / "cache"))
        summary = plan_matrix(spec, out="results", executor="local", leaderboard=False).run()
        assert summary.succeeded == 1
        assert list((folder / "results").glob("*.json"))  # the store: relative to this run's folder
        assert list((folder / "cache").glob("decoded/*")), f"the {run} run's worker decoded elsewhere"
