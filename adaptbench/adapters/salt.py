"""SALT: scale and shift of the top singular values, low-rank update of the rest of the spectrum.

Elsayed, Hashmi, Elseiagy, Wang, Yaqub, Almakky, "SALT: Parameter-Efficient Fine-Tuning via
Singular Value Adaptation with Low-Rank Transformation", BMVC 2025 (arXiv:2503.16055). Official
code: github BioMedIA-MBZUAI/SALT (commit 7314877): the layer
``prompt_adapted_SAM2/modeling/Adapters/SALT.py`` (``SALTLinear`` L9-152: rank L37-39, init
L52-61, ``get_modified_singular_values`` L90-117, forward L119-152), placed on every block's
``qkv`` and ``proj`` (``prompt_adapted_SAM2/modeling/backbones/hieradet.py`` L102-104) and both
MLP linears (L203-211), with ``r_lora = 256`` and ``ratio_salt = 0.1`` (L29-34).

For a frozen linear ``W`` (out x in) with thin SVD ``W = U diag(sigma) V^T`` (k = min(out, in)
singular values, descending), a rank ``r`` and a LoRA rank ``q``:

    Sigma' = [ diag(a * sigma_{1..r} + b)          0                   ]     a, b: r
             [        0               diag(sigma_{r+1..k}) + X Y       ]     X: (k-r) x q,  Y: q x (k-r)
    W'     = U ReLU(Sigma') V^T                   (ReLU entry-wise, on the whole k x k matrix)
    h      = W' x + bias

so the r most influential singular values get a trainable scale and shift, and the residual
subspace a low-rank update -- a full (k-r) x (k-r) block, which mixes the residual singular
directions (its negative entries, off the diagonal too, are cut by the ReLU). ``r`` is
``max(1, floor(ratio * k))`` (the official ``ratio_salt``), or ``rank`` when given (the absolute
``rank`` of the SAM (v1) layer, ``prompt_adapted_segment_anything/modeling/SALT.py``).

Initialisation (official SAM2 layer, L53-61): ``a = 1``, ``b = 0``, ``Y = 0`` and ``X``
Kaiming-uniform (``a = sqrt(20)``, fan_in, ``nonlinearity="relu"``, so gain sqrt(2) and bound
sqrt(6 / q)): ``Sigma' = diag(sigma) >= 0`` and ``W' = W`` -- SALT is the identity at
initialisation. The released SAM (v1) layer instead draws ``X, Y ~ N(0, 0.01^2)`` (not the
identity); its uses in the v1 encoder are commented out, so the SAM2 layer is the one followed.
``W'`` is a dense matrix, so ``merge()`` writes it into the linear exactly.

Regulariser (official ``reg_loss``): ``||a * sigma_r + b - sigma_r||_2 + ||X Y||_F`` per layer,
summed and multiplied by ``reg_multiplier`` (``train.py`` L155), which the released
``SALT_config.yml`` sets to 0: ``reg_weight`` (default 0) adds it as ``salt_reg``.

Defaults: ``rank_ratio = 0.1``, ``lora_rank = 256``, sites ``qkv``, ``attn_out``, ``mlp_in``,
``mlp_out`` in every block (the official SAM2 configuration above). A site has
``2 r + 2 q (k - r)`` trainable parameters.

Departures from the official code, and why:

* The SVD is taken once at attach, in float64 on the weight's device, with each singular pair's
  sign fixed (the largest-magnitude entry of every left singular vector is made positive):
  ``X Y`` acts on the singular basis, so a trained checkpoint must meet the same basis on any
  device. The official layer takes the float32 SVD on the weight's device at the first forward.
  (Attach the backbone on the GPU for ViT-B and larger: 48 float64 SVDs take minutes on a small
  CPU.)
* The forward computes ``W + U (ReLU(Sigma') - diag(sigma)) V^T``: the same matrix as
  ``U ReLU(Sigma') V^T`` mathematically, without float32 reconstruction error, so the layer is
  exactly the frozen one at initialisation.
* The official training script (``main.py`` L184-227, strategy ``salt``) also trains every
  LayerNorm and the positional embedding; that is recipe, not the SALT layer: compose with the
  ``ln`` adapter for the norms. The official layer also re-seeds torch's global RNG (seed 42) in
  its constructor; this one leaves the global RNG alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_adapter
from .base import Adapter, AdapterConfig, SiteWrapper, blocks_of, require
from .hooks import LossContext
from .layers import linear_of
from .lora import WHOLE_SITES


@dataclass
class SALTConfig(AdapterConfig):
    rank_ratio: float = field(
        default=0.1, metadata={"help": "r = max(1, floor(ratio * k)) top singular values get a scale and shift"}
    )
    rank: int | None = field(
        default=None, metadata={"help": "absolute r (overrides rank_ratio; clipped to each weight's k)"}
    )
    lora_rank: int = field(default=256, metadata={"help": "q: rank of the X Y update of the residual spectrum"})
    reg_weight: float = field(
        default=0.0, metadata={"help": "weight of ||a s + b - s|| + ||X Y||_F per layer (official reg_multiplier)"}
    )
    targets: tuple[str, ...] = field(
        default=WHOLE_SITES, metadata={"help": f"linear sites to adapt, any of {', '.join(WHOLE_SITES)}"}
    )
    blocks: tuple[int, ...] | None = field(
        default=None, metadata={"help": "block indices to adapt (default: every block)"}
    )

    def validate(self) -> None:
        require(0.0 < self.rank_ratio <= 1.0, f"salt option rank_ratio={self.rank_ratio}: expected 0 < ratio <= 1")
        require(self.rank is None or self.rank >= 1, f"salt option rank={self.rank}: expected an integer >= 1")
        require(self.lora_rank >= 1, f"salt option lora_rank={self.lora_rank}: expected an integer >= 1")
        require(0.0 <= self.reg_weight < float("inf"),
                f"salt option reg_weight={self.reg_weight}: expected a finite number >= 0")
        require(len(self.targets) > 0, "salt option targets: expected at least one site")
        for target in self.targets:
            require(target in WHOLE_SITES, f"salt target {target!r}: expected one of {WHOLE_SITES}")
        require(len(set(self.targets)) == len(self.targets), f"salt option targets={self.targets}: "
                                                             "expected each site once")

    def rank_of(self, k: int) -> int:
        """r for a weight with k singular values."""
        if self.rank is not None:
            return min(self.rank, k)
        return max(1, int(k * self.rank_ratio))


def canonical_svd(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``(U, sigma, V^T)`` of ``weight`` in float64 on its device, each pair's sign fixed
    so that the largest-magnitude entry of every column of U is positive: the same basis on any
    device (up to float64 rounding), which the trained ``X Y`` depends on."""
    u, sigma, vh = torch.linalg.svd(weight.detach().to(torch.float64), full_matrices=False)
    pivots = u.abs().argmax(dim=0)
    signs = torch.sign(u[pivots, torch.arange(u.shape[1], device=u.device)])
    signs[signs == 0] = 1
    return u * signs, sigma, vh * signs[:, None]


class SALTLinear(SiteWrapper):
    """``W + U (ReLU(Sigma') - diag(sigma)) V^T`` in place of a frozen linear's weight ``W``."""

    def __init__(self, base_layer: nn.Module, config: SALTConfig):
        super().__init__(base_layer)
        linear = linear_of(base_layer, "salt")
        weight = linear.weight
        u, sigma, vh = canonical_svd(weight)
        k = sigma.numel()
        rank = config.rank_of(k)
        factory = {"device": weight.device, "dtype": torch.float32}
        # non-persistent: recomputed from the frozen weight, never stored in a checkpoint
        self.register_buffer("U", u.to(**factory), persistent=False)
        self.register_buffer("S", sigma.to(**factory), persistent=False)
        self.register_buffer("Vh", vh.to(**factory), persistent=False)
        self.rank = rank
        self.scale = nn.Parameter(torch.ones(rank, **factory))
        self.shift = nn.Parameter(torch.zeros(rank, **factory))
        rest = k - rank
        if rest:
            self.lora_X = nn.Parameter(torch.empty(rest, config.lora_rank, **factory))
            self.lora_Y = nn.Parameter(torch.zeros(config.lora_rank, rest, **factory))
            nn.init.kaiming_uniform_(self.lora_X, a=math.sqrt(20), mode="fan_in", nonlinearity="relu")
        else:
            self.register_parameter("lora_X", None)
            self.register_parameter("lora_Y", None)

    def adapter_tensors(self) -> list[tuple[str, nn.Parameter]]:
        named = [("scale", self.scale), ("shift", self.shift)]
        if self.lora_X is not None:
            named += [("lora_X", self.lora_X), ("lora_Y", self.lora_Y)]
        return named

    def top_values(self) -> torch.Tensor:
        """``a * sigma_r + b`` (before the ReLU)."""
        return self.scale * self.S[: self.rank] + self.shift

    def residual_block(self) -> torch.Tensor | None:
        """``diag(sigma_{r+1..k}) + X Y`` (before the ReLU), or None when r = k."""
        if self.lora_X is None:
            return None
        return torch.diag(self.S[self.rank:]) + self.lora_X @ self.lora_Y

    def delta(self) -> torch.Tensor:
        """``W' - W = U (ReLU(Sigma') - diag(sigma)) V^T`` (out x in, float32)."""
        r, sigma = self.rank, self.S
        with torch.autocast(self.S.device.type, enabled=False):  # the weight in float32, as merge() folds it
            change = F.relu(self.top_values()) - sigma[:r]
            delta = (self.U[:, :r] * change) @ self.Vh[:r]
            block = self.residual_block()
            if block is not None:
                residual = F.relu(block) - torch.diag(sigma[r:])
                delta = delta + self.U[:, r:] @ residual @ self.Vh[r:]
        return delta

    def adapted_weight(self) -> torch.Tensor:
        weight = linear_of(self.base_layer, "salt").weight
        return weight + self.delta().to(weight.dtype)

    def regulariser(self) -> torch.Tensor:
        """``||a * sigma_r + b - sigma_r||_2 + ||X Y||_F`` (the official ``reg_loss``)."""
        term = torch.linalg.vector_norm(self.top_values() - self.S[: self.rank])
        if self.lora_X is not None:
            term = term + torch.linalg.matrix_norm(self.lora_X @ self.lora_Y)
        return term

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        if isinstance(base, nn.Linear):
            return F.linear(x, self.adapted_weight(), base.bias)
        # another adapter's wrapper around the linear: SALT's change adds to what it computes
        return base(x) + F.linear(x, self.delta().to(x.dtype))

    def merged_module(self) -> nn.Module:
        linear = linear_of(self.base_layer, "salt")
        linear.weight.data = self.adapted_weight().detach()
        return self.base_layer


class SALT(Adapter):
    """SALT (Elsayed et al. 2025): scale/shift of top singular values plus low-rank residual spectrum"""

    mergeable = True
    version = 1

    def _attach(self, backbone) -> None:
        config: SALTConfig = self.config
        self.layers: dict[str, SALTLinear] = {}
        for block in blocks_of(config.blocks, backbone):
            for site in config.targets:
                wrapper = self.wrap_site(site, block, lambda base: SALTLinear(base, config))
                self.layers[f"blocks.{block}.{site}"] = wrapper
                for name, tensor in wrapper.adapter_tensors():
                    self.declare(f"blocks.{block}.{site}.{name}", tensor)

    def extra_loss(self, context: LossContext) -> dict[str, torch.Tensor]:
        weight = self.config.reg_weight
        if weight == 0 or self.merged:
            return {}
        return {"salt_reg": weight * torch.stack([layer.regulariser() for layer in self.layers.values()]).sum()}


register_adapter("salt", SALTConfig, SALT)
