"""Few-shot leaderboards (k columns), published CoOp-protocol rows, and WiSE-FT columns.

Synthetic records: 2 CoOp tasks (dtd, eurosat) x 3 shots (1, 2, 4) x 3 seeds (1, 2, 3) x 3
rows on CLIP ViT-B/16 -- zero-shot CLIP (epochs 0, no shots), LoRA with the zero-shot text
head, and a linear probe. The scores are chosen so that every cell is worked out by hand in
the comments: a cell is the mean over the tasks, ± the sample std over seeds of the per-seed
mean over tasks.
"""

from __future__ import annotations

import io
import math

import pandas as pd
import pytest
from PIL import Image

from adaptbench.cli import main
from adaptbench.leaderboard import (
    build_leaderboards,
    render_latex,
    render_markdown,
    write_leaderboards,
)
from adaptbench.leaderboard.plot import fewshot_figure
from adaptbench.records import RunRecord, TaskInfo

CLIP_B16 = "clip:ViT-B-16/openai"
TASKS = ("coop/dtd", "coop/eurosat")
SHOTS = (1, 2, 4)
SEEDS = (1, 2, 3)
COOP_11 = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
           "sun397", "dtd", "eurosat", "ucf101")


def config(task: str, adapter: str, head: str, seed: int, shots: int | None, epochs: int,
           backbone: str = CLIP_B16) -> dict:
    """A resolved config as the runner writes it: ``shots`` absent when all data was used."""
    resolved = {"task": task, "backbone": backbone, "adapter": adapter, "adapter_options": {}, "weights": None,
                "backbone_options": {"grad_checkpointing": False}, "head": head, "seed": seed, "stage": "final",
                "epochs": epochs, "batch_size": 32, "lr": 2e-4, "weight_decay": 1e-2, "warmup_epochs": 0,
                "label_smoothing": 0.0, "pool": None, "precision": "32-true",
                "code_versions": {"adapter": 1, "kind": 1, "head": 1, "reader": 1}}
    if shots is not None:
        resolved["shots"] = shots
    return resolved


def record(task: str, label: str, seed: int, top1: float | None, *, shots: int | None, adapter: str = "lora",
           head: str = "zeroshot_text", epochs: int = 10, wise: dict[str, float] | None = None,
           backbone: str = CLIP_B16) -> RunRecord:
    """A final run record; ``top1`` in %, None: failed; ``wise``: {alpha: top1 in %}."""
    made = RunRecord.start(config(task, adapter, head, seed, shots, epochs, backbone),
                           task_info=TaskInfo(benchmark="coop", group="coop", num_classes=10),
                           annotations={"spec": "fewshot", "adapter_label": label})
    made.run_info.created_at = "2026-03-01T12:00:00+0000"
    if top1 is None:
        made.mark_failed("RuntimeError: loss is nan")
        return made
    metrics = {"top1": top1 / 100, **{f"top1@wise{alpha}": value / 100 for alpha, value in (wise or {}).items()}}
    made.mark_success(stage="final", primary_metric="top1", higher_is_better=True, metrics={"test": metrics},
                      data={"eval_split": "test"},
                      params={"trainable": 0 if adapter == "linear" else 184320, "head": 0,
                              "trainable_with_head": 0, "extra_inference": 0, "extra_inference_merged": 0,
                              "checkpoint_bytes": 1024},
                      train_images_per_s=100.0, peak_memory_bytes=2**30, peak_memory_kind="cuda_max_allocated",
                      wall_time_s=5.0)
    return made


def lora_top1(task: str, k: int, seed: int) -> float:
    # dtd 50, eurosat 60, +5 per doubling of k, +2 per seed: per-seed task means 55/57/59 (+5 per k step)
    return {"coop/dtd": 50, "coop/eurosat": 60}[task] + 5 * SHOTS.index(k) + 2 * (seed - 1)


def linear_top1(task: str, k: int, seed: int) -> float:
    # dtd 30 + 3 per seed, eurosat 40: per-seed task means 35/36.5/38 (+10 per k step)
    return {"coop/dtd": 30 + 3 * (seed - 1), "coop/eurosat": 40}[task] + 10 * SHOTS.index(k)


