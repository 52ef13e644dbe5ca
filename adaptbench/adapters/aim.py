"""AIM: spatial, temporal and joint adaptation of a frozen image ViT for video.

Yang, Zhu, Xie, Zhang, Chen, Li, "AIM: Adapting Image Models for Efficient Video Action
Recognition", ICLR 2023 (arXiv:2302.03024). Official code: github taoyang1122/adapt-image-models
(commit b3580d2), ``mmaction/models/backbones/vit_clip.py`` (below: ``vit_clip.py:<line>``), its
configs ``configs/recognition/vit/vitclip_base_*.py`` and ``tools/train.py``.

``Adapter(z) = fc2(GELU(fc1(z)))`` (fc1: d -> d/4, fc2: d/4 -> d), with a skip (``z + Adapter(z)``)
or without (vit_clip.py:14-32). Every block of the frozen ViT, on the tokens ``x`` of clips of T
frames (each frame a sequence of N tokens, class token included), computes (vit_clip.py:76-92)

    temporal:  x_t = rearrange(x, (b t) n d -> (b n) t d)          attention over the T frames
               u_t = DP(T_Adapter(Attn(LN1(x_t))))                   of each token position
               x  <- x + u_t
    spatial:   x  <- x + S_Adapter(Attn(LN1(x)))                     (S_Adapter with skip)
    joint:     x  <- x + MLP(LN2(x)) + DP(s * MLP_Adapter(LN2(x)))

where ``Attn`` and ``LN1`` are the block's frozen attention and pre-norm, the very same modules in
the temporal and the spatial pass (shared weights: the temporal pass trains nothing of theirs),
``T_Adapter`` and ``MLP_Adapter`` have no skip, and DP is the drop path. Before the first block a
temporal embedding ``E`` (1, T, d), zero-initialised, is added to every token of frame t
(vit_clip.py:123, 207-210). With ``t_adapter_in`` (the official SSv2 ViT-B config,
``num_tadapter=2``) the temporal pass is ``T_Adapter(Attn(T_Adapter_in(LN1(x_t))))``, with
``T_Adapter_in`` a skip adapter (vit_clip.py:67-68, 81-82).

In this package's anatomy the ``attn`` branch is wrapped (:class:`AIMAttention`) to return
``u_t + S_Adapter(branch(x + u_t))`` (the block adds ``x``), its temporal pass calling the
branch's own ``norm``, ``core`` and ``post`` on the re-arranged tokens; the ``mlp`` branch gets
the joint adapter beside it, reading the branch's own pre-norm output; block 0 is wrapped to add
``E``.

Initialisation (vit_clip.py:129-188): fc1 weights truncated normal (std 0.02), every bias zero;
fc2 weight and bias zero in all three adapters; ``E`` zero. So T_Adapter and MLP_Adapter output
0, S_Adapter is the identity, and the adapted model is the frozen one at initialisation.

Trainable (tools/train.py:187-189): the adapters, ``E`` and the final LayerNorm (``ln_post``;
here the norm at the backbone's ``final_norm`` site, trained in place: it adds no inference
parameter; option ``final_norm``); the rest of the backbone is frozen. The paper's Fig. 2 says
only the adapters are updated; the official script also trains ``E`` and ``ln_post``, and so
does this module by default (``final_norm=false`` gives the paper's words).

Parameters on ViT-B/16 (d = 768, 12 blocks): 3 adapters x (2 d (d/4) + d/4 + d = 295,872) x 12
= 10,651,392; ``E`` 8 x 768 = 6,144; ``ln_post`` 1,536; in all 10,659,072 (plus the K400 head
307,600: 10,966,672, the paper's "11M" tunable; ``t_adapter_in`` adds 3,550,464).

Defaults (official code):

* ``num_frames`` 8: rows of ``E``, the most frames a forward may have (the SSv2 config,
  vitclip_base_sthv2.py:6, and the 8-frame K400 model of the README; the K400 config uses 32).
* ``scale`` 0.5 (``adapter_scale=0.5``, vit_clip.py:110 and vitclip_base_k400.py:6; SSv2 uses 1).
* ``mlp_ratio`` 0.25 (``Adapter(mlp_ratio=0.25)``, vit_clip.py:15; hidden = int(d * ratio)).
* ``t_adapter_in`` False (``num_tadapter=1``, vit_clip.py:49; True in vitclip_base_sthv2.py:6).
* ``drop_path`` 0.2, rising linearly from 0 at the first block to 0.2 at the last
  (``drop_path_rate=0.2`` in every config; vit_clip.py:100).
* ``final_norm`` True (tools/train.py:188), ``blocks`` None: every block (``E`` is added before block 0
  whatever ``blocks`` says: the model has one).

Departures from the official code, and why:

* The official model needs exactly ``num_frames`` frames (its ``rearrange`` fixes t); here a
  forward may have fewer (rows ``E[:T]`` are used), so image batches (T = 1) run too: the
  temporal attention then sees one frame and AIM is a frame-wise adapter; more than
  ``num_frames`` frames is an error.
* ``E`` is added at the input of the first block, i.e. after the backbone's ``tokens`` site
  (timm's ``norm_pre``, open_clip's ``ln_pre``), not before ``ln_pre`` as in vit_clip.py:207-212:
  the token geometry (and so T) is published only once the embedding is done. Identical on
  backbones without a pre-norm (most timm ViTs); on CLIP towers ``E`` is not normalised by
  ``ln_pre``. (Publishing the geometry before the ``tokens`` site would remove this departure.)
* The drop path draws one keep/drop per image (stochastic depth, timm's DropPath on (BT, N, d)).
  The official code applies timm's DropPath to its sequence-first (N, BT, d) tensors, so it
  draws one per *token position*, shared by the whole batch (an artefact of the layout: the
  class-token residual of a block is then dropped for every clip at once in 1 step of 5 at
  rate 0.2). Same rates and schedule; the per-image draw is what DropPath is meant to do.
* The backbone branch's ``post`` (LayerScale, the backbone's own DropPath; both absent in CLIP)
  is applied to the attention output in both passes, before T_Adapter / S_Adapter, as the
  branch computes it; the joint adapter is added beside the whole MLP branch.
* The temporal pass attends over every token of the sequence: class, register and prompt
  tokens included (the official attends over the class token too).

Layouts: (B, N, C) token sequences only: SAM's windowed (B, H, W, C) attention cannot run over
a sequence of frames. Not mergeable (GELU; attention over frames).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..backbones.geometry import GeometryContext
from ..errors import AdaptbenchError
from ..registry import register_adapter
from .base import Adapter, AdapterConfig, Needs, SiteWrapper, blocks_of, require
from .layers import Bottleneck


@dataclass
class AIMConfig(AdapterConfig):
    num_frames: int = field(
        default=8, metadata={"help": "rows of the temporal embedding: the most frames per clip a forward may have"}
    )
    scale: float = field(default=0.5, metadata={"help": "s in x + MLP(LN2(x)) + s * MLP_Adapter(LN2(x)) (SSv2: 1)"})
    mlp_ratio: float = field(default=0.25, metadata={"help": "adapter hidden width = int(embed_dim * mlp_ratio)"})
    t_adapter_in: bool = field(
        default=False, metadata={"help": "a skip adapter before the temporal attention too (official SSv2 ViT-B)"}
    )
    drop_path: float = field(
        default=0.2, metadata={"help": "drop path on the temporal and joint adapters, 0 at block 0 rising to this"}
    )
    final_norm: bool = field(
        default=True, metadata={"help": "also train the backbone's final norm (ln_post), as the official code does"}
    )
    blocks: tuple[int, ...] | None = field(
        default=None, metadata={"help": "block indices to adapt (default: every block)"}
    )

    def validate(self) -> None:
        require(isinstance(self.num_frames, int) and self.num_frames >= 1,
                f"aim option num_frames={self.num_frames!r}: expected an integer >= 1")
        require(math.isfinite(self.scale), f"aim option scale={self.scale}: expected a finite number")
        require(math.isfinite(self.mlp_ratio) and self.mlp_ratio > 0,
                f"aim option mlp_ratio={self.mlp_ratio}: expected a number > 0")
        require(0.0 <= self.drop_path < 1.0, f"aim option drop_path={self.drop_path}: expected 0 <= drop_path < 1")


class AIMAdapterMLP(Bottleneck):
    """AIM's ``Adapter``: ``fc2(GELU(fc1(z)))`` (+ ``z`` with ``skip``); fc1 truncated normal
    (std 0.02), fc2 and both biases zero (vit_clip.py:14-32, 129-188)."""

    def __init__(self, dim: int, hidden: int, skip: bool, device=None, dtype=None):
        super().__init__(dim, hidden, act="gelu", dropout=0.0, device=device, dtype=dtype)
        nn.init.trunc_normal_(self.down.weight, std=0.02, a=-2.0, b=2.0)  # timm's trunc_normal_ defaults
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return x + out if self.skip else out


def make_drop_path(rate: float) -> nn.Module:
    """Stochastic depth on an adapter's residual: timm's DropPath (one keep/drop draw per image,
    kept images scaled by 1 / keep), the identity at rate 0."""
    from timm.layers import DropPath

    return DropPath(rate) if rate > 0 else nn.Identity()


def residual_branch(module: nn.Module, site: str = "attn") -> nn.Module:
    """The residual branch (``norm``, ``core``, ``post``) at a branch site, below other adapters'
    wrappers: what AIM's temporal pass runs over the frames, whose norm the joint adapter reads."""
    while not all(hasattr(module, part) for part in ("norm", "core", "post")) and hasattr(module, "base_layer"):
        module = module.base_layer
    if not all(hasattr(module, part) for part in ("norm", "core", "post")):
        raise AdaptbenchError(f"aim: expected a residual branch (norm, core, post) at the {site} site, "
                              f"found {type(module).__name__}")
    return module


