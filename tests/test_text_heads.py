"""CLIP's text side: the text tower, cached class embeddings, the zero-shot and text-initialised
heads, head options, the few-shot protocol's splits, shots in specs, WiSE-FT."""

from __future__ import annotations

import dataclasses
import pytest
import torch
import torch.nn.functional as F

from adaptbench.backbones import load_backbone
from adaptbench.backbones.families.clip import tiny_clip_model
from adaptbench.config import RunConfig
from adaptbench.errors import AdaptbenchError
from adaptbench.records import RunRecord
from adaptbench.registry import TASKS
from adaptbench.runner.train import RunPlace, run
from adaptbench.tasks import text_heads
from adaptbench.tasks.heads import build_head, head_checkpoint_state, load_head_state
from helpers import adapter_or_skip

TEXTURE = "micro/texture"


def _spec(**changes):
    return dataclasses.replace(TASKS.get(TEXTURE), **changes)


def test_the_text_tower_is_open_clips_encode_text_and_frozen():
    tower = load_backbone("clip_tiny_test").text_tower()
    model, tokenizer = tiny_clip_model()
    tokens = tokenizer(["a photo of stripes.", "dots", "a much longer sentence about a checkerboard texture"])
    with torch.no_grad():
        assert torch.allclose(tower.encode(tokens), model.encode_text(tokens), atol=1e-6)
    assert not any(param.requires_grad for param in tower.parameters())
    assert tower.embed_dim == 16 and tower.context_length == 16
    assert tower.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()))


def test_the_zero_shot_head_equals_clips_own_logits_with_one_template():
    backbone = load_backbone("clip_tiny_test")
    spec = _spec(templates=("a photo of {}.",))
    head = build_head("zeroshot_text", backbone, spec)
    model, tokenizer = tiny_clip_model()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        texts = tokenizer([f"a photo of {name}." for name in spec.class_names])
        expected, _ = model.get_logits(images, texts)
        assert torch.allclose(head(backbone(images)), expected, atol=1e-4)
    assert sum(p.numel() for p in head.parameters() if p.requires_grad) == 0


def test_class_embeddings_are_a_normalised_prompt_ensemble_computed_once_then_read_from_the_cache(monkeypatch):
    backbone = load_backbone("clip_tiny_test")
    names, templates = ("stripes", "dots"), ("a photo of {}.", "{} texture")
    embeddings, scale = text_heads.class_text_embeddings(backbone, names, templates)
    tower = backbone.text_tower()
    with torch.no_grad():
        per_template = F.normalize(tower.encode_texts([t.format(n) for n in names for t in templates]), dim=-1)
    expected = F.normalize(per_template.reshape(2, 2, -1).mean(1), dim=-1)
    assert torch.allclose(embeddings, expected, atol=1e-6)
    monkeypatch.setattr(type(backbone), "text_tower", lambda self: pytest.fail("the cache was not used"))
    again, again_scale = text_heads.class_text_embeddings(backbone, names, templates)
    assert torch.equal(again, embeddings) and again_scale == pytest.approx(scale)


