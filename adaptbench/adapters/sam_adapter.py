"""SAM-Adapter: explicit visual prompts from the image's high frequencies, added before every block.

Chen, Zhu, Ding, Cao, Zang, Li, Mao (2023), "SAM Fails to Segment Anything? -- SAM-Adapter:
Adapting SAM in Underperformed Scenes: Camouflage, Shadow, Medical Image Segmentation, and More"
(arXiv:2304.09148). The adapter is EVP's prompt generator (Liu, Shen, Li, Pun, "Explicit Visual
Prompting for Low-Level Structure Segmentations", CVPR 2023) on SAM's image encoder. Official
code: github tianrun-chen/SAM-Adapter-PyTorch (commit 665145d),
``models/mmseg/models/sam/image_encoder.py``: defaults L116-123, encoder forward L132-152,
``PromptGenerator`` L215-281 (modules L233-244, init L246-261, ``init_embeddings`` L263-266,
``init_handcrafted`` L268-270, ``get_prompt`` L272-281), ``fft`` L317-338, ``PatchEmbed2``
L340-365; ``train.py`` L174-176 freezes every image-encoder tensor but the prompt generator's.

With the image ``I``, the frozen patch embedding ``E = PatchEmbed(I)`` (before the positions),
``h = d / s`` (integer division) and the patch grid H' x W':

    HP(I)  = | IFFT( (1 - M) * FFT(I) ) |     high-pass: M is 1 on the centred square of side
                                              2 floor(sqrt(H W f) / 2) of the shifted spectrum,
                                              so a fraction ~f of the frequencies (the lowest)
                                              is removed; FFT with norm="forward", real part
    F_hc   = Conv_{p x p, stride p}(HP(I))    (3 -> h channels: ``PatchEmbed2``), per patch
    F_emb  = W_e E + b_e                      (d -> h: ``embedding_generator``), per token
    P_i    = W_s GELU(W_i (F_hc + F_emb) + b_i) + b_s     (``lightweight_mlp_i`` h -> h,
                                                          ``shared_mlp`` h -> d)
    x_i    = Block_i(x_{i-1} + P_i)           for every block i, x_0 = E + positions

so each block gets its own prompt map P_i (B, H', W', d), added to the patch tokens it receives.
On (B, N, C) backbones the prompt is added to the patch tokens only: the class, register (and
VPT prompt) tokens in front, counted by the forward's token geometry, get nothing.

Initialisation (official ``_init_weights``): every Linear weight truncated-normal (std 0.02,
absolute bounds +-2), biases 0; the conv weight N(0, sqrt(2 / fan_out)) with
``fan_out = p * p * h``, bias 0. The prompts are therefore non-zero from the start: SAM-Adapter
is *not* the identity at initialisation (the official init), and it cannot be merged.

Defaults are the official ones (``image_encoder.py`` L116-120, ``configs/cod-sam-vit-b.yaml``):
``scale_factor = 32`` (h = 24 on ViT-B), ``freq_nums = 0.25``, prompts before every block.
The official ``prompt_type='highpass'``, ``tuning_stage=1234``, ``input_type='fft'``,
``handcrafted_tune=True``, ``embedding_tune=True`` and ``adaptor='adaptor'`` are stored by the
official ``PromptGenerator`` but never read on the path SAM-Adapter runs (``init_handcrafted``
always takes the FFT; both features are always summed), so they are not options here.

Departures from the official code, and why:

* ``embedding_layout``: the official ``init_embeddings`` takes the (B, H', W', C) patch embedding
  and calls ``x.reshape(N, C, H*W).permute(0, 2, 1)`` on it without first permuting it to
  channels-first (L264-265), so its "token" p, channel c is the value at flat position
  ``c * H'W' + p`` of the row-major (H', W', C) map: a scramble of positions and channels
  (reported upstream as issue #134, open). The default ``"per_token"`` embeds each patch token
  (what the paper describes and EVP does on its channels-first maps); ``"official"`` reproduces
  the released reshape exactly, for reproducing the published numbers.
* The high-pass mask is clipped to the spectrum (a square wider than a very elongated image
  would otherwise take negative slice starts), and it is computed in float32 whatever the
  backbone's precision. The official ``fftshift`` also shifts the batch and channel dimensions;
  the mask is constant along them and ``ifftshift`` undoes it, so shifting only the two spatial
  dimensions gives the same values.
* Input size: ``PatchEmbed2`` asserts the configured image size; here any size whose patch grid
  matches the backbone's patch embedding works (timm, open_clip and SAM families alike).
* Under gradient checkpointing a block recomputed in the backward pass reads the prompt features
  of the latest forward: a second forward before that backward (a two-forward loss) is not
  supported with checkpointing on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.geometry import GeometryContext
from ..errors import AdaptbenchError
from ..registry import register_adapter
from .base import Adapter, AdapterConfig, Needs, SiteWrapper, blocks_of, require

SHARED_KEY = "sam_adapter"  # where the prompt generator lives in backbone.adapter_modules
EMBEDDING_LAYOUTS = ("per_token", "official")


@dataclass
class SAMAdapterConfig(AdapterConfig):
    scale_factor: int = field(default=32, metadata={"help": "s: the prompt generator's width is embed_dim // s"})
    freq_nums: float = field(
        default=0.25, metadata={"help": "fraction of the (centred) spectrum's area removed by the high-pass"}
    )
    embedding_layout: str = field(
        default="per_token",
        metadata={"help": f"how patch embeddings become tokens for the embedding generator, one of "
                          f"{', '.join(EMBEDDING_LAYOUTS)} (official: the released scrambling reshape)"},
    )
    blocks: tuple[int, ...] | None = field(
        default=None, metadata={"help": "blocks that receive a prompt (default: every block, as the paper)"}
    )

    def validate(self) -> None:
        require(isinstance(self.scale_factor, int) and self.scale_factor >= 1,
                f"sam_adapter option scale_factor={self.scale_factor!r}: expected an integer >= 1")
        require(0.0 <= self.freq_nums <= 1.0, f"sam_adapter option freq_nums={self.freq_nums}: expected 0 <= f <= 1")
        require(self.embedding_layout in EMBEDDING_LAYOUTS,
                f"sam_adapter option embedding_layout={self.embedding_layout!r}: expected one of {EMBEDDING_LAYOUTS}")


def high_pass(images: torch.Tensor, fraction: float) -> torch.Tensor:
    """``|IFFT((1 - M) FFT(images))|`` over the last two dimensions, M the centred square of side
    ``2 floor(sqrt(H W fraction) / 2)`` of the shifted spectrum (the official ``fft``), in float32."""
    height, width = images.shape[-2:]
    half = int(math.sqrt(height * width * fraction) // 2)
    keep = torch.ones(height, width, device=images.device)
    rows = slice(max(height // 2 - half, 0), height // 2 + half)
    cols = slice(max(width // 2 - half, 0), width // 2 + half)
    keep[rows, cols] = 0
    spectrum = torch.fft.fftshift(torch.fft.fft2(images.float(), norm="forward"), dim=(-2, -1))
    filtered = torch.fft.ifftshift(spectrum * keep, dim=(-2, -1))
    return torch.fft.ifft2(filtered, norm="forward").real.abs()


class PromptGenerator(nn.Module):
    """The shared parts (handcrafted conv, embedding generator, shared MLP) and one lightweight MLP
    per prompted block; ``prepare`` reads the image and the patch embedding of the forward in
    progress, ``prompt(block)`` gives that block's (B, H', W', d) prompt map."""

    def __init__(self, dim: int, hidden: int, patch_size: tuple[int, int], blocks: list[int], fraction: float,
                 layout: str, in_channels: int = 3, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.fraction = fraction
        self.layout = layout
        self.handcrafted = nn.Conv2d(in_channels, hidden, kernel_size=patch_size, stride=patch_size, **factory)
        self.embedding = nn.Linear(dim, hidden, **factory)
        self.shared = nn.Linear(hidden, dim, **factory)
        self.lightweight = nn.ModuleDict({str(b): nn.Linear(hidden, hidden, **factory) for b in blocks})
        self.act = nn.GELU()
        self._init_official()
        self._feature: torch.Tensor | None = None  # F_hc + F_emb of the forward in progress

    @torch.no_grad()
    def _init_official(self) -> None:
        for linear in (self.embedding, self.shared, *self.lightweight.values()):
            nn.init.trunc_normal_(linear.weight, std=0.02, a=-2.0, b=2.0)
            nn.init.zeros_(linear.bias)
        conv = self.handcrafted
        fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
        conv.weight.normal_(0.0, math.sqrt(2.0 / fan_out))
        nn.init.zeros_(conv.bias)

    def prepare(self, images: torch.Tensor, patch_tokens: torch.Tensor) -> None:
        """Compute ``F_hc + F_emb`` (B, H', W', h) from the images and the patch embedding's output."""
        handcrafted = self.handcrafted(high_pass(images, self.fraction).to(self.handcrafted.weight.dtype))
        batch, _, height, width = handcrafted.shape
        patches = _as_grid(patch_tokens, (height, width))
        channels = patches.shape[-1]
        if self.layout == "official":  # the released reshape, channels-last read as channels-first
            tokens = patches.reshape(batch, channels, height * width).transpose(1, 2)
        else:
            tokens = patches.reshape(batch, height * width, channels)
        embedding = self.embedding(tokens).reshape(batch, height, width, -1)
        self._feature = handcrafted.permute(0, 2, 3, 1) + embedding

    def prompt(self, block: int) -> torch.Tensor:
        if self._feature is None:
            raise AdaptbenchError("sam_adapter: a block ran before the patch embedding of this forward; the prompts "
                                  "are computed from the patch embedding site")
        return self.shared(self.act(self.lightweight[str(block)](self._feature)))


def _as_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The patch embedding's output (B, H'W', C) or (B, H', W', C) as (B, H', W', C)."""
    height, width = grid
    if tokens.dim() == 4 and tuple(tokens.shape[1:3]) == grid:
        return tokens
    if tokens.dim() == 3 and tokens.shape[1] == height * width:
        return tokens.reshape(tokens.shape[0], height, width, tokens.shape[-1])
    raise AdaptbenchError(f"sam_adapter: the patch embedding gave tokens of shape {tuple(tokens.shape)}, expected "
                          f"the {height}x{width} patch grid of the high-frequency image")


def add_to_patches(x: torch.Tensor, prompt: torch.Tensor, geometry: GeometryContext) -> torch.Tensor:
    """``x`` with ``prompt`` (B, H', W', C) added to its patch tokens; prefix tokens unchanged."""
    grid = tuple(prompt.shape[1:3])
    if x.dim() == 4:  # (B, H, W, C): every token is a patch
        if tuple(x.shape[1:3]) != grid:
            raise AdaptbenchError(f"sam_adapter: block input of shape {tuple(x.shape)} does not hold the {grid[0]}x"
                                  f"{grid[1]} grid of the prompts")
        return x + prompt
    current = geometry.current
    if tuple(current.grid) != grid or x.shape[1] != current.num_tokens:
        raise AdaptbenchError(f"sam_adapter: block input of shape {tuple(x.shape)} with {current.prefix} prefix "
                              f"tokens does not hold the {grid[0]}x{grid[1]} grid of the prompts")
    return x + F.pad(prompt.flatten(1, 2), (0, 0, current.prefix, 0))


class ImageTap(SiteWrapper):
    """The patch embedding, which also hands the image and its output to the prompt generator."""

    def __init__(self, base_layer: nn.Module, generator: PromptGenerator):
        super().__init__(base_layer)
        self._generator = (generator,)  # owned by backbone.adapter_modules: not registered twice

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.base_layer(images)
        self._generator[0].prepare(images, tokens)
        return tokens


class PromptedInput(SiteWrapper):
    """A block whose input patch tokens get the block's prompt ``P_i`` added first."""

    def __init__(self, base_layer: nn.Module, generator: PromptGenerator, block: int, geometry: GeometryContext):
        super().__init__(base_layer)
        self._generator = (generator,)
        self.block = block
        self.geometry = geometry

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prompt = self._generator[0].prompt(self.block).to(x.dtype)
        return self.base_layer(add_to_patches(x, prompt, self.geometry))


class SAMAdapter(Adapter):
    """SAM-Adapter (Chen et al. 2023): high-frequency + embedding prompts added before every block"""

    identity_at_init = False  # the official init gives non-zero prompts from the start
    version = 1
    needs: ClassVar[Needs] = Needs(global_sites=("patch_embed",))

    @classmethod
    def unsupported(cls, anatomy, config: SAMAdapterConfig) -> str | None:
        reason = super().unsupported(anatomy, config)
        if reason is None and anatomy.embed_dim // config.scale_factor < 1:
            reason = (f"scale_factor={config.scale_factor} leaves no prompt channels: embed_dim "
                      f"{anatomy.embed_dim} // {config.scale_factor} = 0")
        return reason

    def _attach(self, backbone) -> None:
        config: SAMAdapterConfig = self.config
        if SHARED_KEY in backbone.adapter_modules:
            raise AdaptbenchError(f"sam_adapter: backbone {backbone.name!r} already carries a SAM-Adapter; attach it once")
        anatomy = backbone.anatomy
        blocks = blocks_of(config.blocks, backbone)
        reference = next(backbone.parameters())
        generator = PromptGenerator(anatomy.embed_dim, anatomy.embed_dim // config.scale_factor,
                                    tuple(anatomy.patch_size), blocks, config.freq_nums, config.embedding_layout,
                                    device=reference.device, dtype=reference.dtype)
        backbone.adapter_modules[SHARED_KEY] = generator
        for part in ("handcrafted", "embedding", "shared"):
            for kind, param in getattr(generator, part).named_parameters():
                self.declare(f"generator.{part}.{kind}", param)
        self.wrap_site("patch_embed", None, lambda base: ImageTap(base, generator))
        for block in blocks:
            self.wrap_site("block", block, lambda base, b=block: PromptedInput(base, generator, b, backbone.geometry))
            for kind, param in generator.lightweight[str(block)].named_parameters():
                self.declare(f"blocks.{block}.lightweight.{kind}", param)


register_adapter("sam_adapter", SAMAdapterConfig, SAMAdapter)