def frames_of(geometry: GeometryContext, num_frames: int) -> int:
    frames = geometry.current.frames
    if frames > num_frames:
        raise AdaptbenchError(f"aim option num_frames={num_frames}: this forward has clips of {frames} frames; "
                              f"expected num_frames >= {frames} (the temporal embedding has one row per frame)")
    return frames


class AIMAttention(SiteWrapper):
    """The ``attn`` branch with AIM's temporal and spatial adaptation: returns ``u_t + u_s`` with
    ``u_t = DP(T_Adapter(branch over the frames of x))`` and ``u_s = S_Adapter(branch(x + u_t))``,
    the temporal pass running the branch's own norm, core (attention) and post."""

    def __init__(self, base_layer: nn.Module, dim: int, hidden: int, geometry: GeometryContext, num_frames: int,
                 t_adapter_in: bool, drop_rate: float, device=None, dtype=None):
        super().__init__(base_layer)
        residual_branch(base_layer)  # refuse a site that is no residual branch now, not at the forward
        if t_adapter_in:
            self.t_adapter_in = AIMAdapterMLP(dim, hidden, skip=True, device=device, dtype=dtype)
        else:
            self.t_adapter_in = None
        self.t_adapter = AIMAdapterMLP(dim, hidden, skip=False, device=device, dtype=dtype)
        self.s_adapter = AIMAdapterMLP(dim, hidden, skip=True, device=device, dtype=dtype)
        self.drop_path = make_drop_path(drop_rate)
        self.geometry = geometry  # the backbone's: read at every forward, never frozen here
        self.num_frames = num_frames

    def temporal(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen branch run over the frames of each token position (shared weights)."""
        branch = residual_branch(self.base_layer)
        frames = frames_of(self.geometry, self.num_frames)
        images, tokens, width = x.shape
        clips = images // frames
        xt = x.reshape(clips, frames, tokens, width).transpose(1, 2).reshape(clips * tokens, frames, width)
        hidden = branch.norm(xt)
        if self.t_adapter_in is not None:
            hidden = self.t_adapter_in(hidden)
        hidden = branch.core(hidden)
        hidden = hidden.reshape(clips, tokens, frames, width).transpose(1, 2).reshape(images, tokens, width)
        return branch.post(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update_t = self.drop_path(self.t_adapter(self.temporal(x)))
        update_s = self.s_adapter(self.base_layer(x + update_t))
        return update_t + update_s


class AIMJoint(SiteWrapper):
    """The ``mlp`` branch with the joint adapter beside it: ``branch(x) + s * DP(MLP_Adapter(LN2(x)))``,
    ``LN2`` the branch's own pre-norm (found below other adapters' wrappers)."""

    def __init__(self, base_layer: nn.Module, dim: int, hidden: int, scale: float, drop_rate: float,
                 device=None, dtype=None):
        super().__init__(base_layer)
        residual_branch(base_layer, site="mlp")  # refuse a site that is no residual branch now
        self.mlp_adapter = AIMAdapterMLP(dim, hidden, skip=False, device=device, dtype=dtype)
        self.drop_path = make_drop_path(drop_rate)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = residual_branch(self.base_layer, site="mlp").norm(x)
        return self.base_layer(x) + self.drop_path(self.scale * self.mlp_adapter(normed))


class TemporalEmbedding(SiteWrapper):
    """The first block, with ``E[t]`` added to every token of frame t before it runs."""

    def __init__(self, base_layer: nn.Module, dim: int, geometry: GeometryContext, num_frames: int,
                 device=None, dtype=None):
        super().__init__(base_layer)
        self.temporal_embedding = nn.Parameter(torch.zeros(1, num_frames, dim, device=device, dtype=dtype))
        self.geometry = geometry
        self.num_frames = num_frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = frames_of(self.geometry, self.num_frames)
        images, tokens, width = x.shape
        embedding = self.temporal_embedding[0, :frames].to(x.dtype).unsqueeze(1)  # (T, 1, d)
        x = (x.reshape(images // frames, frames, tokens, width) + embedding).reshape(images, tokens, width)
        return self.base_layer(x)


class AIM(Adapter):
    """AIM (Yang et al. 2023): temporal, spatial and joint adapters sharing the frozen attention"""

    temporal = True

    # the temporal pass runs the block's attention over a sequence of frames: SAM's windowed
    # (B, H, W, C) attention has no such sequence
    needs: ClassVar[Needs] = Needs(layouts=("BNC",))
    # the drop path trains a randomly drawn sub-network (the adapters' residuals of some images
    # dropped), evaluation the whole one: a tensor may miss one step's gradient
    stochastic_training = True

    def _attach(self, backbone) -> None:
        config: AIMConfig = self.config
        anatomy = backbone.anatomy
        dim = anatomy.embed_dim
        hidden = int(dim * config.mlp_ratio)
        if hidden < 1:
            raise AdaptbenchError(f"aim option mlp_ratio={config.mlp_ratio}: backbone {backbone.name!r} has embed_dim "
                                  f"{dim}, leaving no hidden unit; expected mlp_ratio >= {1 / dim:.3g}")
        reference = next(backbone.parameters())
        kwargs = dict(device=reference.device, dtype=reference.dtype)
        depth = anatomy.num_blocks
        self._final_norm_count = 0
        for block in blocks_of(config.blocks, backbone):
            rate = config.drop_path * block / (depth - 1) if depth > 1 else 0.0  # torch.linspace(0, rate, depth)
            attn = self.wrap_site("attn", block, lambda base: AIMAttention(
                base, dim, hidden, backbone.geometry, config.num_frames, config.t_adapter_in, rate, **kwargs))
            for part in ("t_adapter_in", "t_adapter", "s_adapter"):
                module = getattr(attn, part)
                for name, param in (module.named_parameters() if module is not None else ()):
                    self.declare(f"blocks.{block}.attn.{part}.{name}", param)
            joint = self.wrap_site("mlp", block, lambda base: AIMJoint(base, dim, hidden, config.scale, rate, **kwargs))
            for name, param in joint.mlp_adapter.named_parameters():
                self.declare(f"blocks.{block}.mlp.mlp_adapter.{name}", param)
        embedding = self.wrap_site("block", 0, lambda base: TemporalEmbedding(
            base, dim, backbone.geometry, config.num_frames, **kwargs))
        self.declare("temporal_embedding", embedding.temporal_embedding)
        if config.final_norm and "final_norm" in anatomy.global_sites:
            for name, param in backbone.site("final_norm").named_parameters():
                if backbone.is_sealed(param):  # the backbone's own norm, not another adapter's tensor
                    self.declare(f"final_norm.{name}", param)
                    self._final_norm_count += param.numel()

    def inference_params(self) -> int:
        """The final norm is the backbone's own (trained in place): it adds nothing at inference."""
        return self.trainable_count() - self._final_norm_count


register_adapter("aim", AIMConfig, AIM)
