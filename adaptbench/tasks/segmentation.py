"""Semantic segmentation: the backbone's final feature map -> a segmentation head -> per-pixel
class logits at the mask's resolution; mIoU as mmseg computes it.

Data. A sample is (image, mask). The image is decoded like a classification image (resized to
the backbone's input size, no crop); the mask by the dataset's ``MaskField`` (label map or
binary, ``reduce_zero_label``, resized with nearest neighbour through torchvision's
``transforms.v2`` on a ``tv_tensors.Mask``), so image and mask always share one geometry.
255 is the ignore index everywhere: in the loss, in every metric.

Loss. Cross-entropy over the classes (``ignore_index=255``), plus a soft Dice term on the
foreground for binary tasks (SALT's and Medical-SAM-Adapter's losses combine the two) or
when the dataset asks for it (``options["dice_loss"]``).

Metrics (the field's definitions; ``metric_definitions`` writes them into every record):

* ``miou``: mean over classes of IoU = TP / (TP + FP + FN), all counted over the whole split
  (one confusion matrix: ``MulticlassJaccardIndex(ignore_index=255, average="macro")``), a class
  absent from both predictions and targets left out -- mmseg's number. torchmetrics'
  ``segmentation.MeanIoU`` averages per-image IoUs instead, and has no ignore index;
* ``macc``: mean over classes of per-class pixel accuracy; ``aacc``: overall pixel accuracy;
* ``iou.<class>``: each class's IoU over the split (classes present in predictions or targets);
* ``dice`` (binary tasks): foreground Dice per image, averaged over the images that have
  foreground in the prediction or the target (``DiceScore(aggregation_level="samplewise")``,
  the medical repos' per-image mean).

Ground-truth prompts (``prompt: box | point``, heads that take prompts) are computed here from
the target masks of each batch; the prompt is part of the run config, so such a row never
passes for a prompt-free one.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassJaccardIndex,
)
from torchmetrics.segmentation import DiceScore

from ..errors import AdaptbenchError
from ..registry import register_task_kind
from .kinds import TaskKind, TaskModule

IGNORE_INDEX = 255
METRIC_DEFINITIONS = {
    "miou": "mean over classes of IoU from one confusion matrix over the split, ignore index 255, "
            "classes absent from predictions and targets left out (mmseg)",
    "macc": "mean over classes of pixel accuracy", "aacc": "pixel accuracy over the split",
    "dice": "foreground Dice per image, mean over images with foreground in prediction or target",
}


class SegInputs(dict):
    """A batch's model inputs: ``images`` and, for ground-truth prompts, the prompt tensors."""


