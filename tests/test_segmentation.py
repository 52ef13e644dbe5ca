"""The segmentation kind: metrics as mmseg computes them (checked by hand), heads, SAM's decoder."""

from __future__ import annotations

import pytest
import torch

from adaptbench.backbones import load_backbone
from adaptbench.errors import AdaptbenchError
from adaptbench.tasks.catalog import TaskSpec
from adaptbench.tasks.heads import build_head
from adaptbench.datasets.masks import IGNORE_INDEX
from adaptbench.tasks.modules.segmentation import class_iou, soft_dice_loss
from adaptbench.tasks.segmentation import SegmentationKind
from helpers import adapter_or_skip

I = IGNORE_INDEX


def spec(classes: int = 3, binary: bool = False) -> TaskSpec:
    return TaskSpec("test/seg", "segmentation", "mmseg", "x", classes, "test", "test",
                    options={"binary": binary} if binary else {})


def metric_values(kind_spec: TaskSpec, batches) -> dict[str, float]:
    metrics = SegmentationKind().metrics(kind_spec)
    for predictions, targets in batches:
        metrics.update(predictions, targets)
    return {name: float(value) for name, value in metrics.compute().items()}


def test_miou_macc_aacc_match_a_hand_computation_over_the_split_with_ignored_pixels():
    # two images of 2x3 pixels, 3 classes; 255 pixels are ignored whatever is predicted there
    targets = [torch.tensor([[[0, 0, 1], [1, I, 2]]]), torch.tensor([[[0, 1, 1], [I, I, 0]]])]
    predictions = [torch.tensor([[[0, 1, 1], [1, 2, 0]]]), torch.tensor([[[0, 1, 0], [1, 2, 0]]])]
    # counted pixels (target, prediction): image 1: (0,0) (0,1) (1,1) (1,1) (2,0); image 2: (0,0) (1,1) (1,0) (0,0)
    # class 0: TP 3, FP 2 (targets 2, 1 predicted 0), FN 1 -> IoU 3/6
    # class 1: TP 3, FP 1, FN 1 -> 3/5 ; class 2: TP 0, FP 0, FN 1 -> 0/1
    values = metric_values(spec(), zip(predictions, targets))
    assert values["miou"] == pytest.approx((3 / 6 + 3 / 5 + 0) / 3)
    # per-class accuracy: class 0 3/4, class 1 3/4, class 2 0/1 ; overall 6/9
    assert values["macc"] == pytest.approx((3 / 4 + 3 / 4 + 0) / 3)
    assert values["aacc"] == pytest.approx(6 / 9)


def test_miou_is_one_confusion_matrix_over_the_split_not_a_mean_of_per_image_ious():
    # image 1 is perfect on class 1 (1 pixel), image 2 misses a big class-1 region: the split's
    # IoU of class 1 is 1/5, a per-image mean would be (1 + 0) / 2
    targets = [torch.tensor([[[1, 0]]]), torch.tensor([[[1, 1, 1, 1, 0]]])]
    predictions = [torch.tensor([[[1, 0]]]), torch.tensor([[[0, 0, 0, 0, 0]]])]
    values = metric_values(spec(2), zip(predictions, targets))
    iou0, iou1 = 2 / 6, 1 / 5
    assert values["miou"] == pytest.approx((iou0 + iou1) / 2)


def test_a_class_absent_from_targets_and_predictions_is_left_out_of_the_mean_and_the_per_class_record():
    targets, predictions = torch.tensor([[[0, 1]]]), torch.tensor([[[0, 1]]])
    assert metric_values(spec(3), [(predictions, targets)])["miou"] == pytest.approx(1.0)
    confusion = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    assert class_iou(confusion, ("a", "b", "c")) == {"a": 1.0, "b": 1.0}


