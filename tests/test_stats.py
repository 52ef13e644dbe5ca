"""Statistics on every leaderboard: per-sample test scores stored with the record, the metric
recomputed from them, bootstrap intervals, ranks with intervals, ties, paired comparisons and
``adaptbench compare``.

Synthetic records reuse ``test_leaderboard``'s builders (``make_record``) with per-sample bits
attached; the end-to-end tests train two tiny real runs (a linear probe on vit_micro's cached
features, seconds each).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_leaderboard import make_record, synthetic_records, vtab_records

from adaptbench.cli import main
from adaptbench.datasets.masks import IGNORE_INDEX
from adaptbench.errors import AdaptbenchError
from adaptbench.leaderboard import build_leaderboards, render_csv, render_html, render_latex, render_markdown
from adaptbench.leaderboard.stats import CI_COLUMN, RANK_COLUMN, SAMPLES, SEEDS, TIE_COLUMN
from adaptbench.records import PackedArray, RunRecord, SampleScores
from adaptbench.tasks.catalog import TaskSpec
from adaptbench.tasks.modules.segmentation import image_foreground_dice, image_intersections_and_unions
from adaptbench.tasks.sample_metrics import metric
from adaptbench.tasks.segmentation import SegmentationKind

TASKS = ("micro/digits", "micro/texture")


# -- compact storage -------------------------------------------------------------------------
@pytest.mark.parametrize("array", [
    np.random.default_rng(0).random(26032) < 0.9,  # a VTAB-sized test split, one bit per image
    np.array([], dtype=bool),
    np.random.default_rng(1).integers(0, 50176, (300, 150)),  # per-image, per-class pixel counts
    np.array([[0, 2**40], [3, 7]], dtype=np.int64),
    np.array([-5, 0, 300], dtype=np.int64),
    np.random.default_rng(2).random(77).astype(np.float32),
    np.random.default_rng(3).random((4, 5)),
])
def test_packed_arrays_round_trip_exactly_through_json(array):
    packed = PackedArray.model_validate_json(PackedArray.pack(array).model_dump_json())
    restored = packed.unpack()
    assert restored.shape == array.shape and np.array_equal(restored, array)
    assert restored.dtype == array.dtype or (array.dtype.kind in "iu" and restored.dtype.kind in "iu")


def test_one_bit_per_sample_keeps_a_vtab_test_split_to_a_few_kb():
    correct = np.random.default_rng(0).random(26032) < 0.9
    packed = PackedArray.pack(correct)
    assert packed.encoding == "bits" and len(packed.data) < 4 * 1024  # 3254 bytes of bits before zlib


def test_a_record_keeps_its_samples_and_one_without_them_still_loads(tmp_path):
    correct = np.random.default_rng(0).random(500) < 0.7
    record = with_bits(make_record("micro/digits", "lora", 0, 70.0), correct)
    path = record.write(tmp_path / "r.json")
    read = RunRecord.read(path)
    assert read.train_info.samples.count == 500
    assert np.array_equal(read.train_info.samples.unpacked()["correct"], correct)
    data = json.loads(path.read_text())
    del data["train_info"]["samples"]
    assert RunRecord.from_data(data).train_info.samples is None


# -- the metric from per-sample scores -------------------------------------------------------
def seg_batches(classes: int, binary: bool = False, seed: int = 0):
    """Random class maps and targets with ignored pixels; class ``classes - 1`` never occurs."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(3):
        targets = torch.randint(0, max(2, classes - 1), (4, 9, 11), generator=generator)
        targets[torch.rand(targets.shape, generator=generator) < 0.1] = IGNORE_INDEX
        predictions = torch.where(torch.rand(targets.shape, generator=generator) < 0.6, targets.clamp_max(classes - 2),
                                  torch.randint(0, max(2, classes - 1), targets.shape, generator=generator))
        if binary:
            predictions[0] = 0  # an image without predicted foreground ...
            targets[0] = torch.where(targets[0] == IGNORE_INDEX, IGNORE_INDEX, 0)  # ... nor target: not counted
        yield predictions, targets


