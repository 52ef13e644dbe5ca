"""DoRA: weight-decomposed low-rank adaptation.

Liu, Wang, Yin, Molchanov, Wang, Cheng, Chen, "DoRA: Weight-Decomposed Low-Rank Adaptation",
ICML 2024 (arXiv:2402.09353).

A frozen linear ``W0`` (out x in) is split into a magnitude and a direction, and LoRA adapts
the direction (paper Eq. 5):

    W' = m * (W0 + s B A) / ||W0 + s B A||_c,      s = alpha / r

where ``||.||_c`` is the L2 norm of each output feature's weights (a row of the out x in
matrix: the paper's "column-wise" norm in its in x out notation, PEFT's ``norm(dim=1)``) and
``m`` (one entry per output feature) is trainable. The bias is left as it is. As the paper
suggests (Sec. 4.3) and PEFT and the official code do, the norm is treated as a constant in
backprop (it is recomputed every forward, but receives no gradient). The forward is computed
without building ``W'``, as PEFT's ``DoraLinearLayer`` does::

    h = W0 x + b + (m / n - 1) * W0 x' + (m / n) * s B A x',      n = ||W0 + s B A||_c

with ``x' = dropout(x)``; without dropout (or in eval) ``x' = x`` and ``h = W' x + b``.

Initialisation: ``A`` Kaiming-uniform (a = sqrt(5)), ``B = 0`` (LoRA's), ``m = ||W0||_c``, so
the adapted layer is the frozen one at initialisation. ``merge()`` writes ``W'`` into the
linear exactly (norm computed from the unmerged weight, as PEFT's ``merge``).

Defaults are LoRA's (``r = 8``, ``alpha = 8``, targets ``q``, ``v``): the paper has no vision
backbone setting (its visual experiments adapt VL-BART and LLaVA's language model; e.g.
``lora_dim=128`` in the official ``image_video_text_understanding/VL-T5/scripts/image/dora.sh``).
Targets are LoRA's: ``q``/``k``/``v`` on their third of timm's fused qkv (each with its own
``A``, ``B`` and a magnitude over that third's output rows), ``qkv`` (whole fused linear, as
PEFT's ``target_modules=["qkv"]``), ``attn_out``, ``mlp_in``, ``mlp_out``.

Built on :mod:`adaptbench.adapters.lora`: :class:`DoRALinear` is a :class:`LoRALinear` that
overrides what a part adds to its output slice and how it folds into the weight.
Facts from the official code (NVlabs/DoRA ``commonsense_reasoning/peft/src/peft/tuners/dora.py``)
and PEFT 0.21 (``peft/tuners/lora/dora.py``, ``variants.py``); no departure from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..registry import register_adapter
from .lora import LoRA, LoRAConfig, LoRALinear


@dataclass
class DoRAConfig(LoRAConfig):
    """LoRA's options (r, alpha, dropout, targets, blocks) with LoRA's defaults."""

    adapter_name: ClassVar[str] = "dora"


class DoRALinear(LoRALinear):
    """``m_p * (W0_p + s B_p A_p) / ||W0_p + s B_p A_p||_c`` on output slices ``p``."""

    def __init__(self, base_layer: nn.Linear, slices: dict[str, slice], config: DoRAConfig):
        super().__init__(base_layer, slices, config)
        self.lora_magnitude = nn.ParameterDict()
        with torch.no_grad():
            for part, out_slice in slices.items():
                # B = 0, so ||W0 + s B A||_c = ||W0||_c: the identity at initialisation
                self.lora_magnitude[part] = nn.Parameter(_row_norms(base_layer.weight[out_slice]).clone())

    def adapter_tensors(self) -> list[tuple[str, nn.Parameter]]:
        magnitudes = [(f"lora_magnitude.{part}", self.lora_magnitude[part]) for part in self.slices]
        return super().adapter_tensors() + magnitudes

    def magnitude_over_norm(self, part: str, rows: torch.Tensor) -> torch.Tensor:
        """``m / ||W0_p + s B A||_c`` for the part's frozen rows, the norm held constant."""
        with torch.no_grad():  # paper Sec. 4.3: the norm receives no gradient
            norm = _row_norms(rows + self.update(part))
        return self.lora_magnitude[part] / norm

    def part_updates(self, x: torch.Tensor, base_output: torch.Tensor) -> dict[str, torch.Tensor]:
        dropped = self.dropout(x)
        updates = {}
        for part, out_slice in self.slices.items():
            scale = self.magnitude_over_norm(part, self.base_layer.weight[out_slice])
            frozen = self._frozen_output(out_slice, dropped, base_output)
            updates[part] = (scale - 1) * frozen + scale * self.low_rank(part, dropped)
        return updates

    def _frozen_output(self, out_slice: slice, dropped: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
        """``W0_p x'`` without bias; the base output is reused unless dropout changed the
        input (PEFT's rule, which also fixes the maths of the dropout case)."""
        if isinstance(self.dropout, nn.Identity) or not self.training:
            bias = self.base_layer.bias
            frozen = base_output[..., out_slice]
            return frozen - bias[out_slice] if bias is not None else frozen
        return nn.functional.linear(dropped, self.base_layer.weight[out_slice])

    def merged_rows(self, part: str, rows: torch.Tensor) -> torch.Tensor:
        return self.magnitude_over_norm(part, rows).unsqueeze(-1) * (rows + self.update(part))


def _row_norms(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each output feature's weights (rows of an out x in matrix)."""
    return torch.linalg.norm(weight, dim=1)


class DoRA(LoRA):
    """DoRA (Liu et al. 2024): magnitude times direction of W + (alpha/r) B A"""

    wrapper_class = DoRALinear


register_adapter("dora", DoRAConfig, DoRA)
