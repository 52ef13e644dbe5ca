"""Metrics that torchmetrics does not give in the field's form."""

from __future__ import annotations

import warnings

import torch
from torchmetrics.segmentation import DiceScore

from ..datasets.masks import IGNORE_INDEX


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
