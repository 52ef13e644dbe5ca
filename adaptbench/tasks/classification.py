"""Image classification: pooled backbone feature -> head -> class logits; top-1 accuracy.

Lightning owns the loops, precision, devices and loggers; :class:`TaskModule` what every kind
shares (optimiser, schedule, adapter hooks); this module only what classification computes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from ..registry import register_task_kind
from .kinds import TaskKind, TaskModule


class ClassificationModule(TaskModule):
    """Top-1 classification of a pooled backbone feature by the task's head."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images, pool=self.hparams.pool)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)


class ClassificationKind(TaskKind):
    """Image classification: cross-entropy, top-1 accuracy (VTAB-1k, FGVC)."""

    primary_metric = "top1"
    higher_is_better = True
    augmentation = "none"

    def metrics(self, spec) -> MetricCollection:
        # validate_args=False: the checks read values on the host (a sync per step); the
        # readers have already checked every label against the class count.
        return MetricCollection({"top1": MulticlassAccuracy(spec.num_classes, average="micro", validate_args=False)})

    def build_module(self, backbone, adapter, head, spec, settings: dict[str, Any]) -> ClassificationModule:
        return ClassificationModule(backbone, adapter, head, self.metrics(spec), lr=settings["lr"],
                                    weight_decay=settings["weight_decay"], warmup_epochs=settings["warmup_epochs"],
                                    label_smoothing=settings.get("label_smoothing", 0.0),
                                    pool=settings.get("pool"))

    def head_info(self, spec, settings: dict[str, Any], backbone) -> dict[str, Any]:
        return {**super().head_info(spec, settings, backbone), "pool": settings.get("pool") or backbone.default_pool}


register_task_kind("classification", ClassificationKind)
