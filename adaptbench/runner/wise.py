"""WiSE-FT: evaluate the weights interpolated between the initial and the trained model.

Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022: ``theta_alpha =
(1 - alpha) theta_0 + alpha theta_1``. Here over every tensor the run trained (the adapter's
declared tensors and the head's trainable ones; everything else is the same frozen backbone
at both ends), so it applies to every method. ``theta_0`` is the model at initialisation:
that is zero-shot CLIP when the head is text-initialised (``zeroshot_text`` / ``text_linear``)
and the adapter is the identity at init; otherwise alpha 0 is simply the untrained model.
Scores are stored beside the run's own as ``<metric>@wise<alpha>`` (``top1@wise0.5``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class WiseFT:
    """Snapshots the trainable tensors at construction (before training) for later interpolation."""

    def __init__(self, module):
        self.module = module
        self.tensors = list(module.trainable_parameters())
        self.initial = [tensor.detach().clone() for tensor in self.tensors]

    @torch.no_grad()
    def evaluate(self, alphas: Sequence[float], trainer, batches) -> dict[str, float]:
        """{"<metric>@wise<alpha>": score} for each alpha; the trained weights are restored after."""
        trained = [tensor.detach().clone() for tensor in self.tensors]
        scores: dict[str, float] = {}
        try:
            for alpha in alphas:
                for tensor, start, end in zip(self.tensors, self.initial, trained):
                    tensor.copy_(torch.lerp(start.to(end.device, end.dtype), end, float(alpha)))
                evaluated = trainer.test(self.module, batches, verbose=False)
                for key, value in (evaluated[0] if evaluated else {}).items():
                    if key.startswith("test_") and key != "test_loss":
                        scores[f"{key.removeprefix('test_')}@wise{alpha:g}"] = float(value)
        finally:
            for tensor, end in zip(self.tensors, trained):
                tensor.copy_(end)
        return scores