class SegmentationModule(TaskModule):
    """Per-pixel classification of the backbone's final feature map by a segmentation head."""

    def __init__(self, *args, class_names: tuple[str, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        num_classes = self.hparams.num_classes
        self.class_names = tuple(class_names) or tuple(str(i) for i in range(num_classes))
        # per-class IoU of the evaluation splits (a vector: logged class by class at epoch end)
        self.val_confusion = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX, validate_args=False)
        self.test_confusion = self.val_confusion.clone()
        self._prompt_generator: torch.Generator | None = None

    # -- the forward ----------------------------------------------------------------------
    def encode(self, inputs: dict[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        images = inputs["images"] if isinstance(inputs, dict) else inputs
        return self.backbone.forward_dense(images).final

    def decode(self, features: torch.Tensor, prompts: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        logits = self.head(features, prompts) if prompts else self.head(features)
        size = self.hparams.mask_size
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits

    def forward(self, inputs) -> torch.Tensor:
        return self.decode(self.encode(inputs), _prompts_of(inputs))

    def _outputs(self, inputs) -> torch.Tensor:
        if self.from_features:
            return self.decode(inputs)
        return self(inputs)

    # -- inputs: normalised images, ground-truth prompts when the config asks ---------------
    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        inputs, masks = super().on_after_batch_transfer(batch, dataloader_idx)
        masks = masks.long()
        prompt = self.hparams.prompt
        if prompt != "none" and not self.from_features:
            from .sam_decoder import ground_truth_prompts

            size = self.hparams.input_size
            scale = (size[0] / masks.shape[-2], size[1] / masks.shape[-1])
            inputs = SegInputs(images=inputs, **ground_truth_prompts(masks, prompt, self._generator(), scale))
        return inputs, masks

    def why_not_cacheable(self) -> str | None:
        if self.hparams.prompt != "none":
            return f"the head is prompted ({self.hparams.prompt}) from each batch's target masks"
        return None

    def _generator(self) -> torch.Generator:
        # point prompts are drawn from a seeded stream: evaluation is repeatable
        if self._prompt_generator is None:
            self._prompt_generator = torch.Generator().manual_seed(int(self.hparams.prompt_seed))
        return self._prompt_generator

    # -- loss and metrics ---------------------------------------------------------------------
    def task_loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX, label_smoothing=self.hparams.label_smoothing)
        if self.hparams.dice_loss:
            loss = loss + soft_dice_loss(logits, masks)
        return loss

    def metric_inputs(self, logits: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits.argmax(dim=1), masks

    def _evaluate(self, batch, metrics: MetricCollection, loss_name: str) -> None:
        inputs, masks = batch
        logits = self._outputs(inputs)
        predictions, masks = self.metric_inputs(logits, masks)
        metrics.update(predictions, masks)
        confusion = self.test_confusion if loss_name.startswith("test") else self.val_confusion
        confusion.update(predictions, masks)
        self.log(loss_name, self.task_loss(logits, masks), on_step=False, on_epoch=True, batch_size=len(masks))
        self.log_dict(metrics, on_step=False, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        self._log_class_iou(self.val_confusion, "val_")

    def on_test_epoch_end(self) -> None:
        self._log_class_iou(self.test_confusion, "test_")

    def _log_class_iou(self, confusion: MulticlassConfusionMatrix, prefix: str) -> None:
        if not confusion.update_called:
            return
        for name, value in class_iou(confusion.compute(), self.class_names).items():
            self.log(f"{prefix}iou.{name}", value)
        confusion.reset()


def _prompts_of(inputs) -> dict[str, torch.Tensor] | None:
    if isinstance(inputs, dict):
        prompts = {key: value for key, value in inputs.items() if key != "images"}
        return prompts or None
    return None


def class_iou(confusion: torch.Tensor, names: tuple[str, ...]) -> dict[str, float]:
    """IoU per class from a confusion matrix (rows: targets), for classes that occur in the
    targets or the predictions (the others have no IoU: mmseg shows them as nan)."""
    confusion = confusion.double()
    hits = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - hits
    # names as shown (mmseg's ADE20K list writes 'bed ' with a trailing space)
    return {names[c].strip(): float(hits[c] / union[c]) for c in range(len(names)) if union[c] > 0}


def soft_dice_loss(logits: torch.Tensor, masks: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of the foreground (classes 1..K-1 against background), per image then
    averaged, ignored pixels left out (the Dice term of SALT's and MONAI's DiceCE losses)."""
    valid = (masks != IGNORE_INDEX).unsqueeze(1)
    probs = logits.float().softmax(dim=1)[:, 1:] * valid
    target = F.one_hot(masks.clamp_max(logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2)[:, 1:] * valid
    dims = (1, 2, 3)
    overlap = (probs * target).sum(dims)
    dice = (2 * overlap + smooth) / (probs.sum(dims) + target.sum(dims) + smooth)
    return 1 - dice.mean()


class SegmentationKind(TaskKind):
    """Semantic segmentation: cross-entropy (+ Dice for binary tasks), mIoU over the split as mmseg."""

    name = "segmentation"
    version = 1
    primary_metric = "miou"
    higher_is_better = True
    augmentation = "none"
    default_head = "seg_linear"
    head_input = "feature_map"

    def few_shot(self, samples, shots: int, seed: int, spec):
        """k images of the training split, drawn with the seed (dense tasks have no per-image class)."""
        from ..datasets.subsets import image_subset

        return image_subset(samples, shots, seed, spec.name)

    def few_shot_validation(self, samples, shots: int, seed: int, spec):
        """Dense tasks validate on the whole validation split (a few images would not rank anything)."""
        return samples

    def primary_metric_of(self, spec) -> str:
        return str(spec.options.get("primary_metric", self.primary_metric))

    def metrics(self, spec) -> MetricCollection:
        classes = spec.num_classes
        metrics: dict[str, Any] = {
            "miou": MulticlassJaccardIndex(classes, ignore_index=IGNORE_INDEX, average="macro", validate_args=False),
            "macc": MulticlassAccuracy(classes, ignore_index=IGNORE_INDEX, average="macro", multidim_average="global",
                                       validate_args=False),
            "aacc": MulticlassAccuracy(classes, ignore_index=IGNORE_INDEX, average="micro", multidim_average="global",
                                       validate_args=False),
        }
        if is_binary(spec):
            metrics["dice"] = foreground_dice()
        return MetricCollection(metrics, compute_groups=False)

    def fields(self, data_config, spec) -> dict:
        from ..datasets.decoded import ImageField
        from ..datasets.masks import MaskField

        size = tuple(data_config.input_size)
        options = spec.options
        return {"images": ImageField(size, data_config.interpolation),
                "masks": MaskField(size, spec.num_classes, binary=is_binary(spec),
                                   reduce_zero_label=bool(options.get("reduce_zero_label", False)),
                                   threshold=int(options.get("threshold", 127)))}

    def build_module(self, backbone, adapter, head, spec, settings: dict[str, Any]) -> SegmentationModule:
        prompt = settings.get("prompt", "none")
        if prompt != "none" and not is_binary(spec):
            raise AdaptbenchError(f"prompt {prompt!r}: ground-truth prompts are taken from a binary mask's "
                                  f"foreground; task {spec.name!r} has {spec.num_classes} classes")
        size = tuple(backbone.data_config.input_size)
        return SegmentationModule(
            backbone, adapter, head, self.metrics(spec), lr=settings["lr"], weight_decay=settings["weight_decay"],
            warmup_epochs=settings["warmup_epochs"], label_smoothing=settings.get("label_smoothing", 0.0),
            num_classes=spec.num_classes, input_size=size, mask_size=size,
            dice_loss=is_binary(spec) or bool(spec.options.get("dice_loss", False)),
            prompt=prompt, prompt_seed=settings.get("seed", 0),
            class_names=spec.class_names)

    def head_info(self, spec, settings: dict[str, Any], backbone) -> dict[str, Any]:
        return {**super().head_info(spec, settings, backbone), "prompt": settings.get("prompt", "none")}

    def data_description(self, data_config, spec=None) -> dict[str, Any]:
        return {**super().data_description(data_config, spec), "masks": "nearest-neighbour resize, 255 = ignore",
                "metrics": METRIC_DEFINITIONS}


def is_binary(spec) -> bool:
    return bool(spec.options.get("binary", False))


class ForegroundDice(DiceScore):
    """torchmetrics' per-image foreground Dice (``DiceScore``, samplewise) on argmax indices,
    ignored pixels counted as background in both prediction and target (so in neither term)."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        keep = target != IGNORE_INDEX
        super().update(torch.where(keep, preds, 0), torch.where(keep, target, 0))


def foreground_dice() -> ForegroundDice:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its "default average will change" notice: ours is explicit
        return ForegroundDice(num_classes=2, include_background=False, average="micro",
                              aggregation_level="samplewise", input_format="index")


register_task_kind("segmentation", SegmentationKind)
