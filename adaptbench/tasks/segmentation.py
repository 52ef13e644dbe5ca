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
the target masks of each batch (``tasks/modules/segmentation.py``); the prompt is part of the run config, so such a row never
passes for a prompt-free one.
"""

from __future__ import annotations

from typing import Any

from ..datasets.masks import IGNORE_INDEX
from ..errors import AdaptbenchError
from ..registry import register_task_kind
from .kinds import TaskKind

METRIC_DEFINITIONS = {
    "miou": "mean over classes of IoU from one confusion matrix over the split, ignore index 255, "
            "classes absent from predictions and targets left out (mmseg)",
    "macc": "mean over classes of pixel accuracy", "aacc": "pixel accuracy over the split",
    "dice": "foreground Dice per image, mean over images with foreground in prediction or target",
}


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

    def sample_reduction(self, spec) -> str | None:
        """mIoU from per-image, per-class intersections and unions; Dice from per-image Dice."""
        return {"miou": "iou", "dice": "dice"}.get(self.primary_metric_of(spec))

    def metrics(self, spec):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

        from .metrics import foreground_dice

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

    def build_module(self, backbone, adapter, head, spec, settings: dict[str, Any]):
        from .modules.segmentation import SegmentationModule

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


register_task_kind("segmentation", SegmentationKind)
