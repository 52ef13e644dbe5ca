"""Leaderboards from synthetic run records: exact numbers, failed and n/a cells, ranks, row
identity and labels, references, files, the typed frame, CLI.

Records are built the way the runner builds them (``RunRecord.start`` with a resolved config,
then ``mark_success`` / ``mark_failed`` / ``mark_not_applicable``). The synthetic micro results
(``write_synthetic_results``): four adapters on four tasks in two groups (natural: digits,
texture, faces; structured: count), two seeds, with a failed seed, a tune record and an older
duplicate. Expected values are worked out by hand in the comments.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from adaptbench.cli import main
from adaptbench.errors import AdaptbenchError
from adaptbench.leaderboard import (
    build_leaderboards,
    load_records,
    records_frame,
    render_html,
    render_latex,
    render_markdown,
    render_terminal,
    row_labels,
    write_leaderboards,
)
from adaptbench.leaderboard.plot import pareto_figure, pareto_front
from adaptbench.records import RunRecord, TaskInfo

VIT_B = "timm:vit_base_patch16_224.augreg_in21k"
MICRO_GROUPS = {"digits": "natural", "texture": "natural", "faces": "natural", "count": "structured"}
CODE_VERSIONS = {"adapter": 1, "kind": 1, "head": 1, "reader": 1}

# adapter -> task -> top-1 (%) per seed (None: that seed failed)
SCORES = {
    "lora": {"digits": [80, 82], "texture": [70, 74], "faces": [90, 90], "count": [60, 62]},
    "linear": {"digits": [60, 60], "texture": [50, 50], "faces": [80, 80], "count": [40, 40]},
    "ssf": {"digits": [85, 85], "texture": [75, 75], "faces": [95, 95], "count": [70, None]},
    "bitfit": {"digits": [76], "texture": [76], "faces": [76], "count": [76]},  # one seed, ties lora
}
TRAINABLE = {"lora": 12288, "linear": 0, "ssf": 3456, "bitfit": 1000}


def resolved_config(task: str, adapter: str, seed: int, *, backbone: str = "vit_micro", stage: str = "final",
                    options: dict | None = None, lr: float = 1e-3, weights: str | None = None) -> dict:
    """A config shaped like the runner's resolved config (task defaults and code versions in)."""
    return {"task": task, "backbone": backbone, "adapter": adapter, "adapter_options": dict(options or {}),
            "weights": weights, "backbone_options": {"img_size": None, "grad_checkpointing": False},
            "head": "linear", "seed": seed, "stage": stage, "epochs": 3, "batch_size": 64, "lr": lr,
            "weight_decay": 1e-4, "warmup_epochs": None, "label_smoothing": 0.0, "pool": None,
            "precision": "32-true", "code_versions": dict(CODE_VERSIONS)}


def make_record(task: str, adapter: str, seed: int, top1: float | None, *, backbone: str = "vit_micro",
                stage: str = "final", created_at: str = "2026-03-01T12:00:00+0000", group: str | None = None,
                label: str | None = None, trainable: int = 12288, task_info: bool = True,
                na: str | None = None, options: dict | None = None, lr: float = 1e-3,
                grid: dict | None = None, spec: str = "test", recipe: str | None = None) -> RunRecord:
    """A run record as the runner makes it; ``top1=None``: a failed run; ``na``: an n/a run with
    that reason (the adapter cannot run on the backbone); ``label``: a matrix cell's label;
    ``grid``: the search a final cell's values came from."""
    config = resolved_config(task, adapter, seed, backbone=backbone, stage=stage, options=options, lr=lr)
    info = TaskInfo(benchmark=task.partition("/")[0], group=group or "natural", num_classes=10) if task_info else None
    annotations = {"spec": spec, "adapter_label": label} if label else None
    if recipe:
        annotations = {**(annotations or {"spec": spec}), "recipe": recipe}
    record = RunRecord.start(config, grid=grid, task_info=info, annotations=annotations)
    record.run_info.created_at = created_at
    if na is not None:
        record.mark_not_applicable(f"{adapter} on {backbone}: n/a: {na}")
    elif top1 is None:
        record.mark_failed("RuntimeError: loss is nan", wall_time_s=1.0)
    else:
        eval_split = "test" if stage == "final" else "val200"
        record.mark_success(
            stage=stage, primary_metric="top1", higher_is_better=True,
            metrics={eval_split: {"top1": top1 / 100, "loss": 1.0}}, data={"eval_split": eval_split},
            params={"trainable": trainable, "head": 60, "trainable_with_head": trainable + 60,
                    "extra_inference": trainable, "extra_inference_merged": 0, "checkpoint_bytes": 50912},
            train_images_per_s=600.0 + 100 * seed, peak_memory_bytes=(2 + seed) * 2**29,
            peak_memory_kind="cpu_max_rss", wall_time_s=10.0,
        )
    return record


def schema1_record(task: str, adapter: str, seed: int, top1: float, *, group: str = "natural",
                   options: dict | None = None, created_at: str = "2025-06-01T12:00:00+0000") -> dict:
    """A record as adaptbench wrote it before typed records (schema 1: no row id, row config or
    code versions)."""
    config = {"task": task, "backbone": "vit_micro", "adapter": adapter, "adapter_options": dict(options or {}),
              "weights": None, "seed": seed, "stage": "final", "epochs": 3}
    return {"schema_version": 1,
            "run_info": {"config": config, "run_id": f"old{seed}{adapter}", "seed": seed, "created_at": created_at,
                         "task_info": {"benchmark": task.partition("/")[0], "group": group, "num_classes": 10}},
            "train_info": {"status": "success", "error": None, "stage": "final", "primary_metric": "top1",
                           "higher_is_better": True, "metrics": {"test": {"top1": top1 / 100}},
                           "data": {"eval_split": "test"}, "params": {"trainable": 100},
                           "wall_time_s": None, "train_images_per_s": None},
            "meta_info": {}}


