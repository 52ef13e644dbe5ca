"""Matrix specs and their cells: reading, checking, expanding (no training here)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from adaptbench.errors import AdaptbenchError
from adaptbench.runner.cells import cell_id, choose_grid_point, search_groups
from helpers import in_order_executor
from adaptbench.runner.spec import load_spec
from adaptbench.tasks.groups import task_groups
from adaptbench.runner.train import RunConfig, record_path_for, resolved_config, start_record

REPO = Path(__file__).resolve().parent.parent


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


BASIC = """
    name: demo
    backbones: [vit_tiny_test]
    tasks: [micro/digits, micro/count]
    adapters:
      - linear
      - name: lora
        label: lora_r2
        options: {r: 2}
        train: {lr: 0.005}
        grid: {weight_decay: [0.0, 0.01], options.alpha: [2, 4]}
    seeds: 2
    train: {epochs: 3, lr: 0.001, batch_size: 32}
"""


def test_spec_resolves_names_seeds_and_defaults(tmp_path):
    spec = load_spec(write(tmp_path / "demo.yaml", BASIC))
    assert spec.name == "demo"
    assert spec.tasks == ("micro/digits", "micro/count")
    assert spec.seeds == (0, 1)
    assert [a.label for a in spec.adapters] == ["linear", "lora_r2"]
    assert spec.out == Path("results/demo")
    assert spec.leaderboard_name == "demo" and spec.leaderboard_formats == ("md", "csv", "tex", "html")


def test_cells_apply_spec_then_adapter_then_grid_settings(tmp_path):
    spec = load_spec(write(tmp_path / "demo.yaml", BASIC))
    groups = search_groups(spec)
    assert len(groups) == 4  # 2 tasks x 2 adapters
    lora = next(g for g in groups if g.adapter.label == "lora_r2" and g.task == "micro/count")
    tune = lora.tune_cells()
    assert len(tune) == 4  # 2 weight decays x 2 alphas, on the first seed only
    assert {c.config.seed for c in tune} == {0} and {c.stage for c in tune} == {"tune"}
    first = tune[0].config
    assert (first.lr, first.weight_decay, first.epochs, first.batch_size) == (0.005, 0.0, 3, 32)
    assert first.adapter_options == {"r": 2, "alpha": 2}
    finals = lora.final_cells({"weight_decay": 0.01, "options.alpha": 4})
    assert [c.config.seed for c in finals] == [0, 1]
    assert finals[1].config.weight_decay == 0.01 and finals[1].config.adapter_options == {"r": 2, "alpha": 4}
    linear = next(g for g in groups if g.adapter.label == "linear")
    assert linear.tune_cells() == [] and linear.final_cells({})[0].config.lr == 0.001


def test_recipes_and_backbone_options_layer_spec_then_backbone_then_adapter(tmp_path):
    spec = load_spec(write(tmp_path / "demo.yaml", """
        recipe: noah
        backbone_options: {drop_path: 0.1, normalization: imagenet}
        backbones:
          - vit_tiny_test
          - {name: clip_tiny_test, options: {normalization: inception}}
        tasks: [micro/digits]
        adapters:
          - linear
          - {name: ssf, recipe: ssf, backbone_options: {drop_path: 0.0, normalization: none}}
    """))
    cells = {(g.backbone.name, g.adapter.label): g.final_cells({})[0] for g in search_groups(spec)}
    options = {key: cell.config.backbone_options for key, cell in cells.items()}
    assert (options["vit_tiny_test", "linear"].drop_path, options["vit_tiny_test", "linear"].normalization) \
        == (0.1, "imagenet")
    assert options["clip_tiny_test", "linear"].normalization == "inception"  # the entry's own beats the spec's
    assert (options["clip_tiny_test", "ssf"].drop_path, options["clip_tiny_test", "ssf"].normalization) == (0.0, "none")
    assert cells["vit_tiny_test", "linear"].annotations["recipe"] == "noah"
    assert cells["vit_tiny_test", "ssf"].annotations["recipe"] == "ssf"
    assert start_record(cells["vit_tiny_test", "ssf"].config,
                        cells["vit_tiny_test", "ssf"].annotations).run_info.matrix["recipe"] == "ssf"


@pytest.mark.parametrize(("text", "expected"), [
    ("backbone_options: {drop_path: 1.5}\n", r"demo.yaml:4: backbone_options.drop_path: expected"),
    ("backbone_options: {normalization: imagnet}\n", r"demo.yaml:4: backbone_options.normalization: expected"),
    ("recipe: [noah]\n", r"demo.yaml:4: recipe: expected a recipe name"),
    ("backbone_options: {img_size: 64}\n", r"demo.yaml:4: backbone_options.img_size: backbone option img_size"),
])
def test_bad_recipes_and_backbone_options_name_their_line(tmp_path, text, expected):
    path = write(tmp_path / "demo.yaml", "backbones: [clip_tiny_test]\ntasks: [micro]\nadapters: [linear]\n" + text)
    with pytest.raises(AdaptbenchError, match=expected):
        load_spec(path)


def test_cell_id_is_the_run_id_of_the_resolved_config(tmp_path):
    from adaptbench.registry import TASKS
    from adaptbench.records import run_id

    config = RunConfig(task="micro/digits", backbone="vit_tiny_test", adapter="lora", epochs=2)
    assert cell_id(config) == run_id(resolved_config(config, TASKS.get("micro/digits")))
    assert cell_id(config) == cell_id(RunConfig(task="micro/digits", backbone="vit_tiny_test", adapter="lora", epochs=2))
    assert cell_id(config) != cell_id(RunConfig(task="micro/digits", backbone="vit_tiny_test", adapter="lora", epochs=3))


def test_a_bumped_code_version_gives_new_cell_ids_so_resume_runs_them_again(tmp_path, monkeypatch):
    """Changing a method's maths (its ``version``) must not let old records stand for the new code."""
    from adaptbench.adapters import adapter_class
    from adaptbench.tasks.kinds import TaskKind

    spec = load_spec(write(tmp_path / "demo.yaml", BASIC))
    cells = [cell for group in search_groups(spec) for cell in group.final_cells({})]
    before = {cell.cell_id for cell in cells}
    lora = adapter_class("lora")
    monkeypatch.setattr(lora, "version", lora.version + 1)
    after_adapter = {cell.cell_id for cell in cells}
    changed = {cell.cell_id for cell in cells if cell.config.adapter == "lora"}
    assert changed.isdisjoint(before) and len(before & after_adapter) == len(cells) - len(changed)
    monkeypatch.setattr(TaskKind, "version", TaskKind.version + 1)  # every kind's
    assert {cell.cell_id for cell in cells}.isdisjoint(before | after_adapter)