ZERO_SHOT = {"coop/dtd": [44, 45, 46], "coop/eurosat": [48, 48, 48]}  # per seed; task means 46/46.5/47


def fewshot_records(wise: bool = False) -> list[RunRecord]:
    records = [record(task, "zero_shot", seed, ZERO_SHOT[task][seed - 1], shots=None, adapter="linear", epochs=0)
               for task in TASKS for seed in SEEDS]
    for task in TASKS:
        for k in SHOTS:
            for seed in SEEDS:
                score = lora_top1(task, k, seed)
                interpolations = {"0": ZERO_SHOT[task][0], "0.5": score + 3, "1": score} if wise else None
                records.append(record(task, "lora", seed, score, shots=k, wise=interpolations))
                records.append(record(task, "linear", seed, linear_top1(task, k, seed), shots=k, adapter="linear",
                                      head="linear"))
    return records


@pytest.fixture(scope="module")
def board():
    [built] = build_leaderboards(fewshot_records())
    return built


def row(board, adapter: str, source: str = "ours") -> pd.Series:
    rows = board.table[(board.table["Adapter"] == adapter) & (board.table["Source"] == source)]
    assert len(rows) == 1, board.table
    return rows.iloc[0]


# -- the layout ----------------------------------------------------------------------------
def test_shots_are_columns_and_rows_leave_shots_out(board):
    assert list(board.table.columns[:9]) == ["Rank", "Adapter", "Backbone", "Head", "Source", "k=1", "k=2", "k=4",
                                             "Mean"]
    assert board.shots == [1, 2, 4] and board.k_columns == ["k=1", "k=2", "k=4"]
    assert "dtd" not in board.table.columns  # tasks are per-task tables, not columns
    assert sorted(board.table["Adapter"]) == ["linear", "lora", "zero_shot"]  # one row per method, not per k
    assert board.records_used == 2 * 3 + 2 * 3 * 3 * 2


def test_each_cell_is_the_mean_over_tasks_with_the_std_over_seeds_of_the_task_means(board):
    lora = row(board, "lora")
    # per-seed task means at k=1: 55, 57, 59 -> 57 ± 2; each doubling of k adds 5
    assert (lora["k=1"], lora["k=2"], lora["k=4"]) == ("57.00 ± 2.00", "62.00 ± 2.00", "67.00 ± 2.00")
    assert lora["Mean"] == "62.00 ± 2.00"  # per seed over k and tasks: 60, 62, 64
    linear = row(board, "linear")
    # per-seed task means at k=1: 35, 36.5, 38 -> 36.5 ± 1.5; +10 per k step
    assert (linear["k=1"], linear["k=2"], linear["k=4"]) == ("36.50 ± 1.50", "46.50 ± 1.50", "56.50 ± 1.50")
    assert linear["Mean"] == "46.50 ± 1.50"
    summary = board.summary.set_index("adapter")
    assert summary.loc["lora", "k=2"] == pytest.approx(62.0) and summary.loc["lora", "mean_tasks"] == pytest.approx(62)
    assert lora["Seeds"] == "3" and lora["Backbone"] == CLIP_B16 and lora["Head"] == "zeroshot_text"


def test_the_zero_shot_row_fills_every_k_column(board):
    zero = row(board, "zero_shot")
    # per seed (44+48)/2, (45+48)/2, (46+48)/2 = 46, 46.5, 47 -> 46.5 ± 0.5 whatever k
    assert [zero[column] for column in ("k=1", "k=2", "k=4", "Mean")] == ["46.50 ± 0.50"] * 4
    assert any("zero-shot" in note and "every k column" in note for note in board.notes)


def test_rank_by_the_mean_over_k(board):
    # lora 62; linear and zero-shot both 46.50: they share rank 2
    assert list(board.table["Adapter"]) == ["lora", "linear", "zero_shot"]
    assert list(board.table["Rank"]) == ["1", "2", "2"]
    assert any("per seed the mean over the tasks, then mean ± sample std" in note for note in board.notes)


