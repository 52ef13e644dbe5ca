"""Regularized Mask Tuning: learnable binary masks on frozen weights, with gradient dropout.

Zheng, Wu, Feng, Zhu, Liu, Zhao, Zha, Chen, Shen, "Regularized Mask Tuning: Uncovering Hidden
Knowledge in Pre-trained Vision-Language Models", ICCV 2023 (arXiv:2307.15049). Official code:
github.com/wuw2019/R-AMT (``code/modules/masklayers.py``, ``code/trainers/masktuning.py``,
``code/train.py``, ``code/configs/trainers/MASK/vit_b16.yaml``).

**Mask.** Every chosen frozen linear ``W0`` gets a real-valued score ``S`` of its own shape;
the layer computes

    y = (W0 * B(S)) x + b,      B(S) = 1[S > tau]   (0 where S <= tau)

and ``dL/dS = dL/dB`` (straight-through estimator: the binariser passes its gradient
unchanged, so a masked weight keeps a gradient ``dL/dW * W0`` and can come back). Scores
start at ``init_scale = 1e-2`` everywhere (the official ``'1s'`` init) with ``tau = 5e-3``,
so every mask starts at 1 and the adapted model *is* the frozen one at initialisation.

**Which weights.** The paper first identifies the parameters important to downstream tasks
and selects the multi-head self-attention (hence "R-AMT", attention mask tuning); the official
ViT-B/16 configs mask the attention input projection (our ``qkv``) and output projection
(``attn_out``) of every block, with ``MASK_MLP: False``. ``sites`` and ``blocks`` make the
selection configurable over ``qkv``, ``attn_out``, ``mlp_in``, ``mlp_out``.

**Mask-norm penalty.** The official configs add ``1e-4 * sum_sites ||S_site||_2`` (an L2 norm,
not squared, per score tensor: ``MASK_LOSS: True``, ``LOSS_WEIGHT: 1e-4``) to the task loss.
Its gradient ``norm_weight * S / ||S||_2`` is added in the score hook (below), so the task's
loss and training loop stay untouched.

**Gradient dropout (GDR, paper Eq. 7; ``graddrop_backward_and_update`` in the official
trainer).** Per score element, with ``a`` the gradient of the task loss (plus the penalty) and
``b`` the gradient of a general-knowledge term ``L_gk``:

    P = (sign(a) * (a + b) / (|a| + |b| + 1e-8) + 1) / 2,    U ~ Uniform(0, 1)
    grad = ((1 - lambda) + lambda * 1[P > U]) * a

so ``a`` is always kept where the two gradients agree in sign (P = 1) and is kept with
probability ``|a| / (|a| + |b|)`` where they conflict; ``b`` itself is never applied. With
``lambda = 1`` a dropped gradient is zeroed, with ``lambda < 1`` it is scaled by ``1 - lambda``.
Officially ``L_gk = T^2 KL(p_zs || p)`` between the zero-shot CLIP prediction ``p_zs`` of the
frozen image encoder and the masked model's prediction ``p``, both softmaxes of
``100 * cos(image feature, class text embedding) / T`` with ``T = 1``.

Departure (no text encoder here). Our backbones have no text tower, and the task head is
trained with the masks, so there is no zero-shot classifier to compare. The general-knowledge
term keeps the official form (``T^2`` KL between frozen and adapted softmax predictions of
logit-scaled cosines, scale 100, ``T = 1``) with the frozen backbone's pooled features of the
images in the batch as the class embeddings: the instance classifier CLIP itself is
pre-trained with, where each image is its own class,

    p_i = softmax_j(s * cos(f_i, f0_j) / T),   p0_i = softmax_j(s * cos(f0_i, f0_j) / T),
    L_gk = T^2 * mean_i KL(p0_i || p_i),

``f`` the adapted and ``f0`` the frozen pooled features (``backbone(images)``). It measures
how far the masks move each image's feature relative to the other images of the batch, as
the zero-shot logits measured it relative to the class prompts (a batch of 1 gives
``L_gk = 0``: nothing is dropped).

Hooks (no change to the training loop). A forward hook on the backbone, active only in
training mode with gradients enabled, runs the frozen model on the same images (masks off,
eval mode, no grad: the official teacher pass), computes ``L_gk`` and its gradient ``b`` with
respect to every score (``autograd.grad`` with the graph retained: the official code's first of
two backward passes). A gradient hook on each score tensor then turns the task gradient into
the GDR gradient above; ``U`` comes from torch's global RNG, so ``torch.manual_seed`` makes it
reproducible. Cost with ``gdr``: one extra no-grad forward and one extra backward per step,
as in the official code. Only ``backbone(images)`` (pooled) triggers the hook; a task that
calls ``forward_features`` directly trains with the mask-norm penalty but no dropout.

Checkpoints store the binary masks packed 8 per byte (the official ``save_model`` stores the
binarised masks as bytes too), so the file shows the method's real 1-bit size; loading sets
kept scores to ``init_scale`` and masked ones to 0 (officially 1 and 0: same masks, but ours
can be tuned further like fresh ones). ``merge()`` writes ``W0 * B(S)`` into the weights
exactly and removes wrappers and hooks. ``masked_fraction()`` is the official "sparsity": the
fraction of masked-site weights whose mask is 0.

Defaults (official ViT-B/16 few-shot config; the paper has no VTAB-1k setting): ``tau = 5e-3``,
``init_scale = 1e-2``, ``norm_weight = 1e-4``, ``gdr_lambda = 1.0`` (``GDR_LAMBDA`` default;
the README uses 0.3 on 16-shot datasets other than ImageNet, SUN397 and Food101),
``gdr_temperature = 1``, ``gdr_logit_scale = 100`` (CLIP's). Training recipe there (the
runner's business, not the adapter's): Adam, lr 8e-5, no weight decay, cosine, 30 epochs,
batch 32. Also departing from the official code: its ViT additionally masks the patch-embedding
convolution (``conv1``), which is not among the linear sites here; the official teacher's
features are CLIP's projected ones, ours the backbone's pooled ones.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AdaptbenchError
from ..registry import register_adapter
from .base import Adapter, AdapterConfig, SiteWrapper, blocks_of, require
from .bits import pack_bits, unpack_bits

MASKABLE_SITES = ("qkv", "attn_out", "mlp_in", "mlp_out")
PAPER_SITES = ("qkv", "attn_out")  # the MHSA weights (official MASK_MLP: False)
GDR_EPSILON = 1e-8  # the official graddrop epsilon


@dataclass
class MaskTuningConfig(AdapterConfig):
    sites: tuple[str, ...] = field(
        default=PAPER_SITES,
        metadata={"help": f"linear sites whose weights get masks, any of {', '.join(MASKABLE_SITES)} "
                          "(default: the paper's multi-head self-attention, qkv and attn_out)"},
    )
    blocks: tuple[int, ...] | None = field(
        default=None, metadata={"help": "block indices to mask (default: every block)"}
    )
    threshold: float = field(default=5e-3, metadata={"help": "tau: a weight is kept where its score > tau"})
    init_scale: float = field(
        default=1e-2, metadata={"help": "initial value of every score (> threshold: every mask starts at 1)"}
    )
    norm_weight: float = field(
        default=1e-4, metadata={"help": "weight of the penalty sum over sites of ||scores||_2 (0: off)"}
    )
    gdr: bool = field(default=True, metadata={"help": "gradient dropout regularisation on the score gradients"})
    gdr_lambda: float = field(
        default=1.0, metadata={"help": "lambda in [0, 1]: a dropped gradient is scaled by 1 - lambda"}
    )
    gdr_temperature: float = field(
        default=1.0, metadata={"help": "temperature T of the general-knowledge KL term"}
    )
    gdr_logit_scale: float = field(
        default=100.0, metadata={"help": "scale of the cosine logits of the general-knowledge term (CLIP's 100)"}
    )

    def validate(self) -> None:
        require(len(self.sites) > 0, "mask_tuning option sites: expected at least one site")
        for site in self.sites:
            require(site in MASKABLE_SITES, f"mask_tuning site {site!r}: expected one of {MASKABLE_SITES}")
        require(len(set(self.sites)) == len(self.sites), f"mask_tuning option sites={self.sites}: a site is repeated")
        require(self.threshold >= 0, f"mask_tuning option threshold={self.threshold}: expected >= 0")
        require(self.init_scale > self.threshold,
                f"mask_tuning option init_scale={self.init_scale}: expected > threshold={self.threshold}, "
                "so that every mask starts at 1 (the frozen model)")
        require(self.norm_weight >= 0, f"mask_tuning option norm_weight={self.norm_weight}: expected >= 0")
        require(0.0 <= self.gdr_lambda <= 1.0,
                f"mask_tuning option gdr_lambda={self.gdr_lambda}: expected 0 <= lambda <= 1")
        require(self.gdr_temperature > 0, f"mask_tuning option gdr_temperature={self.gdr_temperature}: expected > 0")
        require(self.gdr_logit_scale > 0, f"mask_tuning option gdr_logit_scale={self.gdr_logit_scale}: expected > 0")


class _StraightThroughBinarize(torch.autograd.Function):
    """``1[scores > threshold]`` forward; the gradient passes through unchanged."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, threshold: float) -> torch.Tensor:
        return (scores > threshold).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output, None


