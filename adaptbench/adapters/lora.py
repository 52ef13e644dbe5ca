"""LoRA: low-rank adaptation of frozen linear layers.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022
(arXiv:2106.09685).

For a frozen linear ``W0`` (out x in) the adapted layer computes

    h = W0 x + (alpha / r) * B A dropout(x),   A: r x in,  B: out x r

with ``A`` Kaiming-uniform (a = sqrt(5), as in the reference ``loralib`` and HF PEFT) and
``B = 0``, so the layer is the identity at initialisation; ``merge()`` folds
``W0 + (alpha / r) B A`` exactly. Defaults follow the paper's ViT/GPT use and PEFT:
``r = 8``, ``alpha = 8``, targets ``q`` and ``v`` (the paper adapts W_q and W_v).

Targets are anatomy sites: ``q``, ``k``, ``v`` (each its own A, B on its third of the fused
``qkv`` linear — timm fuses them, PEFT cannot target them separately), ``qkv`` (one A, B on the
whole fused linear, as PEFT does with ``target_modules=["qkv"]``), ``attn_out``, ``mlp_in``,
``mlp_out``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_adapter
from .base import Adapter, AdapterConfig, SiteWrapper, blocks_of, require

QKV_PARTS = ("q", "k", "v")
WHOLE_SITES = ("qkv", "attn_out", "mlp_in", "mlp_out")
LORA_TARGETS = QKV_PARTS + WHOLE_SITES


@dataclass
class LoRAConfig(AdapterConfig):
    r: int = field(default=8, metadata={"help": "rank of the update B A"})
    alpha: float = field(default=8.0, metadata={"help": "scaling numerator: the update is (alpha/r) B A"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA branch input"})
    targets: tuple[str, ...] = field(
        default=("q", "v"),
        metadata={"help": f"sites to adapt, any of {', '.join(LORA_TARGETS)}"},
    )
    blocks: tuple[int, ...] | None = field(
        default=None, metadata={"help": "block indices to adapt (default: every block)"}
    )

    def validate(self) -> None:
        require(self.r >= 1, f"lora option r={self.r}: expected an integer >= 1")
        require(0.0 <= self.dropout < 1.0, f"lora option dropout={self.dropout}: expected 0 <= dropout < 1")
        require(len(self.targets) > 0, "lora option targets: expected at least one site")
        for target in self.targets:
            require(target in LORA_TARGETS, f"lora target {target!r}: expected one of {LORA_TARGETS}")
        require(not ({"qkv"} & set(self.targets) and set(QKV_PARTS) & set(self.targets)),
                "lora targets: use either 'qkv' (fused) or q/k/v (separate), not both")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


class LoRALinear(SiteWrapper):
    """``base(x) + scaling * B_p A_p x`` on output slices ``p`` of a frozen linear."""

    def __init__(self, base_layer: nn.Linear, slices: dict[str, slice], config: LoRAConfig):
        super().__init__(base_layer)
        self.slices = slices
        self.scaling = config.scaling
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        in_features = base_layer.in_features
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        factory = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        for part, out_slice in slices.items():
            out_features = out_slice.stop - out_slice.start
            self.lora_A[part] = nn.Parameter(torch.empty(config.r, in_features, **factory))
            self.lora_B[part] = nn.Parameter(torch.zeros(out_features, config.r, **factory))
            nn.init.kaiming_uniform_(self.lora_A[part], a=math.sqrt(5))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The low-rank update for every output feature (zero outside the slices)."""
        x = self.dropout(x)
        pieces, position = [], 0
        for part, out_slice in sorted(self.slices.items(), key=lambda kv: kv[1].start):
            if out_slice.start > position:
                pieces.append(x.new_zeros(*x.shape[:-1], out_slice.start - position))
            pieces.append(F.linear(F.linear(x, self.lora_A[part]), self.lora_B[part]))
            position = out_slice.stop
        if position < self.base_layer.out_features:
            pieces.append(x.new_zeros(*x.shape[:-1], self.base_layer.out_features - position))
        return torch.cat(pieces, dim=-1) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.delta(x)

    def merged_module(self) -> nn.Linear:
        weight = self.base_layer.weight
        for part, out_slice in self.slices.items():
            update = self.lora_B[part] @ self.lora_A[part]
            weight.data[out_slice] += self.scaling * update.to(weight.dtype)
        return self.base_layer


def lora_slices(target: str, linear: nn.Linear) -> tuple[str, dict[str, slice]]:
    """(site, {part: output slice}) for a target; q/k/v are thirds of the fused qkv."""
    if target in QKV_PARTS:
        width = linear.out_features // 3
        index = QKV_PARTS.index(target)
        return "qkv", {target: slice(index * width, (index + 1) * width)}
    return target, {target: slice(0, linear.out_features)}


class LoRA(Adapter):
    """LoRA (Hu et al. 2022): W + (alpha/r) B A on q/k/v/out/mlp sites."""

    mergeable = True

    def _attach(self, backbone) -> None:
        config: LoRAConfig = self.config
        for block in blocks_of(config.blocks, backbone):
            per_site: dict[str, dict[str, slice]] = {}
            for target in config.targets:
                site, slices = lora_slices(target, backbone.site(_site_of(target), block))
                per_site.setdefault(site, {}).update(slices)
            for site, slices in per_site.items():
                wrapper = self.wrap_site(site, block, lambda base, s=slices: LoRALinear(base, s, config))
                for part in slices:
                    self.declare(f"blocks.{block}.{site}.lora_A.{part}", wrapper.lora_A[part])
                    self.declare(f"blocks.{block}.{site}.lora_B.{part}", wrapper.lora_B[part])


def _site_of(target: str) -> str:
    return "qkv" if target in QKV_PARTS else target


register_adapter("lora", LoRAConfig, LoRA)