def test_per_task_cells_are_kept_long(board):
    cells = board.per_task.set_index(["Adapter", "Task", "k"])
    assert cells.loc[("lora", "dtd", "1"), "Cell"] == "52.00 ± 2.00"  # 50, 52, 54
    assert cells.loc[("linear", "eurosat", "4"), "Cell"] == "60.00 ± 0.00"
    assert cells.loc[("zero_shot", "dtd", "4"), "Cell"] == "45.00 ± 1.00"
    assert cells.loc[("lora", "dtd", "1"), "seeds"] == 3
    assert len(board.per_task) == 3 * 2 * 3  # rows x tasks x k


def test_failed_and_missing_cells_read_as_on_other_boards():
    records = [r for r in fewshot_records()
               if not (r.config["task"] == "coop/eurosat" and r.config.get("shots") == 4
                       and r.config["head"] == "linear")]  # the linear probe never ran eurosat at k=4
    records.append(record("coop/dtd", "lora", 1, None, shots=2))  # a newer, failed run of one lora cell
    records[-1].run_info.created_at = "2026-03-02T12:00:00+0000"
    [built] = build_leaderboards(records)
    lora, linear = row(built, "lora"), row(built, "linear")
    assert lora["k=1"] == "57.00 ± 2.00" and lora["k=2"] == "failed" and lora["Mean"] == "failed"
    assert lora["Rank"] == "–"
    assert linear["k=4"] == "incomplete" and linear["Mean"] == "incomplete" and linear["k=1"] == "36.50 ± 1.50"
    assert f"lora | {CLIP_B16} | coop/dtd k=2 | seed 1 failed: RuntimeError: loss is nan" in built.warnings
    assert any(w.startswith(f"lora | {CLIP_B16} | coop/dtd k=2 | seed 1: kept the newest") for w in built.warnings)
    cells = built.per_task.set_index(["Adapter", "Task", "k"])
    assert cells.loc[("lora", "dtd", "2"), "Cell"] == "failed (1/3)" and cells.loc[("linear", "eurosat", "4"),
                                                                                    "Cell"] == "–"


def test_a_row_trained_on_all_the_data_gets_a_k_all_column_outside_the_mean():
    records = fewshot_records() + [record(task, "full", 1, 90.0, shots=None, adapter="full", head="linear")
                                   for task in TASKS]
    records += [record(task, "lora", 1, 80.0, shots=None) for task in TASKS]  # lora's config on all the data
    [built] = build_leaderboards(records)
    assert built.k_columns == ["k=1", "k=2", "k=4", "k=all"] and built.shots == [1, 2, 4]
    full = row(built, "full")
    assert full["k=all"] == "90.00" and full["k=1"] == "–" and full["Mean"] == "–"  # not run at any k
    assert row(built, "zero_shot")["k=all"] == "46.50 ± 0.50"
    lora = row(built, "lora")  # one config: one row, whatever the shots
    assert lora["k=all"] == "80.00" and lora["Mean"] == "62.00 ± 2.00"
    assert any(note.startswith("k=all: trained on the whole training set") for note in built.notes)


# -- published rows ------------------------------------------------------------------------
def all_coop_records(backbone: str = CLIP_B16) -> list[RunRecord]:
    """One seed on all 11 CoOp datasets: zero-shot 60, a linear probe 40 + 10 per k step."""
    records = []
    for name in COOP_11:
        task = f"coop/{name}"
        records.append(record(task, "zero_shot", 1, 60.0, shots=None, adapter="linear", epochs=0, backbone=backbone))
        records += [record(task, "linear", 1, 40.0 + 10 * SHOTS.index(k), shots=k, adapter="linear", head="linear",
                           backbone=backbone) for k in SHOTS]
    return records


def test_published_coop_rows_need_every_coop_task(board):
    assert not board.has_reported_rows  # 2 of the 11 datasets
    [note] = [note for note in board.notes if note.startswith("reported")]
    assert "left out" in note and "all 11 coop tasks" in note and "linear, zeroshot_clip" in note


