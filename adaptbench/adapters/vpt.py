"""VPT: visual prompt tuning, shallow and deep.

Jia, Tang, Chen, Cardie, Belongie, Hariharan, Lim, "Visual Prompt Tuning", ECCV 2022
(arXiv:2203.12119). Official code: github.com/KMnP/vpt (``src/models/vit_prompt/vit.py``,
``src/configs/config.py``, ``demo.ipynb``).

``p`` learnable prompt tokens (p x d, no position embedding) enter the token sequence after
the prefix tokens ``c`` (the class token, and register tokens where the backbone has them)
and before the patch tokens ``E``. With the frozen blocks ``L_1 .. L_N`` (paper sec. 3.2):

    shallow:  [c_1, Z_1, E_1] = L_1([c_0, P, E_0]),  [c_i, Z_i, E_i] = L_i([c_{i-1}, Z_{i-1}, E_{i-1}])
    deep:     [c_i, _, E_i] = L_i([c_{i-1}, P_{i-1}, E_{i-1}])   for i = 1 .. N

so deep prompting puts a new set ``P_{i-1}`` before every block, *replacing* the previous
block's prompt outputs (the sequence never grows beyond prefix + p + patches). Prompt dropout
is applied to the prompts as they enter. Only the prompts (and the task head) train.

Initialisation (official ``vit.py``): every prompt set is U(-v, v) with
``v = sqrt(6 / (3 * patch_h * patch_w + d))``, Xavier-uniform as if the prompts were a patch
embedding (patch size = input size // patch grid). VPT is therefore *not* the identity at
initialisation (the paper's intent), and it cannot be merged.

Defaults: ``num_tokens = 5`` (``config.py``: ``MODEL.PROMPT.NUM_TOKENS = 5``, the only single
value the official code sets; the paper tunes p per task from {1, 5, 10, 50, 100, 200}, which
the runner's hyper-parameter search should do too). Prompt dropout: 0.0 for VPT-Shallow
(``config.py``'s ``DROPOUT = 0.0``; ``demo.ipynb``: "we don't use dropout for VPT-shallow")
and 0.1 for VPT-Deep (``demo.ipynb``'s VTAB-1k commands, "the hyperparameters are the same
from our paper", all use ``MODEL.PROMPT.DROPOUT 0.1`` with ``DEEP True``).

Mechanism: wrappers at the ``block`` site. Block 0's wrapper inserts the prompts, every deep
block's wrapper replaces them, and the last block's wrapper removes the prompt outputs, so the
prompts never leave the backbone: pooling (class token or mean over patch tokens), the final
norm, dense heads and adapters outside the blocks see the original (B, N, C) sequence. One
wrapper class covers insertion, replacement and removal, which the backbone-wide ``tokens``
site could not do (it only sees the sequence before the first block), and inserting at the
block input puts the prompts exactly where the paper's VPT-Shallow equation does: after every
embedding step (including a pre-norm such as CLIP's ``ln_pre``), at the input of ``L_1``. Inside the blocks
the prompts sit between prefix and patch tokens; each prompted block updates the backbone's
token geometry (the prefix count), so convolutional adapters and dense features find the grid.

Departures from the official code: (1) it keeps the prompt outputs through the final norm and
reads ``x[:, 0]``; removing them before the (per-token) final norm gives the same class-token
features and lets mean pooling ignore the prompts (the official ``VIT_POOL_TYPE =
"img_pool"``). (2) With register tokens the prompts go after all prefix tokens (the official
ViT has only a class token). (3) The official ``train()`` keeps the frozen encoder in eval
mode while training; here the backbone's train/eval mode is left to the task. Prompt
projection (``PROJECT``) and non-random initiations are not implemented (the official "clean
version" asserts them off as well). SAM's (B, H, W, C) layout has no sequence to extend and
is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..registry import register_adapter
from ..backbones.geometry import GeometryContext
from .base import Adapter, AdapterConfig, Needs, SiteWrapper, require


@dataclass
class VPTConfig(AdapterConfig):
    """Options shared by VPT-Shallow and VPT-Deep (only the dropout default differs)."""

    num_tokens: int = field(default=5, metadata={"help": "number of prompt tokens p (per block for vpt_deep)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the prompt tokens as they enter"})

    adapter_name: ClassVar[str] = "vpt"  # names the adapter in error messages

    def validate(self) -> None:
        name = self.adapter_name
        require(isinstance(self.num_tokens, int) and self.num_tokens >= 1,
                f"{name} option num_tokens={self.num_tokens!r}: expected an integer >= 1")
        require(0.0 <= self.dropout < 1.0, f"{name} option dropout={self.dropout}: expected 0 <= dropout < 1")


@dataclass
class VPTShallowConfig(VPTConfig):
    adapter_name: ClassVar[str] = "vpt_shallow"


@dataclass
class VPTDeepConfig(VPTConfig):
    dropout: float = field(default=0.1, metadata={"help": "dropout on each block's prompt tokens as they enter"})

    adapter_name: ClassVar[str] = "vpt_deep"


def splice(tokens: torch.Tensor, start: int, remove: int, insert: torch.Tensor | None = None) -> torch.Tensor:
    """``tokens`` with ``remove`` tokens from position ``start`` on replaced by ``insert``."""
    pieces = [tokens[:, :start]]
    if insert is not None:
        pieces.append(insert)
    pieces.append(tokens[:, start + remove:])
    return torch.cat(pieces, dim=1)


class PromptedBlock(SiteWrapper):
    """A block whose input gets this block's prompts after the prefix tokens (in place of the
    ``arriving`` prompt tokens the previous block left there), and whose output loses the
    prompt tokens when ``strip`` is set (the last block). It tells the backbone's token
    geometry how many tokens now precede the patches, so that grid readers (Convpass, dense
    features of intermediate blocks) see the prompts as prefix tokens."""

    def __init__(self, base_layer: nn.Module, geometry: GeometryContext, num_prefix: int, num_tokens: int,
                 arriving: int, strip: bool, new_prompts: bool, dim: int, bound: float, dropout: float,
                 device=None, dtype=None):
        super().__init__(base_layer)
        self.geometry = geometry
        self.num_prefix = num_prefix
        self.num_tokens = num_tokens
        self.arriving = arriving
        self.strip = strip
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if new_prompts:
            self.prompts = nn.Parameter(torch.empty(num_tokens, dim, device=device, dtype=dtype))
            nn.init.uniform_(self.prompts, -bound, bound)
        else:
            self.register_parameter("prompts", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prompts is not None:
            prompts = self.prompts.to(x.dtype).expand(x.shape[0], -1, -1)
            x = splice(x, self.num_prefix, self.arriving, self.dropout(prompts))
            self._count_prefix(self.num_tokens - self.arriving)
        x = self.base_layer(x)
        if self.strip:
            x = splice(x, self.num_prefix, self.num_tokens)
            self._count_prefix(-self.num_tokens)
        return x

    def _count_prefix(self, added: int) -> None:
        if added and self.geometry.active:
            self.geometry.update(prefix=self.geometry.current.prefix + added)


def prompt_init_bound(backbone) -> float:
    """``v = sqrt(6 / (3 * patch_h * patch_w + d))``: Xavier-uniform for a patch embedding."""
    patch_h, patch_w = backbone.anatomy.patch_size
    return math.sqrt(6.0 / (3 * patch_h * patch_w + backbone.anatomy.embed_dim))


class PromptTuning(Adapter):
    """Shared VPT machinery; ``deep`` says whether every block gets its own prompts."""

    identity_at_init = False  # the prompts change the output from the start, as the paper intends
    deep: ClassVar[bool] = False
    # prompts extend a token sequence: SAM's (B, H, W, C) grid has none
    needs: ClassVar[Needs] = Needs(layouts=("BNC",))

    def _attach(self, backbone) -> None:
        last = backbone.anatomy.num_blocks - 1
        for block in range(backbone.anatomy.num_blocks):
            if not (self.adds_prompts(block) or block == last):
                continue  # a shallow middle block just carries the prompts along
            wrapper = self.wrap_site("block", block, lambda base, b=block: self.prompted_block(base, b, backbone))
            if wrapper.prompts is not None:
                self.declare(f"blocks.{block}.block.prompts", wrapper.prompts)

    def adds_prompts(self, block: int) -> bool:
        """Whether ``block`` gets a new prompt set (deep: every block; shallow: the first)."""
        return self.deep or block == 0

    def prompted_block(self, base: nn.Module, block: int, backbone) -> PromptedBlock:
        config: VPTConfig = self.config
        anatomy = backbone.anatomy
        reference = next(base.parameters())
        return PromptedBlock(
            base, backbone.geometry, anatomy.num_prefix_tokens, config.num_tokens,
            arriving=0 if block == 0 else config.num_tokens,  # every later block receives p prompt outputs
            strip=block == anatomy.num_blocks - 1, new_prompts=self.adds_prompts(block),
            dim=anatomy.embed_dim, bound=prompt_init_bound(backbone), dropout=config.dropout,
            device=reference.device, dtype=reference.dtype,
        )


class VPTShallow(PromptTuning):
    """VPT-Shallow (Jia et al. 2022): learnable prompt tokens before the first block"""

    deep = False


class VPTDeep(PromptTuning):
    """VPT-Deep (Jia et al. 2022): new learnable prompt tokens before every block"""

    deep = True


register_adapter("vpt_shallow", VPTShallowConfig, VPTShallow)
register_adapter("vpt_deep", VPTDeepConfig, VPTDeep)