def test_binary_dice_is_per_image_foreground_dice_ignoring_255_and_empty_images():
    targets = torch.tensor([[[1, 1, 0, I]], [[0, 0, 0, 0]], [[1, 0, 0, 0]]])
    predictions = torch.tensor([[[1, 0, 0, 1]], [[0, 0, 0, 0]], [[1, 1, 0, 0]]])
    values = metric_values(spec(2, binary=True), [(predictions, targets)])
    # image 1: TP 1, FP 0 (the ignored pixel does not count), FN 1 -> 2/3; image 2: no foreground
    # anywhere -> left out; image 3: TP 1, FP 1 -> 2/3
    assert values["dice"] == pytest.approx(2 / 3)


def test_soft_dice_loss_is_zero_for_a_confident_perfect_prediction_and_ignores_255():
    masks = torch.tensor([[[1, 0], [I, 1]]])
    logits = torch.stack([(masks == 0).float(), (masks == 1).float()], dim=1) * 50
    assert float(soft_dice_loss(logits, masks)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("head", ["seg_linear", "seg_pup", "sam_decoder"])
@pytest.mark.parametrize("backbone_name", ["vit_tiny_test", "sam_tiny_test"])
def test_every_segmentation_head_gives_class_maps_from_the_final_feature_map(head, backbone_name):
    backbone = load_backbone(backbone_name)
    module = build_head(head, backbone, spec(4))
    features = backbone.forward_dense(torch.randn(2, 3, 32, 32)).final
    logits = module(features)
    assert logits.shape[:2] == (2, 4) and logits.shape[-1] >= features.shape[-1]
    logits.sum().backward()
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)


def test_a_segmentation_head_is_refused_for_classification_and_the_linear_head_for_segmentation():
    backbone = load_backbone("vit_tiny_test")
    classification = TaskSpec("t/c", "classification", "vtab1k", "x", 3, "g", "d")
    with pytest.raises(AdaptbenchError, match="head 'seg_pup' reads feature_map features, but classification "
                                              "tasks give their head pooled features"):
        build_head("seg_pup", backbone, classification)
    with pytest.raises(AdaptbenchError, match="head 'linear' reads pooled features, but segmentation tasks"):
        build_head("linear", backbone, spec())
    with pytest.raises(AdaptbenchError, match="head 'seg_linear' takes no 'box' prompt"):
        build_head("seg_linear", backbone, spec(), prompt="box")


def test_batched_decoding_equals_sams_predict_masks_image_by_image():
    from adaptbench.tasks.sam_decoder import SamDecoderHead

    torch.manual_seed(0)
    head = SamDecoderHead(32, (8, 8), (32, 32), num_classes=3).eval()
    features = torch.randn(3, 32, 8, 8)
    batched = head(features)
    for index in range(3):
        sparse, dense = head.prompt_encoder(None, None, None)
        masks, _ = head.mask_decoder.predict_masks(features[index:index + 1], head.prompt_encoder.get_dense_pe(),
                                                   sparse, dense)
        torch.testing.assert_close(batched[index:index + 1], masks, rtol=1e-5, atol=1e-5)


def test_sam_decoder_gives_class_c_the_pretrained_token_c_mod_4():
    from adaptbench.tasks.sam_decoder import SamDecoderHead

    torch.manual_seed(0)
    official = SamDecoderHead(32, (8, 8), (32, 32), num_classes=4)  # 4 tokens, as SAM's checkpoint
    state = official.state_dict()
    head = SamDecoderHead(32, (8, 8), (32, 32), num_classes=6)
    head.load_pretrained(state, "test")
    tokens = head.mask_decoder.mask_tokens.weight
    torch.testing.assert_close(tokens[5], state["mask_decoder.mask_tokens.weight"][1])
    torch.testing.assert_close(head.mask_decoder.output_hypernetworks_mlps[4].layers[0].weight,
                               state["mask_decoder.output_hypernetworks_mlps.0.layers.0.weight"])
    other = SamDecoderHead(64, (8, 8), (32, 32), num_classes=4)
    with pytest.raises(AdaptbenchError, match="has shape"):
        other.load_pretrained(state, "test")