def test_published_coop_rows_sit_in_their_k_columns_beside_matching_rows():
    [built] = build_leaderboards(all_coop_records())
    reported = built.table[built.table["Source"].str.startswith("reported")]
    # only the methods whose (backbone, head) we ran: zero-shot (zeroshot_text) and the linear probe (linear)
    assert sorted(reported["Adapter"]) == ["linear", "zeroshot_clip"] and set(reported["Backbone"]) == {CLIP_B16}
    zero = row(built, "zeroshot_clip", reported[reported["Adapter"] == "zeroshot_clip"]["Source"].iloc[0])
    assert [zero[c] for c in ("k=1", "k=2", "k=4", "Mean")] == ["65.36"] * 4  # "65.36 (all K)"
    probe = reported[reported["Adapter"] == "linear"].iloc[0]
    # 45.77, 56.92, 66.79 at k = 1, 2, 4; their mean over this board's k columns 56.49
    assert (probe["k=1"], probe["k=2"], probe["k=4"], probe["Mean"]) == ("45.77", "56.92", "66.79", "56.49")
    assert "CLIP-SVD README" in probe["Source"] and "uncertain" in probe["Source"] and probe["Rank"] == "–"
    assert row(built, "zero_shot")["k=2"] == "60.00" and row(built, "linear")["Mean"] == "50.00"
    assert list(built.table["Source"][:2]) == ["ours", "ours"]  # ours first, then the published rows
    assert any(note.startswith("reported: published means over all 11 coop tasks") for note in built.notes)


def test_no_published_coop_rows_on_another_backbone():
    [built] = build_leaderboards(all_coop_records(backbone="clip:ViT-B-32/openai"))
    assert not built.has_reported_rows and not any(note.startswith("reported") for note in built.notes)


# -- WiSE-FT -------------------------------------------------------------------------------
def test_wise_adds_a_column_per_alpha_for_rows_that_evaluated_them():
    records = fewshot_records(wise=True)
    [plain] = build_leaderboards(records)
    assert not plain.wise_columns and "α=0" not in plain.table.columns
    [built] = build_leaderboards(records, wise=True)
    assert built.wise_columns == ["α=0", "α=0.5", "α=1"]
    assert list(built.table.columns[8:12]) == ["Mean", "α=0", "α=0.5", "α=1"]
    lora = row(built, "lora")
    # alpha 0: dtd 44 and eurosat 48 at every k and seed -> 46 ± 0; alpha 0.5: the score + 3; alpha 1: the score
    assert (lora["α=0"], lora["α=0.5"], lora["α=1"]) == ("46.00 ± 0.00", "65.00 ± 2.00", "62.00 ± 2.00")
    assert lora["α=1"] == lora["Mean"]
    assert row(built, "linear")["α=0.5"] == "–" and row(built, "zero_shot")["α=0"] == "–"
    assert built.summary.set_index("adapter").loc["lora", "α=0.5"] == pytest.approx(65.0)
    [note] = [note for note in built.notes if "WiSE-FT" in note]
    assert "Wortsman" in note and "θ_α = (1-α)·θ_0 + α·θ_1" in note and "identity at init" in note


def test_wise_on_a_board_without_shots_and_a_run_lacking_an_alpha():
    records = [record(task, "lora", seed, 70.0 + seed, shots=None, wise={"0": 50.0, "1": 70.0 + seed})
               for task in TASKS for seed in (1, 2)]
    records.append(record("coop/dtd", "dora", 1, 60.0, shots=None, adapter="dora", wise={"1": 60.0}))
    records.append(record("coop/eurosat", "dora", 1, 62.0, shots=None, adapter="dora"))  # no interpolation
    [built] = build_leaderboards(records, wise=True)
    assert "Mean (tasks)" in built.table.columns and not built.shots
    lora = row(built, "lora")
    assert (lora["α=0"], lora["α=1"], lora["Mean (tasks)"]) == ("50.00 ± 0.00", "71.50 ± 0.71", "71.50 ± 0.71")
    dora = row(built, "dora")
    assert dora["α=1"] == "incomplete" and dora["α=0"] == "–" and dora["Mean (tasks)"] == "61.00"


def test_wise_without_any_interpolation_warns(board):
    [built] = build_leaderboards(fewshot_records(), wise=True)
    assert not built.wise_columns and any("no record of this board holds WiSE-FT" in w for w in built.warnings)