def test_the_policy_is_recorded_but_not_part_of_the_cell_id(tmp_path):
    spec = load_spec(write(tmp_path / "demo.yaml", BASIC + "    policy: {deterministic: false, validation: every_epoch}\n"))
    plain = load_spec(write(tmp_path / "plain.yaml", BASIC))
    assert spec.policy.validation == "every_epoch" and not spec.policy.deterministic
    ids = [cell.cell_id for group in search_groups(spec) for cell in group.tune_cells()]
    assert ids == [cell.cell_id for group in search_groups(plain) for cell in group.tune_cells()]


def test_include_merges_mappings_and_replaces_lists(tmp_path):
    write(tmp_path / "base.yaml", """
        backbones: [vit_tiny_test]
        tasks: [micro]
        adapters: [linear, bitfit]
        train: {epochs: 5, lr: 0.01}
    """)
    spec = load_spec(write(tmp_path / "child.yaml", """
        include: base.yaml
        adapters: [lora]
        train: {lr: 0.002}
    """))
    assert spec.name == "child"
    assert [a.name for a in spec.adapters] == ["lora"]
    assert spec.train == {"epochs": 5, "lr": 0.002}
    assert len(spec.tasks) == 7


def test_task_groups_cover_each_benchmark_and_vtab_group():
    groups = task_groups()
    assert len(groups["vtab1k"]) == 19 and len(groups["fgvc"]) == 5 and len(groups["micro"]) == 7
    assert len(groups["vtab1k/natural"]) == 7 and len(groups["vtab1k/specialized"]) == 4
    assert len(groups["vtab1k/structured"]) == 8


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("backbones: [vit_tiny_test]\ntasks: [micro]\nadapters: [linear]\nepochs: 3\n",
         r"demo.yaml:4: epochs: unknown key; trainer settings go under train"),
        ("backbones: [vit_tiny_test]\ntasks: [micro]\nadapters: [linear]\ntrain:\n  lr: fast\n",
         r"demo.yaml:5: train.lr: expected a positive number, got 'fast'"),
        ("backbones: [vit_tiny_test]\ntasks: [micro]\nadapters:\n  - linear\n  - name: lorra\n",
         r"demo.yaml:5: adapters\[1\].name: unknown adapter 'lorra' \(did you mean 'lora'"),
        ("backbones: [vit_tiny_test]\ntasks: [micro, vtab]\nadapters: [linear]\n",
         r"demo.yaml:2: tasks\[1\]: unknown task or group 'vtab'"),
        ("backbones: [vit_tiny_tset]\ntasks: [micro]\nadapters: [linear]\n",
         r"demo.yaml:1: backbones\[0\].name: unknown backbone 'vit_tiny_tset' \(did you mean 'vit_tiny_test'"),
        # only what the registry accepts: a bare timm name is not a backbone name (timm:<name> is)
        ("tasks: [micro]\nadapters: [linear]\nbackbones: [vit_tiny_patch16_224]\n",
         r"demo.yaml:3: backbones\[0\].name: unknown backbone 'vit_tiny_patch16_224'.*adaptbench ls backbones"),
        ("tasks: [micro]\nadapters: [linear]\nbackbones:\n  - vit_tiny_test\n  - {name: 'timm:vit_nope'}\n",
         r"demo.yaml:5: backbones\[1\].name: unknown timm model 'vit_nope'"),
        ("backbones: [vit_tiny_test]\ntasks: [micro]\nadapters: [linear]\ngrid: {lr: 0.1}\n",
         r"demo.yaml:4: grid.lr: expected a non-empty list of values, got 0.1"),
        ("backbones: [vit_tiny_test]\ntasks: [micro]\nadapters: [linear]\ngrid: {momentum: [0.9]}\n",
         r"demo.yaml:4: grid.momentum: unknown grid key"),
        ("backbones: [vit_tiny_test]\ntasks: [micro]\nadapters: [linear]\nseeds: [0, 0]\n",
         r"demo.yaml:4: seeds: expected a count or a list of distinct integers"),
        ("backbones: [vit_tiny_test]\ntasks: [micro]\nadapters: [lora, {name: lora}]\n",
         r"demo.yaml:3: adapters\[1\]: label 'lora' is used twice"),
        ("backbones: [vit_tiny_test]\ntasks: [micro]\nadapters: [lora, {name: lora, label: again}]\n",
         r"demo.yaml:3: adapters\[1\]: 'again' has the same adapter, options and train settings as 'lora'"),
        ("backbones: [vit_tiny_test]\nadapters: [linear]\n", r"demo.yaml: missing key 'tasks'"),
        ("backbones: [vit_tiny_test]\ntasks: [micro\n", r"demo.yaml:3: not valid YAML"),
        ("- just\n- a list\n", r"demo.yaml: expected a mapping of keys"),
    ],
)
def test_bad_specs_name_file_line_key_and_expectation(tmp_path, text, expected):
    path = tmp_path / "demo.yaml"
    path.write_text(text)
    with pytest.raises(AdaptbenchError, match=expected):
        load_spec(path)


