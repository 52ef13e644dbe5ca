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

:class:`LoRALinear` is the one LoRA implementation in the package: variants build on it
(``spatial_lora``: a rank per site through ``config.rank_of``; ``dora``: a subclass that
changes what each part adds and how it merges).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_adapter
from ..backbones.anatomy import QKV_PARTS
from .base import Adapter, AdapterConfig, SiteWrapper, blocks_of, require

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

    adapter_name: ClassVar[str] = "lora"  # the name error messages use (LoRA variants reuse this config)

    def validate(self) -> None:
        name = self.adapter_name
        require(self.r >= 1, f"{name} option r={self.r}: expected an integer >= 1")
        require(0.0 <= self.dropout < 1.0, f"{name} option dropout={self.dropout}: expected 0 <= dropout < 1")
        require(len(self.targets) > 0, f"{name} option targets: expected at least one site")
        for target in self.targets:
            require(target in LORA_TARGETS, f"{name} target {target!r}: expected one of {LORA_TARGETS}")
        require(not ({"qkv"} & set(self.targets) and set(QKV_PARTS) & set(self.targets)),
                f"{name} targets: use either 'qkv' (fused) or q/k/v (separate), not both")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def rank_of(self, part: str) -> int:
        """The rank of the update on ``part`` (one rank for every target here)."""
        return self.r


