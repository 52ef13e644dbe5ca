"""FacT: factor-tuning with U and V shared by every block, as FacT-TT or FacT-TK.

Shibo Jie & Zhi-Hong Deng, "FacT: Factor-Tuning for Lightweight Adaptation on Vision Transformer",
AAAI 2023 (arXiv:2212.03145); official code: github.com/JieShibo/PETL-ViT, ``FacT/fact_tt.py``
(FacT-TT) and ``FacT/fact_tk.py`` (FacT-TK). Option ``variant`` picks one: ``tt`` (default) or ``tk``.

FacT stacks the d x d weights of a ViT into one tensor (12 slices per block: q, k, v, o,
and the 4 d x d chunks of each MLP linear) and trains a low-rank factorisation of its
increment. Both variants share U (r x d, d -> r) and V (d x r, r -> d) across all blocks and
give every slice ``j`` the increment

    Delta W_j = s * V C_j U,     C_j: r x r

and differ in where the slice's r x r core C_j comes from:

* FacT-TT (Tensor-Train): C_j is a free parameter of its own (12 L r^2 of them in all).
* FacT-TK (Tucker): one r x r x r core C and one r-vector P_j per slice (the columns of an
  r x (12 L) matrix P) are shared; the slice's core is their contraction on the third mode,

      C_j = C x_3 P_j,   (C_j)[a, b] = sum_c C[a, b, c] P[c, j]    (a: V side, b: U side)

  so FacT-TK trains 2 d r + 12 L r + r^3 parameters: 30,976 at r = 16 and 86,528 at r = 32 on
  ViT-B/16 (d = 768, 144 slices). The official ``FacTc`` is C with its first two modes swapped
  (``FacTu(x) @ (FacTc @ p)`` multiplies the core on the right); same init distribution.

A linear whose weight is a grid of ``k_out x k_in`` d x d chunks ``(a, b)`` computes

    h = W x + s * (I (x) V) C (I (x) U) x,   C = [C_ab]: (k_out r) x (k_in r)

i.e. U projects each d-wide input chunk to r, the site's cores mix them, dropout, and V lifts
each r-wide output chunk back to d. The fused ``qkv`` linear carries one core per q, k, v third
(each r x r); ``attn_out`` one r x r core; ``mlp_in`` (d -> 4d) a 4r x r core and ``mlp_out``
(4d -> d) an r x 4r core, exactly the shapes of the official ``*_FacTs`` linears. For TK the
site's cores are computed from C and P at every forward instead of being parameters; the slices
are numbered as the official ``FacTp`` columns: block by block, q, k, v, o, the fc1 chunks, the
fc2 chunks (12 per ViT-B block; one per adapted d x d slice in general).

Initialisation (official code): U as ``nn.Linear``'s default (Kaiming-uniform, a = sqrt(5));
V = 0, so the model is the frozen one at initialisation. TT: the cores as ``nn.Linear``'s
default. TK (``fact_tk.py`` ``set_FacT``): C and P Xavier-uniform. Dropout 0.1 sits between
the core and V in both. Defaults: every q, k, v, o, fc1, fc2 of every block; then per variant
(``rank`` and ``scale`` left unset mean the variant's default):

* TT: r = 8, s = 1. The official VTAB-1k configs (``FacT/configs/tt/*.yaml``) pick r per task
  from {8, 16} (4 for clevr_dist; 8 and 16 nine tasks each) and s from {0.01, 0.1, 1, 10, 100};
  per-task choices belong to the runner's search, so the defaults are the smaller rank and the
  most frequent scale (1: 7 of 19 tasks).
* TK: r = 32, s = 10. The official configs (``FacT/configs/tk/*.yaml``) pick r = 32 for 13 of
  the 19 tasks and r = 16 for the other 6 (clevr_dist, diabetic_retinopathy, dtd,
  oxford_iiit_pet, smallnorb_ele, sun397), and s = 10 for 9 tasks (100: 4, 1: 4, 0.1: cifar,
  0.01: dtd): the defaults are the most frequent of each. The per-task average of those
  configs, (13 x 86,528 + 6 x 30,976) / 19 = 68,985 parameters, is the paper's "FacT 0.07M"
  VTAB-1k row: that row is FacT-TK with per-task r (and s).

The increment is linear, so ``merge()`` folds ``W + s (I (x) V) C (I (x) U)`` into every
weight exactly and removes the shared factors.

Departures from the official code: it monkey-patches the forward of timm's ``Attention`` and
``Mlp`` and hard-codes d = 768 and an MLP ratio of 4; here the sites are wrapped through the
anatomy, d is the backbone's width and any linear whose sides are multiples of d is chunked.
``targets`` and ``blocks`` restrict the adapted weights (the paper adapts all of them); TK then
keeps a P column for the adapted slices only. The official TK's MLP follows the paper's formula
loosely: ``fact_tk.py`` reshapes the r x r x 4 stack of fc1 (and fc2) cores to r x 4r with
``.reshape`` (column b*4 + j, slice index fastest) and then reads it chunk-major, so each fc1 /
fc2 chunk there mixes all four of its block's P columns, and fc2 uses C's first two modes the
other way round. Here every slice, MLP chunks included, gets the paper's C x_3 P_j (same
parameter count; official TK MLP weights do not load one to one).
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
SHARED_KEY = "fact"  # where the shared U, V (and TK's C, P) live in backbone.adapter_modules
VARIANTS = ("tt", "tk")
#: r and s when ``rank`` / ``scale`` are left unset (module docstring: the official configs)
DEFAULT_RANK = {"tt": 8, "tk": 32}
DEFAULT_SCALE = {"tt": 1.0, "tk": 10.0}


@dataclass
class FacTConfig(AdapterConfig):
    variant: str = field(
        default="tt",
        metadata={"help": "tt: FacT-TT, a free r x r core per d x d slice; tk: FacT-TK, one shared "
                          "r x r x r core contracted with a per-slice r-vector (the paper's 0.07M VTAB-1k row)"},
    )
    rank: int | None = field(
        default=None,
        metadata={"help": "rank r of the shared U (d -> r), V (r -> d) and the cores "
                          "(default: the variant's, 8 for tt, 32 for tk)"},
    )
    scale: float | None = field(
        default=None,
        metadata={"help": "scale s of the increment s * V C U (default: the variant's, 1 for tt, 10 for tk)"},
    )
    dropout: float = field(default=0.1, metadata={"help": "dropout between the core and V"})
    targets: tuple[str, ...] = field(
        default=FACT_TARGETS,
        metadata={"help": f"weights to adapt, any of {', '.join(FACT_TARGETS)} (default: all, as the paper)"},
    )
    blocks: tuple[int, ...] | None = field(
        default=None, metadata={"help": "block indices to adapt (default: every block)"}
    )

    def __post_init__(self) -> None:
        # the command line's strings: ``float | None`` is a hint the base coercion leaves as text
        if isinstance(self.scale, str):
            text = self.scale.strip()
            try:
                self.scale = None if text.lower() in ("none", "") else float(text)
            except ValueError:
                raise AdaptbenchError(f"adapter 'fact' option scale={text!r}: expected a number or none") from None
        super().__post_init__()

    def validate(self) -> None:
        require(self.variant in VARIANTS, f"fact option variant={self.variant!r}: expected one of {VARIANTS}")
        require(self.rank is None or self.rank >= 1, f"fact option rank={self.rank}: expected an integer >= 1")
        require(self.scale is None or self.scale > 0, f"fact option scale={self.scale}: expected a number > 0")
        require(0.0 <= self.dropout < 1.0, f"fact option dropout={self.dropout}: expected 0 <= dropout < 1")
        require(len(self.targets) > 0, "fact option targets: expected at least one of " + ", ".join(FACT_TARGETS))
        for target in self.targets:
            require(target in FACT_TARGETS, f"fact target {target!r}: expected one of {FACT_TARGETS}")
        require(len(set(self.targets)) == len(self.targets),
                f"fact option targets={self.targets}: a target is repeated")

    @property
    def resolved_rank(self) -> int:
        """r: ``rank``, or the variant's default when it is unset."""
        return DEFAULT_RANK[self.variant] if self.rank is None else self.rank

    @property
    def resolved_scale(self) -> float:
        """s: ``scale``, or the variant's default when it is unset."""
        return DEFAULT_SCALE[self.variant] if self.scale is None else self.scale


