"""FacT-TT: factor-tuning with U and V shared by every block.

Shibo Jie & Zhi-Hong Deng, "FacT: Factor-Tuning for Lightweight Adaptation on Vision Transformer",
AAAI 2023 (arXiv:2212.03145); official code: github.com/JieShibo/PETL-ViT, ``FacT/fact_tt.py``.

FacT stacks the d x d weights of a ViT into one tensor (12 slices per block: q, k, v, o,
and the 4 d x d chunks of each MLP linear) and trains a Tensor-Train factorisation of its
increment. Every slice ``j`` gets

    Delta W_j = s * V C_j U,     U: r x d and V: d x r shared by all blocks, C_j: r x r

so a linear whose weight is a grid of ``k_out x k_in`` d x d chunks ``(a, b)`` computes

    h = W x + s * (I (x) V) C (I (x) U) x,   C = [C_ab]: (k_out r) x (k_in r)

i.e. U projects each d-wide input chunk to r, the site's cores mix them, dropout, and V lifts
each r-wide output chunk back to d. The fused ``qkv`` linear carries one core per q, k, v third
(each r x r); ``attn_out`` one r x r core; ``mlp_in`` (d -> 4d) a 4r x r core and ``mlp_out``
(4d -> d) an r x 4r core, exactly the shapes of the official ``*_FacTs`` linears.

Initialisation (official code): U and the cores as ``nn.Linear``'s default (Kaiming-uniform,
a = sqrt(5)); V = 0, so the model is the frozen one at initialisation. Dropout 0.1 sits
between the core and V. Defaults: every q, k, v, o, fc1, fc2 of every block; r = 8, s = 1.
The official VTAB-1k configs (``FacT/configs/tt/*.yaml``) pick r per task from {8, 16} (4 for
clevr_dist) and s from {0.01, 0.1, 1, 10, 100}; per-task choices belong to the runner's search,
so the defaults are the smaller rank and the most frequent scale.

The increment is linear, so ``merge()`` folds ``W + s (I (x) V) C (I (x) U)`` into every
weight exactly and removes the shared factors.

Departures from the official code: it monkey-patches the forward of timm's ``Attention`` and
``Mlp`` and hard-codes d = 768 and an MLP ratio of 4; here the sites are wrapped through the
anatomy, d is the backbone's width and any linear whose sides are multiples of d is chunked.
``targets`` and ``blocks`` restrict the adapted weights (the paper adapts all of them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AdaptbenchError
from ..registry import register_adapter
from ..backbones.anatomy import QKV_PARTS
from .base import Adapter, AdapterConfig, SiteWrapper, blocks_of, require

WHOLE_SITES = ("attn_out", "mlp_in", "mlp_out")
FACT_TARGETS = QKV_PARTS + WHOLE_SITES
SHARED_KEY = "fact"  # where the shared U, V live in backbone.adapter_modules


@dataclass
class FacTConfig(AdapterConfig):
    rank: int = field(default=8, metadata={"help": "rank r of the shared U (d -> r), V (r -> d) and the r x r cores"})
    scale: float = field(default=1.0, metadata={"help": "scale s of the increment s * V C U"})
    dropout: float = field(default=0.1, metadata={"help": "dropout between the core and V"})
    targets: tuple[str, ...] = field(
        default=FACT_TARGETS,
        metadata={"help": f"weights to adapt, any of {', '.join(FACT_TARGETS)} (default: all, as the paper)"},
    )
    blocks: tuple[int, ...] | None = field(
        default=None, metadata={"help": "block indices to adapt (default: every block)"}
    )

    def validate(self) -> None:
        require(self.rank >= 1, f"fact option rank={self.rank}: expected an integer >= 1")
        require(self.scale > 0, f"fact option scale={self.scale}: expected a number > 0")
        require(0.0 <= self.dropout < 1.0, f"fact option dropout={self.dropout}: expected 0 <= dropout < 1")
        require(len(self.targets) > 0, "fact option targets: expected at least one of " + ", ".join(FACT_TARGETS))
        for target in self.targets:
            require(target in FACT_TARGETS, f"fact target {target!r}: expected one of {FACT_TARGETS}")
        require(len(set(self.targets)) == len(self.targets),
                f"fact option targets={self.targets}: a target is repeated")


class SharedFactors(nn.Module):
    """U (r x d, the d -> r projection) and V (d x r, r -> d), one pair for the whole model."""

    def __init__(self, dim: int, rank: int, device=None, dtype=None):
        super().__init__()
        self.u = nn.Parameter(torch.empty(rank, dim, device=device, dtype=dtype))
        self.v = nn.Parameter(torch.zeros(dim, rank, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.u, a=math.sqrt(5))  # nn.Linear's default, as the official FacTu


class FacTLinear(SiteWrapper):
    """``base(x) + s * (I (x) V) dropout(C_p (I (x) U) x)`` on chunk ranges ``p`` of a linear.

    ``parts`` maps a part name to the range of d-wide output chunks its core writes.
    """

    def __init__(self, base_layer: nn.Linear, factors: SharedFactors, parts: dict[str, range],
                 config: FacTConfig):
        super().__init__(base_layer)
        # The factors are owned by backbone.adapter_modules; registering them here as well
        # would repeat them once per site in state_dict() and module listings.
        self._shared = (factors,)
        self.dim = factors.u.shape[1]
        self.rank = config.rank
        self.scale = config.scale
        self.in_chunks = _chunks(base_layer.in_features, self.dim, "input")
        self.out_chunks = _chunks(base_layer.out_features, self.dim, "output")
        self.parts = dict(sorted(parts.items(), key=lambda kv: kv[1].start))
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        factory = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.cores = nn.ParameterDict()
        for part, chunks in self.parts.items():
            core = torch.empty(len(chunks) * self.rank, self.in_chunks * self.rank, **factory)
            nn.init.kaiming_uniform_(core, a=math.sqrt(5))  # nn.Linear's default, as the official *_FacTs
            self.cores[part] = nn.Parameter(core)

    @property
    def factors(self) -> SharedFactors:
        return self._shared[0]

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The increment for every output feature (zero outside the adapted chunks)."""
        return self._add_increment(x, x.new_zeros(*x.shape[:-1], self.out_chunks * self.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._add_increment(x, self.base_layer(x))

    def _add_increment(self, x: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
        """``base_output + s (I (x) V) dropout(C (I (x) U) x)``: U, the site's cores and V each
        one GEMM for all parts, V's accumulating into the base output (``addmm``).

        The parts' cores are stacked into one (k_out r) x (k_in r) core, zero on the output
        chunks no part writes (k, when q and v are adapted): zeros in weight space; those
        chunks get V 0 = 0 added. Dropout acts once on the stacked core output.
        """
        u, v = self.factors.u, self.factors.v
        projected = F.linear(x.unflatten(-1, (self.in_chunks, self.dim)), u).flatten(-2)
        mixed = self.dropout(F.linear(projected, self._stacked_core()))
        output = torch.addmm(base_output.reshape(-1, self.dim), mixed.reshape(-1, self.rank), v.t(),
                             alpha=self.scale)
        return output.view(base_output.shape)

    def _stacked_core(self) -> torch.Tensor:
        """The site's cores, one block row per output chunk: (k_out r) x (k_in r)."""
        rows, position, width = [], 0, self.in_chunks * self.rank
        for part, chunks in self.parts.items():
            if chunks.start > position:
                rows.append(self.cores[part].new_zeros((chunks.start - position) * self.rank, width))
            rows.append(self.cores[part])
            position = chunks.stop
        if position < self.out_chunks:
            rows.append(rows[0].new_zeros((self.out_chunks - position) * self.rank, width))
        return rows[0] if len(rows) == 1 else torch.cat(rows)

    def weight_update(self, part: str) -> torch.Tensor:
        """(I (x) V) C_p (I (x) U): the dense increment of the rows ``part`` writes (scale excluded)."""
        u, v = self.factors.u, self.factors.v
        chunks = len(self.parts[part])
        core = self.cores[part].reshape(chunks, self.rank, self.in_chunks, self.rank)
        update = torch.einsum("ir,arbs,sj->aibj", v, core, u)
        return update.reshape(chunks * self.dim, self.in_chunks * self.dim)

    def merged_module(self) -> nn.Linear:
        weight = self.base_layer.weight
        for part, chunks in self.parts.items():
            rows = slice(chunks.start * self.dim, chunks.stop * self.dim)
            weight.data[rows] += self.scale * self.weight_update(part).to(weight.dtype)
        return self.base_layer


def _chunks(features: int, dim: int, side: str) -> int:
    """How many d-wide chunks a linear's input or output holds (FacT tensorises d x d slices)."""
    if features % dim:
        raise AdaptbenchError(
            f"fact: a linear with {features} {side} features cannot be cut into d x d slices "
            f"(d = {dim}); FacT needs widths that are multiples of the embedding width"
        )
    return features // dim


def fact_parts(target: str, backbone, block: int, dim: int) -> tuple[str, dict[str, range]]:
    """(site, {part: output chunk range}); q, k, v are sub-sites of the fused qkv (its thirds)."""
    site, rows = backbone.target_rows(target, block)
    _chunks(rows.stop - rows.start, dim, "output")
    return site, {target: range(rows.start // dim, rows.stop // dim)}


class FacT(Adapter):
    """FacT-TT (Jie & Deng 2023): weight updates factorised with U, V shared across blocks"""

    mergeable = True

    @classmethod
    def unsupported(cls, anatomy, config) -> str | None:
        """FacT cuts every adapted linear into d x d slices: the MLP width must be a multiple
        of d when an MLP linear is a target (not so for ViT-bigG-14: 8192 / 1664)."""
        reason = super().unsupported(anatomy, config)
        mlp_targets = {"mlp_in", "mlp_out"} & set(config.targets)
        if reason is None and mlp_targets and anatomy.mlp_dim % anatomy.embed_dim:
            reason = (f"targets {sorted(mlp_targets)} need an MLP width that is a multiple of the embedding "
                      f"width d = {anatomy.embed_dim}; the backbone's is {anatomy.mlp_dim}")
        return reason

    def _attach(self, backbone) -> None:
        config: FacTConfig = self.config
        if SHARED_KEY in backbone.adapter_modules:
            raise AdaptbenchError(f"fact: backbone {backbone.name!r} already carries FacT factors; attach FacT once")
        dim = backbone.anatomy.embed_dim
        reference = next(backbone.parameters())
        factors = SharedFactors(dim, config.rank, device=reference.device, dtype=reference.dtype)
        backbone.adapter_modules[SHARED_KEY] = factors
        self.declare("shared.fact_U", factors.u)
        self.declare("shared.fact_V", factors.v)
        for block in blocks_of(config.blocks, backbone):
            per_site: dict[str, dict[str, range]] = {}
            for target in config.targets:
                site, parts = fact_parts(target, backbone, block, dim)
                per_site.setdefault(site, {}).update(parts)
            for site, parts in per_site.items():
                wrapper = self.wrap_site(site, block, lambda base, p=parts: FacTLinear(base, factors, p, config))
                for part in parts:
                    self.declare(f"blocks.{block}.{site}.fact_core.{part}", wrapper.cores[part])

    def _merge(self) -> None:
        super()._merge()  # every site reads the shared factors while it folds them in
        del self.backbone.adapter_modules[SHARED_KEY]


register_adapter("fact", FacTConfig, FacT)