def test_the_text_initialised_linear_head_predicts_as_zero_shot_before_training():
    backbone = load_backbone("clip_tiny_test")
    spec = TASKS.get(TEXTURE)
    zero_shot, linear = build_head("zeroshot_text", backbone, spec), build_head("text_linear", backbone, spec)
    features = backbone(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(zero_shot(features).argmax(-1), linear(features).argmax(-1))
    assert torch.equal(linear.bias, torch.zeros_like(linear.bias))


@pytest.mark.parametrize("changes, message", [
    (dict(class_names=()), "has no class names"),
    (dict(templates=("a photo of a texture",)), "exactly one '{}'"),
    (dict(templates=("{} and {}",)), "exactly one '{}'"),
])
def test_bad_prompts_are_one_line(changes, message):
    with pytest.raises(AdaptbenchError, match=message) as caught:
        build_head("zeroshot_text", load_backbone("clip_tiny_test"), _spec(**changes))
    assert "\n" not in str(caught.value)


def test_head_options_are_checked_in_one_line():
    backbone = load_backbone("clip_tiny_test")
    with pytest.raises(AdaptbenchError, match="no option 'frozen'"):
        build_head("zeroshot_text", backbone, TASKS.get(TEXTURE), options={"frozen": True})
    with pytest.raises(AdaptbenchError, match="takes no options"):
        build_head("linear", backbone, TASKS.get(TEXTURE), options={"r": 2})
    trainable = build_head("zeroshot_text", backbone, TASKS.get(TEXTURE), options={"trainable": "true"})
    assert sum(p.numel() for p in trainable.parameters() if p.requires_grad) == 6 * 16


def test_frozen_prefixes_stay_out_of_checkpoints_and_load_back():
    head = torch.nn.Module()
    head.text = torch.nn.Linear(2, 2).requires_grad_(False)
    head.text.lora = torch.nn.Linear(2, 1)  # trained, under a frozen prefix: kept
    head.ctx = torch.nn.Parameter(torch.ones(3))
    head.frozen_prefixes = ("text.",)
    state = head_checkpoint_state(head)
    assert sorted(state) == ["ctx", "text.lora.bias", "text.lora.weight"]
    load_head_state(head, {"ctx": torch.zeros(3), "text.lora.weight": torch.zeros(1, 2),
                           "text.lora.bias": torch.zeros(1)})
    assert torch.equal(head.ctx, torch.zeros(3))
    with pytest.raises(RuntimeError, match="unexpected"):
        load_head_state(head, {"ctx": torch.zeros(3), "other": torch.zeros(1)})


def test_a_text_head_on_a_backbone_without_a_text_tower_is_recorded_not_applicable(tmp_path):
    config = RunConfig(task=TEXTURE, backbone="vit_micro", adapter="linear", head="zeroshot_text", epochs=0)
    with pytest.raises(AdaptbenchError, match="no text tower"):
        run(config, RunPlace(out_dir=tmp_path, num_workers=0))
    record = RunRecord.read(next(tmp_path.glob("*.json")))
    assert record.status == "n/a" and "no text tower" in record.train_info.error


def test_training_nothing_is_refused_in_one_line(tmp_path):
    config = RunConfig(task=TEXTURE, backbone="clip_tiny_test", adapter="linear", head="zeroshot_text", epochs=1)
    with pytest.raises(AdaptbenchError, match="trains nothing; evaluate it with epochs: 0"):
        run(config, RunPlace(out_dir=tmp_path, num_workers=0))


def test_few_shot_runs_train_on_k_per_class_validate_on_min_k_4_and_test_on_everything(tmp_path):
    place = RunPlace(out_dir=tmp_path, num_workers=0, save_adapter=False)
    tune = run(RunConfig(task=TEXTURE, backbone="clip_tiny_test", adapter="linear", head="text_linear", epochs=1,
                         shots=8, stage="tune", batch_size=16), place).record
    assert tune.train_info.data["train_size"] == 6 * 8 and tune.train_info.data["eval_size"] == 6 * 4
    final = run(RunConfig(task=TEXTURE, backbone="clip_tiny_test", adapter="linear", head="text_linear", epochs=1,
                          shots=2, batch_size=16), place).record
    assert final.train_info.data["train_size"] == 6 * 2 and final.train_info.data["eval_size"] == 500
    zero_shot = run(RunConfig(task=TEXTURE, backbone="clip_tiny_test", adapter="linear", head="zeroshot_text",
                              epochs=0), place).record
    assert zero_shot.train_info.data["train_size"] == 0  # an untrained run never decodes its training split


def test_wise_ft_endpoints_are_the_initial_and_the_trained_model(tmp_path):
    place = RunPlace(out_dir=tmp_path, num_workers=0, save_adapter=False)
    common = dict(task=TEXTURE, backbone="clip_tiny_test", batch_size=32, shots=4)
    trained = run(RunConfig(**common, adapter="lora", head="text_linear", epochs=2, lr=0.05,
                            wise_ft=[0.0, 0.5, 1.0]), place).record
    scores = trained.train_info.metrics["test"]
    zero_shot = run(RunConfig(task=TEXTURE, backbone="clip_tiny_test", adapter="linear", head="zeroshot_text",
                              epochs=0), place).record.train_info.metrics["test"]["top1"]
    assert scores["top1@wise1"] == pytest.approx(scores["top1"])
    assert scores["top1@wise0"] == pytest.approx(zero_shot)  # text-initialised head, LoRA is zero at init
    assert "top1@wise0.5" in scores and "loss@wise0.5" not in scores


def test_a_spec_runs_one_cell_per_k_and_the_zero_shot_row_once(tmp_path):
    from adaptbench.runner.cells import search_groups
    from adaptbench.runner.spec import load_spec

    path = tmp_path / "fs.yaml"
    path.write_text("backbones: [clip_tiny_test]\ntasks: [micro/texture]\nseeds: 2\nshots: [1, 4]\n"
                    "adapters:\n  - {name: linear, label: zero-shot, train: {head: zeroshot_text, epochs: 0}}\n"
                    "  - {name: linear, label: tip, train: {head: text_linear}, grid: {lr: [0.1, 0.01]}}\n"
                    "train: {epochs: 1}\n")
    groups = search_groups(load_spec(path))
    assert [(g.adapter.label, g.shots) for g in groups] == [("zero-shot", None), ("tip", 1), ("tip", 4)]
    cells = [cell for g in groups for cell in g.tune_cells() + g.final_cells({"lr": 0.1})]
    assert sorted((c.config.shots, c.stage) for c in cells if c.label == "tip") == sorted(
        [(1, "tune")] * 2 + [(4, "tune")] * 2 + [(1, "final")] * 2 + [(4, "final")] * 2)
    assert len({c.cell_id for c in cells}) == len(cells)


@pytest.mark.parametrize("text, message", [
    ("shots: [0]\n", "shots: expected a list of distinct integers >= 1"),
    ("shots: [1, 1]\n", "shots: expected a list of distinct integers >= 1"),
    ("train: {head: zeroshot_text, head_options: {frozen: 1}}\n", "head_options.frozen: head 'zeroshot_text' has no "
                                                                   "option 'frozen'"),
    ("train: {head: zeroshot_text}\ngrid: {head_options.trainable: [yes_please]}\n", "option trainable='yes_please': expected true or false"),
    ("train: {head_options: {trainable: true}}\n", "head options need a head"),
])
def test_bad_few_shot_and_head_option_keys_in_a_spec_name_their_line(tmp_path, text, message):
    from adaptbench.runner.spec import load_spec

    path = tmp_path / "bad.yaml"
    path.write_text("backbones: [clip_tiny_test]\ntasks: [micro/texture]\nadapters: [linear]\n" + text)
    with pytest.raises(AdaptbenchError, match=message) as caught:
        load_spec(path)
    assert str(caught.value).startswith(f"{path}:")


# -- every vision adapter on the CLIP image tower, against a text-initialised head -----------
def _adapter_names() -> list[str]:
    from adaptbench.registry import ADAPTERS

    return ADAPTERS.names()


@pytest.mark.parametrize("adapter_name", _adapter_names())
def test_every_adapter_trains_on_the_clip_image_tower_with_a_text_initialised_head(adapter_name):
    from adaptbench.adapters.hooks import LossContext
    from adaptbench.tasks.classification import ClassificationKind

    torch.manual_seed(0)
    backbone = load_backbone("clip_tiny_test")
    adapter = adapter_or_skip(adapter_name, backbone, "clip_tiny_test")
    task = TASKS.get(TEXTURE)
    head = build_head("text_linear", backbone, task)
    module = ClassificationKind().build_module(backbone, adapter, head, task,
                                               {"lr": 1e-2, "weight_decay": 0.0, "warmup_epochs": 0})
    inputs = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 2, 3])
    if adapter.identity_at_init:  # the adapted model starts as zero-shot CLIP
        zero_shot = build_head("zeroshot_text", backbone, task)
        with torch.no_grad():
            assert torch.equal(module(inputs).argmax(-1), zero_shot(backbone(inputs)).argmax(-1))
    optimizer = torch.optim.AdamW(module.trainable_parameters(), lr=1e-2)
    declared = adapter.trainable_parameters()
    before = {name: tensor.detach().clone() for name, tensor in declared.items()}
    module.train()
    adapter.on_train_start(2)
    for step in range(2):
        outputs = module(inputs)
        loss = module.task_loss(outputs, targets)
        extras = adapter.extra_loss(LossContext(inputs, outputs, targets, loss, module.forward, step, head))
        total = loss + sum(extras.values()) if extras else loss
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        adapter.on_train_batch_end(step)
    moved = [name for name, tensor in declared.items() if not torch.equal(tensor.detach(), before[name])]
    assert moved or not declared, f"no declared tensor of {adapter_name} changed in 2 steps"


def test_more_shots_than_the_smallest_class_holds_is_one_line_naming_the_class(tmp_path):
    config = RunConfig(task=TEXTURE, backbone="clip_tiny_test", adapter="linear", head="text_linear", epochs=1,
                       shots=1000)
    with pytest.raises(AdaptbenchError, match=r"shots 1000: class 0 of task 'micro/texture' has only \d+ training "
                                              r"samples; expected at least 1000 per class") as caught:
        run(config, RunPlace(out_dir=tmp_path, num_workers=0))
    assert "\n" not in str(caught.value)