def test_ground_truth_box_and_point_prompts_come_from_the_foreground():
    from adaptbench.tasks.sam_decoder import ground_truth_prompts

    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    masks[0, 2:5, 3:7] = 1
    boxes = ground_truth_prompts(masks, "box", scale=(2.0, 2.0))["boxes"]
    assert boxes[0].tolist() == [6.0, 4.0, 12.0, 8.0]  # (x0, y0, x1, y1) x 2
    assert boxes[1].tolist() == [0.0, 0.0, 14.0, 14.0]  # no foreground: the whole image
    points = ground_truth_prompts(masks, "point", torch.Generator().manual_seed(0))
    x, y = points["points"][0, 0].tolist()
    assert masks[0, int(y), int(x)] == 1 and points["point_labels"].tolist() == [[1], [0]]


# -- every adapter trains a segmentation model on a ViT and on SAM, through the anatomy --------
def _adapter_names() -> list[str]:
    from adaptbench.registry import ADAPTERS

    return ADAPTERS.names()


@pytest.mark.parametrize("backbone_name", ["vit_tiny_test", "sam_tiny_test"])
@pytest.mark.parametrize("adapter_name", _adapter_names())
def test_every_adapter_trains_and_evaluates_a_segmentation_model(adapter_name, backbone_name):
    from adaptbench.adapters.hooks import LossContext
    from adaptbench.tasks.batches import NormalizeImages

    torch.manual_seed(0)
    backbone = load_backbone(backbone_name)
    adapter = adapter_or_skip(adapter_name, backbone, backbone_name)
    task = spec(3)
    kind = SegmentationKind()
    head = build_head("seg_linear", backbone, task)
    module = kind.build_module(backbone, adapter, head, task, {"lr": 1e-2, "weight_decay": 0.0, "warmup_epochs": 0})
    module.set_inputs(NormalizeImages(backbone.data_config.mean, backbone.data_config.std))
    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    masks = torch.randint(0, 3, (2, 32, 32), dtype=torch.uint8)
    masks[:, :4] = IGNORE_INDEX
    inputs, targets = module.on_after_batch_transfer((images, masks), 0)
    optimizer = torch.optim.AdamW(module.trainable_parameters(), lr=1e-2)
    declared = adapter.trainable_parameters()
    before = {name: tensor.detach().clone() for name, tensor in declared.items()}
    module.train()
    adapter.on_train_start(2)
    for step in range(2):
        outputs = module._outputs(inputs)
        assert outputs.shape == (2, 3, 32, 32)
        loss = module.task_loss(outputs, targets)
        extras = adapter.extra_loss(LossContext(inputs, outputs, targets, loss, module._outputs, step))
        total = loss + sum(extras.values()) if extras else loss
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        adapter.on_train_batch_end(step)
    module.eval()
    metrics = kind.metrics(task)
    with torch.no_grad():
        metrics.update(*module.metric_inputs(module._outputs(inputs), targets))
    assert torch.isfinite(metrics.compute()["miou"])
    # the segmentation loss reaches the adapter: some declared tensor moved (the linear probe declares none)
    moved = [name for name, tensor in declared.items() if not torch.equal(tensor.detach(), before[name])]
    assert moved or not declared, f"no declared tensor of {adapter_name} changed in 2 segmentation steps"


# -- a run end to end: the real reader, decode cache, runner, record, checkpoint, eval ----------
def write_binary_mask_folders(root, count: int = 12):
    """A Kvasir-SEG-like folder: images/<id>.jpg, masks/<id>.jpg (RGB JPEG masks), split lists."""
    import numpy as np
    from PIL import Image

    folder = root / "Kvasir-SEG"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(0)
    ids = [f"case{i:03d}" for i in range(count)]
    for name in ids:
        image = rng.integers(60, 255, (36, 40, 3), dtype=np.uint8)
        mask = np.zeros((36, 40), np.uint8)
        y, x = rng.integers(4, 20, 2)
        mask[y:y + 12, x:x + 14] = 255
        image[mask > 0] //= 4
        Image.fromarray(image).save(folder / "images" / f"{name}.jpg")
        Image.fromarray(mask).convert("RGB").save(folder / "masks" / f"{name}.jpg")
    (folder / "train.txt").write_text("\n".join(ids[:6]) + "\n")
    (folder / "val.txt").write_text("\n".join(ids[6:8]) + "\n")
    (folder / "test.txt").write_text("\n".join(ids[8:]) + "\n")
    return root