def test_miou_from_per_image_intersections_and_unions_equals_torchmetrics_on_the_full_set():
    spec = TaskSpec("test/seg", "segmentation", "mmseg", "x", 6, "test", "test")
    metrics = SegmentationKind().metrics(spec)
    arrays: dict[str, list] = {"intersection": [], "union": []}
    for predictions, targets in seg_batches(6):
        metrics.update(predictions, targets)
        for name, value in image_intersections_and_unions(predictions, targets, 6).items():
            arrays[name].append(value.numpy())
    arrays = {name: np.concatenate(values) for name, values in arrays.items()}
    expected = float(metrics.compute()["miou"])
    assert SegmentationKind().sample_reduction(spec) == "iou"
    assert SegmentationKind().metric_from_samples(spec, arrays)[0] == pytest.approx(expected, abs=1e-7)
    # a resample that draws image 0 twice and leaves out image 1: the metric of that multiset
    weights = np.ones((1, len(arrays["union"])))
    weights[0, 0], weights[0, 1] = 2, 0
    sums_i = (weights[0, :, None] * arrays["intersection"]).sum(0)
    sums_u = (weights[0, :, None] * arrays["union"]).sum(0)
    assert metric("iou", arrays, weights)[0] == pytest.approx((sums_i[sums_u > 0] / sums_u[sums_u > 0]).mean())


def test_binary_dice_from_per_image_dice_equals_torchmetrics_on_the_full_set():
    spec = TaskSpec("test/seg", "segmentation", "mmseg", "x", 2, "test", "test",
                    options={"binary": True, "primary_metric": "dice"})
    metrics = SegmentationKind().metrics(spec)
    arrays: dict[str, list] = {"dice": [], "dice_counts": []}
    for predictions, targets in seg_batches(2, binary=True):
        metrics.update(predictions, targets)
        for name, value in image_foreground_dice(predictions, targets).items():
            arrays[name].append(value.numpy())
    arrays = {name: np.concatenate(values) for name, values in arrays.items()}
    assert not arrays["dice_counts"].all()  # the empty image is left out, as torchmetrics does
    assert SegmentationKind().sample_reduction(spec) == "dice"
    assert metric("dice", arrays)[0] == pytest.approx(float(metrics.compute()["dice"]), abs=1e-6)


@pytest.mark.parametrize("task", ["micro/digits", "micro_seg/nuclei", "micro_video/direction"])
def test_a_final_run_of_every_kind_records_samples_that_recompute_its_score(task, tmp_path):
    from adaptbench.config import RunConfig
    from adaptbench.runner.train import RunPlace, quiet_lightning, run

    quiet_lightning()
    record = run(RunConfig(task=task, backbone="vit_tiny_test", adapter="linear", epochs=0, batch_size=64),
                 RunPlace(out_dir=tmp_path, accelerator="cpu", save_adapter=False)).record
    samples = RunRecord.read(tmp_path / f"{record.run_id}.json").train_info.samples
    assert samples.count == record.train_info.data["eval_size"] and samples.metric == record.train_info.primary_metric
    assert metric(samples.reduction, samples.unpacked())[0] == pytest.approx(record.primary_score(), abs=1e-6)


def test_tune_runs_store_no_samples(tmp_path):
    from adaptbench.config import RunConfig
    from adaptbench.runner.train import RunPlace, quiet_lightning, run

    quiet_lightning()
    record = run(RunConfig(task="micro/digits", backbone="vit_tiny_test", adapter="linear", epochs=0, batch_size=250,
                           stage="tune"), RunPlace(out_dir=tmp_path, accelerator="cpu", save_adapter=False)).record
    assert record.train_info.samples is None


# -- bootstrap on boards --------------------------------------------------------------------
def with_bits(record: RunRecord, correct: np.ndarray) -> RunRecord:
    """``record`` with per-sample bits, its score set to their mean."""
    record.train_info.samples = SampleScores.of("top1", "accuracy", {"correct": correct})
    record.train_info.metrics["test"]["top1"] = float(correct.mean())
    return record


def bits(accuracy: float, n: int, seed: int) -> np.ndarray:
    correct = np.zeros(n, dtype=bool)
    correct[:round(accuracy * n)] = True
    return np.random.default_rng(seed).permutation(correct)


def row_records(label: str, accuracy: float, n: int, seeds=(0, 1), improve: int = 0,
                options: dict | None = None) -> list[RunRecord]:
    """A row's records on ``TASKS``: bits at ``accuracy`` (the same draws for every row), with
    ``improve`` of the wrong samples made correct."""
    records = []
    for t, task in enumerate(TASKS):
        for seed in seeds:
            correct = bits(accuracy, n, 100 * t + seed)
            correct[np.flatnonzero(~correct)[:improve]] = True
            records.append(with_bits(make_record(task, "lora", seed, 0.0, label=label,
                                                 options=options or {"label": label}), correct))
    return records