def write_records(folder: Path, records: list[RunRecord | dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, record in enumerate(records):
        path = folder / f"{index:03d}.json"
        if isinstance(record, RunRecord):
            record.write(path)
        else:
            path.write_text(json.dumps(record))
    return folder


@functools.cache
def _synthetic_records() -> tuple[RunRecord, ...]:
    records = [
        make_record(f"micro/{task}", adapter, seed, score, group=MICRO_GROUPS[task], trainable=TRAINABLE[adapter])
        for adapter, tasks in SCORES.items() for task, scores in tasks.items() for seed, score in enumerate(scores)
    ]
    records.append(make_record("micro/digits", "lora", 0, 99.0, stage="tune"))  # the search: ignored
    records.append(make_record("micro/digits", "lora", 0, 10.0, created_at="2026-01-01T00:00:00+0000"))  # older
    return tuple(records)


def synthetic_records() -> list[RunRecord]:
    return [record.model_copy(deep=True) for record in _synthetic_records()]


def write_synthetic_results(folder: Path) -> Path:
    return write_records(folder, synthetic_records())


@pytest.fixture(scope="module")
def micro_board():
    [board] = build_leaderboards(synthetic_records())
    return board


def row(board, adapter: str, source: str = "ours") -> pd.Series:
    rows = board.table[(board.table["Adapter"] == adapter) & board.table["Source"].str.startswith(source)]
    assert len(rows) == 1, board.table
    return rows.iloc[0]


# -- numbers -------------------------------------------------------------------------------
def test_cells_are_mean_and_sample_std_over_seeds(micro_board):
    lora = row(micro_board, "lora")
    # digits 80, 82 (the older duplicate 10.0 is dropped): mean 81, sample std sqrt(2) = 1.41
    assert lora["digits"] == "81.00 ± 1.41"
    assert lora["texture"] == "72.00 ± 2.83"
    assert lora["faces"] == "90.00 ± 0.00"
    assert lora["count"] == "61.00 ± 1.41"
    assert row(micro_board, "bitfit")["digits"] == "76.00"  # one seed: the mean alone


def test_group_means_and_both_overall_means(micro_board):
    lora = row(micro_board, "lora")
    # natural (81 + 72 + 90) / 3 = 81; structured 61; per seed: natural 80 / 82, structured 60 / 62
    assert lora["Natural (mean)"] == "81.00 ± 1.41" and lora["Structured (mean)"] == "61.00 ± 1.41"
    # over tasks (81 + 72 + 90 + 61) / 4 = 76 (per seed 75 / 77); over groups (81 + 61) / 2 = 71
    assert lora["Mean (tasks)"] == "76.00 ± 1.41" and lora["Mean (groups)"] == "71.00 ± 1.41"
    linear = row(micro_board, "linear")
    assert linear["Mean (tasks)"] == "57.50 ± 0.00" and linear["Mean (groups)"] == "51.67 ± 0.00"
    summary = micro_board.summary.set_index("adapter")
    assert summary.loc["lora", "mean_tasks"] == pytest.approx(76.0)
    assert summary.loc["linear", "mean_groups"] == pytest.approx((190 / 3 + 40) / 2)


def test_failed_seed_shows_failed_and_leaves_the_row_unranked(micro_board):
    ssf = row(micro_board, "ssf")
    assert ssf["count"] == "failed (1/2)"
    assert ssf["Natural (mean)"] == "85.00 ± 0.00"  # its natural tasks all succeeded
    assert ssf["Structured (mean)"] == ssf["Mean (tasks)"] == ssf["Mean (groups)"] == "failed"
    assert ssf["Rank"] == "–"
    assert "ssf | vit_micro | micro/count | seed 1 failed: RuntimeError: loss is nan" in micro_board.warnings
    assert pd.isna(micro_board.summary.set_index("adapter").loc["ssf", "rank"])


def test_rank_by_mean_over_tasks_with_shared_ties(micro_board):
    # lora and bitfit both average 76.00: they share rank 1, linear is 3rd, ssf (failed) last
    assert list(micro_board.table["Adapter"]) == ["bitfit", "lora", "linear", "ssf"]
    assert list(micro_board.table["Rank"]) == ["1", "1", "3", "–"]


def test_cost_columns(micro_board):
    lora, linear, ssf = row(micro_board, "lora"), row(micro_board, "linear"), row(micro_board, "ssf")
    assert lora["Params w/o head (M)"] == "0.01229" and linear["Params w/o head (M)"] == "0"
    assert lora["Extra inf. params"] == "12.3K (0 merged)" and linear["Extra inf. params"] == "0"
    assert lora["Ckpt (KB)"] == "49.7"  # 50912 B / 1024
    assert lora["img/s"] == "650"  # seeds 600 and 700 img/s
    assert ssf["img/s"] == "643"  # 7 successful runs: 4 at 600, 3 at 700 (4500 / 7); the failed one has none
    assert lora["Peak mem (MB)"] == "1536"  # max of 1024 and 1536 MB
    assert lora["Seeds"] == "2" and row(micro_board, "bitfit")["Seeds"] == "1"


def test_tune_records_and_duplicates_are_reported(micro_board):
    assert micro_board.records_used == 4 * 2 * 3 + 4  # 4 tasks x 2 seeds x 3 adapters + bitfit's 4
    assert any("ignored 1 tune record" in warning for warning in micro_board.warnings)
    [duplicate] = [w for w in micro_board.warnings if "newest" in w]
    assert "lora" in duplicate and "micro/digits" in duplicate and "2026-01-01" in duplicate


def test_newest_record_wins_across_time_zones():
    later_in_utc = make_record("micro/digits", "lora", 0, 40.0, created_at="2026-03-01T14:00:00+0100")
    earlier_in_utc = make_record("micro/digits", "lora", 0, 30.0, created_at="2026-03-01T14:30:00+0300")
    [board] = build_leaderboards([earlier_in_utc, later_in_utc])
    assert row(board, "lora")["digits"] == "40.00"


def test_missing_task_reads_incomplete_and_labels_come_from_the_matrix():
    records = synthetic_records() + [make_record("micro/digits", "lora", 0, 50.0, label="lora_r4",
                                                 options={"r": 4})]
    [board] = build_leaderboards(records)
    partial = row(board, "lora_r4")
    assert partial["digits"] == "50.00" and partial["texture"] == "–"
    assert partial["Mean (tasks)"] == "incomplete" and partial["Rank"] == "–"


def test_older_records_without_task_info_use_the_task_registry():
    records = [make_record("micro/count", "lora", 0, 50.0, task_info=False),
               make_record("micro/digits", "lora", 0, 70.0, task_info=False)]
    [board] = build_leaderboards(records)
    assert board.benchmark == "micro" and board.groups == ["natural", "structured"]
    assert list(board.table.columns[5:7]) == ["digits", "count"]  # natural before structured
    assert row(board, "lora")["Mean (tasks)"] == "60.00"


def test_only_tune_records_give_no_board():
    assert build_leaderboards([make_record("micro/digits", "lora", 0, 50.0, stage="tune")]) == []
    assert build_leaderboards([]) == []


# -- row identity: a row is a config, the label only shows it ---------------------------------
def lora_runs(options: dict, scores: dict[str, float], **kwargs) -> list[RunRecord]:
    """``adaptbench train``-style runs (no matrix label) of lora with ``options`` on micro tasks."""
    return [make_record(f"micro/{task}", "lora", 0, score, group=MICRO_GROUPS[task], options=options, **kwargs)
            for task, score in scores.items()]


def test_two_configs_under_one_label_are_two_rows():
    records = (lora_runs({"r": 4}, {"digits": 80, "count": 60})
               + lora_runs({"r": 8}, {"digits": 90, "count": 70}, created_at="2026-03-02T12:00:00+0000"))
    assert records[0].row_id != records[2].row_id  # the runner's row identity tells them apart
    [board] = build_leaderboards(records)
    assert list(board.table["Adapter"]) == ["lora [r=8]", "lora [r=4]"]  # ranked: 80.00, then 70.00
    assert (row(board, "lora [r=4]")["digits"], row(board, "lora [r=4]")["Mean (tasks)"]) == ("80.00", "70.00")
    assert (row(board, "lora [r=8]")["digits"], row(board, "lora [r=8]")["Mean (tasks)"]) == ("90.00", "80.00")
    assert not [w for w in board.warnings if "newest" in w]  # nothing was merged or dropped
    assert board.records_used == 4
    assert set(board.summary["row_id"]) == {records[0].row_id, records[2].row_id}


def test_one_label_in_two_matrix_specs_with_different_options_is_two_rows():
    records = (lora_runs({"r": 4}, {"digits": 80}, label="lora", spec="small")
               + lora_runs({"r": 8, "alpha": 16}, {"digits": 90}, label="lora", spec="large"))
    [board] = build_leaderboards(records)
    # only the settings that differ, adapter options without their prefix; a setting a row
    # does not have (alpha, for r=4) is left out of its label
    assert sorted(board.table["Adapter"]) == ["lora [alpha=16, r=8]", "lora [r=4]"]


def test_the_same_config_on_two_backbones_keeps_its_plain_label():
    records = lora_runs({"r": 4}, {"digits": 80}) + lora_runs({"r": 4}, {"digits": 70}, backbone="sam:vit_b")
    [board] = build_leaderboards(records)
    assert list(zip(board.table["Adapter"], board.table["Backbone"])) == [("lora", "vit_micro"),
                                                                          ("lora", "sam:vit_b")]


def test_a_grid_searched_row_is_not_the_row_of_the_value_it_chose():
    fixed = lora_runs({}, {"digits": 80}, lr=1e-3)
    searched = lora_runs({}, {"digits": 85}, lr=1e-3, grid={"lr": [1e-3, 1e-2]})
    [board] = build_leaderboards(fixed + searched)
    assert sorted(board.table["Adapter"]) == ["lora [lr in {0.001,0.01}]", "lora [lr=0.001]"]
    searched_r = lora_runs({"r": 4}, {"digits": 85}, grid={"options.r": [4, 8]})  # options: {} once r is out
    [board] = build_leaderboards(lora_runs({"r": 4}, {"digits": 80}) + searched_r)
    assert sorted(board.table["Adapter"]) == ["lora [r in {4,8}]", "lora [r=4]"]


def test_the_same_cell_twice_keeps_the_newest_and_says_so(tmp_path):
    older = lora_runs({"r": 4}, {"digits": 70}, created_at="2026-03-01T12:00:00+0000")
    newer = lora_runs({"r": 4}, {"digits": 75}, created_at="2026-03-05T12:00:00+0000")
    first, second = write_records(tmp_path / "a", older), write_records(tmp_path / "b", newer)
    [board] = build_leaderboards(load_records([first, second]))
    assert list(board.table["Adapter"]) == ["lora"] and row(board, "lora")["digits"] == "75.00"
    [note] = [w for w in board.warnings if "newest" in w]
    assert note == (f"lora | vit_micro | micro/digits | seed 0: kept the newest record, ignored older run "
                    f"{older[0].run_id} (2026-03-01T12:00:00+0000)")


def test_one_config_under_two_labels_is_one_row_under_the_newest_label():
    records = (lora_runs({"r": 4}, {"digits": 70}, label="lora_small", created_at="2026-03-01T12:00:00+0000")
               + lora_runs({"r": 4}, {"texture": 75}, label="lora_r4", created_at="2026-03-02T12:00:00+0000"))
    [board] = build_leaderboards(records)
    assert list(board.table["Adapter"]) == ["lora_r4"]
    assert (row(board, "lora_r4")["digits"], row(board, "lora_r4")["texture"]) == ("70.00", "75.00")
    assert "lora_r4: one config also labelled lora_small in older records" in " ".join(board.warnings)


def test_row_labels_fall_back_to_the_row_id_when_settings_cannot_tell_rows_apart():
    base = {"adapter": "lora", "adapter_options": {"r": 4}, "lr": 0.001}
    rows = {"aaaaaa111": ("lora", "vit_micro", {**base, "backbone": "timm:vit_micro"}),
            "bbbbbb222": ("lora", "vit_micro", {**base, "backbone": "vit_micro"}),  # the same shown backbone
            "cccccc333": ("ssf", "vit_micro", {"adapter": "ssf"})}
    assert row_labels(rows) == {"aaaaaa111": "lora #aaaaaa", "bbbbbb222": "lora #bbbbbb", "cccccc333": "ssf"}
    many = {f"id{n}": ("x", "b", {"a": n, "b": n, "c": n, "d": n, "e": n}) for n in range(2)}
    assert row_labels(many) == {"id0": "x [a=0, b=0, c=0, d=0, ...]", "id1": "x [a=1, b=1, c=1, d=1, ...]"}


def test_schema_1_records_are_still_tabulated(tmp_path):
    old = [schema1_record("micro/digits", "lora", seed, score) for seed, score in ((0, 80.0), (1, 84.0))]
    folder = write_records(tmp_path / "old", old)
    records = load_records([folder])
    assert all(record.schema_version == 2 and record.row_id for record in records)  # upgraded in memory
    [board] = build_leaderboards(records)
    assert row(board, "lora")["digits"] == "82.00 ± 2.83" and row(board, "lora")["Rank"] == "1"
    # beside a new record of the same settings: not the same config (code versions, resolved
    # defaults), so two rows; the new one is labelled by its code versions first
    new = lora_runs({}, {"digits": 90})
    [board] = build_leaderboards(records + new)
    assert sorted(board.table["Adapter"]) == [
        "lora", "lora [code.adapter=1, code.head=1, code.kind=1, code.reader=1, ...]"]
    assert row(board, "lora")["digits"] == "82.00 ± 2.83"


# -- the typed long table ----------------------------------------------------------------------
def test_records_frame_has_one_typed_row_per_record():
    records = lora_runs({"r": 4}, {"digits": 80}) + [
        make_record("micro/count", "ssf", 1, None, group="structured"),
        make_record("micro/count", "vpt", 0, None, backbone="sam:vit_b", group="structured", na="no grid"),
        make_record("micro/digits", "lora", 0, 99.0, stage="tune", options={"r": 4}),
    ]
    frame = records_frame(records)
    assert len(frame) == 4
    expected = {
        "run_id": "string", "row_id": "string", "benchmark": "string", "group": "string", "task": "string",
        "backbone": "string", "adapter": "string", "label": "string", "head_name": "string", "seed": "Int64", "stage": "string",
        "status": "string", "score": "float64", "metric": "string", "higher_is_better": "bool",
        "error": "string", "na_reason": "string", "trainable": "Int64", "trainable_with_head": "Int64",
        "head": "Int64", "extra_inference": "Int64", "extra_inference_merged": "Int64",
        "checkpoint_bytes": "Int64", "wall_time_s": "float64", "images_per_s": "float64",
        "peak_memory_bytes": "Int64", "peak_memory_kind": "string", "created_at": "datetime64[ns, UTC]",
    }
    assert list(frame.columns[:len(expected)]) == list(expected)
    assert {column: str(frame[column].dtype) for column in expected} == expected
    config = [column for column in frame.columns[len(expected):]]
    assert config == sorted(config) and all(column.startswith("config.") for column in config)
    assert str(frame["config.lr"].dtype) == "float64" and str(frame["config.epochs"].dtype) == "Int64"
    assert str(frame["config.adapter_options.r"].dtype) == "Int64"  # nested keys dotted; <NA> where unset
    assert str(frame["config.backbone_options.grad_checkpointing"].dtype) == "boolean"
    assert str(frame["config.code_versions.adapter"].dtype) == "Int64"
    assert str(frame["config.backbone"].dtype) == "string" and frame["config.backbone"][2] == "sam:vit_b"
    assert list(frame["status"]) == ["success", "failed", "n/a", "success"]
    assert frame["score"][0] == pytest.approx(80.0) and frame["score"][1:3].isna().all()
    assert frame["score"][3] == pytest.approx(99.0) and frame["stage"][3] == "tune"
    assert frame["na_reason"][2] == "no grid" and pd.isna(frame["na_reason"][0])
    assert frame["trainable"][0] == 12288 and pd.isna(frame["trainable"][1])
    assert frame["created_at"][0] == pd.Timestamp("2026-03-01T12:00:00Z")
    assert frame["row_id"][0] == records[0].row_id and frame["label"][0] == "lora"
    assert frame["config.adapter_options.r"][0] == 4 and pd.isna(frame["config.adapter_options.r"][1])


def test_records_frame_of_no_records_keeps_its_columns():
    frame = records_frame([])
    assert frame.empty and "score" in frame.columns and str(frame["score"].dtype) == "float64"


# -- n/a cells -----------------------------------------------------------------------------
SAM = "sam:vit_b"
LAYOUT = "needs a token layout in ('BNC',); the backbone's is 'BHWC'"


def na_records() -> list[RunRecord]:
    """digits (natural) and count (structured) for five rows of one micro board:

    * lora on vit_micro and on SAM, vpt_shallow on vit_micro: every run succeeds;
    * vpt_shallow on SAM: n/a on both tasks, both seeds;
    * vpt_deep on vit_micro: count is n/a (an older record: its reason only in ``error``);
    * ssf on SAM: digits is n/a, count failed.
    """
    ok = [("lora", "vit_micro", {"digits": 80, "count": 60}), ("lora", SAM, {"digits": 70, "count": 50}),
          ("vpt_shallow", "vit_micro", {"digits": 75, "count": 55})]
    records = [make_record(f"micro/{task}", adapter, 0, score, backbone=backbone, group=MICRO_GROUPS[task])
               for adapter, backbone, scores in ok for task, score in scores.items()]
    records += [make_record(f"micro/{task}", "vpt_shallow", seed, None, backbone=SAM, group=MICRO_GROUPS[task],
                            na=LAYOUT) for task in ("digits", "count") for seed in (0, 1)]
    records.append(make_record("micro/digits", "vpt_deep", 0, 77.0))
    older = make_record("micro/count", "vpt_deep", 0, None, group="structured", na="deep prompts need blocks")
    older.train_info.na_reason = None
    records.append(older)
    records.append(make_record("micro/digits", "ssf", 0, None, backbone=SAM, na=LAYOUT))
    records.append(make_record("micro/count", "ssf", 0, None, backbone=SAM, group="structured"))
    return records


@pytest.fixture(scope="module")
def na_board():
    [board] = build_leaderboards(na_records())
    return board


def our_row(board, adapter: str, backbone: str) -> pd.Series:
    rows = board.table[(board.table["Adapter"] == adapter) & (board.table["Backbone"] == backbone)]
    assert len(rows) == 1, board.table
    return rows.iloc[0]


def test_na_cells_read_na_and_so_do_the_means_over_them(na_board):
    shallow = our_row(na_board, "vpt_shallow", SAM)
    assert shallow["digits"] == shallow["count"] == "n/a"  # not "failed (2/2)"
    assert (shallow["Natural (mean)"], shallow["Structured (mean)"], shallow["Mean (tasks)"],
            shallow["Mean (groups)"], shallow["Rank"]) == ("n/a", "n/a", "n/a", "n/a", "–")
    deep = our_row(na_board, "vpt_deep", "vit_micro")
    assert (deep["digits"], deep["count"]) == ("77.00", "n/a")
    assert deep["Natural (mean)"] == "77.00" and deep["Structured (mean)"] == deep["Mean (tasks)"] == "n/a"
    ssf = our_row(na_board, "ssf", SAM)  # a failure is worse than n/a: the mean says failed
    assert (ssf["digits"], ssf["count"], ssf["Mean (tasks)"]) == ("n/a", "failed (1/1)", "failed")
    assert list(na_board.table["Rank"]) == ["1", "2", "3", "–", "–", "–"]
    assert our_row(na_board, "lora", "vit_micro")["Mean (tasks)"] == "70.00"


def test_na_reasons_are_notes_not_failure_warnings(na_board):
    assert [w for w in na_board.warnings if "failed" in w] == [
        "ssf | sam:vit_b | micro/count | seed 0 failed: RuntimeError: loss is nan"]
    assert na_board.na_notes == [
        "n/a: ssf | sam:vit_b: digits: " + LAYOUT,
        "n/a: vpt_deep | vit_micro: count: deep prompts need blocks",
        "n/a: vpt_shallow | sam:vit_b: " + LAYOUT,
    ]
    assert all(note in na_board.notes for note in na_board.na_notes)
    summary = na_board.summary.set_index(["adapter", "backbone"])
    assert bool(summary.loc[("vpt_shallow", SAM), "not_applicable"]) and not summary.loc[("lora", SAM), "na_reason"]


def test_every_format_shows_na_and_its_reason(na_board, tmp_path):
    from rich.console import Console

    write_leaderboards([na_board], tmp_path, "lb", ["md", "csv", "tex", "html"])
    markdown = (tmp_path / "lb.md").read_text()
    assert "| – | vpt_shallow | sam:vit_b | linear | ours | n/a | n/a | n/a | n/a | n/a | n/a |" in markdown
    assert "- n/a: vpt_shallow \\| sam:vit_b: needs a token layout" in markdown
    csv = pd.read_csv(tmp_path / "lb.csv", dtype=str, keep_default_na=False)
    assert list(csv.columns) == [*na_board.table.columns, "n/a reason"]  # the table, plus the reasons
    reasons = dict(zip(zip(csv["Adapter"], csv["Backbone"]), csv["n/a reason"]))
    assert reasons[("vpt_shallow", SAM)] == LAYOUT and reasons[("lora", SAM)] == ""
    latex = (tmp_path / "lb.tex").read_text()
    assert "vpt\\_shallow & sam:vit\\_b & linear & ours & n/a & n/a" in latex and "% n/a: vpt_shallow | sam:vit_b" in latex
    page = (tmp_path / "lb.html").read_text()
    assert re.search(r">n/a</td>", page) and "color: #777" in page
    assert "n/a: vpt_shallow | sam:vit_b: needs a token layout in (&#x27;BNC&#x27;,)" in page
    console = Console(width=250, record=True)
    console.print(render_terminal([na_board]))
    text = console.export_text()
    assert "n/a: vpt_shallow | sam:vit_b: needs a token layout" in text


def test_failed_csv_has_no_na_column(micro_board):
    from adaptbench.leaderboard import render_csv

    assert "n/a reason" not in render_csv(micro_board).splitlines()[0]


def test_pareto_plot_skips_na_rows(na_board):
    from adaptbench.leaderboard.plot import _points

    ours, reported = _points(na_board.summary)
    assert set(zip(ours["adapter"], ours["backbone"])) == {("lora", "vit_micro"), ("lora", SAM),
                                                           ("vpt_shallow", "vit_micro")}
    assert reported.empty
    # even a row whose mean were a number is left out once any of its cells is n/a
    summary = na_board.summary.copy()
    summary.loc[summary["not_applicable"], ["mean_tasks", "params_m"]] = [50.0, 0.1]
    assert len(_points(summary)[0]) == 3
    pareto_figure(na_board)  # draws


# -- published numbers ---------------------------------------------------------------------
def vtab_records(backbone: str = VIT_B) -> list[RunRecord]:
    tasks = {"vtab1k/cifar": "natural", "vtab1k/eurosat": "specialized", "vtab1k/dmlab": "structured"}
    return [make_record(task, "lora", 0, 70.0, backbone=backbone, group=group) for task, group in tasks.items()]


def test_reported_rows_for_vit_b_in21k_on_vtab1k():
    [board] = build_leaderboards(vtab_records())
    full_vpetl = row(board, "full", "reported: V-PETL Bench README")
    full_noah = row(board, "full", "reported: NOAH README Table 1")
    # the two "full fine-tuning" numbers stay apart, each in the mean it was computed as
    assert full_vpetl["Mean (tasks)"] == "65.57" and full_vpetl["Mean (groups)"] == "–"
    assert full_noah["Mean (groups)"] == "68.90" and full_noah["Mean (tasks)"] == "–"
    assert full_vpetl["Params w/o head (M)"] == "85.8" and full_vpetl["Rank"] == "–"
    assert row(board, "bitfit", "reported: V-PETL Bench README")["Mean (tasks)"] == "62.05"
    assert len(board.table[board.table["Adapter"] == "noah"]) == 2  # no adapter of ours: still shown
    bi = board.table[board.table["Adapter"] == "bi_adaptformer"].iloc[0]
    assert "(as bi_adaptformer_32)" in bi["Source"] and bi["Mean (groups)"] == "77.00"
    assert board.table.iloc[0]["Source"] == "ours" and board.table.iloc[0]["Rank"] == "1"
    assert any("all 19 vtab1k tasks" in note for note in board.notes)
    # the published rows started from Google's original checkpoint, ours from augreg: said, per row
    assert full_noah["Backbone"] == "vit_base_patch16_224.orig_in21k"
    assert "not comparable: weights orig_in21k (ours: augreg_in21k)" in full_noah["Source"]
    ssf = row(board, "ssf", "reported: V-PETL Bench README")  # SSF's number is on augreg, its own recipe
    assert "not comparable: recipe ssf (ours: unnamed)" in ssf["Source"] and "weights orig" not in ssf["Source"]
    fact = row(board, "fact", "reported: V-PETL Bench README (as fact_tk)")
    assert "FacT-TK" in fact["Source"]
    assert not board.flags


def vtab19_records(label: str, adapter: str, per_seed: list[float], recipe: str = "noah",
                   backbone: str = "vit_base_patch16_224.orig_in21k", grid: dict | None = None,
                   lr: float = 1e-3) -> list[RunRecord]:
    from adaptbench.tasks.groups import task_groups

    groups = task_groups()
    group_of = {task: group.partition("/")[2] for group in ("vtab1k/natural", "vtab1k/specialized",
                                                            "vtab1k/structured") for task in groups[group]}
    return [make_record(task, adapter, seed, score, backbone=backbone, group=group_of[task], label=label,
                        recipe=recipe, grid=grid, lr=lr)
            for task in groups["vtab1k"] for seed, score in enumerate(per_seed)]


def test_a_comparable_published_number_far_outside_our_seed_spread_is_flagged_first():
    # NOAH's LoRA: 74.5 (mean of group means), orig_in21k, recipe noah; ours at 70 +- 0.5
    far = vtab19_records("lora", "lora", [69.5, 70.0, 70.5])
    near = vtab19_records("lora_near", "lora", [74.0, 74.5, 75.0], lr=2e-3)  # not NOAH's method name: never paired
    [board] = build_leaderboards(far + near)
    assert row(board, "lora")["Source"] == "ours ⚑" and row(board, "lora_near")["Source"] == "ours"
    [flag] = board.flags
    assert flag.startswith("⚑ lora | vit_base_patch16_224.orig_in21k: Mean (groups) 70.00 vs 74.50 reported by "
                           "NOAH README Table 1: -4.50, more than 2 x our seed std (0.50 over 3 seeds)")
    noah = row(board, "lora", "reported: NOAH README Table 1")
    assert "not comparable" not in noah["Source"]  # same weights, recipe and head: comparable
    assert "not comparable: recipe vpetl (ours: noah)" in row(board, "lora", "reported: V-PETL")["Source"]
    markdown, page = render_markdown([board]), render_html([board])
    assert markdown.index("- ⚑ lora") < markdown.index("| Rank")
    assert page.index(html.escape(flag)) < page.index('class="leaderboard"')
    # within the spread: no flag; one seed: said, not flagged
    [board] = build_leaderboards(vtab19_records("lora", "lora", [73.0, 74.5, 76.0]))
    assert not board.flags
    [board] = build_leaderboards(vtab19_records("lora", "lora", [70.0]))
    assert board.flags == [] and any("not judged (one seed" in note for note in board.notes)


def test_a_published_number_of_another_recipe_is_never_flagged():
    [board] = build_leaderboards(vtab19_records("lora", "lora", [69.5, 70.0, 70.5], recipe="equal-search"))
    assert not board.flags and row(board, "lora")["Source"] == "ours"
    assert "recipe noah (ours: equal-search)" in row(board, "lora", "reported: NOAH")["Source"]


def test_unequal_search_budgets_are_noted():
    searched = vtab_records()[:0] + [make_record("vtab1k/cifar", "fact", 0, 70.0, backbone=VIT_B, label="fact",
                                                 grid={"options.scale": [0.1, 1, 10], "options.rank": [8, 16]})]
    [board] = build_leaderboards(searched + [make_record("vtab1k/cifar", "linear", 0, 60.0, backbone=VIT_B)])
    assert any(note.startswith("Search budgets differ by more than 2x (configurations tried per task: fact 6, "
                               "linear 1)") for note in board.notes)
    [board] = build_leaderboards(vtab_records())
    assert not any(note.startswith("Search budgets") for note in board.notes)


def test_reported_rows_for_fgvc_go_in_the_mean_over_tasks():
    records = [make_record(f"fgvc/{task}", "ssf", 0, 90.0, backbone="vit_base_patch16_224.augreg_in21k",
                           group="fgvc") for task in ("cub", "nabirds")]
    [board] = build_leaderboards(records)
    assert "Mean (groups)" not in board.table.columns  # one group: the two means coincide
    assert row(board, "ssf", "reported: V-PETL Bench README (SSF paper: 90.72)")["Mean (tasks)"] == "90.72"


def test_no_reported_rows_for_other_backbones_or_benchmarks(micro_board):
    assert not micro_board.has_reported_rows
    [board] = build_leaderboards(vtab_records(backbone="vit_micro"))
    assert not board.has_reported_rows and set(board.table["Source"]) == {"ours"}


# -- plot ----------------------------------------------------------------------------------
def test_pareto_front_keeps_the_undominated_rows():
    points = pd.DataFrame({"adapter": list("abcde"), "params_m": [0.0, 0.01, 0.01, 0.1, 1.0],
                           "mean_tasks": [50.0, 60.0, 55.0, 58.0, 70.0]})
    assert list(pareto_front(points)["adapter"]) == ["a", "b", "e"]


def test_zero_parameters_are_drawn_at_a_floor_labelled_zero(micro_board):
    axes = pareto_figure(micro_board).axes[0]
    labels = [tick.get_text() for tick in axes.get_xticklabels()]
    assert axes.get_xscale() == "log" and labels[0] == "0"
    floor = axes.get_xticks()[0]
    assert floor == pytest.approx(1e-4)  # one decade below the smallest count, 0.001 M (bitfit)


# -- files ---------------------------------------------------------------------------------
def test_every_format_is_written_and_parses(micro_board, tmp_path):
    paths = write_leaderboards([micro_board], tmp_path, "board", ["md", "csv", "tex", "html"],
                               generated_at="2026-03-02 10:00 UTC")
    assert sorted(p.name for p in paths) == ["board.csv", "board.html", "board.md", "board.png", "board.tex"]
    assert not list(tmp_path.glob(".*"))  # atomic writes leave no temp files
    csv = pd.read_csv(tmp_path / "board.csv", dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(csv, micro_board.table, check_dtype=False)
    markdown = (tmp_path / "board.md").read_text()
    assert "| Rank | Adapter | Backbone | Head | Source | digits |" in markdown and "failed (1/2)" in markdown
    latex = (tmp_path / "board.tex").read_text()
    assert "\\begin{tabular}" in latex and "76.00 $\\pm$ 1.41" in latex and "±" not in latex.split("\\begin")[1]
    page = (tmp_path / "board.html").read_text()
    assert "<table" in page and "failed (1/2)" in page and "2026-03-02 10:00 UTC" in page
    [data] = re.findall(r'<img[^>]+src="data:image/png;base64,([^"]+)"', page)
    embedded = Image.open(io.BytesIO(base64.b64decode(data)))
    assert embedded.format == "PNG" and embedded.size == (900, 576)
    with Image.open(tmp_path / "board.png") as png:
        assert png.size == (900, 576)


def test_several_benchmarks_share_text_files_and_split_csv_and_png(tmp_path):
    boards = build_leaderboards(synthetic_records() + vtab_records())
    assert [board.benchmark for board in boards] == ["micro", "vtab1k"]
    paths = write_leaderboards(boards, tmp_path, "lb", ["md", "csv"])
    assert sorted(p.name for p in paths) == ["lb-micro.csv", "lb-micro.png", "lb-vtab1k.csv", "lb-vtab1k.png",
                                             "lb.md"]
    assert "## micro" in (tmp_path / "lb.md").read_text() and "## vtab1k" in (tmp_path / "lb.md").read_text()


def test_user_derived_text_is_escaped(tmp_path):
    label = "<b>x</b>|y_z"
    [board] = build_leaderboards([make_record("micro/digits", "lora", 0, 50.0, label=label)])
    write_leaderboards([board], tmp_path, "lb", ["html", "md", "tex"])
    page = (tmp_path / "lb.html").read_text()
    assert "&lt;b&gt;x&lt;/b&gt;|y_z" in page and "<b>x</b>" not in page
    assert "&lt;b&gt;x&lt;/b&gt;\\|y_z" in render_markdown([board])
    assert "y\\_z" in render_latex([board])


def test_terminal_view_holds_every_row(micro_board):
    from rich.console import Console

    console = Console(width=250, record=True)
    console.print(render_terminal([micro_board]))
    text = console.export_text()
    assert all(name in text for name in ("lora", "linear", "ssf", "bitfit", "failed (1/2)"))


# -- loading records -----------------------------------------------------------------------
def test_load_records_searches_folders_and_skips_what_is_not_a_record(tmp_path):
    folder = write_records(tmp_path / "results" / "nested", [make_record("micro/digits", "lora", 0, 50.0)])
    (folder / ".000.json.123.tmp").write_text("{half a rec")
    (folder / ".hidden.json").write_text("{broken")
    (folder / "matrix.json").write_text(json.dumps({"spec": "micro", "cells": 3}))
    assert len(load_records([tmp_path / "results"])) == 1


def test_malformed_json_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"run_info": ')
    with pytest.raises(AdaptbenchError, match=re.escape(str(bad))) as caught:
        load_records([tmp_path])
    message = str(caught.value)
    assert "\n" not in message and "not valid JSON" in message
    assert not re.search(r"\b(\w+) \1\b", message), message  # no doubled words ("at at")


def test_a_record_of_the_wrong_shape_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "shape.json"
    bad.write_text(json.dumps({"run_info": {"config": {"task": "micro/digits"}}, "train_info": {}}))
    with pytest.raises(AdaptbenchError, match=re.escape(str(bad))) as caught:
        load_records([tmp_path])
    assert "\n" not in str(caught.value) and "run_id" in str(caught.value)


def test_a_record_without_an_adapter_is_refused_by_name(tmp_path):
    record = make_record("micro/digits", "lora", 0, 50.0)
    record.run_info.config["adapter"] = ""
    write_records(tmp_path, [record])
    with pytest.raises(AdaptbenchError, match=r"000\.json lacks run_info\.config\.adapter"):
        load_records([tmp_path])


def test_no_records_names_the_paths(tmp_path):
    with pytest.raises(AdaptbenchError, match=re.escape(str(tmp_path))):
        load_records([tmp_path])


# -- command line --------------------------------------------------------------------------
def test_cli_writes_every_format(tmp_path, capsys):
    results = write_synthetic_results(tmp_path / "results")
    assert main(["leaderboard", str(results), "--out", str(tmp_path / "out")]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["leaderboard.csv", "leaderboard.html", "leaderboard.md", "leaderboard.png", "leaderboard.tex"]
    assert "wrote" in capsys.readouterr().out


def test_cli_prints_a_chosen_format_to_stdout(tmp_path, capsys):
    results = write_synthetic_results(tmp_path / "results")
    assert main(["leaderboard", str(results), "--format", "csv,md"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Rank,Adapter,Backbone,Head,Source,digits") and "| Rank | Adapter |" in out


@pytest.mark.parametrize("broken_file,fragment", [(None, "no run records"), ("broken.json", "broken.json")])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, broken_file, fragment):
    if broken_file:
        (tmp_path / broken_file).write_text('{"run_info": {')
    assert main(["leaderboard", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("adaptbench: error: ") and fragment in err[0]


def test_cli_rejects_an_unknown_format(tmp_path, capsys):
    results = write_synthetic_results(tmp_path / "results")
    assert main(["leaderboard", str(results), "--format", "xlsx"]) == 2
    assert "'xlsx'" in capsys.readouterr().err


def seg_record(adapter: str, miou: float, *, backbone: str, head: str, seed: int = 0) -> RunRecord:
    config = {**resolved_config("seg/ade20k", adapter, seed, backbone=backbone), "head": head}
    record = RunRecord.start(config, task_info=TaskInfo(benchmark="seg", group="ade20k", kind="segmentation",
                                                        num_classes=150))
    record.mark_success(stage="final", primary_metric="miou", higher_is_better=True,
                        metrics={"val": {"miou": miou / 100, "iou.wall": 0.5}}, data={"eval_split": "val"},
                        params={"trainable": 1000, "head": 10, "trainable_with_head": 1010, "extra_inference": 0,
                                "extra_inference_merged": 0, "checkpoint_bytes": 4000},
                        train_images_per_s=10.0, peak_memory_bytes=2**30, peak_memory_kind="cpu_max_rss",
                        wall_time_s=1.0)
    return record


def test_a_segmentation_board_names_its_metric_and_head_and_shows_published_rows_only_in_their_setting():
    ours = [seg_record("lora", 40.0, backbone="vit_micro", head="seg_pup")]
    board = build_leaderboards(ours)[0]
    assert board.metric == "miou" and "100 x mIoU (%)" in render_markdown([board])
    assert board.table["Head"].tolist() == ["seg_pup"] and not board.has_reported_rows  # V-PETL ran Swin-L + UperNet
    swin = "swin_large_patch4_window12_384.ms_in22k"
    board = build_leaderboards([*ours, seg_record("lora", 49.0, backbone=f"timm:{swin}", head="upernet")])[0]
    reported = board.table[board.table["Source"].str.startswith("reported")]
    assert len(reported) == 8 and set(reported["Head"]) == {"upernet"} and set(reported["Backbone"]) == {swin}
    lora = reported[reported["Adapter"] == "lora"].iloc[0]
    assert lora["ade20k"] == "50.34" and lora["Mean (tasks)"] == "–"