def test_a_prompted_sam_decoder_run_records_its_prompt_and_eval_of_its_checkpoint_gives_the_same_metrics(tmp_path):
    from adaptbench.config import RunConfig
    from adaptbench.leaderboard import build_leaderboards
    from adaptbench.runner.evaluate import evaluate_checkpoint
    from adaptbench.runner.train import RunPlace, run

    root = write_binary_mask_folders(tmp_path / "data")
    config = RunConfig(task="medseg/kvasir_seg", backbone="sam_tiny_test", adapter="lora", head="sam_decoder",
                       prompt="box", epochs=2, batch_size=4, lr=1e-3)
    result = run(config, RunPlace(out_dir=tmp_path / "out", data_root=str(root), num_workers=0))
    record = result.record
    assert record.config["prompt"] == "box" and record.config["head"] == "sam_decoder"
    test = record.train_info.metrics["test"]
    assert record.train_info.primary_metric == "dice" and {"miou", "macc", "aacc", "dice"} <= set(test)
    assert "prompted (box)" in record.train_info.data["inputs"]
    again = evaluate_checkpoint(result.checkpoint_path, "medseg/kvasir_seg", "sam_tiny_test", data_root=str(root),
                                num_workers=0)["test"]
    for name in ("miou", "dice", "aacc"):
        assert again[name] == pytest.approx(test[name], abs=1e-6)
    board = build_leaderboards([record])[0]
    assert board.metric == "dice" and board.table["Head"].tolist() == ["sam_decoder"]
    assert board.table["Adapter"].tolist() == ["lora (box prompt from the ground truth)"]


def test_ground_truth_prompts_are_refused_on_a_multi_class_task():
    backbone = load_backbone("sam_tiny_test")
    from adaptbench.adapters import build_adapter

    head = build_head("sam_decoder", backbone, spec(3), prompt="box")
    with pytest.raises(AdaptbenchError, match="ground-truth prompts are taken from a binary mask"):
        SegmentationKind().build_module(backbone, build_adapter("linear", backbone, {}), head, spec(3),
                                        {"lr": 1e-3, "weight_decay": 0, "warmup_epochs": 0, "prompt": "box"})


def test_new_config_fields_at_their_defaults_keep_earlier_run_ids():
    from adaptbench.config import RunConfig
    from adaptbench.runner.train import cell_id, resolved_config

    config = RunConfig(task="micro/digits", backbone="vit_micro", adapter="lora")
    assert cell_id(config) == "fcd055ea7e67"  # the id this config had before heads, prompts and shots
    assert resolved_config(config)["head"] == "linear" and "prompt" not in resolved_config(config)
    assert cell_id(config.model_copy(update={"shots": 4})) != cell_id(config)


# -- few-shot subsets -----------------------------------------------------------------------------
def test_few_shot_draws_depend_on_the_seed_and_the_samples_not_on_the_file_order():
    from adaptbench.datasets.images import SampleList
    from adaptbench.datasets.subsets import image_subset, per_class_subset

    samples = SampleList([(f"img{i:02d}.png", i % 3) for i in range(30)], source="split.txt",
                         where=[f"split.txt:{i + 1}" for i in range(30)])
    shuffled = SampleList(list(reversed(samples)), source="split.txt")
    drawn = per_class_subset(samples, 2, seed=1, task="t")
    assert sorted(drawn) == sorted(per_class_subset(shuffled, 2, seed=1, task="t"))
    assert sorted(label for _, label in drawn) == [0, 0, 1, 1, 2, 2]
    assert drawn != per_class_subset(samples, 2, seed=2, task="t") and drawn.source == "split.txt"
    assert len(image_subset(samples, 5, seed=0, task="t")) == 5
    with pytest.raises(AdaptbenchError, match="class 0 of task 't' has only 10 training samples"):
        per_class_subset(samples, 11, seed=0, task="t")
    with pytest.raises(AdaptbenchError, match="has only 30 training images"):
        image_subset(samples, 31, seed=0, task="t")