# -- formats, plot, CLI --------------------------------------------------------------------
def test_every_format_renders_a_few_shot_board(board, tmp_path):
    paths = write_leaderboards([board], tmp_path, "fs", ["md", "csv", "tex", "html"], generated_at="now")
    assert sorted(p.name for p in paths) == ["fs-tasks.csv", "fs.csv", "fs.html", "fs.md", "fs.png", "fs.tex"]
    csv = pd.read_csv(tmp_path / "fs.csv", dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(csv, board.table, check_dtype=False)
    tasks = pd.read_csv(tmp_path / "fs-tasks.csv", dtype={"k": str})
    assert list(tasks.columns) == ["Adapter", "Backbone", "Head", "Task", "k", "Cell", "mean", "std", "seeds"]
    assert tasks.set_index(["Adapter", "Task", "k"]).loc[("lora", "dtd", "1"), "mean"] == pytest.approx(52.0)
    markdown = (tmp_path / "fs.md").read_text()
    assert "| Rank | Adapter | Backbone | Head | Source | k=1 | k=2 | k=4 | Mean |" in markdown
    assert "### coop: per task" in markdown and "| Task | k=1 | k=2 | k=4 |" in markdown
    assert "| dtd | 52.00 ± 2.00 | 57.00 ± 2.00 | 62.00 ± 2.00 |" in markdown
    latex = (tmp_path / "fs.tex").read_text()
    assert "\\begin{tabular}" in latex and "57.00 $\\pm$ 2.00" in latex and "k=4" in latex
    page = (tmp_path / "fs.html").read_text()
    assert "<table" in page and "62.00 ± 2.00" in page and "shots per class" in page
    with Image.open(tmp_path / "fs.png") as png:
        assert png.size == (900, 576)
    assert render_markdown([board]) == markdown and render_latex([board]) == latex


def test_the_plot_is_accuracy_against_k_on_a_log2_axis(board):
    axes = fewshot_figure(board).axes[0]
    assert axes.get_xscale() == "log" and [t.get_text() for t in axes.get_xticklabels()] == ["1", "2", "4"]
    lines = {line.get_label().split(" ")[0]: line for line in axes.get_lines()}
    assert sorted(lines) == ["linear", "lora", "zero_shot"]
    assert list(lines["lora"].get_ydata()) == pytest.approx([57.0, 62.0, 67.0])
    assert list(lines["zero_shot"].get_ydata()) == pytest.approx([46.5] * 3)
    buffer = io.BytesIO()
    fewshot_figure(board).savefig(buffer, format="png")
    assert Image.open(io.BytesIO(buffer.getvalue())).format == "PNG"
    assert math.isclose(axes.get_xaxis().get_transform().base, 2)


def test_cli_wise_flag(tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    for index, made in enumerate(fewshot_records(wise=True)):
        made.write(folder / f"{index:03d}.json")
    assert main(["leaderboard", str(folder), "--format", "md", "--wise"]) == 0
    out = capsys.readouterr().out
    assert "| k=1 | k=2 | k=4 | Mean | α=0 | α=0.5 | α=1 |" in out
    assert main(["leaderboard", str(folder), "--format", "md"]) == 0
    assert "α=0" not in capsys.readouterr().out


def test_spec_leaderboard_wise_key(tmp_path):
    from adaptbench.errors import AdaptbenchError
    from adaptbench.runner.spec import load_spec

    spec = tmp_path / "fs.yaml"
    spec.write_text("backbones: [vit_micro]\nadapters: [linear]\ntasks: [micro/digits]\nleaderboard: {wise: true}\n")
    assert load_spec(spec).leaderboard_wise is True
    spec.write_text("backbones: [vit_micro]\nadapters: [linear]\ntasks: [micro/digits]\n")
    assert load_spec(spec).leaderboard_wise is False
    spec.write_text("backbones: [vit_micro]\nadapters: [linear]\ntasks: [micro/digits]\nleaderboard: {wise: yes-ish}\n")
    with pytest.raises(AdaptbenchError, match="leaderboard.wise: expected true or false"):
        load_spec(spec)
