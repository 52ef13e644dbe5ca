"""Image classification's module: pooled backbone feature -> head -> class logits.

Lightning owns the loops, precision, devices and loggers; :class:`TaskModule` what every kind
shares (optimiser, schedule, adapter hooks); this module only what classification computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import TaskModule


class ClassificationModule(TaskModule):
    """Top-1 classification of a pooled backbone feature by the task's head."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images, pool=self.hparams.pool)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)

    def sample_scores(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"correct": logits.argmax(dim=-1) == labels}  # top-1, one bit per sample