def test_include_cycles_and_missing_files_are_named(tmp_path):
    write(tmp_path / "a.yaml", "include: b.yaml\n")
    write(tmp_path / "b.yaml", "include: a.yaml\n")
    with pytest.raises(AdaptbenchError, match=r"include cycle .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_spec(tmp_path / "a.yaml")
    write(tmp_path / "c.yaml", "include: nowhere.yaml\n")
    with pytest.raises(AdaptbenchError, match=r"spec file .*nowhere.yaml does not exist"):
        load_spec(tmp_path / "c.yaml")


def test_errors_in_an_included_file_point_at_that_file(tmp_path):
    write(tmp_path / "base.yaml", "train:\n  epochs: -1\n")
    child = write(tmp_path / "child.yaml", "include: base.yaml\nbackbones: [vit_tiny_test]\ntasks: [micro]\n"
                                           "adapters: [linear]\n")
    with pytest.raises(AdaptbenchError, match=r"base.yaml:2: train.epochs: expected an integer >= 0 or null, got -1"):
        load_spec(child)


def _tune_record(out: Path, cell, score: float | None) -> None:

    record = start_record(cell.config, cell.annotations)
    if score is None:
        record.mark_failed("boom")
    else:
        record.mark_success(metrics={"val200": {"top1": score}}, primary_metric="top1",
                            higher_is_better=True, data={"eval_split": "val200"})
    record.write(record_path_for(out, cell.cell_id))


def test_grid_search_picks_the_best_val_score_and_ties_go_to_the_first(tmp_path):
    spec = load_spec(write(tmp_path / "demo.yaml", BASIC))
    group = next(g for g in search_groups(spec) if g.has_grid)
    tune = group.tune_cells()
    assert choose_grid_point(group, tmp_path) is None  # nothing run yet
    for cell, score in zip(tune, [0.5, 0.7, None, 0.7]):
        _tune_record(tmp_path, cell, score)
    point, selection = choose_grid_point(group, tmp_path)
    assert point == tune[1].annotations["grid_point"] == {"weight_decay": 0.0, "options.alpha": 4}
    assert selection["chosen_run_id"] == tune[1].cell_id
    assert [t["score"] for t in selection["tried"]] == [0.5, 0.7, 0.7]  # the failed point is not compared


def test_backbone_names_are_the_registrys(tmp_path):
    spec = load_spec(write(tmp_path / "demo.yaml", """
        backbones: [vit_tiny_test, "timm:vit_tiny_patch16_224", {name: vit_micro, weights: "random:3"}]
        tasks: [micro/digits]
        adapters: [linear]
    """))
    assert [(b.name, b.weights) for b in spec.backbones] == [
        ("vit_tiny_test", None), ("timm:vit_tiny_patch16_224", None), ("vit_micro", "random:3")]


def test_shipped_specs_load(tmp_path):
    from adaptbench.adapters import adapter_class

    for path in sorted((REPO / "benchmarks").glob("*.yaml")):
        spec = load_spec(path)
        assert spec.name == path.stem
        for entry in spec.adapters:  # every adapter's options are valid ones (video specs: the papers' settings)
            adapter_class(entry.name).config_class.from_dict(dict(entry.options), adapter=entry.name)
    vtab = load_spec(REPO / "benchmarks" / "vtab1k.yaml")
    assert len(vtab.tasks) == 19 and vtab.seeds == (0, 1, 2)
    assert vtab.backbones[0].name == "timm:vit_base_patch16_224.orig_in21k" and vtab.recipe == "noah"
    assert vtab.backbone_options == {"drop_path": 0.1, "normalization": "imagenet"}
    labels = {entry.label: entry for entry in vtab.adapters}
    assert labels["adaptformer"].options == {"bottleneck": 8} and len(labels["adaptformer"].grid_points()) == 5
    assert vtab.recipe_of(labels["ssf"]) == "ssf" and vtab.recipe_of(labels["lora"]) == "noah"
    assert load_spec(REPO / "benchmarks" / "vtab1k_augreg.yaml").backbones[0].name.endswith("augreg_in21k")
    for recipe in sorted((REPO / "benchmarks" / "recipes").glob("*.yaml")):  # includable on their own
        load_spec(write(tmp_path / f"{recipe.stem}.yaml", f"include: {recipe}\nbackbones: [vit_tiny_test]\n"
                                                         "tasks: [micro]\nadapters: [linear]\n"))
    micro = load_spec(REPO / "benchmarks" / "micro.yaml")
    assert len(micro.adapters) >= 6 and len(micro.tasks) >= 6


def scripted_executor(scores):
    """An executor that writes made-up records instead of training: MatrixRun's logic alone.

    ``scores`` maps (adapter label, stage, lr) to the score its cells get; None fails the cell.
    Its ``ran`` lists the cells run, in order.
    """
    from adaptbench.runner.jobs import CellEvent, CellOutcome

    def finish(job, on_event):
        on_event(CellEvent(job.cell_id, "start", 0))
        executor.ran.append(job.cell_id)
        config = job.config
        score = scores[(job.annotations["adapter_label"], config.stage, config.lr)]
        record = start_record(config, job.annotations)
        split = "val200" if config.stage == "tune" else "test"
        if score is None:
            record.mark_failed("scripted failure")
        else:
            record.mark_success(stage=config.stage, metrics={split: {"top1": score}},
                                primary_metric="top1", higher_is_better=True, data={"eval_split": split})
        record.write(record_path_for(job.place.out_dir, job.cell_id))
        return (CellOutcome(job.cell_id, "failed", "scripted failure") if score is None
                else CellOutcome(job.cell_id, "success", score=score))

    executor = in_order_executor(finish)
    executor.ran = []
    return executor

    def close(self):
        pass


def _task(name):
    from adaptbench.registry import TASKS

    return TASKS.get(name)


def test_matrix_run_searches_then_runs_finals_and_resumes_without_repeating(tmp_path):
    from rich.console import Console

    from adaptbench.runner.matrix import MatrixOptions, MatrixRun

    spec = load_spec(write(tmp_path / "m.yaml", """
        backbones: [vit_tiny_test]
        tasks: [micro/digits]
        adapters:
          - linear
          - {name: lora, grid: {lr: [0.001, 0.01]}}
          - {name: lora, label: broken, options: {r: 2}, grid: {lr: [0.001]}}
        seeds: [0, 1]
    """))
    scores = {("linear", "final", 0.001): 0.5, ("lora", "tune", 0.001): 0.6, ("lora", "tune", 0.01): 0.8,
              ("lora", "final", 0.01): 0.9, ("broken", "tune", 0.001): None}
    options = MatrixOptions(out=tmp_path / "results", leaderboard=False)
    executor = scripted_executor(scores)
    summary = MatrixRun(spec, options, executor, Console(quiet=True)).run()
    # linear: 2 finals; lora: 2 tune + 2 finals at the chosen lr; broken: 1 tune (fails), 2 finals not run
    assert (summary.cells, summary.ran, summary.succeeded, summary.failed) == (9, 7, 6, 3)
    finals = [json.loads(p.read_text()) for p in summary.final_records]
    lora = [r for r in finals if r["run_info"]["matrix"]["adapter_label"] == "lora"]
    assert [r["run_info"]["config"]["lr"] for r in lora] == [0.01, 0.01]
    broken = [r for r in finals if r["run_info"]["matrix"]["adapter_label"] == "broken"]
    assert [r["train_info"]["status"] for r in broken] == ["failed", "failed"]
    assert "hyper-parameter search failed" in broken[0]["train_info"]["error"]

    again = scripted_executor(scores)
    summary = MatrixRun(spec, options, again, Console(quiet=True)).run()
    assert again.ran == []
    assert (summary.skipped, summary.succeeded, summary.failed) == (7, 6, 3)  # the failed search is recorded again

    retry = scripted_executor({**scores, ("broken", "tune", 0.001): 0.7, ("broken", "final", 0.001): 0.75})
    summary = MatrixRun(spec, MatrixOptions(out=tmp_path / "results", leaderboard=False, retry_failed=True),
                        retry, Console(quiet=True)).run()
    assert len(retry.ran) == 3 and summary.failed == 0 and summary.succeeded == 9
