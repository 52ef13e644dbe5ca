"""AdaptFormer: a scaled bottleneck beside the MLP of every block.

Chen, Ge, Tong, Wang, Song, Wang, Luo, "AdaptFormer: Adapting Vision Transformers for
Scalable Visual Recognition", NeurIPS 2022 (arXiv:2205.13535).

Each chosen block's MLP residual branch gets a parallel bottleneck that reads the branch
input ``x`` (before the MLP's pre-norm):

    x <- x + MLP(LN(x)) + s * up(dropout(ReLU(down(x))))

``down`` (d -> bottleneck) is Kaiming-uniform with a = sqrt(5) (the official ``"lora"`` init
option), ``up`` and both biases are zero, so the adapted model is the frozen one at
initialisation. Defaults are the official image setting (ShoufaChen/AdaptFormer,
``main_image.py``: ``ffn_num=64``, ``ffn_adapter_scalar="0.1"``, ``ffn_option="parallel"``,
``ffn_adapter_layernorm_option="none"``; ``models/custom_modules.py``: ``dropout=0.1`` on the
bottleneck's hidden activations). The ReLU makes it non-mergeable.

Departure from the official code: the adapter's output is added beside the whole branch
``post(core(norm(x)))``, where ``post`` holds the backbone's own LayerScale / DropPath; the
official block also leaves the adapter outside DropPath (it has no LayerScale), so this is the
same placement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from ..registry import register_adapter
from .base import Adapter, AdapterConfig, blocks_of, require
from .layers import Bottleneck, ParallelBranch


@dataclass
class AdaptFormerConfig(AdapterConfig):
    bottleneck: int = field(default=64, metadata={"help": "hidden width of the down/up bottleneck"})
    scale: float = field(default=0.1, metadata={"help": "s in x + MLP(LN(x)) + s * adapter(x)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the bottleneck's hidden activations"})
    blocks: tuple[int, ...] | None = field(
        default=None, metadata={"help": "block indices to adapt (default: every block)"}
    )

    adapter_name: ClassVar[str] = "adaptformer"  # names the adapter in error messages

    def validate(self) -> None:
        name = self.adapter_name
        require(self.bottleneck >= 1, f"{name} option bottleneck={self.bottleneck}: expected an integer >= 1")
        require(0.0 <= self.dropout < 1.0, f"{name} option dropout={self.dropout}: expected 0 <= dropout < 1")
        require(self.scale == self.scale and abs(self.scale) != float("inf"),
                f"{name} option scale={self.scale}: expected a finite number")


class AdaptFormer(Adapter):
    """AdaptFormer (Chen et al. 2022): scaled bottleneck parallel to the MLP."""

    def _attach(self, backbone) -> None:
        config: AdaptFormerConfig = self.config
        self.branches: dict[int, ParallelBranch] = {}
        for block in blocks_of(config.blocks, backbone):
            wrapper = self.wrap_site(
                "mlp", block, lambda base: ParallelBranch(base, self.make_bottleneck(base, backbone),
                                                          config.scale, input="residual")
            )
            self.branches[block] = wrapper
            for name, param in wrapper.adapter.named_parameters():
                self.declare(f"blocks.{block}.mlp.{name}", param)

    def make_bottleneck(self, branch: nn.Module, backbone) -> nn.Module:
        """The module beside ``branch`` (subclasses change its linears, e.g. Bi-AdaptFormer)."""
        config: AdaptFormerConfig = self.config
        reference = next(branch.parameters())
        return Bottleneck(backbone.anatomy.embed_dim, config.bottleneck, act="relu", dropout=config.dropout,
                          init="kaiming", device=reference.device, dtype=reference.dtype)


register_adapter("adaptformer", AdaptFormerConfig, AdaptFormer)