def by_label(board, label: str) -> pd.Series:
    [found] = board.summary.index[board.summary["adapter"] == label]
    return board.summary.loc[found]


@pytest.fixture(scope="module")
def sample_board():
    records = (row_records("good", 0.8, 400) + row_records("twin", 0.8, 400)
               + row_records("bad", 0.6, 400) + row_records("nudged", 0.8, 400, improve=12))
    [board] = build_leaderboards(records)
    return board


def test_intervals_hold_the_point_estimate(sample_board):
    assert sample_board.bootstrap.mode == SAMPLES
    for row in sample_board.summary.itertuples():
        assert row.ci_low <= row.mean_tasks <= row.ci_high
    good = by_label(sample_board, "good")
    assert good["ci_high"] - good["ci_low"] > 2  # 400 samples per task: several points wide


def test_intervals_shrink_with_more_samples():
    widths = []
    for n in (200, 5000):
        [board] = build_leaderboards(row_records("good", 0.8, n))
        row = board.summary.iloc[0]
        widths.append(row["ci_high"] - row["ci_low"])
    assert widths[1] < widths[0] / 3  # sqrt(25) = 5 times narrower, roughly


def test_identical_rows_are_tied_and_a_clearly_better_row_is_not(sample_board):
    boot = sample_board.bootstrap
    ids = {label: by_label(sample_board, label)["row_id"] for label in ("good", "twin", "bad", "nudged")}
    assert boot.tied(ids["good"], ids["twin"])
    assert not boot.tied(ids["good"], ids["bad"])
    groups = {label: by_label(sample_board, label)["tie_group"] for label in ids}
    assert set(groups["good"]) & set(groups["twin"]) and not set(groups["good"]) & set(groups["bad"])
    assert by_label(sample_board, "bad")["rank_low"] == by_label(sample_board, "bad")["rank_high"] == 4


def test_pairing_finds_a_small_consistent_gain_that_overlapping_intervals_hide(sample_board):
    nudged, good = by_label(sample_board, "nudged"), by_label(sample_board, "good")
    assert nudged["ci_low"] < good["ci_high"]  # the rows' own intervals overlap
    difference, low, high, p_value = sample_board.bootstrap.difference(nudged["row_id"], good["row_id"])
    assert difference == pytest.approx(3.0) and 0 < low <= high and p_value < 0.01
    assert not sample_board.bootstrap.tied(nudged["row_id"], good["row_id"])


def test_p_value_is_small_for_a_better_row_and_one_for_identical_rows(sample_board):
    boot = sample_board.bootstrap
    good, twin, bad = (by_label(sample_board, label)["row_id"] for label in ("good", "twin", "bad"))
    assert boot.difference(good, bad)[3] < 0.01
    assert boot.difference(good, twin)[3] == 1.0
    assert boot.compare(good, bad, labels=("good", "bad")).verdict() == "good better"
    assert boot.compare(bad, good, labels=("bad", "good")).verdict() == "good better"
    assert boot.compare(good, twin).verdict() == "no significant difference at 0.05"


def test_the_bootstrap_is_reproducible():
    records = row_records("good", 0.8, 300) + row_records("bad", 0.7, 300)
    first, second = build_leaderboards(records)[0], build_leaderboards(records)[0]
    assert first.table.equals(second.table)


# -- what the board shows -------------------------------------------------------------------
def test_every_format_shows_the_statistics_columns(sample_board):
    good = sample_board.table[sample_board.table["Adapter"] == "good"].iloc[0]
    assert "–" in good[CI_COLUMN] and good[RANK_COLUMN].split(" (")[0] == good["Rank"] and good[TIE_COLUMN]
    assert f"| {CI_COLUMN} | {RANK_COLUMN} | {TIE_COLUMN} |" in render_markdown([sample_board])
    assert f"{CI_COLUMN},{RANK_COLUMN},{TIE_COLUMN}" in render_csv(sample_board)
    assert "95\\% CI" in render_latex([sample_board]) and CI_COLUMN in render_html([sample_board], plots={"micro": b""})
    note = next(note for note in sample_board.notes if note.startswith(CI_COLUMN))
    assert "test samples" in note and "contains 0" in note


