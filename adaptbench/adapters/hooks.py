"""What a task kind hands an adapter's training hooks.

Some methods are more than a module: MoSA adds a consistency loss between two forwards,
mask tuning a sparsity penalty, AdaLoRA reallocates its rank budget after every optimiser
step. They do it through two hooks on :class:`~adaptbench.adapters.base.Adapter`, which every
task kind calls in its training step:

* ``extra_loss(context) -> {name: scalar tensor}``: terms added to the task's loss. Each is
  logged on its own (``train_extra_<name>``), so a record shows how much of the loss was the
  method's own.
* ``on_train_start(total_steps)``: called once before the first step (schedules that need
  the run's length, e.g. AdaLoRA's budget).
* ``on_train_batch_end(step)``: called after the optimiser step ``step`` (0-based).

The context carries what a term may need without tying it to one task kind: the inputs, the
outputs of the task's forward, the targets, the task loss, and ``forward`` to run the model
again (two-forward consistency losses).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class LossContext:
    """One training step, as an adapter's ``extra_loss`` sees it."""

    inputs: Any  # the batch's model inputs (images, clips, ...)
    outputs: torch.Tensor  # what the task's forward returned (logits for classification)
    targets: Any  # the batch's targets (class indices, masks, ...)
    loss: torch.Tensor  # the task's own loss for this batch (before extra terms)
    forward: Callable[[Any], torch.Tensor]  # runs the model again on inputs (same mode)
    step: int  # the global step about to be taken (0-based)
    head: Any = None  # the task's head (a text head offers zero_shot_classifier())
