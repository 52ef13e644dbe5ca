"""Conv-LoRA: LoRA whose bottleneck passes through a mixture of multi-scale convolutional experts.

Zhong, Tang, He, Fang, Yuan, "Convolution Meets LoRA: Parameter Efficient Finetuning for Segment
Anything Model", ICLR 2024 (arXiv:2401.17868). Official code: github autogluon/autogluon
(commit f34ebb4f6), ``multimodal/src/autogluon/multimodal/models/adaptation_layers.py``:
``ConvLoRALinear`` L606-727, ``MoEGate`` L730-843 (after Shazeer et al. 2017's noisy top-k
gating), ``SparseDispatcher`` L846-959; run by ``examples/automm/Conv-LoRA``.

For a frozen linear ``W0`` (out x in), rank ``r``, ``M`` experts and ``s = alpha / r``:

    z      = A dropout(x)                        A: r x in, z laid out on the patch grid (r, H, W)
    g      = GAP(z)                              (one r-vector per image, or per window)
    e      = argmax_m (g W_gate + [training] eps * (softplus(g W_noise) + 0.01))_m,  eps ~ N(0, 1)
    z'     = z + Expert_e(z),   Expert_m(z) = Down_m(GELU(Conv3x3_m(Up_m(z))))
    h      = W0 x + s * B z'                     B: out x r

with ``Up_m`` / ``Down_m`` bicubic resampling by the factor m (1..M; expert 1 resamples nothing)
and ``Conv3x3_m`` an r -> r convolution with bias, padding 1. Routing is top-1 per image (per
window on SAM's windowed blocks, where the fused qkv linear sees windows, as in the official
code), and the expert's output is *not* multiplied by its gate (``multiply_by_gates = False``):
the gating network learns only from the load-balancing loss

    L_balance = c * (CV^2(importance) + CV^2(load)),      CV^2(v) = Var(v) / (mean(v)^2 + 1e-10)

(unbiased variance over the M experts; 0 when M = 1), with ``importance_m`` the number of images
routed to expert m (the top-1 gate is softmax of one logit, i.e. 1) and, in training,
``load_m = sum_b P(expert m stays in the top 1 under fresh noise)`` (Shazeer et al.'s smooth
estimate: Phi((clean_bm - threshold_bm) / noise_std_bm), the threshold being the best other
noisy logit), in evaluation the routed counts; ``c = 1e-2``. :meth:`ConvLoRA.extra_loss` returns
the sum over the adapted layers as ``moe_balance`` in training (autogluon adds the summed
``moe_loss`` to the task loss, ``optim/lit_semantic_seg.py`` L45-47).

Initialisation (official): ``A`` Kaiming-uniform (a = sqrt(5)), ``B = 0`` -- so Conv-LoRA is the
identity at initialisation --, each expert conv PyTorch's default (Kaiming-uniform, a = sqrt(5))
with its bias zeroed, ``W_gate = W_noise = 0``. Not mergeable: the experts, the routing and the
GELU are non-linear in ``x``.

Defaults are the official SAM semantic-segmentation recipe: ``r = 3`` and ``M = 8``
(``examples/automm/Conv-LoRA/run_semantic_segmentation.py`` L54-55, README "rank ... Default is 3",
"expert_num ... Default is 8"), ``alpha = 32`` (the ``semantic_segmentation`` preset,
``utils/presets.py`` L409-414, which the example does not override), the fused ``qkv`` linear of
every image-encoder block as the only site (the preset's ``module_filter [".*vision_encoder.*attn"]``
and ``filter ["q", "v"]``, matched with ``re.match`` in ``models/utils.py`` L575-591: ``"q"``
matches ``qkv``, ``"v"`` matches nothing), no dropout (``create_adaptation`` passes none,
``models/utils.py`` L515-523), top-1 noisy gating and ``c = 1e-2`` (``MoEGate``). Trainable:
``A``, ``B``, the experts and both gating matrices (``optim/utils.py`` L177-178 trains every
parameter whose name matches ``.*lora_*.``).

Departures from the official code, and why:

* The grid comes from the forward's token geometry. The official code takes ``H = W = sqrt(L)``
  of a (B, L, C) sequence, which breaks with a class token; here the patch grid (any aspect) is
  read from ``backbone.geometry`` and the prefix tokens (class, register, prompt tokens) get plain
  LoRA (``B A x``): the experts and the gate see the patch grid only.
* The M expert convolutions are stored as one (M, r, r, 3, 3) weight and one (M, r) bias per layer
  (same values, same gradients: a zero gradient for an expert no image chose). With Adam that is
  not quite the official dynamics: the official per-expert parameters have no gradient in a step
  that routes nothing to them and the optimiser skips them, whereas here their moments keep
  decaying and move them (and AdamW decays them).
* The official ``combine`` returns ``log(sum_chosen exp(Expert(z)))`` (float32), which for top-1
  is ``Expert(z)`` up to rounding (and ``inf`` once an output exceeds ~88); here it is
  ``Expert(z)`` itself.
* Routing groups the samples by expert after one host synchronisation per layer (the official
  dispatcher synchronises several times).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.geometry import GeometryContext, grid_to_tokens, tokens_to_grid
from ..registry import register_adapter
from .base import Adapter, AdapterConfig, SiteWrapper, blocks_of, require
from .hooks import LossContext
from .layers import linear_of
from .lora import WHOLE_SITES

NOISE_EPSILON = 1e-2  # MoEGate.forward's noise_epsilon: the noise std's floor


@dataclass
class ConvLoRAConfig(AdapterConfig):
    r: int = field(default=3, metadata={"help": "rank r of the LoRA bottleneck (channels of the expert convs)"})
    alpha: float = field(default=32.0, metadata={"help": "scaling numerator: the update is (alpha/r) B z'"})
    num_experts: int = field(
        default=8, metadata={"help": "M: convolutional experts, expert m resampling the grid by the factor m"}
    )
    balance_coef: float = field(
        default=1e-2, metadata={"help": "c in the load-balancing loss c * (CV^2(importance) + CV^2(load))"}
    )
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA branch input"})
    targets: tuple[str, ...] = field(
        default=("qkv",), metadata={"help": f"linear sites to adapt, any of {', '.join(WHOLE_SITES)}"}
    )
    blocks: tuple[int, ...] | None = field(
        default=None, metadata={"help": "block indices to adapt (default: every block)"}
    )

    def validate(self) -> None:
        require(self.r >= 1, f"conv_lora option r={self.r}: expected an integer >= 1")
        require(self.num_experts >= 1, f"conv_lora option num_experts={self.num_experts}: expected an integer >= 1")
        require(0.0 <= self.balance_coef < float("inf"),
                f"conv_lora option balance_coef={self.balance_coef}: expected a finite number >= 0")
        require(0.0 <= self.dropout < 1.0, f"conv_lora option dropout={self.dropout}: expected 0 <= dropout < 1")
        require(len(self.targets) > 0, "conv_lora option targets: expected at least one site")
        for target in self.targets:
            require(target in WHOLE_SITES, f"conv_lora target {target!r}: expected one of {WHOLE_SITES}")
        require(len(set(self.targets)) == len(self.targets), f"conv_lora option targets={self.targets}: "
                                                             "expected each site once")


def cv_squared(values: torch.Tensor) -> torch.Tensor:
    """``Var(v) / (mean(v)^2 + 1e-10)`` (unbiased variance), 0 for a single value."""
    values = values.float()
    if values.numel() == 1:
        return values.new_zeros(())
    return values.var() / (values.mean() ** 2 + 1e-10)


class ConvLoRALinear(SiteWrapper):
    """``base(x) + (alpha / r) B (z + Expert_e(z))``, ``z = A x`` on the patch grid, one routed expert
    per image; the load-balancing loss of the last forward is kept in ``balance_loss``."""

    def __init__(self, base_layer: nn.Module, config: ConvLoRAConfig, geometry: GeometryContext):
        super().__init__(base_layer)
        linear = linear_of(base_layer, "conv_lora")
        factory = {"device": linear.weight.device, "dtype": linear.weight.dtype}
        rank, experts = config.r, config.num_experts
        self.geometry = geometry
        self.scaling = config.alpha / rank
        self.balance_coef = config.balance_coef
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.lora_A = nn.Parameter(torch.empty(rank, linear.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(linear.out_features, rank, **factory))
        self.expert_weight = nn.Parameter(torch.empty(experts, rank, rank, 3, 3, **factory))
        self.expert_bias = nn.Parameter(torch.zeros(experts, rank, **factory))
        self.w_gate = nn.Parameter(torch.zeros(rank, experts, **factory))
        self.w_noise = nn.Parameter(torch.zeros(rank, experts, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        with torch.no_grad():
            for expert in self.expert_weight:  # nn.Conv2d's own init, one (r, r, 3, 3) kernel at a time
                nn.init.kaiming_uniform_(expert, a=math.sqrt(5))
        self.balance_loss: torch.Tensor | None = None
        self.last_routing: torch.Tensor | None = None  # the expert index of every image, last forward

    def adapter_tensors(self) -> list[tuple[str, nn.Parameter]]:
        names = ("lora_A", "lora_B", "expert_weight", "expert_bias", "w_gate", "w_noise")
        return [(name, getattr(self, name)) for name in names]

    @property
    def num_experts(self) -> int:
        return self.expert_weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = F.linear(self.dropout(x), self.lora_A)
        if low.dim() == 4:  # (B, H, W, r): SAM's grids and windows hold patches only
            prefix, grid, layout = None, low.permute(0, 3, 1, 2), "BHWC"
        else:
            geometry = self.geometry.current
            prefix, grid = tokens_to_grid(low, geometry)
            layout = geometry.layout
        grid = grid + self.mixture(grid)
        if layout == "BHWC":
            low = grid.permute(0, 2, 3, 1)
        else:
            low = grid_to_tokens(prefix, grid, layout)
        return self.base_layer(x) + F.linear(low, self.lora_B) * self.scaling

    # -- the mixture of experts -----------------------------------------------------------
    def route(self, grid: torch.Tensor) -> torch.Tensor:
        """The expert of every image (top-1 of the noisy logits in training, of the clean ones in
        evaluation); stores the load-balancing loss in ``balance_loss``."""
        features = grid.float().mean(dim=(2, 3))  # the gate runs in float32 under any precision
        clean = features @ self.w_gate.float()
        noisy_training = self.training and self.num_experts > 1
        if noisy_training:
            noise_std = F.softplus(features @ self.w_noise.float()) + NOISE_EPSILON
            logits = clean + torch.randn_like(clean) * noise_std
        else:
            logits = clean
        top_values, top_indices = logits.topk(min(2, self.num_experts), dim=1)
        chosen = top_indices[:, 0]
        importance = torch.bincount(chosen, minlength=self.num_experts).to(clean.dtype)
        if noisy_training:
            load = _probability_in_top1(clean, logits, noise_std, top_values).sum(0)
        else:
            load = importance
        self.balance_loss = self.balance_coef * (cv_squared(importance) + cv_squared(load))
        self.last_routing = chosen.detach()
        return chosen

    def expert(self, index: int, grid: torch.Tensor) -> torch.Tensor:
        """``Down_m(GELU(Conv3x3_m(Up_m(grid))))`` with m = index + 1."""
        factor = index + 1
        size = grid.shape[-2:]
        if factor != 1:
            grid = F.interpolate(grid, scale_factor=factor, mode="bicubic")
        out = F.gelu(F.conv2d(grid, self.expert_weight[index], self.expert_bias[index], padding=1))
        if factor != 1:
            out = F.interpolate(out, size=tuple(size), mode="bicubic")
        return out

    def mixture(self, grid: torch.Tensor) -> torch.Tensor:
        """``Expert_{e(b)}(grid_b)`` for every image b, each run by its routed expert only."""
        chosen = self.route(grid)
        order = torch.argsort(chosen)
        counts = torch.bincount(chosen, minlength=self.num_experts).tolist()  # one host sync
        pieces = grid.index_select(0, order).split(counts)
        outputs = [self.expert(index, piece) for index, piece in enumerate(pieces) if counts[index]]
        return torch.zeros_like(grid).index_copy(0, order, torch.cat(outputs))


def _probability_in_top1(clean: torch.Tensor, noisy: torch.Tensor, noise_std: torch.Tensor,
                         top_values: torch.Tensor) -> torch.Tensor:
    """P(expert m is the top-1 under fresh noise) for every image and expert (``_prob_in_top_k``
    with k = 1): compared with the best other noisy logit, i.e. the second best for the winner and
    the best for the others."""
    threshold_if_in = top_values[:, 1:2]
    threshold_if_out = top_values[:, 0:1]
    is_in = noisy > threshold_if_in
    prob_if_in = torch.special.ndtr((clean - threshold_if_in) / noise_std)
    prob_if_out = torch.special.ndtr((clean - threshold_if_out) / noise_std)
    return torch.where(is_in, prob_if_in, prob_if_out)


class ConvLoRA(Adapter):
    """Conv-LoRA (Zhong et al. 2024): LoRA with a mixture of multi-scale conv experts in its bottleneck"""

    version = 1

    def _attach(self, backbone) -> None:
        config: ConvLoRAConfig = self.config
        self.layers: dict[str, ConvLoRALinear] = {}
        for block in blocks_of(config.blocks, backbone):
            for site in config.targets:
                wrapper = self.wrap_site(site, block, lambda base: ConvLoRALinear(base, config, backbone.geometry))
                self.layers[f"blocks.{block}.{site}"] = wrapper
                for name, tensor in wrapper.adapter_tensors():
                    self.declare(f"blocks.{block}.{site}.{name}", tensor)

    def extra_loss(self, context: LossContext) -> dict[str, torch.Tensor]:
        """The load-balancing loss of the task's forward, summed over the adapted layers."""
        if not self.backbone.training:
            return {}
        terms = [layer.balance_loss for layer in self.layers.values() if layer.balance_loss is not None]
        if not terms:
            return {}
        return {"moe_balance": torch.stack(terms).sum()}

    def inference_params(self) -> int:
        # evaluation routes by the clean logits: the noise matrices only act in training
        return self.trainable_count() - sum(layer.w_noise.numel() for layer in self.layers.values())


register_adapter("conv_lora", ConvLoRAConfig, ConvLoRA)