def test_records_without_samples_resample_seeds_only_and_say_so():
    [board] = build_leaderboards(synthetic_records())
    assert board.bootstrap.mode == SEEDS
    assert any("seeds only" in note and "no per-sample test scores" in note for note in board.notes)
    table = board.table.set_index("Adapter")
    # one seed, no samples: nothing varies, so no interval, no rank range and no tie group
    assert table.loc["bitfit", CI_COLUMN] == "–" and table.loc["bitfit", TIE_COLUMN] == "–"
    assert table.loc["bitfit", RANK_COLUMN] == "1"
    assert table.loc["lora", RANK_COLUMN].endswith(")") and table.loc["lora", TIE_COLUMN] != "–"
    assert table.loc["lora", CI_COLUMN] == "75.25–76.75"  # per-seed means 75 and 77: 2 seeds x 4 tasks resampled
    assert table.loc["ssf", CI_COLUMN] == table.loc["ssf", RANK_COLUMN] == "–"  # failed: unranked


def test_one_record_without_samples_makes_the_whole_board_resample_seeds_only():
    records = row_records("good", 0.8, 300) + row_records("bad", 0.7, 300)
    records[0].train_info.samples = None
    [board] = build_leaderboards(records)
    assert board.bootstrap.mode == SEEDS and board.bootstrap.lacking == 1


def test_reported_rows_have_no_statistics():
    [board] = build_leaderboards(vtab_records())
    reported = board.table[board.table["Source"].str.startswith("reported")]
    assert len(reported) and (reported[[CI_COLUMN, RANK_COLUMN, TIE_COLUMN]] == "–").all().all()


# -- adaptbench compare ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_results(tmp_path_factory):
    """Two real final runs on micro/digits: vit_micro's features untrained and linear-probed."""
    from adaptbench.config import RunConfig
    from adaptbench.runner.train import RunPlace, quiet_lightning, run

    quiet_lightning()
    out = tmp_path_factory.mktemp("results")
    for epochs in (0, 1):
        run(RunConfig(task="micro/digits", backbone="vit_micro", adapter="linear", epochs=epochs, lr=0.01,
                      batch_size=64), RunPlace(out_dir=out, accelerator="cpu", save_adapter=False))
    return out


def test_compare_two_real_rows_end_to_end(real_results, capsys):
    assert main(["compare", "linear [epochs=1]", "linear [epochs=0]", str(real_results)]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "95% CI" in out and "p = " in out and "linear [epochs=1] better" in out


def test_compare_api_gives_the_board_numbers(real_results):
    from adaptbench import compare

    comparison = compare(real_results, "linear [epochs=0]", "linear [epochs=1]")
    assert comparison.mode == SAMPLES and comparison.difference < -30 and comparison.high < 0
    assert list(comparison.cells.index) == ["digits"] and comparison.p_value < 0.01


def test_compare_refuses_an_unknown_label_with_one_line(real_results, capsys):
    assert main(["compare", "lora", "linear [epochs=0]", str(real_results)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no row 'lora'" in err[0] and "linear [epochs=1], linear [epochs=0]" in err[0]


def test_compare_refuses_an_unknown_benchmark(real_results):
    from adaptbench import compare

    with pytest.raises(AdaptbenchError, match="no such board; the records make micro"):
        compare(real_results, "linear [epochs=0]", "linear [epochs=1]", benchmark="vtab1k")


def test_a_kind_without_per_sample_scores_records_none_and_its_board_says_seeds_only():
    from adaptbench.runner.train import sample_scores
    from adaptbench.tasks.kinds import TaskKind

    assert sample_scores(TaskKind(), None, "top1", {"correct": np.ones(3, dtype=bool)}, 3) is None
    records = row_records("good", 0.8, 100) + row_records("bad", 0.7, 100)
    for record in records[:4]:  # the "good" row's records: what a plugin kind's runs hold
        record.train_info.samples = None
    [board] = build_leaderboards(records)
    note = next(note for note in board.notes if note.startswith(CI_COLUMN))
    assert "seeds only" in note and "4 record(s)" in note and "a task kind that gives none" in note


def test_compare_refuses_a_row_with_nothing_to_resample():
    from adaptbench.leaderboard.compare import compare

    records = [make_record(task, "lora", 0, score, label=label, options={"label": label})
               for task in TASKS for label, score in (("one", 70.0), ("two", 60.0))]
    with pytest.raises(AdaptbenchError, match="row 'one' has nothing to resample"):
        compare(records, "one", "two")
