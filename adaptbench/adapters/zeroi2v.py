"""ZeroI2V: zero-cost image-to-video adaptation (parameter-free temporal attention heads plus
linear adapters merged into the frozen linears).

Li, Zhu, Wang, "ZeroI2V: Zero-Cost Adaptation of Pre-trained Transformers from Image to Video",
ECCV 2024 (arXiv:2310.01324); official code: github.com/leexinhao/ZeroI2V (commit ce04d8b),
``mmaction/models/backbones/vit_zero_clip.py`` (training model), ``vit_zero_clip_eval.py``
(deployed model), ``mmaction/models/common/stdha.py`` (STDHA), ``tools/weight_reparam.py``
(merging), ``configs/recognition/vit_zero_clip/*.py`` (settings). Line numbers below are of
that commit.

Clips are folded into the batch clip-major (``backbones/base.py``); every forward reads the
frame count T from the backbone's published geometry (``geometry.frames``).

**STDHA** (spatial-temporal dual-headed attention, ``stdha.py``: ``TemporalShift`` l.9-60,
``STDHA.stdha_forward`` l.186-187). After the frozen fused projection ``[q; k; v] = W_qkv x + b``
(biases included), the keys and values of a few channel groups are taken from other frames of
the same clip, for every token (class and register tokens included: the official shift acts on
all HW+1 tokens, l.46-52); queries are untouched. With ``f = D // shift_div`` and stride s
(``fold = int(c // self.fold_div)``, l.50-52):

    k'[t, :, 0:f]   = k[t - s, :, 0:f]    (t >= s;       other frames keep their own)
    k'[t, :, f:2f]  = k[t + s, :, f:2f]   (t < T - s)

and the same for v. With the official ``shift_div = 12`` on a 12-head ViT-B (D = 768, f = 64 =
one head) head 0 attends to frame t-1 and head 1 to frame t+1, the other heads stay spatial:
no parameter, no FLOP. The optional long shift (``long_shift_div = L``, stdha.py l.54-56, used
by the SSv2 and UCF/HMDB u32 configs) takes channels ``[2f, 2f + D//L)`` from frame t-2 and,
with ``long_shift_right`` (``stdha_ablation.py`` l.57-58), the next ``D//L`` from frame t+2.
STDHA is a parameter-free module around the fused ``qkv`` site; with T = 1 (images) it is the
identity.

**Linear adapters** (``LinearAdapter``, vit_zero_clip.py l.17-54; placement l.114-123 with
``num_tadapter = 2``): ``A(x) = W2 dropout(W1 x + b1) + b2`` (W1: h x D, W2: D x h, both with
bias, no activation), applied as ``x + s A(x)``, at four places per block:

* ``qkv`` (T_Adapter_in, on ``ln_1(x)`` before the attention's input projection):
  ``qkv(x + s A(x))``;
* ``attn_out`` (S_Adapter, after the attention's output projection): ``y + s A(y)``;
* ``mlp_in`` (MLP_Adapter, before ``c_fc``): ``fc1(x + s A(x))``;
* ``mlp_out`` (MLP_Adapter_out, after ``c_proj``): ``y + s A(y)``.

Without a non-linearity each adapter is the affine map ``(I + s M) x + s c`` with
``M = W2 W1``, ``c = W2 b1 + b2`` (``reparameterize_LinearAdapter``, weight_reparam.py l.22-58),
and ``merge()`` folds it into the adjacent frozen linear ``W, b`` (``fuse_Adapter2Proj``, l.60-69):

    before the linear:  W' = W (I + s M),   b' = b + s W c
    after the linear:   W' = (I + s M) W,   b' = (I + s M) b + s c

so the merged model has exactly the frozen model's parameters, with STDHA left in place.

**Temporal embedding** (optional, ``frames = T``): a learnable T x D tensor, zero-initialised
(vit_zero_clip.py l.155), added to every token of frame t (l.247-250), trained
(l.226) and *kept* by the deployed model (vit_zero_clip_eval.py l.89, l.122-125;
weight_reparam.py does not touch it): T x D parameters the merge cannot remove (12,288 on
ViT-B/16 at the K400 config's 16 frames). The README's table counts "New Param (M): 0", i.e.
it is rounded away. Here it is off by default (``frames = 0``), because our ``merge()`` promises
exactly zero extra inference parameters; ``frames = T`` turns it on (clips of T frames only,
as the official ``assert T == self.num_frames``), and ``extra_inference_params()`` and
``kept_after_merge()`` then report those T x D after merging (the record's
``extra_inference_merged``).

**Final norm**: the official model also trains ``ln_post`` in place (vit_zero_clip.py l.226:
everything but ``temporal_embedding``, ``ln_post``, ``cls_head`` and the adapters is frozen);
``final_norm = true`` (default) declares the backbone's ``final_norm`` weight and bias. They are
the backbone's own tensors: no extra inference parameter, nothing to merge.

Defaults (K400 config ``vit_zero_base_clip_k400_16x8x1.py`` l.13-20 and the ``ViT_Zero_CLIP``
signature, vit_zero_clip.py l.141-142): ``shift_div = 12``, ``shift_stride = 1``
(``stdha_cfg.get('shift_stride', 1)``, l.77), no long shift (``long_shift_div = -1``, l.78),
``mlp_ratio = 0.25`` (hidden ``h = int(D * 0.25)`` = 192 at D = 768, l.21), adapter scale
``s = 0.5`` (``adapter_scale=0.5``; the SSv2 config uses 1), dropout 0.1 (``dropout_rate=0.1``;
SSv2: 0), four adapters (``num_tadapter = 2``), every block. Initialisation: W1
truncated-normal (std 0.02, cut at +-2 absolute as mmengine's ``trunc_normal_``; bias 0:
``_init_weights`` applied to every Linear, l.171-183),
W2 and b2 zero (l.213-219), so the adapted model equals the frozen one on images; on clips
STDHA changes the attention from the first step (it has no parameter to start at zero).

Parameters on ViT-B/16 (D = 768, 12 blocks): 4 x 12 x (2 x 768 x 192 + 192 + 768) =
14,201,856 trained adapter weights plus 1,536 of the final norm; 0 extra after ``merge()``.

Departures:

* the official code patches a CLIP ``nn.MultiheadAttention`` on (HW+1, BT, D) tensors; here
  STDHA shifts the k, v thirds of the anatomy's fused ``qkv`` output and the adapters wrap the
  ``qkv``/``attn_out``/``mlp_in``/``mlp_out`` sites, so any ViT family works (timm, open_clip);
* ``shift_div`` counts channels as the official ``divide_head=False`` path does; on a backbone
  whose head width is not ``D // shift_div`` the shifted groups do not align with heads (the
  official code behaves the same);
* the temporal embedding is off by default (see above), and when on it is added to the input
  of the first block, i.e. after the backbone's token pre-norm (CLIP's ``ln_pre``), where the
  official code adds it before ``ln_pre``: the ``tokens`` site runs inside ``embed``, before the
  backbone publishes the frame count;
* segment-anything is n/a: its windowed attention runs under a per-window geometry that does
  not carry the frame count, so STDHA could not find a window's other frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..backbones.geometry import GeometryContext
from ..errors import AdaptbenchError
from ..registry import register_adapter
from .base import Adapter, AdapterConfig, Needs, SiteWrapper, blocks_of, require
from .layers import Bottleneck, linear_of

ZEROI2V_SITES = ("qkv", "attn_out", "mlp_in", "mlp_out")
BEFORE_LINEAR = ("qkv", "mlp_in")  # the adapter acts on the linear's input (T_Adapter_in, MLP_Adapter)
AFTER_LINEAR = ("attn_out", "mlp_out")  # on its output (S_Adapter, MLP_Adapter_out)
LONG_SHIFT = 2  # the official long shift is fixed at two frames (stdha.py l.54-56)


@dataclass
class ZeroI2VConfig(AdapterConfig):
    shift_div: int = field(default=12, metadata={"help": "STDHA: channels D // shift_div of k and v come from frame "
                                                          "t - stride, the next D // shift_div from t + stride"})
    shift_stride: int = field(default=1, metadata={"help": "STDHA: frame offset of the two shifted channel groups"})
    long_shift_div: int = field(default=0, metadata={"help": "STDHA long shift: D // long_shift_div further channels "
                                                             "of k, v from frame t - 2 (0: off, the K400 setting)"})
    long_shift_right: bool = field(default=False, metadata={"help": "with long_shift_div: D // long_shift_div more "
                                                                    "channels from frame t + 2"})
    stdha: bool = field(default=True, metadata={"help": "shift keys and values across frames (false: adapters only)"})
    mlp_ratio: float = field(default=0.25, metadata={"help": "adapter hidden width h = int(D * mlp_ratio)"})
    scale: float = field(default=0.5, metadata={"help": "scale s of each adapter: x + s * A(x)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout between the adapter's two linears (training)"})
    sites: tuple[str, ...] = field(
        default=ZEROI2V_SITES,
        metadata={"help": "linear adapters: qkv and mlp_in (on the linear's input), attn_out and mlp_out "
                          "(on its output)"},
    )
    final_norm: bool = field(default=True, metadata={"help": "train the backbone's final norm in place "
                                                             "(official: ln_post)"})
    frames: int = field(default=0, metadata={"help": "clip length T of a learnable T x D temporal embedding, kept "
                                                     "after merging (0: none)"})
    blocks: tuple[int, ...] | None = field(
        default=None, metadata={"help": "block indices with STDHA and adapters (default: every block)"}
    )

    def validate(self) -> None:
        require(self.shift_div >= 2, f"zeroi2v option shift_div={self.shift_div}: expected an integer >= 2")
        require(self.shift_stride >= 1, f"zeroi2v option shift_stride={self.shift_stride}: expected an integer >= 1")
        require(self.long_shift_div == 0 or self.long_shift_div >= 2,
                f"zeroi2v option long_shift_div={self.long_shift_div}: expected 0 (off) or an integer >= 2")
        require(not self.long_shift_right or self.long_shift_div > 0,
                "zeroi2v option long_shift_right=true: expected long_shift_div > 0 with it")
        require(0.0 < self.mlp_ratio < float("inf"),
                f"zeroi2v option mlp_ratio={self.mlp_ratio}: expected a number > 0")
        require(0.0 <= self.dropout < 1.0, f"zeroi2v option dropout={self.dropout}: expected 0 <= dropout < 1")
        for site in self.sites:
            require(site in ZEROI2V_SITES,
                    f"zeroi2v option sites: {site!r} is not a linear site; expected some of {ZEROI2V_SITES}")
        require(len(set(self.sites)) == len(self.sites), f"zeroi2v option sites={self.sites}: expected each site once")
        require(bool(self.sites) or self.stdha,
                "zeroi2v option sites: expected at least one of qkv, attn_out, mlp_in, mlp_out when stdha=false")
        require(self.frames >= 0, f"zeroi2v option frames={self.frames}: expected 0 (no temporal embedding) or "
                                  f"an integer >= 1")

    def shifts(self, width: int) -> tuple[tuple[int, int, int], ...]:
        """(first channel, last channel + 1, frame offset dt) per shifted group of a k or v
        third of ``width`` channels: frame t reads frame t - dt."""
        fold = width // self.shift_div
        groups = [(0, fold, self.shift_stride), (fold, 2 * fold, -self.shift_stride)]
        if self.long_shift_div:
            long_fold = width // self.long_shift_div
            groups.append((2 * fold, 2 * fold + long_fold, LONG_SHIFT))
            if self.long_shift_right:
                groups.append((2 * fold + long_fold, 2 * fold + 2 * long_fold, -LONG_SHIFT))
        return tuple(groups)


class STDHA(nn.Module):
    """The frozen fused qkv projection, then k and v channel groups taken from other frames.

    Parameter-free and permanent: it is the method's attention (the deployed model keeps it), so
    it is not a :class:`SiteWrapper` and ``merge()`` leaves it in place. It keeps the module it
    wraps as ``base_layer``, so sites below it stay reachable.
    """

    def __init__(self, base_layer: nn.Module, geometry: GeometryContext, shifts: tuple[tuple[int, int, int], ...]):
        super().__init__()
        self.base_layer = base_layer
        self.geometry = geometry
        self.shifts = shifts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.base_layer(x)
        geometry = self.geometry.current
        frames = geometry.frames
        if frames == 1:
            return qkv
        if qkv.shape[0] != geometry.batch:
            raise AdaptbenchError(f"zeroi2v: the qkv site saw a batch of {qkv.shape[0]}, but this forward holds "
                                  f"{geometry.batch} images ({geometry.batch // frames} clips of {frames} frames)")
        return shift_kv(qkv, frames, self.shifts)

    def extra_repr(self) -> str:
        return f"shifts={self.shifts}"


def shift_kv(qkv: torch.Tensor, frames: int, shifts: tuple[tuple[int, int, int], ...]) -> torch.Tensor:
    """``qkv`` (clips * frames, ..., 3D), clip-major, with each shifted channel group of its k and
    v thirds read from frame t - dt of the same clip (frames without one keep their own)."""
    width = qkv.shape[-1] // 3
    clips = qkv.unflatten(0, (qkv.shape[0] // frames, frames))
    out = clips.clone()
    for third in (1, 2):  # k, v
        for start, stop, dt in shifts:
            if stop <= start or abs(dt) >= frames:
                continue
            channels = slice(third * width + start, third * width + stop)
            if dt > 0:
                out[:, dt:, ..., channels] = clips[:, :-dt, ..., channels]
            else:
                out[:, :dt, ..., channels] = clips[:, -dt:, ..., channels]
    return out.flatten(0, 1)


class TemporalEmbedding(nn.Module):
    """``base(x + E[t])`` for the tokens of frame t: the official temporal embedding (T x D,
    zero-initialised), at the first block's input. Kept after merging (not a SiteWrapper)."""

    def __init__(self, base_layer: nn.Module, geometry: GeometryContext, frames: int, dim: int, device=None,
                 dtype=None):
        super().__init__()
        self.base_layer = base_layer
        self.geometry = geometry
        self.embedding = nn.Parameter(torch.zeros(frames, dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = self.embedding.shape[0]
        if self.geometry.current.frames != frames:
            raise AdaptbenchError(f"zeroi2v option frames={frames}: its temporal embedding needs clips of {frames} "
                                  f"frames, this forward has {self.geometry.current.frames} per clip")
        clips = x.unflatten(0, (x.shape[0] // frames, frames))
        shape = (1, frames) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        return self.base_layer((clips + self.embedding.view(shape)).flatten(0, 1))


class LinearAdapterLinear(SiteWrapper):
    """A frozen linear with the ZeroI2V linear adapter ``A(x) = W2 dropout(W1 x + b1) + b2`` on its
    input (``base(x + s A(x))``) or on its output (``y + s A(y)``, ``y = base(x)``)."""

    def __init__(self, base_layer: nn.Linear, before: bool, config: ZeroI2VConfig):
        super().__init__(base_layer)
        self.before = before
        self.scale = config.scale
        dim = base_layer.in_features if before else base_layer.out_features
        hidden = int(dim * config.mlp_ratio)
        weight = base_layer.weight
        self.adapter = Bottleneck(dim, hidden, act="identity", dropout=config.dropout, bias=True,
                                  device=weight.device, dtype=weight.dtype)
        # official _init_weights: trunc_normal_(std=.02) on every Linear, bias 0; W2, b2 = 0
        nn.init.trunc_normal_(self.adapter.down.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.before:
            return self.base_layer(x + self.scale * self.adapter(x))
        y = self.base_layer(x)
        return y + self.scale * self.adapter(y)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, c) with ``A(x) = M x + c`` in eval mode: ``M = W2 W1``, ``c = W2 b1 + b2``."""
        down, up = self.adapter.down, self.adapter.up
        return up.weight @ down.weight, up.weight @ down.bias + up.bias

    def merged_module(self) -> nn.Linear:
        """Before: W' = W (I + s M), b' = b + s W c; after: W' = (I + s M) W, b' = (I + s M) b + s c
        (in float32 at least, then cast back); a linear without a bias gets one."""
        layer = self.base_layer
        if not isinstance(layer, nn.Linear):
            raise AdaptbenchError(f"zeroi2v: cannot merge into a {type(layer).__name__}; expected the frozen "
                                  f"nn.Linear right below the adapter")
        dtype = torch.promote_types(layer.weight.dtype, torch.float32)
        matrix, offset = (t.to(dtype) for t in self.affine())
        weight = layer.weight.to(dtype)
        bias = layer.bias.to(dtype) if layer.bias is not None else torch.zeros_like(weight[:, 0])
        if self.before:
            new_weight = weight + self.scale * weight @ matrix
            new_bias = bias + self.scale * weight @ offset
        else:
            new_weight = weight + self.scale * matrix @ weight
            new_bias = bias + self.scale * (matrix @ bias + offset)
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros_like(layer.weight[:, 0]), requires_grad=False)
        layer.weight.data.copy_(new_weight.to(layer.weight.dtype))
        layer.bias.data.copy_(new_bias.to(layer.bias.dtype))
        return layer


class ZeroI2V(Adapter):
    """ZeroI2V (Li et al. 2024): frame-shifted k/v heads plus linear adapters merged away"""

    temporal = True

    mergeable = True
    needs = Needs(layouts=("BNC",))

    @classmethod
    def unsupported(cls, anatomy, config: ZeroI2VConfig) -> str | None:
        if anatomy.token_layout != "BNC":
            return ("STDHA shifts keys and values across a clip's frames inside attention; the backbone's "
                    "(B, H, W, C) windowed attention runs under a per-window geometry without the frame count")
        width = anatomy.embed_dim
        if config.stdha:
            groups = config.shifts(width)
            if groups[0][1] < 1:
                return f"shift_div={config.shift_div} leaves no channel to shift at width {width}"
            if groups[-1][1] > width or any(stop <= start for start, stop, _ in groups):
                return (f"shift_div={config.shift_div} and long_shift_div={config.long_shift_div} need more "
                        f"than the {width} channels of a k or v third")
        if config.sites and int(width * config.mlp_ratio) < 1:
            return f"mlp_ratio={config.mlp_ratio} gives an adapter of width 0 at width {width}"
        if config.final_norm and "final_norm" not in anatomy.global_sites:
            return "final_norm=true needs a final norm; the backbone has none (pass final_norm=false)"
        return None

    def _attach(self, backbone) -> None:
        config: ZeroI2VConfig = self.config
        self._final_norm_params = 0
        self._kept = 0  # parameters merge() cannot remove (the temporal embedding)
        for block in blocks_of(config.blocks, backbone):
            for site in config.sites:
                wrapper = self.wrap_site(site, block,
                                         lambda base, s=site: LinearAdapterLinear(base, s in BEFORE_LINEAR, config))
                prefix = f"blocks.{block}.{site}.zeroi2v"
                for part in ("down", "up"):
                    layer = getattr(wrapper.adapter, part)
                    self.declare(f"{prefix}.{part}.weight", layer.weight)
                    self.declare(f"{prefix}.{part}.bias", layer.bias)
            if config.stdha:
                # outermost at the qkv site: it shifts what the (adapted) projection outputs
                base = backbone.site("qkv", block)
                width = linear_of(base, "zeroi2v").out_features // 3
                backbone.replace_site("qkv", block, STDHA(base, backbone.geometry, config.shifts(width)))
        if config.final_norm:
            norm = _norm_below(backbone.site("final_norm"), backbone.anatomy.norm_types)
            for name, param in norm.named_parameters(recurse=False):
                self.declare(f"final_norm.{name}", param)
                self._final_norm_params += param.numel()
        if config.frames:
            first = backbone.site("block", 0)
            weight = next(first.parameters())
            embedding = TemporalEmbedding(first, backbone.geometry, config.frames, backbone.anatomy.embed_dim,
                                          device=weight.device, dtype=weight.dtype)
            backbone.replace_site("block", 0, embedding)
            self.declare("temporal_embedding", embedding.embedding)
            self._kept = embedding.embedding.numel()

    def _merge(self) -> None:
        """Each adapter folded into its linear, wherever it sits under STDHA or other wrappers."""
        for site, block, wrapper in reversed(self._wrapped):
            _swap(self.backbone, site, block, wrapper, wrapper.merged_module())
        self._wrapped.clear()

    def inference_params(self) -> int:
        """The adapters and the temporal embedding (the final norm is the backbone's own)."""
        return self.trainable_count() - self._final_norm_params

    def extra_inference_params(self) -> int:
        return self._kept if self.merged else self.inference_params()

    def kept_after_merge(self) -> int:
        return self._kept


def _swap(backbone, site: str, block: int | None, wrapper: nn.Module, replacement: nn.Module) -> None:
    """Put ``replacement`` where ``wrapper`` is: at the site, or as the ``base_layer`` of the
    module above it (STDHA, another adapter's wrapper)."""
    module = backbone.site(site, block)
    if module is wrapper:
        backbone.replace_site(site, block, replacement)
        return
    while getattr(module, "base_layer", None) is not wrapper:
        if not hasattr(module, "base_layer"):
            raise AdaptbenchError(f"zeroi2v: its wrapper at {site} of block {block} is no longer in the backbone")
        module = module.base_layer
    module.base_layer = replacement


def _norm_below(module: nn.Module, norm_types: tuple[type, ...]) -> nn.Module:
    while not isinstance(module, norm_types) and hasattr(module, "base_layer"):
        module = module.base_layer
    if not isinstance(module, norm_types):
        raise AdaptbenchError(f"zeroi2v option final_norm=true: the backbone's final_norm site holds a "
                              f"{type(module).__name__}, not a norm; pass final_norm=false")
    return module


register_adapter("zeroi2v", ZeroI2VConfig, ZeroI2V)
