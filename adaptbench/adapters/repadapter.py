"""RepAdapter: a linear adapter re-parameterised into the next linear layer.

Luo, Huang, Zhou, Sun, Jiang, Wang, Ji, "Towards Efficient Visual Adaption via Structural
Re-parameterization", arXiv preprint 2023 (arXiv:2302.08106); official code: github.com/luogen1996/RepAdapter,
``repadapter.py`` (class ``RepAdapter``, ``set_RepAdapter``, ``set_RepWeight``).

Before the attention and before the MLP of every block (on the pre-norm outputs, i.e. the
inputs of the ``qkv`` and ``mlp_in`` linears, the official "repblock" placement) the tokens pass
through

    x' = x + s * B(dropout(A x + a)) + s * b

with A a dense 1x1 convolution d -> h (weight h x d, bias a) and B a *group-wise* 1x1
convolution h -> d with g groups: output channels ``[i d/g, (i+1) d/g)`` read only hidden channels
``[i h/g, (i+1) h/g)``, so B's dense matrix is ``M_B = blockdiag(B_0, ..., B_{g-1})`` with
``B_i`` of shape (d/g) x (h/g). There is no non-linearity, so the whole adapter is the affine
map ``x' = (I + s M) x + s c`` with ``M = M_B A`` and ``c = M_B a + b``, and ``merge()`` folds it
into the linear W, b_W that follows:

    W' = W (I + s M),     b_W' = b_W + s W c

(a linear without a bias gets one). After merging the adapted model runs with 0 extra
parameters.

Initialisation (official code): A Xavier-uniform, a = 0, B = 0, b = 0, so the model is the
frozen one at initialisation. Defaults (official code and paper, ViT-B/16 VTAB-1k): hidden width
h = 8, groups g = 2, dropout 0.1, both placements. The official VTAB-1k configs
(``configs/repblock/*.yaml``) search s per task over {0.1, 0.5, 1, 5, 10}; the default here is
the module's own default, s = 1 (also the few-shot configs' value).

Departures from the official code: it patches timm's ``Block.forward`` and runs the adapter
as ``nn.Conv1d`` on transposed tokens; here the ``qkv`` / ``mlp_in`` sites are wrapped through the
anatomy and the adapter is the same maps written on the last (channel) dimension, so it also
serves SAM's (B, H, W, C) tokens.

Optional penalty on B (``b_norm_weight``, default 0: off). The official repository has one
training-loss term, on a side branch only: commit 1285c27 "Update LossRep" (2024-04-18), which
main's later HEAD 360992f "fix repadapter" does not contain. Its ``train.py`` adds

    L_B = lambda * sum over adapters of (||W_B||_2 + ||b_B||_2)

(``torch.norm(param, p=2)`` of every parameter whose name contains ``adapter_attn.conv_B`` or
``adapter_mlp.conv_B``: B's weight and bias, each an unsquared Frobenius norm) with
``lambda = --sparse_lambda``. Its argparse default is 1.0, but every script of that commit
(``scripts/train_repblock.sh``, ``train_repattn.sh``, ``search_repblock.sh``,
``search_repattn.sh``) passes ``sparse_lambda=0``, and the per-task VTAB-1k configs
(``configs/repblock/*.yaml``, initial commit of 2022-11) predate it. So the official recipe
trains without it and the default here is 0; ``b_norm_weight = lambda`` turns it on, returned
by :meth:`RepAdapter.extra_loss` as ``b_norm`` (its gradient at B = 0 is 0: torch's subgradient
of a norm at zero, so the zero-initialised B is not pushed anywhere by it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AdaptbenchError
from ..registry import register_adapter
from .base import Adapter, AdapterConfig, SiteWrapper, blocks_of, require
from .hooks import LossContext
from .layers import init_down

# The adapter must sit right before a linear to be merged into it: the inputs of the
# attention (qkv) and of the MLP (mlp_in).
REPADAPTER_SITES = ("qkv", "mlp_in")


@dataclass
class RepAdapterConfig(AdapterConfig):
    hidden_dim: int = field(default=8, metadata={"help": "hidden width h of the adapter (A: d -> h, B: h -> d)"})
    groups: int = field(default=2, metadata={"help": "groups g of the group-wise 1x1 convolution B"})
    scale: float = field(default=1.0, metadata={"help": "scale s of the adapter branch"})
    dropout: float = field(default=0.1, metadata={"help": "dropout between A and B"})
    sites: tuple[str, ...] = field(
        default=REPADAPTER_SITES,
        metadata={"help": "linears whose input is adapted: qkv (before attention), mlp_in (before the MLP)"},
    )
    blocks: tuple[int, ...] | None = field(
        default=None, metadata={"help": "block indices to adapt (default: every block)"}
    )
    b_norm_weight: float = field(
        default=0.0, metadata={"help": "lambda of the penalty lambda * sum (||W_B||_2 + ||b_B||_2) (official "
                                       "side-branch sparse_lambda; 0 in its scripts: off)"}
    )

    def validate(self) -> None:
        require(self.hidden_dim >= 1, f"repadapter option hidden_dim={self.hidden_dim}: expected an integer >= 1")
        require(self.groups >= 1, f"repadapter option groups={self.groups}: expected an integer >= 1")
        require(self.hidden_dim % self.groups == 0,
                f"repadapter option groups={self.groups}: expected a divisor of hidden_dim={self.hidden_dim}")
        require(0.0 <= self.dropout < 1.0, f"repadapter option dropout={self.dropout}: expected 0 <= dropout < 1")
        require(len(self.sites) > 0, f"repadapter option sites: expected at least one of {REPADAPTER_SITES}")
        for site in self.sites:
            require(site in REPADAPTER_SITES, f"repadapter site {site!r}: expected one of {REPADAPTER_SITES}")
        require(0.0 <= self.b_norm_weight < float("inf"),
                f"repadapter option b_norm_weight={self.b_norm_weight}: expected a finite number >= 0")


class GroupedLinearAdapter(nn.Module):
    """``B(dropout(A x + a)) + b`` with B group-wise: the RepAdapter branch, on the last dim."""

    def __init__(self, dim: int, hidden: int, groups: int, dropout: float, device=None, dtype=None):
        super().__init__()
        if dim % groups:
            raise AdaptbenchError(f"repadapter option groups={groups}: expected a divisor of the width {dim}")
        self.groups = groups
        self.down = nn.Linear(dim, hidden, device=device, dtype=dtype)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # B's weight as a grouped 1x1 convolution stores it: (d, h/g), group i = rows i*d/g...
        self.up_weight = nn.Parameter(torch.zeros(dim, hidden // groups, device=device, dtype=dtype))
        self.up_bias = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype))
        init_down(self.down.weight, "xavier")
        nn.init.zeros_(self.down.bias)

    def up_blocks(self) -> torch.Tensor:
        """B's weight as (g, d/g, h/g): one dense block per group."""
        return self.up_weight.unflatten(0, (self.groups, -1))

    def up(self, hidden: torch.Tensor) -> torch.Tensor:
        grouped = hidden.unflatten(-1, (self.groups, -1))  # (..., g, h/g)
        out = torch.einsum("...gh,gdh->...gd", grouped, self.up_blocks())
        return out.flatten(-2) + self.up_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(self.down(x)))

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, c) with ``forward(x) = M x + c`` in eval mode (dropout off)."""
        dense_up = torch.block_diag(*self.up_blocks())  # (d, h), block-diagonal over groups
        return dense_up @ self.down.weight, dense_up @ self.down.bias + self.up_bias


class RepAdapterLinear(SiteWrapper):
    """``base(x + s * adapter(x))``: the adapter on the input of a frozen linear."""

    def __init__(self, base_layer: nn.Linear, config: RepAdapterConfig):
        super().__init__(base_layer)
        weight = base_layer.weight
        self.scale = config.scale
        self.adapter = GroupedLinearAdapter(base_layer.in_features, config.hidden_dim, config.groups,
                                            config.dropout, device=weight.device, dtype=weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x + self.scale * self.adapter(x))

    def merged_module(self) -> nn.Linear:
        """W' = W (I + s M), b' = b + s W c (computed in float32 at least, then cast back)."""
        layer = self.base_layer
        dtype = torch.promote_types(layer.weight.dtype, torch.float32)
        matrix, offset = (t.to(dtype) for t in self.adapter.affine())
        weight = layer.weight.to(dtype)
        new_bias = F.linear(offset, weight) * self.scale
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros_like(layer.weight[:, 0]), requires_grad=False)
        layer.bias.data += new_bias.to(layer.bias.dtype)
        layer.weight.data += (self.scale * weight @ matrix).to(layer.weight.dtype)
        return layer


class RepAdapter(Adapter):
    """RepAdapter (Luo et al. 2023): linear adapter merged into the next linear"""

    mergeable = True

    def _attach(self, backbone) -> None:
        config: RepAdapterConfig = self.config
        for block in blocks_of(config.blocks, backbone):
            for site in config.sites:
                wrapper = self.wrap_site(site, block, lambda base: RepAdapterLinear(base, config))
                branch = wrapper.adapter
                prefix = f"blocks.{block}.{site}.repadapter"
                self.declare(f"{prefix}.A.weight", branch.down.weight)
                self.declare(f"{prefix}.A.bias", branch.down.bias)
                self.declare(f"{prefix}.B.weight", branch.up_weight)
                self.declare(f"{prefix}.B.bias", branch.up_bias)

    def extra_loss(self, context: LossContext) -> dict[str, torch.Tensor]:
        """``lambda * sum (||W_B||_2 + ||b_B||_2)`` over the adapters, when ``b_norm_weight`` > 0."""
        weight = self.config.b_norm_weight
        if weight == 0 or self.merged:
            return {}
        norms = [torch.linalg.vector_norm(p) for n, p in self._declared.items() if ".B." in n]
        return {"b_norm": weight * torch.stack(norms).sum()}


register_adapter("repadapter", RepAdapterConfig, RepAdapter)
