"""The LightningModule every task kind builds on.

:class:`TaskModule` holds what every kind shares, so that no kind can forget it: the
optimiser sees the adapter's declared tensors and the head and nothing else; AdamW with a
linear warm-up and cosine decay per step; the adapter's training hooks (``extra_loss`` terms
added to the loss and logged one by one as ``train_extra_<name>``; ``on_train_start``;
``on_train_batch_end`` after each optimiser step); a NaN loss stops the run with its step.

Inputs arrive as decoded batches that the kind's ``batch_transform`` (a submodule) turns into
model inputs on the device. A module's ``forward`` is ``decode(encode(inputs))``: ``encode``
is the backbone's part, ``decode`` the head's. When the backbone is frozen and deterministic up
to the head, the runner caches what ``encode`` returns and trains the head on it
(``runner/features.py``); a kind that only implements ``forward`` simply never gets that.

No host synchronisation per step: the non-finite check accumulates on the device and is
read every ``NONFINITE_CHECK_EVERY`` steps and at the end of each epoch.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection

from ...adapters.hooks import LossContext


#: Steps between reads of the device-side non-finite flag (each read waits for the device).
NONFINITE_CHECK_EVERY = 50


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (recorded as the run's error)."""


class TaskModule(L.LightningModule):
    """Frozen backbone + adapter + head, trained on a task's loss plus the adapter's terms.

    Subclasses implement :meth:`forward` (inputs -> outputs) and :meth:`task_loss`.
    """

    def __init__(self, backbone: nn.Module, adapter, head: nn.Module, metrics: MetricCollection, *,
                 lr: float, weight_decay: float, warmup_epochs: int, **hparams: Any):
        super().__init__()
        # backbone, adapter and head are objects, not hyper-parameters: the run record holds
        # their names and configs.
        self.save_hyperparameters(ignore=["backbone", "adapter", "head", "metrics"])
        self.backbone = backbone
        self.adapter = adapter
        self.head = head
        self.train_metrics = metrics.clone(prefix="train_")
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")
        self.batch_transform: nn.Module | None = None
        self.from_features = False
        self._first_nonfinite_step: torch.Tensor | None = None

    # -- what a kind says ---------------------------------------------------------------------
    def encode(self, inputs: Any) -> Any:
        """The backbone's part of the forward (what the head reads)."""
        raise NotImplementedError

    def decode(self, features: Any) -> torch.Tensor:
        """The head's part of the forward."""
        raise NotImplementedError

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.decode(self.encode(inputs))

    def task_loss(self, outputs: torch.Tensor, targets: Any) -> torch.Tensor:
        raise NotImplementedError

    def why_not_cacheable(self) -> str | None:
        """Why ``decode`` cannot run on cached ``encode`` outputs alone (None: it can)."""
        return None

    def metric_inputs(self, outputs: torch.Tensor, targets: Any) -> tuple[Any, Any]:
        """What the metrics are updated with (segmentation: argmax class maps)."""
        return outputs, targets

    def sample_scores(self, outputs: torch.Tensor, targets: Any) -> dict[str, torch.Tensor] | None:
        """Per-sample contributions to the primary metric of one test batch: arrays whose first
        dimension is the batch (classification: ``correct``, one bool per sample), from which
        the kind's ``sample_reduction`` recomputes the metric on any resample of the test set.
        None (the default): the kind gives none, and its leaderboard rows resample seeds only."""
        return None

    # -- inputs ---------------------------------------------------------------------------------
    def set_inputs(self, batch_transform: nn.Module | None, from_features: bool = False) -> None:
        """What batches hold: decoded samples that ``batch_transform`` turns into inputs on the
        device, or (``from_features``) cached ``encode`` outputs, fed to ``decode`` alone."""
        self.batch_transform = batch_transform
        self.from_features = from_features

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        inputs, *rest = batch
        if self.batch_transform is not None:
            inputs = self.batch_transform(inputs)
        return (inputs, *rest)

    def _outputs(self, inputs: Any) -> torch.Tensor:
        return self.decode(inputs) if self.from_features else self(inputs)

    # -- training -------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        outputs = self._outputs(inputs)
        loss = self.task_loss(outputs, targets)
        extras = self.adapter.extra_loss(LossContext(inputs, outputs, targets, loss, self._outputs, self.global_step,
                                                       self.head))
        total = loss + sum(extras.values()) if extras else loss
        self._note_nonfinite(total)
        size = _batch_size(targets)
        self.train_metrics.update(*self.metric_inputs(outputs.detach(), targets))
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=size)
        for name, term in extras.items():
            self.log(f"train_extra_{name}", term, on_step=False, on_epoch=True, batch_size=size)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return total

    def _note_nonfinite(self, total: torch.Tensor) -> None:
        """Remember, on the device, the first step whose loss was not finite and that loss
        (no host sync)."""
        total = total.detach().float()
        if self._first_nonfinite_step is None:
            self._first_nonfinite_step = torch.full((), -1, dtype=torch.long, device=total.device)
            self._first_nonfinite_loss = torch.zeros((), device=total.device)
        newly_bad = (self._first_nonfinite_step < 0) & ~torch.isfinite(total)
        self._first_nonfinite_step = torch.where(newly_bad, self.global_step, self._first_nonfinite_step)
        self._first_nonfinite_loss = torch.where(newly_bad, total, self._first_nonfinite_loss)

    def _check_nonfinite(self) -> None:
        """Stop the run if a loss so far was not finite (reads the flag: one sync)."""
        if self._first_nonfinite_step is not None:
            step = int(self._first_nonfinite_step)
            if step >= 0:
                raise NonFiniteLossError(f"training loss is {float(self._first_nonfinite_loss)} at step {step} "
                                         f"(found at the check in epoch {self.current_epoch})")

    def on_train_start(self) -> None:
        self._steps_reported = self.global_step
        self._first_nonfinite_step = None
        self.adapter.on_train_start(int(self.trainer.estimated_stepping_batches))

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # Lightning has stepped the optimiser (global_step counts it) and not yet zeroed the
        # gradients: they are zeroed inside the next step's closure (AdaLoRA reads them).
        # Under gradient accumulation a batch may end without a step: the hook is per step.
        if self.global_step > self._steps_reported:
            self._steps_reported = self.global_step
            self.adapter.on_train_batch_end(self.global_step - 1)
        if (batch_idx + 1) % NONFINITE_CHECK_EVERY == 0:
            self._check_nonfinite()

    def on_train_epoch_end(self) -> None:
        self._check_nonfinite()

    # -- evaluation -----------------------------------------------------------------------------
    def _evaluate(self, batch, metrics: MetricCollection, loss_name: str) -> tuple[torch.Tensor, Any]:
        """Update ``metrics`` and log the loss; returns (outputs, targets) of the batch."""
        inputs, targets = batch
        outputs = self._outputs(inputs)
        metrics.update(*self.metric_inputs(outputs, targets))
        self.log(loss_name, self.task_loss(outputs, targets), on_step=False, on_epoch=True,
                 batch_size=_batch_size(targets))
        self.log_dict(metrics, on_step=False, on_epoch=True)
        return outputs, targets

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, self.val_metrics, "val_loss")

    def on_test_start(self) -> None:
        self._test_samples: list[dict[str, torch.Tensor]] | None = []

    def test_step(self, batch, batch_idx):
        outputs, targets = self._evaluate(batch, self.test_metrics, "test_loss")
        if getattr(self, "_test_samples", None) is not None:
            scores = self.sample_scores(outputs.detach(), targets)
            if scores is None:
                self._test_samples = None  # the kind gives none: stop asking
            else:
                self._test_samples.append({name: value.detach() for name, value in scores.items()})

    def test_sample_scores(self) -> dict[str, Any] | None:
        """The per-sample scores of the last ``trainer.test``, in test-set order, as numpy arrays
        (None when the kind gives none)."""
        batches = getattr(self, "_test_samples", None)
        if not batches:
            return None
        return {name: torch.cat([batch[name] for batch in batches]).cpu().numpy() for name in batches[0]}

    # -- optimisation ---------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        declared = list(self.adapter.trainable_parameters().values())
        return declared + [param for param in self.head.parameters() if param.requires_grad]

    def configure_optimizers(self):
        # fused on CUDA: one kernel for every tensor's update (the CPU keeps the reference loop)
        optimizer = torch.optim.AdamW(self.trainable_parameters(), lr=self.hparams.lr,
                                      weight_decay=self.hparams.weight_decay, fused=self.device.type == "cuda" or None)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = min(total - 1, self.hparams.warmup_epochs * per_epoch)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def _batch_size(targets: Any) -> int:
    return len(targets)


def warmup_cosine(warmup_steps: int, total_steps: int):
    """LR factor per step: linear warm-up to the base rate over ``warmup_steps`` steps (from
    1/(warmup+1)), then cosine decay to zero at ``total_steps`` (the PETL-on-VTAB recipe)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor
