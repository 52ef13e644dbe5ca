"""DeRA: ToonComposer's spatial low-rank adapter, as its authors implement it: a low-rank
attention branch beside the spatial self-attention, per frame, with 2D rotary positions.

Li, Wang, Zhang, Li, Li, Dou, Gu, Xue, Shan, "ToonComposer: Streamlining Cartoon Production
with Generative Post-Keyframing", 2025 (arXiv:2508.10881); official code:
github.com/TencentARC/ToonComposer (commit 53dc3df), ``model/dera.py`` (classes ``DeRA``,
``DeRAAttention``) and ``model/dit.py`` (``WanAttentionBlock``, ``WanModel``). Line numbers below
are of that commit. (``spatial_lora`` is the benchmark's LoRA form of the same idea; this is the
released one.)

For a block whose attention branch is ``post(attn(norm(x)))``, with ``n = norm(x)`` the tokens
the self-attention sees (dit.py l.498-502: DeRA reads ``x_self_attn_input``, the modulated
``norm1`` output, and its output is added to the self-attention's before the gate ``e[2]``,
which ``post`` plays here: LayerScale where a backbone has one):

    update = post(attn(n)) + post(U o(Attn_r(q(D n), k(D n), v(D n))))

* ``D``: bias-free Linear d -> r (``spatial_down_proj``, dera.py l.86);
* ``q, k, v, o``: Linear r -> r with bias (``DeRAAttention``, dera.py l.22-25), 4 heads of
  width ``r / 4`` (dera.py l.89);
* ``Attn_r``: softmax attention ``softmax(RoPE(q) RoPE(k)^T / sqrt(r/4)) v`` computed per frame
  over that frame's patch grid (dera.py l.104-105: ``(b t) (h w) r``; ``flash_attention``
  with its default scale, dit.py l.24-31); no q/k norm, no dropout;
* ``U``: bias-free Linear r -> d, zero-initialised (``spatial_up_proj``, dera.py l.87-88), so
  the adapted model is the frozen one at initialisation.

RoPE (``rope_apply_spatial``, dera.py l.32-48; frequencies ``dera_freqs``, dit.py l.641-647,
``rope_params``, dit.py l.225-232): a head of width ``r/4`` holds ``c = r/8`` complex pairs
(adjacent channels ``(2m, 2m+1)``). The first ``c - 2 floor(c/3)`` pairs are the temporal slot,
left unrotated in the spatial mode (the ``new_ones`` of l.46); the next ``floor(c/3)`` are
rotated by ``row * w_j``, the last ``floor(c/3)`` by ``col * w_j``, with
``w_j = theta^(-j / floor(c/3))``, ``theta = 10000``. The grid is read from the backbone's
geometry at every forward (``geometry.grid``), never fixed at attach. Each image of the folded
batch is one frame, so nothing crosses frames: a clip's temporal modelling stays the frozen
model's, and on a video family whose blocks have a ``temporal`` branch (anatomy.py) that branch
is never wrapped, declared or changed (DeRA wraps only the ``attn`` branch).

Initialisation: ``WanModel.init_weights`` (dit.py l.863-868, called at l.654 after the blocks
are built) sets every ``nn.Linear`` to Xavier-uniform with zero bias: that is ``D``, ``q``,
``k``, ``v``, ``o`` here. It would also overwrite the zero ``U`` of dera.py l.88 (the released
code is inference-only and loads trained DeRA weights); we keep dera.py's explicit zero ``U``.

Class and register tokens (prefix tokens; the official DiT has none): they take part in the
branch, as queries and keys, *without rotation*; the grid's rows and columns are numbered from
1 (the official code numbers them from 0). RoPE scores depend only on position differences, so
patch-patch scores are exactly the official ones, and the identity rotation the prefix tokens
get is then position (0, 0), next to no patch (numbered from 0 it would make them copies of the
top-left patch). They must take part: a ViT's classifier reads the class token, and a branch
that skipped it would leave the last block's DeRA with no path to the output (dead tensors).

Rank: the official code reads ``dera_rank`` from the released model's config (default None,
tooncomposer.py l.46); the comment ``dera_d = dera_rank // 4  # (18)`` (dit.py l.642) gives
rank 72 on Wan2.1-14B (d = 5120). We keep **r = 72** (the authors' only value): it fixes the
attention's shape, which does not depend on d (4 heads of 18, RoPE pairs 3 + 3 + 3), and
scaling it with d (72 x 768/5120 ~ 11) falls below the smallest rank the official RoPE runs
with (24: it needs ``c`` divisible by 3). Parameters on ViT-B/16 (d = 768, 12 blocks):
12 x (2 x 768 x 72 + 4 x (72 x 72 + 72)) = 1,579,392, all of them run at inference (DeRA is
not mergeable).

Departures:

* ``heads`` and any rank with an even head width >= 6 are allowed; the official RoPE only runs
  when the head width is a multiple of 6 (``c % 3 == 0``, else its ``freqs_i`` and ``x_i`` do
  not broadcast), and on those ranks this is the same rotation;
* RoPE is computed in float32 (float64 for float64 inputs; the official code in float64,
  cast back to float32);
* the branch's ``post`` is applied by a second call of the backbone's ``post`` (exact for
  LayerScale and the identity; a DropPath in training draws its mask separately).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.geometry import GeometryContext, TokenGeometry
from ..errors import AdaptbenchError
from ..registry import register_adapter
from .base import Adapter, AdapterConfig, SiteWrapper, blocks_of, require


@dataclass
class DeRAConfig(AdapterConfig):
    rank: int = field(default=72, metadata={"help": "rank r: width of the branch's tokens (official 72, "
                                                    "dit.py's '# (18)' per head)"})
    heads: int = field(default=4, metadata={"help": "heads of the branch's attention (official: 4); each of "
                                                    "width r / heads, even and >= 6 (2D RoPE)"})
    theta: float = field(default=10000.0, metadata={"help": "RoPE base (official rope_params: 10000)"})
    blocks: tuple[int, ...] | None = field(
        default=None, metadata={"help": "block indices to adapt (default: every block)"}
    )

    def validate(self) -> None:
        require(self.rank >= 1, f"dera option rank={self.rank}: expected an integer >= 1")
        require(self.heads >= 1, f"dera option heads={self.heads}: expected an integer >= 1")
        require(self.rank % self.heads == 0,
                f"dera option rank={self.rank}: expected a multiple of heads={self.heads}")
        head = self.rank // self.heads
        require(head % 2 == 0 and head >= 6,
                f"dera option rank={self.rank}: expected rank / heads (now {head}) even and >= 6, e.g. rank=72 "
                f"with heads=4 (2D RoPE needs a rotated pair per axis)")
        require(self.theta > 0 and math.isfinite(self.theta), f"dera option theta={self.theta}: expected a number > 0")


def rope_angles(grid: tuple[int, int], head_dim: int, theta: float, device=None) -> torch.Tensor:
    """(H*W, c) rotation angles of a row-major grid, ``c = head_dim / 2`` pairs: the first
    ``c - 2 floor(c/3)`` zero (the unrotated temporal slot), then ``row * w_j``, then
    ``col * w_j``, ``w_j = theta^(-j / floor(c/3))``, rows and columns numbered from 1."""
    pairs = head_dim // 2
    axis = pairs // 3
    freqs = theta ** (-torch.arange(axis, dtype=torch.float64, device=device) / axis)
    rows = torch.arange(1, grid[0] + 1, dtype=torch.float64, device=device)
    cols = torch.arange(1, grid[1] + 1, dtype=torch.float64, device=device)
    row_angles = (rows[:, None] * freqs).unsqueeze(1).expand(-1, grid[1], -1)
    col_angles = (cols[:, None] * freqs).unsqueeze(0).expand(grid[0], -1, -1)
    still = torch.zeros(grid[0], grid[1], pairs - 2 * axis, dtype=torch.float64, device=device)
    return torch.cat([still, row_angles, col_angles], dim=-1).reshape(grid[0] * grid[1], pairs)


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate the adjacent channel pairs of ``x`` (..., N, heads, 2c) by ``angles`` (N, c)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    pairs = x.to(dtype).unflatten(-1, (-1, 2))
    cos, sin = angles.cos().to(dtype)[:, None], angles.sin().to(dtype)[:, None]  # (N, 1, c)
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)


class DeRAAttention(nn.Module):
    """Multi-head attention over rank-wide tokens with its own q/k/v/o and 2D RoPE on the patch
    grid (prefix tokens unrotated)."""

    def __init__(self, rank: int, heads: int, theta: float, device=None, dtype=None):
        super().__init__()
        self.heads = heads
        self.theta = theta
        for name in ("q", "k", "v", "o"):
            layer = nn.Linear(rank, rank, device=device, dtype=dtype)
            nn.init.xavier_uniform_(layer.weight)  # WanModel.init_weights, dit.py l.863-868
            nn.init.zeros_(layer.bias)
            setattr(self, name, layer)
        self._angles: dict[tuple, torch.Tensor] = {}

    def angles(self, grid: tuple[int, int], head_dim: int, device) -> torch.Tensor:
        key = (grid, head_dim, str(device))
        if key not in self._angles:
            self._angles[key] = rope_angles(grid, head_dim, self.theta, device)
        return self._angles[key]

    def forward(self, z: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
        """``z`` (B, prefix + H*W, r): prefix tokens, then the row-major patch grid."""
        batch, tokens, rank = z.shape
        q, k, v = (getattr(self, name)(z).view(batch, tokens, self.heads, -1) for name in ("q", "k", "v"))
        angles = self.angles(grid, rank // self.heads, z.device)
        q = torch.cat([q[:, :prefix], rotate(q[:, prefix:], angles)], dim=1)
        k = torch.cat([k[:, :prefix], rotate(k[:, prefix:], angles)], dim=1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o(out.transpose(1, 2).reshape(batch, tokens, rank))


class DeRABranch(nn.Module):
    """``U o(Attn_r(D n))`` per image of the folded batch (each image is one frame)."""

    def __init__(self, dim: int, config: DeRAConfig, device=None, dtype=None):
        super().__init__()
        self.down = nn.Linear(dim, config.rank, bias=False, device=device, dtype=dtype)
        self.attn_r = DeRAAttention(config.rank, config.heads, config.theta, device=device, dtype=dtype)
        self.up = nn.Linear(config.rank, dim, bias=False, device=device, dtype=dtype)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.up.weight)

    def forward(self, n: torch.Tensor, geometry: TokenGeometry) -> torch.Tensor:
        height, width = geometry.grid
        if geometry.layout == "BHWC":
            if tuple(n.shape[1:3]) != (height, width):
                raise AdaptbenchError(f"dera: tokens of shape {tuple(n.shape)} do not hold this forward's "
                                      f"{height}x{width} grid")
            tokens, prefix = n.flatten(1, 2), 0
        else:
            tokens, prefix = n, geometry.prefix
            if n.shape[1] != geometry.num_tokens:
                raise AdaptbenchError(f"dera: {n.shape[1]} tokens, but this forward has {prefix} prefix tokens "
                                      f"and a {height}x{width} grid")
        out = self.up(self.attn_r(self.down(tokens), prefix, (height, width)))
        return out.view(n.shape[:-1] + (out.shape[-1],))


class DeRAWrapper(SiteWrapper):
    """At the ``attn`` branch: ``base(x) + post(DeRA(norm(x)))``, with the branch's own norm
    (what the self-attention sees) and ``post`` (LayerScale, drop path)."""

    def __init__(self, base_layer: nn.Module, geometry: GeometryContext, dim: int, config: DeRAConfig):
        super().__init__(base_layer)
        _residual_branch(base_layer)  # refuse at attach a site without one
        weight = next(base_layer.parameters())
        self.geometry = geometry
        self.dera = DeRABranch(dim, config, device=weight.device, dtype=weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        geometry = self.geometry.current  # read before the branch runs (SAM's windows publish their own)
        branch = _residual_branch(self.base_layer)  # looked up, not registered twice
        return self.base_layer(x) + branch.post(self.dera(branch.norm(x), geometry))


def _residual_branch(module: nn.Module) -> nn.Module:
    """The residual branch (its ``norm`` and ``post``) below any other adapter's wrappers."""
    found = module
    while not (hasattr(found, "norm") and hasattr(found, "post")) and hasattr(found, "base_layer"):
        found = found.base_layer
    if not (hasattr(found, "norm") and hasattr(found, "post")):
        raise AdaptbenchError(f"dera: the attn site holds a {type(module).__name__}, not a residual branch with a "
                              f"norm and a post")
    return found


class DeRA(Adapter):
    """DeRA (ToonComposer, Li et al. 2025): per-frame low-rank RoPE attention beside the spatial attention"""

    def _attach(self, backbone) -> None:
        config: DeRAConfig = self.config
        dim = backbone.anatomy.embed_dim
        for block in blocks_of(config.blocks, backbone):
            wrapper = self.wrap_site("attn", block, lambda base: DeRAWrapper(base, backbone.geometry, dim, config))
            prefix = f"blocks.{block}.attn.dera"
            for name, param in wrapper.dera.named_parameters():
                self.declare(f"{prefix}.{name}", param)


register_adapter("dera", DeRAConfig, DeRA)