class MaskedLinear(SiteWrapper):
    """``F.linear(x, W0 * 1[scores > threshold], b)`` over a frozen linear."""

    def __init__(self, base_layer: nn.Linear, threshold: float, init_scale: float):
        super().__init__(base_layer)
        self.threshold = threshold
        # float32 whatever the backbone's dtype: scores near 1e-2 move by steps of ~1e-5
        # (the paper's lr 8e-5), which half precision would round away.
        self.scores = nn.Parameter(
            torch.full(base_layer.weight.shape, init_scale, dtype=torch.float32, device=base_layer.weight.device)
        )
        self.masking = True  # False while the adapter runs the frozen model (teacher pass)

    def binary_mask(self) -> torch.Tensor:
        return _StraightThroughBinarize.apply(self.scores, self.threshold)

    def masked_weight(self) -> torch.Tensor:
        weight = self.base_layer.weight
        return weight * self.binary_mask().to(weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.masking:
            return self.base_layer(x)
        return F.linear(x, self.masked_weight(), self.base_layer.bias)

    def merged_module(self) -> nn.Linear:
        self.base_layer.weight.data.copy_(self.masked_weight().detach())
        return self.base_layer


def gradient_dropout(task_grad: torch.Tensor, general_grad: torch.Tensor, strength: float) -> torch.Tensor:
    """The paper's GDR: keep ``task_grad`` where ``P > U`` and scale it by ``1 - strength``
    elsewhere; ``P`` is 1 where the two gradients agree in sign, ``|a| / (|a| + |b|)`` where
    they conflict. ``U`` is drawn from torch's global RNG."""
    a, b = task_grad, general_grad
    keep_probability = (torch.sign(a) * (a + b) / (a.abs() + b.abs() + GDR_EPSILON) + 1) / 2
    kept = (keep_probability > torch.rand_like(a)).to(a.dtype)
    return ((1.0 - strength) + strength * kept) * a


def general_knowledge_loss(features: torch.Tensor, frozen_features: torch.Tensor,
                           logit_scale: float, temperature: float) -> torch.Tensor:
    """``T^2 mean_i KL(p0_i || p_i)`` with ``p_i = softmax_j(s cos(f_i, f0_j) / T)`` and
    ``p0_i = softmax_j(s cos(f0_i, f0_j) / T)``: the frozen features of the batch stand in for
    CLIP's class text embeddings (see the module docstring)."""
    prototypes = F.normalize(frozen_features.detach().flatten(1).float(), dim=-1)
    adapted = F.normalize(features.flatten(1).float(), dim=-1)
    log_p = F.log_softmax(logit_scale * adapted @ prototypes.T / temperature, dim=-1)
    log_p0 = F.log_softmax(logit_scale * prototypes @ prototypes.T / temperature, dim=-1)
    return F.kl_div(log_p, log_p0, reduction="batchmean", log_target=True) * temperature**2


def _stored_name(score_name: str) -> str:
    return score_name.removesuffix(".scores") + ".mask_bits"


class MaskTuning(Adapter):
    """Regularized Mask Tuning (Zheng et al. 2023): binary masks on frozen weights"""

    mergeable = True  # W0 * B(S) is written into the weight

    def __init__(self, config: MaskTuningConfig | None = None):
        super().__init__(config)
        self._masks: dict[str, MaskedLinear] = {}  # declared score name -> wrapper (kept after merge)
        self._general_grads: dict[str, torch.Tensor] = {}
        self._collecting_general_grads = False
        self._in_frozen_pass = False
        self._forward_hook = None

    def _attach(self, backbone) -> None:
        config: MaskTuningConfig = self.config
        for block in blocks_of(config.blocks, backbone):
            for site in config.sites:
                wrapper = self.wrap_site(
                    site, block, lambda base: MaskedLinear(base, config.threshold, config.init_scale)
                )
                name = f"blocks.{block}.{site}.scores"
                self.declare(name, wrapper.scores)
                self._masks[name] = wrapper
                wrapper.scores.register_hook(functools.partial(self._regularised_gradient, name))
        if config.gdr:
            self._forward_hook = backbone.register_forward_hook(self._record_general_grads, with_kwargs=True)

    # -- gradient dropout ---------------------------------------------------------------
    def _record_general_grads(self, backbone, args, kwargs, output) -> None:
        """Forward hook: the gradient of the general-knowledge term w.r.t. every score."""
        if not (backbone.training and torch.is_grad_enabled() and output.requires_grad):
            return
        if self._in_frozen_pass or self.merged:
            return
        with self._frozen_model(backbone), torch.no_grad():
            frozen = backbone(*args, **kwargs)
        config: MaskTuningConfig = self.config
        loss = general_knowledge_loss(output, frozen, config.gdr_logit_scale, config.gdr_temperature)
        names = list(self._masks)
        self._collecting_general_grads = True
        try:
            grads = torch.autograd.grad(loss, [self._masks[n].scores for n in names],
                                        retain_graph=True, allow_unused=True)
        finally:
            self._collecting_general_grads = False
        self._general_grads = {n: g for n, g in zip(names, grads) if g is not None}

    @contextmanager
    def _frozen_model(self, backbone):
        """The backbone without masks, in eval mode (the official teacher pass)."""
        modes = [(module, module.training) for module in backbone.modules()]
        self._in_frozen_pass = True
        for wrapper in self._masks.values():
            wrapper.masking = False
        backbone.eval()
        try:
            yield
        finally:
            for module, mode in modes:
                module.training = mode
            for wrapper in self._masks.values():
                wrapper.masking = True
            self._in_frozen_pass = False

    def _regularised_gradient(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        """Score hook: task gradient + mask-norm penalty gradient, then gradient dropout."""
        wrapper = self._masks[name]
        if self._collecting_general_grads or not wrapper.training:
            return grad
        task_grad = grad + self._norm_penalty_grad(wrapper.scores)
        general_grad = self._general_grads.pop(name, None)
        if general_grad is None:
            return task_grad
        return gradient_dropout(task_grad, general_grad, self.config.gdr_lambda)

    def _norm_penalty_grad(self, scores: torch.Tensor) -> torch.Tensor | float:
        """d(norm_weight * ||S||_2)/dS = norm_weight * S / ||S||_2 (0 where S = 0)."""
        norm = torch.linalg.vector_norm(scores.detach())
        if self.config.norm_weight == 0 or norm == 0:
            return 0.0
        return self.config.norm_weight * scores.detach() / norm

    # -- reporting ----------------------------------------------------------------------
    @torch.no_grad()
    def masked_fraction(self) -> float:
        """Fraction of the masked sites' weights whose binary mask is 0 (also after merge)."""
        threshold = self.config.threshold
        masked = sum(int((w.scores <= threshold).sum()) for w in self._masks.values())
        total = sum(w.scores.numel() for w in self._masks.values())
        return masked / total if total else 0.0

    def stats(self) -> dict[str, float]:
        return {"masked_fraction": self.masked_fraction()}

    # -- merging ------------------------------------------------------------------------
    def _merge(self) -> None:
        super()._merge()
        if self._forward_hook is not None:
            self._forward_hook.remove()
            self._forward_hook = None
        self._general_grads.clear()

    # -- state: the binary masks, 1 bit a weight ----------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        scores = super().state_tensors()  # refuses once merged
        return {_stored_name(n): pack_bits(s > self.config.threshold) for n, s in scores.items()}

    @torch.no_grad()
    def load_state_tensors(self, tensors: dict[str, torch.Tensor], source: str = "") -> None:
        expected = self.check_stored_names(tensors, source)
        for name, wrapper in self._masks.items():
            stored, packed = _stored_name(name), tensors[_stored_name(name)]
            if packed.dtype != torch.uint8 or packed.shape != expected[stored].shape:
                raise AdaptbenchError(
                    f"adapter checkpoint {source}: tensor {stored!r} is {packed.dtype} of shape "
                    f"{tuple(packed.shape)}, expected uint8 packed bits of shape {tuple(expected[stored].shape)}"
                )
            kept = unpack_bits(packed.to(wrapper.scores.device), wrapper.scores.shape)
            wrapper.scores.copy_(torch.where(kept, self.config.init_scale, 0.0))


register_adapter("mask_tuning", MaskTuningConfig, MaskTuning)
