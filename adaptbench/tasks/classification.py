"""Image classification as a LightningModule: frozen backbone + adapter + linear head.

Lightning owns the loops, precision, devices and loggers; this module only says what one
step computes. The optimizer sees the adapter's *declared* tensors and the head, nothing
else (DESIGN.md: trainability comes from the declaration).
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

PRIMARY_METRIC = "top1"  # what ranks the leaderboard; higher is better
HIGHER_IS_BETTER = True


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (recorded as the run's error)."""


class ClassificationModule(L.LightningModule):
    """Top-1 classification of a pooled backbone feature with a linear head."""

    def __init__(
        self,
        backbone: nn.Module,
        adapter,
        num_classes: int,
        pool: str | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_epochs: int = 10,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        # backbone and adapter are objects, not hyper-parameters: the run record holds
        # their names and configs.
        self.save_hyperparameters(ignore=["backbone", "adapter"])
        self.backbone = backbone
        self.adapter = adapter
        self.head = nn.Linear(backbone.anatomy.feature_dim, num_classes)
        metrics = MetricCollection({PRIMARY_METRIC: MulticlassAccuracy(num_classes, average="micro")})
        self.train_metrics = metrics.clone(prefix="train_")
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images, pool=self.hparams.pool))

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        loss = self._loss(logits, labels)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, step {self.global_step}"
            )
        self.train_metrics.update(logits, labels)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(labels))
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch, metrics: MetricCollection, loss_name: str) -> None:
        images, labels = batch
        logits = self(images)
        metrics.update(logits, labels)
        self.log(loss_name, self._loss(logits, labels), on_step=False, on_epoch=True, batch_size=len(labels))
        self.log_dict(metrics, on_step=False, on_epoch=True)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, self.val_metrics, "val_loss")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, self.test_metrics, "test_loss")

    def trainable_parameters(self) -> list[nn.Parameter]:
        declared = list(self.adapter.trainable_parameters().values())
        return declared + list(self.head.parameters())

    def configure_optimizers(self):
        params = self.trainable_parameters()
        optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = min(total - 1, self.hparams.warmup_epochs * per_epoch)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def warmup_cosine(warmup_steps: int, total_steps: int):
    """Linear warm-up to the base rate, then cosine decay to zero (the PETL-on-VTAB recipe)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor

