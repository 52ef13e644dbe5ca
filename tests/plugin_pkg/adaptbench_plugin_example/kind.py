"""A task kind from a plugin: regress a digit's value from its image (MSE; mean absolute error,
lower is better), with its own head, its task and nothing else, all through entry points.

It exists to prove that a new kind needs no edit to adaptbench: the runner dispatches on the
task's ``kind``, the head registry builds ``scalar``, the vtab1k reader lists the samples, and
the kind's default fields decode them (uint8 images and int labels, normalised on the device).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanAbsoluteError, MetricCollection

from adaptbench.tasks.catalog import TaskSpec
from adaptbench.tasks.kinds import TaskKind
from adaptbench.tasks.modules.base import TaskModule


class DigitValueModule(TaskModule):
    """The pooled feature -> one number: the digit's value."""

    def encode(self, images):
        return self.backbone(images)

    def decode(self, features):
        return self.head(features).squeeze(-1)

    def task_loss(self, outputs, targets):
        return F.mse_loss(outputs, targets.float())


class DigitValueKind(TaskKind):
    """Digit value regression: MSE loss, mean absolute error (lower is better)."""

    primary_metric = "mae"
    higher_is_better = False

    def metrics(self, spec):
        return MetricCollection({"mae": MeanAbsoluteError()})

    def build_module(self, backbone, adapter, head, spec, settings):
        return DigitValueModule(backbone, adapter, head, self.metrics(spec), lr=settings["lr"],
                                weight_decay=settings["weight_decay"], warmup_epochs=settings["warmup_epochs"])

    def check_head_info(self, info, spec, checkpoint):
        pass  # one output whatever the task


def scalar_head(backbone, spec) -> nn.Module:
    """One linear output on the pooled feature."""
    return nn.Linear(backbone.anatomy.feature_dim, 1)


DIGIT_VALUE = TaskSpec("plugin/digit_value", "digit_value", "vtab1k", "digits", 10, "plugin",
                       "digit value regression on the embedded digits", embedded=True, default_epochs=1)
