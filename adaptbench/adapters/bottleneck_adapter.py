"""Bottleneck adapters (Houlsby / Pfeiffer), sequential or parallel.

Houlsby, Giurgiu, Jastrzebski, Morrone, de Laroussilhe, Gesmundo, Attariyan, Gelly,
"Parameter-Efficient Transfer Learning for NLP", ICML 2019 (arXiv:1902.00751);
Pfeiffer, Kamath, Rueckle, Cho, Gurevych, "AdapterFusion: Non-Destructive Task Composition
for Transfer Learning", EACL 2021 (arXiv:2005.00247); the parallel position from He, Zhou,
Ma, Berg-Kirkpatrick, Neubig, "Towards a Unified View of Parameter-Efficient Transfer
Learning", ICLR 2022 (arXiv:2110.04366).

With ``f(h) = up(dropout(act(down(h))))`` (d -> m -> d) and a residual branch
``y = B(x)`` (``B`` = ``attn`` or ``mlp``: pre-norm, sub-layer, LayerScale / DropPath):

    sequential (Houlsby, Pfeiffer):  x <- x + (y + s * f(y))      the adapter after the
                                                                   sub-layer, before its
                                                                   residual addition
    parallel   (He et al. 2022):     x <- x + (y + s * f(x))      the adapter beside the
                                                                   sub-layer, reading its input

Placement: ``houlsby`` puts one adapter in the attention branch and one in the MLP branch;
``pfeiffer`` only in the MLP branch (AdapterFusion's architecture: one adapter per layer,
after the feed-forward sub-layer; also the VPT, NOAH and V-PETL Bench vision baselines).

Defaults are the vision-benchmark adapter baseline on VTAB-1k: bottleneck width m = 8
(NOAH ``experiments/Adapter/ViT-B_prompt_adapter_8.yaml``: ``ADAPTER_DIM: 8``; V-PETL Bench
``configs/model_adapter/vtab/*.yaml``: ``topN: 96`` as reduction factor, 768 / 96 = 8),
``pfeiffer`` placement, ``sequential`` position (NOAH ``model/supernet_transformer_prompt.py``,
V-PETL ``models/vision_transformer_adapter.py``, VPT ``src/models/vit_adapter/vit.py``: all
``x + adapter(mlp(norm(x)))`` with the adapter's own skip), GELU (VPT and V-PETL; Houlsby's
``adapter-bert`` uses GELU too; NOAH uses QuickGELU, available as ``act=quick_gelu``), s = 1
(no scaling in any of them), no dropout by default as V-PETL; NOAH trains its adapter baseline with
dropout 0.1 (``supernet_train_prompt.py`` ``--drop_rate_adapter 0.1``), which
``benchmarks/vtab1k.yaml`` sets (``dropout: 0.1``) to reproduce NOAH's row.

Initialisation: ``down`` Xavier-uniform (NOAH ``model/module/adapter_super.py``), ``up`` and
both biases zero, so every adapter outputs 0 and the adapted model *is* the frozen one at
initialisation. Departures, and why: Houlsby draws all weights from a near-identity
N(0, 1e-2) truncated at two std (``adapter-bert`` uses std 1e-3), which is close to but not
exactly the identity; NOAH adds N(0, 1e-6) biases and a Xavier ``up``, which is not the
identity at all; VPT and V-PETL zero *both* projections, a dead branch whose weights can
never receive a gradient (only ``up.bias`` learns). A zero ``up`` with a random ``down``
keeps the exact identity and every tensor trainable (as LoRA's B = 0). The ReLU / GELU between
the projections makes the adapter non-mergeable.

Houlsby also trains the backbone's LayerNorms; that is the ``ln`` adapter's business here,
so this method trains the adapters only (as the vision baselines do).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from ..registry import register_adapter
from .base import Adapter, AdapterConfig, SiteWrapper, blocks_of, require
from .layers import ACTIVATIONS, Bottleneck, ParallelBranch, SequentialBranch

PLACEMENTS = {"houlsby": ("attn", "mlp"), "pfeiffer": ("mlp",)}
POSITIONS = ("sequential", "parallel")
INIT_SCHEMES = ("xavier", "kaiming")


@dataclass
class BottleneckAdapterConfig(AdapterConfig):
    bottleneck: int = field(default=8, metadata={"help": "hidden width m of the down/up bottleneck"})
    placement: str = field(
        default="pfeiffer",
        metadata={"help": "'houlsby': after attention and after the MLP; 'pfeiffer': after the MLP only"},
    )
    position: str = field(
        default="sequential",
        metadata={"help": "'sequential': y + s*f(y) after the sub-layer; 'parallel': y + s*f(x) beside it"},
    )
    act: str = field(default="gelu", metadata={"help": f"activation, one of {', '.join(ACTIVATIONS)}"})
    scale: float = field(default=1.0, metadata={"help": "s: the adapter output is added as s * f(.)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the bottleneck's hidden activations"})
    init: str = field(default="xavier", metadata={"help": "down-projection init: 'xavier' or 'kaiming' (up is 0)"})
    blocks: tuple[int, ...] | None = field(
        default=None, metadata={"help": "block indices to adapt (default: every block)"}
    )

    adapter_name: ClassVar[str] = "adapter"  # names the adapter in error messages

    def validate(self) -> None:
        name = self.adapter_name
        require(self.bottleneck >= 1, f"{name} option bottleneck={self.bottleneck}: expected an integer >= 1")
        require(self.placement in PLACEMENTS,
                f"{name} option placement={self.placement!r}: expected one of {tuple(PLACEMENTS)}")
        require(self.position in POSITIONS, f"{name} option position={self.position!r}: expected one of {POSITIONS}")
        require(self.act in ACTIVATIONS, f"{name} option act={self.act!r}: expected one of {tuple(ACTIVATIONS)}")
        require(self.init in INIT_SCHEMES, f"{name} option init={self.init!r}: expected one of {INIT_SCHEMES}")
        require(0.0 <= self.dropout < 1.0, f"{name} option dropout={self.dropout}: expected 0 <= dropout < 1")
        require(self.scale == self.scale and abs(self.scale) != float("inf"),
                f"{name} option scale={self.scale}: expected a finite number")

    @property
    def sites(self) -> tuple[str, ...]:
        """The residual branches that get an adapter."""
        return PLACEMENTS[self.placement]


class BottleneckAdapter(Adapter):
    """Bottleneck adapter (Houlsby et al. 2019 / Pfeiffer et al. 2021) after attention and/or MLP"""

    def _attach(self, backbone) -> None:
        config: BottleneckAdapterConfig = self.config
        for block in blocks_of(config.blocks, backbone):
            for site in config.sites:
                wrapper = self.wrap_site(site, block, lambda base: self.make_branch(base, backbone))
                for name, param in wrapper.adapter.named_parameters():
                    self.declare(f"blocks.{block}.{site}.{name}", param)

    def make_branch(self, branch: nn.Module, backbone) -> SiteWrapper:
        """The residual branch with its adapter after it (sequential) or beside it (parallel)."""
        config: BottleneckAdapterConfig = self.config
        reference = next(branch.parameters())
        adapter = Bottleneck(backbone.anatomy.embed_dim, config.bottleneck, act=config.act,
                             dropout=config.dropout, init=config.init,
                             device=reference.device, dtype=reference.dtype)
        if config.position == "parallel":
            return ParallelBranch(branch, adapter, config.scale, input="residual")
        return SequentialBranch(branch, adapter, config.scale)


register_adapter("adapter", BottleneckAdapterConfig, BottleneckAdapter)
