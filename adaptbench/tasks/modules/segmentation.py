"""Semantic segmentation's module: the backbone's final feature map -> the head -> per-pixel
logits at the mask's resolution; cross-entropy (+ soft Dice), mIoU and per-class IoU
(definitions in ``tasks/segmentation.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassConfusionMatrix

from ...datasets.masks import IGNORE_INDEX
from .base import TaskModule


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
            from ..sam_decoder import ground_truth_prompts

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

    def _evaluate(self, batch, metrics: MetricCollection, loss_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, masks = batch
        logits = self._outputs(inputs)
        predictions, masks = self.metric_inputs(logits, masks)
        metrics.update(predictions, masks)
        confusion = self.test_confusion if loss_name.startswith("test") else self.val_confusion
        confusion.update(predictions, masks)
        self.log(loss_name, self.task_loss(logits, masks), on_step=False, on_epoch=True, batch_size=len(masks))
        self.log_dict(metrics, on_step=False, on_epoch=True)
        return logits, masks

    def sample_scores(self, logits: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per image and class, the intersection and union pixel counts (mIoU over any set of
        images: mean over classes with a union of sum(I) / sum(U)); binary tasks add per-image
        foreground Dice and whether the image counts in its mean (``tasks/sample_metrics.py``)."""
        predictions, masks = self.metric_inputs(logits, masks)
        scores = image_intersections_and_unions(predictions, masks, self.hparams.num_classes)
        if "dice" in self.test_metrics:
            scores.update(image_foreground_dice(predictions, masks))
        return scores

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


def image_intersections_and_unions(predictions: torch.Tensor, masks: torch.Tensor,
                                   classes: int) -> dict[str, torch.Tensor]:
    """(B, K) pixel counts per image and class: predicted and target both c (intersection), either
    c (union); pixels whose target is the ignore index count in neither."""
    keep = masks != IGNORE_INDEX
    offsets = torch.arange(len(masks), device=masks.device).view(-1, *([1] * (masks.dim() - 1))) * classes
    size = len(masks) * classes

    def counts(ids: torch.Tensor) -> torch.Tensor:
        return torch.bincount(ids, minlength=size).view(len(masks), classes)

    predicted = counts((predictions + offsets)[keep])
    target = counts((masks + offsets)[keep])
    intersection = counts((predictions + offsets)[keep & (predictions == masks)])
    return {"intersection": intersection, "union": predicted + target - intersection}


def image_foreground_dice(predictions: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image, the foreground (class 1) Dice 2TP / (2TP + FP + FN) with ignored pixels as
    background in both (``metrics.ForegroundDice``), and whether the image counts: its
    prediction or target has foreground (torchmetrics leaves the others out as NaN)."""
    keep = masks != IGNORE_INDEX
    predicted = ((predictions == 1) & keep).flatten(1)
    target = ((masks == 1) & keep).flatten(1)
    overlap = (predicted & target).sum(1)
    denominator = predicted.sum(1) + target.sum(1)
    counts = denominator > 0
    dice = torch.where(counts, 2 * overlap / denominator.clamp_min(1), torch.zeros((), device=masks.device))
    return {"dice": dice.float(), "dice_counts": counts}


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