class SharedFactors(nn.Module):
    """U (r x d, the d -> r projection) and V (d x r, r -> d), one pair for the whole model;
    for FacT-TK also the core C (r x r x r) and the slices' coefficients P (r x slices)."""

    def __init__(self, dim: int, rank: int, device=None, dtype=None):
        super().__init__()
        self.u = nn.Parameter(torch.empty(rank, dim, device=device, dtype=dtype))
        self.v = nn.Parameter(torch.zeros(dim, rank, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.u, a=math.sqrt(5))  # nn.Linear's default, as the official FacTu
        self.core: nn.Parameter | None = None
        self.coefficients: nn.Parameter | None = None

    def add_tucker(self, slices: int) -> None:
        """FacT-TK's C (modes: V side, U side, slice) and P (one column per slice), both
        Xavier-uniform as the official ``FacTc`` / ``FacTp`` (created after U, as there)."""
        rank = self.u.shape[0]
        factory = {"device": self.u.device, "dtype": self.u.dtype}
        self.core = nn.Parameter(torch.empty(rank, rank, rank, **factory))
        self.coefficients = nn.Parameter(torch.empty(rank, slices, **factory))
        nn.init.xavier_uniform_(self.core)
        nn.init.xavier_uniform_(self.coefficients)

    def tucker_cores(self, columns: slice, out_chunks: int, in_chunks: int) -> torch.Tensor:
        """The TK cores C x_3 P_j of ``out_chunks x in_chunks`` slices whose P columns are
        ``columns`` (row-major), laid out as one (out_chunks r) x (in_chunks r) core."""
        rank = self.u.shape[0]
        coefficients = self.coefficients[:, columns].reshape(rank, out_chunks, in_chunks)
        cores = torch.einsum("xyc,cab->axby", self.core, coefficients)
        return cores.reshape(out_chunks * rank, in_chunks * rank)


class FacTLinear(SiteWrapper):
    """``base(x) + s * (I (x) V) dropout(C_p (I (x) U) x)`` on chunk ranges ``p`` of a linear.

    ``parts`` maps a part name to the range of d-wide output chunks its core writes. FacT-TT:
    each part's core is a parameter of its own (``cores``). FacT-TK (``first_column`` given):
    a part's core is computed from the shared C and its P columns ``columns[part]``, one per
    d x d slice of the part (row-major over its output x input chunks), numbered from
    ``first_column`` in the order of the parts' rows (q, k, v); ``cores`` stays empty.
    """

    def __init__(self, base_layer: nn.Linear, factors: SharedFactors, parts: dict[str, range],
                 config: FacTConfig, first_column: int | None = None):
        super().__init__(base_layer)
        # The factors are owned by backbone.adapter_modules; registering them here as well
        # would repeat them once per site in state_dict() and module listings.
        self._shared = (factors,)
        self.dim = factors.u.shape[1]
        self.rank = config.resolved_rank
        self.scale = config.resolved_scale
        self.in_chunks = _chunks(base_layer.in_features, self.dim, "input")
        self.out_chunks = _chunks(base_layer.out_features, self.dim, "output")
        self.parts = dict(sorted(parts.items(), key=lambda kv: kv[1].start))
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.cores = nn.ParameterDict()
        self.columns: dict[str, slice] | None = None
        if first_column is not None:
            self.columns, column = {}, first_column
            for part, chunks in self.parts.items():
                self.columns[part] = slice(column, column + len(chunks) * self.in_chunks)
                column = self.columns[part].stop
            return
        factory = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        for part, chunks in self.parts.items():
            core = torch.empty(len(chunks) * self.rank, self.in_chunks * self.rank, **factory)
            nn.init.kaiming_uniform_(core, a=math.sqrt(5))  # nn.Linear's default, as the official *_FacTs
            self.cores[part] = nn.Parameter(core)

    @property
    def factors(self) -> SharedFactors:
        return self._shared[0]

    def core(self, part: str) -> torch.Tensor:
        """The part's (chunks r) x (k_in r) core: TT's parameter, or TK's [C x_3 P_j] blocks."""
        if self.columns is None:
            return self.cores[part]
        return self.factors.tucker_cores(self.columns[part], len(self.parts[part]), self.in_chunks)

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
            core = self.core(part)
            if chunks.start > position:
                rows.append(core.new_zeros((chunks.start - position) * self.rank, width))
            rows.append(core)
            position = chunks.stop
        if position < self.out_chunks:
            rows.append(rows[0].new_zeros((self.out_chunks - position) * self.rank, width))
        return rows[0] if len(rows) == 1 else torch.cat(rows)

    def weight_update(self, part: str) -> torch.Tensor:
        """(I (x) V) C_p (I (x) U): the dense increment of the rows ``part`` writes (scale excluded)."""
        u, v = self.factors.u, self.factors.v
        chunks = len(self.parts[part])
        core = self.core(part).reshape(chunks, self.rank, self.in_chunks, self.rank)
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
    """FacT-TT or FacT-TK (Jie & Deng 2023): weight updates factorised with U, V shared across
    blocks, each d x d slice's r x r core its own (TT) or a shared core times its r-vector (TK)"""

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
        factors = SharedFactors(dim, config.resolved_rank, device=reference.device, dtype=reference.dtype)
        backbone.adapter_modules[SHARED_KEY] = factors
        self.declare("shared.fact_U", factors.u)
        self.declare("shared.fact_V", factors.v)
        if config.variant == "tk":
            self._attach_tucker(backbone, factors, dim)
            return
        for block in blocks_of(config.blocks, backbone):
            per_site: dict[str, dict[str, range]] = {}
            for target in config.targets:
                site, parts = fact_parts(target, backbone, block, dim)
                per_site.setdefault(site, {}).update(parts)
            for site, parts in per_site.items():
                wrapper = self.wrap_site(site, block, lambda base, p=parts: FacTLinear(base, factors, p, config))
                for part in parts:
                    self.declare(f"blocks.{block}.{site}.fact_core.{part}", wrapper.cores[part])

    def _attach_tucker(self, backbone, factors: SharedFactors, dim: int) -> None:
        """FacT-TK: P columns numbered as the official ``FacTp``: block by block, in the order
        q, k, v, o, fc1's chunks, fc2's chunks (each part's slices row-major over its output x
        input chunks); C and P are created once every slice is counted, after U as officially."""
        config: FacTConfig = self.config
        targets = [target for target in FACT_TARGETS if target in config.targets]
        column = 0
        for block in blocks_of(config.blocks, backbone):
            per_site: dict[str, dict[str, range]] = {}
            for target in targets:
                site, parts = fact_parts(target, backbone, block, dim)
                per_site.setdefault(site, {}).update(parts)
            for site, parts in per_site.items():
                wrapper = self.wrap_site(site, block,
                                         lambda base, p=parts, c=column: FacTLinear(base, factors, p, config, c))
                column = max(c.stop for c in wrapper.columns.values())
        factors.add_tucker(column)
        self.declare("shared.fact_C", factors.core)
        self.declare("shared.fact_P", factors.coefficients)

    def _merge(self) -> None:
        super()._merge()  # every site reads the shared factors while it folds them in
        del self.backbone.adapter_modules[SHARED_KEY]


register_adapter("fact", FacTConfig, FacT)