class LoRALinear(SiteWrapper):
    """``base(x) + (alpha / r_p) B_p A_p x`` on output slices ``p`` of a frozen linear.

    ``config`` supplies ``alpha``, ``dropout`` and ``rank_of(part)``, so that LoRA variants
    (per-site ranks, DoRA) reuse this class: a variant overrides :meth:`part_updates` (what
    each part adds to its output slice) and :meth:`merged_rows` (the part's folded weights).
    LoRA itself never builds the parts' updates: its forward is two GEMMs (:meth:`_add_low_rank`).
    """

    def __init__(self, base_layer: nn.Linear, slices: dict[str, slice], config):
        super().__init__(base_layer)
        self.slices = slices
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.scaling: dict[str, float] = {}
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        factory = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        for part, out_slice in slices.items():
            rank = config.rank_of(part)
            self.scaling[part] = config.alpha / rank
            self.lora_A[part] = nn.Parameter(torch.empty(rank, base_layer.in_features, **factory))
            self.lora_B[part] = nn.Parameter(torch.zeros(out_slice.stop - out_slice.start, rank, **factory))
            nn.init.kaiming_uniform_(self.lora_A[part], a=math.sqrt(5))

    def adapter_tensors(self) -> list[tuple[str, nn.Parameter]]:
        """(name within the site, tensor) for every trainable tensor of this wrapper."""
        named = []
        for part in self.slices:
            named += [(f"lora_A.{part}", self.lora_A[part]), (f"lora_B.{part}", self.lora_B[part])]
        return named

    def low_rank(self, part: str, x: torch.Tensor) -> torch.Tensor:
        """``(alpha / r_p) B_p A_p x`` for one part."""
        return F.linear(F.linear(x, self.lora_A[part]), self.lora_B[part]) * self.scaling[part]

    def down_projection(self, x: torch.Tensor, parts: list[str]) -> torch.Tensor:
        """``A_p x`` of ``parts`` side by side (last dim) from one matmul: the parts share ``x``."""
        weights = [self.lora_A[part] for part in parts]
        return F.linear(x, weights[0] if len(weights) == 1 else torch.cat(weights))

    def update(self, part: str) -> torch.Tensor:
        """The part's weight update ``(alpha / r_p) B_p A_p`` (out_p x in)."""
        return self.scaling[part] * (self.lora_B[part] @ self.lora_A[part])

    def part_updates(self, x: torch.Tensor, base_output: torch.Tensor) -> dict[str, torch.Tensor]:
        """What each part adds to its slice of ``base_output``."""
        parts = list(self.slices)
        ranks = [self.lora_A[part].shape[0] for part in parts]
        down = self.down_projection(self.dropout(x), parts).split(ranks, dim=-1)
        return {part: F.linear(d, self.lora_B[part]) * self.scaling[part] for part, d in zip(parts, down)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base_output = self.base_layer(x)
        if type(self).part_updates is LoRALinear.part_updates:
            return self._add_low_rank(self.dropout(x), base_output)
        # a variant's parts add what it chooses (DoRA: a rescaled frozen output too)
        return base_output + self._to_full_width(self.part_updates(x, base_output), base_output)

    def _add_low_rank(self, x: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
        """``base_output + sum_p s_p B_p A_p x`` with one down and one up GEMM for all parts.

        The up GEMM accumulates into the base output (``addmm``) through the parts' ``B``
        stacked into an out x sum(r_p) matrix, zero on the rows of the output no part writes
        (k, when q and v are adapted): zeros in weight space, not an activation-sized block,
        and no part's update is ever materialised. Cheaper on CPU than adding each part into
        its slice, whose backward builds a zero-filled full-width gradient per slice.
        """
        parts = sorted(self.slices.items(), key=lambda kv: kv[1].start)
        ranks = [self.lora_A[part].shape[0] for part, _ in parts]
        down = self.down_projection(x, [part for part, _ in parts])
        total, width = sum(ranks), base_output.shape[-1]
        rows, position, column = [], 0, 0
        for (part, out_slice), rank in zip(parts, ranks):
            if out_slice.start > position:
                rows.append(self.lora_B[part].new_zeros(out_slice.start - position, total))
            rows.append(F.pad(self.lora_B[part] * self.scaling[part], (column, total - column - rank)))
            position, column = out_slice.stop, column + rank
        if position < width:
            rows.append(self.lora_B[parts[0][0]].new_zeros(width - position, total))
        up = rows[0] if len(rows) == 1 else torch.cat(rows)
        output = torch.addmm(base_output.reshape(-1, width), down.reshape(-1, total), up.t())
        return output.view(base_output.shape)

    def _to_full_width(self, updates: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """Place each part's update at its output slice, zeros elsewhere (measured on CPU: one
        add of this full-width tensor beats adding each part into a slice of the output)."""
        pieces, position = [], 0
        for part, out_slice in sorted(self.slices.items(), key=lambda kv: kv[1].start):
            if out_slice.start > position:
                pieces.append(like.new_zeros(*like.shape[:-1], out_slice.start - position))
            pieces.append(updates[part])
            position = out_slice.stop
        if position < like.shape[-1]:
            pieces.append(like.new_zeros(*like.shape[:-1], like.shape[-1] - position))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)

    def merged_rows(self, part: str, rows: torch.Tensor) -> torch.Tensor:
        """The part's frozen weight rows ``W0_p`` with the adapter folded in."""
        return rows + self.update(part)

    def merged_module(self) -> nn.Linear:
        weight = self.base_layer.weight
        for part, out_slice in self.slices.items():
            weight.data[out_slice] = self.merged_rows(part, weight.data[out_slice]).to(weight.dtype)
        return self.base_layer


class LoRA(Adapter):
    """LoRA (Hu et al. 2022): W + (alpha/r) B A on q/k/v/out/mlp sites."""

    mergeable = True
    # the site wrapper; LoRA variants (DoRA) swap in a subclass of LoRALinear
    wrapper_class: ClassVar[type[LoRALinear]] = LoRALinear

    def _attach(self, backbone) -> None:
        config = self.config
        for block in blocks_of(config.blocks, backbone):
            for site, slices in _slices_per_site(config.targets, backbone, block).items():
                wrapper = self.wrap_site(site, block, lambda base, s=slices: self.wrapper_class(base, s, config))
                for what, tensor in wrapper.adapter_tensors():
                    self.declare(f"blocks.{block}.{site}.{what}", tensor)


def _slices_per_site(targets, backbone, block: int) -> dict[str, dict[str, slice]]:
    """{site: {part: output rows}}: q, k and v are sub-sites of the one fused qkv site."""
    per_site: dict[str, dict[str, slice]] = {}
    for target in targets:
        site, rows = backbone.target_rows(target, block)
        per_site.setdefault(site, {})[target] = rows
    return per_site


register_adapter("lora", LoRAConfig, LoRA)
