"""benchmarks/vtab1k_timing.py end to end on one task: the synthetic data is in the layout the
real VTAB-1k reader reads, the real CLI runs on it, and the report holds measured and
extrapolated figures."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "vtab1k_timing.py"
TASKS = ("cifar",)  # the smallest native images (32 pixels): quick to write; one task keeps CI short
TEST_CAP = 16
SPLIT_SIZES = {"train800": 800, "val200": 200, "train800val200": 1000, "test": TEST_CAP}


def load_script():
    spec = importlib.util.spec_from_file_location("vtab1k_timing", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def timed(tmp_path_factory):
    """One run of the script: (module, data root, JSON report)."""
    tmp = tmp_path_factory.mktemp("vtab1k_timing")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADAPTBENCH_CACHE", str(tmp / "cache"))
        timing = load_script()
        root, out = tmp / "data", tmp / "timing.json"
        code = timing.main(["--tasks", *TASKS, "--test-cap", str(TEST_CAP), "--epochs", "1",
                            "--backbone", "vit_micro", "--adapter", "linear", "--data-root", str(root),
                            "--work", str(tmp / "work"), "--cache", str(tmp / "cache"), "--json", str(out)])
    assert code == 0
    return timing, root, json.loads(out.read_text())


def test_data_in_the_vtab1k_layout_read_back_by_the_readers(timed):
    from adaptbench.datasets.vtab import vtab_samples
    from adaptbench.registry import TASKS as REGISTRY
    from adaptbench.tasks.samples import task_samples

    _, root, _ = timed
    for name in TASKS:
        spec = REGISTRY.get(f"vtab1k/{name}")
        for split, size in SPLIT_SIZES.items():
            first = (root / name / f"{split}.txt").read_text().splitlines()[0]
            assert first == f"images/{split}/000000.jpg {first.split()[1]}"
            assert len(list((root / name / "images" / split).glob("*.jpg"))) == size
            samples = vtab_samples(root, name, split, spec.num_classes)  # also checks every file exists
            assert len(samples) == len(task_samples(spec, split, root)) == size
            assert max(label for _, label in samples) < spec.num_classes
        train_labels = [label for _, label in vtab_samples(root, name, "train800val200", spec.num_classes)]
        assert len(set(train_labels)) == spec.num_classes  # every class present


def test_report_holds_measured_and_extrapolated_figures(timed):
    _, _, report = timed
    for name in TASKS:
        measured = report["measured"]["tasks"][f"vtab1k/{name}"]
        assert measured["status"] == "success", measured
        assert measured["train_images_per_s"] > 0
        assert (measured["train_size"], measured["eval_size"], measured["epochs"]) == (1000, TEST_CAP, 1)
        assert report["extrapolated"]["tasks"][f"vtab1k/{name}"]["from"] == "measured"
    extrapolated = report["extrapolated"]
    assert len(extrapolated["all19_tasks"]) == 19
    assert extrapolated["total_s"] > extrapolated["measured_tasks_total_s"] > 0
    assert report["measured"]["cli_wall_s"] >= report["measured"]["cells_wall_s"] > 0
    assert report["assumptions"]


def test_complete_data_is_reused_and_foreign_folders_are_left_alone(timed, tmp_path):
    from adaptbench.errors import AdaptbenchError

    timing, root, _ = timed
    specs = timing.vtab_tasks(list(TASKS))
    assert all(item["reused"] for item in timing.ensure_data(root, specs, TEST_CAP, 2).values())
    (tmp_path / "cifar").mkdir()  # real data, say: never replaced
    with pytest.raises(AdaptbenchError, match="not written by this script"):
        timing.ensure_data(tmp_path, specs[:1], TEST_CAP, 2)
