"""Bi-AdaptFormer: AdaptFormer with 1-bit weights, stored as packed bits.

Jie, Wang, Deng, "Revisiting the Parameter Efficiency of Adapters from the Perspective of
Precision Redundancy", ICCV 2023 (arXiv:2307.16867); official code JieShibo/PETL-ViT,
``binary_adapter/{adaptformer,utils,main}.py``.

The placement is AdaptFormer's (:mod:`.adaptformer`): ``x + MLP(LN(x)) + s * up(dropout(ReLU(down(x))))``,
with ``down`` and ``up`` bias-free linears whose weights are binarised in the forward pass.
For a latent full-precision weight ``W`` (one tensor, statistics per tensor)

    mu = mean(W),  sigma = std(W) (unbiased),  N = (W - mu) / (sigma + 1e-5)
    Q(W) = mu + sigma * c * sign(N),           c = Phi^-1(3/4) ~ 0.6745

``c`` is the official 1-bit code book: ``utils.QLinear.quantize`` places the levels at the
medians of the two halves of a standard normal, ``+-Phi^-1(3/4)``. Gradients pass straight
through the sign to ``N`` (``Q = (c sign(N) + N - stopgrad(N)) * sigma + mu``, as the official
``wb = q(w).data + w - w.data``), and also flow through ``mu`` and ``sigma``.

A checkpoint stores, per binarised linear, its bits packed 8 to a byte (first weight in the
lowest bit, as the official ``dump``) plus ``mu`` and ``sigma`` in fp32: about 1/32 of the fp32
size. Loading puts ``Q(W)`` into the latent weight and switches the layer to use it as it is
(the official ``load`` sets ``fake_quan = False``), so the loaded model computes exactly what the
saved one did; training a loaded adapter therefore trains full-precision weights.

Init (official ``Adapter(bit=1)``): ``down`` Kaiming-uniform (a = sqrt(5), nn.Linear's default),
``up`` truncated normal (std 1e-3, cut at +-2e-3): not zero, because a constant tensor has
``sigma = 0`` and no usable gradient. Its binarised weight is therefore not zero, and the adapted
model is close to, not exactly, the frozen one at init.

Defaults (VTAB-1k, ViT-B/16, the paper's Bi-AdaptFormer_32): bottleneck 32, dropout 0.1 after
the ReLU, no biases. The official scale ``s`` is searched per task in {0.01, 0.1, 1, 10}
(``configs/adaptformer/*-bit1-dim32.yaml``); the default here is 1.0, the value of ``main.py``'s
``--scale`` and of 10 of the 19 tasks.

Departures: ``sign(0)`` counts as +1 (the official forward gives 0 there while its ``dump``
stores the negative level; a tie at exactly the mean has measure zero in training, and one
rule for both keeps save/load exact); the straight-through term is added as ``c sign(N) + (N -
stopgrad(N))``, whose value is exactly the level (the official ``(q + N) - N`` can round off it);
only the 1-bit quantiser is implemented (the official code
also has 2/4/8 bits); the task head stays full precision (the "Bi-Head" variant binarises it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AdaptbenchError
from ..registry import register_adapter
from .adaptformer import AdaptFormer, AdaptFormerConfig
from .bits import pack_bits, unpack_bits
from .layers import Bottleneck

LEVEL = NormalDist().inv_cdf(0.75)  # the 1-bit code book is {-LEVEL, +LEVEL} (in units of sigma)
STD_EPS = 1e-5  # official: (w - mean) / (std + 1e-5)
UP_INIT_STD = 1e-3  # official: trunc_normal_(up.weight, std=0.001, a=-0.002, b=0.002)


@dataclass
class BiAdaptFormerConfig(AdaptFormerConfig):
    bottleneck: int = field(default=32, metadata={"help": "hidden width of the binarised down/up bottleneck"})
    scale: float = field(
        default=1.0, metadata={"help": "s in x + MLP(LN(x)) + s * adapter(x) (officially searched per task)"}
    )

    adapter_name = "bi_adaptformer"


def binary_levels(positive: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    level = torch.tensor(LEVEL, dtype=dtype, device=positive.device)
    return torch.where(positive, level, -level)


def dequantise(levels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    # the one formula used both in training and after loading, so both give the same bits
    return levels * std + mean


class BinaryLinear(nn.Linear):
    """A bias-free linear whose latent weight is binarised to ``mean + std * (+-LEVEL)`` in forward."""

    def __init__(self, in_features: int, out_features: int, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=False, device=device, dtype=dtype)
        self.quantise = True  # False once loaded: the weight then holds Q(W) itself
        self.register_buffer("loaded_mean", None, persistent=False)
        self.register_buffer("loaded_std", None, persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> BinaryLinear:
        if linear.bias is not None:
            raise AdaptbenchError("BinaryLinear binarises bias-free linears only")
        layer = cls(linear.in_features, linear.out_features, device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
        return layer

    def _normalised(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        weight = self.weight
        mean, std = weight.mean(), weight.std()
        return (weight - mean) / (std + STD_EPS), mean, std

    def quantised_weight(self) -> torch.Tensor:
        """Q(W), differentiable by the straight-through estimator."""
        if not self.quantise:
            return self.weight
        normalised, mean, std = self._normalised()
        levels = binary_levels(normalised >= 0, normalised.dtype)
        # value: exactly the binary levels (N - N is 0); gradient: that of N
        levels = levels + (normalised - normalised.detach())
        return dequantise(levels, mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantised_weight())

    @torch.no_grad()
    def packed(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(bits packed in uint8, mean, std): what a checkpoint stores for this layer."""
        if self.quantise:
            normalised, mean, std = self._normalised()
            positive = normalised >= 0
        else:  # loaded: the weight is mean +- std * LEVEL, and the mean splits the two levels
            mean, std = self.loaded_mean, self.loaded_std
            positive = self.weight >= mean
        return pack_bits(positive), mean.detach().clone(), std.detach().clone()

    @torch.no_grad()
    def load_packed(self, bits: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> None:
        weight = self.weight
        mean = mean.to(weight.device, weight.dtype)
        std = std.to(weight.device, weight.dtype)
        positive = unpack_bits(bits.to(weight.device), weight.shape)
        weight.copy_(dequantise(binary_levels(positive, weight.dtype), mean, std))
        self.quantise = False
        self.loaded_mean, self.loaded_std = mean, std


class BiAdaptFormer(AdaptFormer):
    """Bi-AdaptFormer (Jie et al. 2023): 1-bit AdaptFormer, stored as packed bits."""

    # The official up-projection starts at a small non-zero trunc-normal (a zero tensor has
    # std 0 and no gradient through the quantiser), so its binarised weight is +-1e-3-sized,
    # not zero: the adapted model is close to the frozen one at init, not equal to it.
    identity_at_init = False

    def make_bottleneck(self, branch: nn.Module, backbone) -> nn.Module:
        config: BiAdaptFormerConfig = self.config
        reference = next(branch.parameters())
        bottleneck = Bottleneck(backbone.anatomy.embed_dim, config.bottleneck, act="relu", dropout=config.dropout,
                                init="kaiming", bias=False, device=reference.device, dtype=reference.dtype)
        bottleneck.down = BinaryLinear.from_linear(bottleneck.down)
        bottleneck.up = BinaryLinear.from_linear(bottleneck.up)
        nn.init.trunc_normal_(bottleneck.up.weight, std=UP_INIT_STD, a=-2 * UP_INIT_STD, b=2 * UP_INIT_STD)
        return bottleneck

    def binary_layers(self) -> dict[str, BinaryLinear]:
        """``blocks.{i}.mlp.{down,up}`` -> its binarised linear."""
        return {
            f"blocks.{block}.mlp.{name}": module
            for block, wrapper in self.branches.items()
            for name, module in wrapper.adapter.named_modules()
            if isinstance(module, BinaryLinear)
        }

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for prefix, layer in self.binary_layers().items():
            bits, mean, std = layer.packed()
            tensors.update({f"{prefix}.bits": bits, f"{prefix}.mean": mean, f"{prefix}.std": std})
        return tensors

    @torch.no_grad()
    def load_state_tensors(self, tensors: dict[str, torch.Tensor], source: str = "") -> None:
        layers = self.binary_layers()
        self.check_stored_names(tensors, source)
        for prefix, layer in layers.items():
            bits = tensors[f"{prefix}.bits"]
            wanted = math.ceil(layer.weight.numel() / 8)
            if bits.dtype != torch.uint8 or tuple(bits.shape) != (wanted,):
                raise AdaptbenchError(
                    f"adapter checkpoint {source}: tensor '{prefix}.bits' is {bits.dtype} of shape "
                    f"{tuple(bits.shape)}, expected torch.uint8 of shape ({wanted},) (packed bits)"
                )
            mean, std = tensors[f"{prefix}.mean"], tensors[f"{prefix}.std"]
            if mean.numel() != 1 or std.numel() != 1:
                raise AdaptbenchError(
                    f"adapter checkpoint {source}: '{prefix}.mean' and '{prefix}.std' have shapes "
                    f"{tuple(mean.shape)} and {tuple(std.shape)}, expected one number each (per-tensor scales)"
                )
            layer.load_packed(bits, mean.reshape(()), std.reshape(()))


register_adapter("bi_adaptformer", BiAdaptFormerConfig, BiAdaptFormer)
