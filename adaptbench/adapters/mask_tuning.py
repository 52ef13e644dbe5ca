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
not squared, per score tensor: ``MASK_LOSS: True``, ``LOSS_WEIGHT: 1e-4``; ``RegLoss(param, 2)``
in ``code/loss/reg_loss.py``, summed over every ``mask_real`` in ``forward_backward``) to the
task loss. :meth:`MaskTuning.extra_loss` returns it as ``mask_norm``, so the task adds it to its
loss and it reaches the scores through the ordinary backward (gradient
``norm_weight * S / ||S||_2``).

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
``100 * cos(image feature, class text embedding) / T`` with ``T = 1`` (``KLLoss`` in
``code/trainers/masktuning.py`` L228-242, called at L321-325 with the frozen encoder's logits
``original_forward`` L202-208, writes it as the cross-entropy ``-T^2 sum p_zs log p``, which
differs from the KL by the teacher's entropy: the same gradient).

With a text head (``LossContext.head`` offering ``zero_shot_classifier()``: ``zeroshot_text``,
``text_linear``, ``coop``, ``clip_adapter``, ``tip_adapter``, ``text_lora`` on a CLIP backbone)
the term is the official one, with the head's class text embeddings ``t_c`` and logit scale
``s`` (CLIP's, 100 for OpenAI's weights):

    p_zs_i = softmax_c(s cos(f0_i, t_c) / T),   p_i = softmax_c(s cos(f_i, t_c) / T),
    L_gk = T^2 * mean_i KL(p_zs_i || p_i),

``f0`` the frozen and ``f`` the masked model's pooled (projected) image features. The class
embeddings are the prompt ensemble of the task's templates (``tasks/text_heads.py``: mean of
normalised template embeddings), where the official ``TextEncoder`` normalises the mean of
unnormalised ones (``masktuning.py`` L74-89): the same with one template.

Departure (no text classifier). With any other head (a linear probe, timm backbones, no text
tower) there is no zero-shot classifier to compare. The general-knowledge term then keeps the
official form (``T^2`` KL between frozen and adapted softmax predictions of logit-scaled
cosines, scale ``gdr_logit_scale`` = 100, ``T = 1``) with the frozen backbone's pooled features
of the images in the batch as the class embeddings: the instance classifier CLIP itself is
pre-trained with, where each image is its own class,

    p_i = softmax_j(s * cos(f_i, f0_j) / T),   p0_i = softmax_j(s * cos(f0_i, f0_j) / T),
    L_gk = T^2 * mean_i KL(p0_i || p_i),

``f`` the adapted and ``f0`` the frozen pooled features (``backbone(images)``). It measures
how far the masks move each image's feature relative to the other images of the batch, as
the zero-shot logits measured it relative to the class prompts (a batch of 1 gives
``L_gk = 0``: nothing is dropped).

Where each piece runs (the training hooks of ``adapters/hooks.py``, which every task kind
calls). The official ``graddrop_backward_and_update`` backpropagates ``L_gk`` once to read
``b``, then the task loss plus the penalty to read ``a``, and rewrites each score's gradient
before the optimiser step. Here:

* a forward hook on the backbone, active only in training mode with gradients enabled, only
  *records* the inputs and the adapted pooled features ``f`` of the task's forward (computing
  nothing: the features exist only inside that forward, and a task's loss context holds the
  head's logits, not them);
* :meth:`MaskTuning.extra_loss` runs the frozen model on the recorded inputs (masks off, eval
  mode, no grad: the official teacher pass), computes ``L_gk`` (against the head's zero-shot
  classifier when ``context.head`` has one, else the instance classifier) and its gradient ``b`` with
  respect to every score (``autograd.grad`` with the graph retained: the official first
  backward), and returns the mask-norm penalty;
* the task's backward of its loss plus ``mask_norm`` gives each score its ``a``; a gradient hook
  on each score tensor turns it into the GDR gradient above. ``U`` comes from torch's global
  RNG, so ``torch.manual_seed`` makes it reproducible.

Cost with ``gdr``: one extra no-grad forward and one extra backward per step, as in the
official code. A loop that never calls ``extra_loss`` trains the masks with the plain
straight-through gradient (no penalty, nothing dropped); so does a task that calls
``forward_features`` instead of ``backbone(images)`` (the pooled forward the hook records).
Under a loss scaler (``16-mixed`` precision) ``a`` reaches the score hooks multiplied by the
scale and ``b`` does not, which biases ``P`` towards keeping ``a``: train GDR in 32-bit or bf16.

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
convolution (``conv1``), which is not among the linear sites here. The features compared are
the backbone's pooled ones: CLIP's projected embedding on CLIP backbones (the official ones),
which the text term needs.
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
from .hooks import LossContext

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
        default=100.0, metadata={"help": "scale of the cosine logits of the general-knowledge term without a "
                                         "text head (CLIP's 100; a text head's own logit scale is used otherwise)"}
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


def zero_shot_knowledge_loss(features: torch.Tensor, frozen_features: torch.Tensor, class_embeddings: torch.Tensor,
                             logit_scale: float, temperature: float) -> torch.Tensor:
    """The official ``L_gk = T^2 mean_i KL(p_zs_i || p_i)``: ``p_zs_i = softmax_c(s cos(f0_i, t_c) / T)``
    (the frozen model's zero-shot prediction) and ``p_i`` the same with the adapted ``f_i``."""
    classes = F.normalize(class_embeddings.detach().float().to(features.device), dim=-1)
    adapted = F.normalize(features.flatten(1).float(), dim=-1)
    frozen = F.normalize(frozen_features.detach().flatten(1).float(), dim=-1)
    log_p = F.log_softmax(logit_scale * adapted @ classes.T / temperature, dim=-1)
    log_p_zs = F.log_softmax(logit_scale * frozen @ classes.T / temperature, dim=-1)
    return F.kl_div(log_p, log_p_zs, reduction="batchmean", log_target=True) * temperature**2


def _zero_shot_of(head) -> tuple[torch.Tensor, float] | None:
    """The head's zero-shot text classifier, or None (no head, or not a text head)."""
    offer = getattr(head, "zero_shot_classifier", None)
    return offer() if callable(offer) else None


def _stored_name(score_name: str) -> str:
    return score_name.removesuffix(".scores") + ".mask_bits"


class MaskTuning(Adapter):
    """Regularized Mask Tuning (Zheng et al. 2023): binary masks on frozen weights"""

    mergeable = True  # W0 * B(S) is written into the weight
    fp32_state = "its scores (near 1e-2) take updates near 1e-5, which half precision rounds away"
    # 2: the penalty is a loss term and L_gk is computed in extra_loss; 3: L_gk against a text
    # head's zero-shot classifier when the head has one
    version = 3

    def __init__(self, config: MaskTuningConfig | None = None):
        super().__init__(config)
        self._masks: dict[str, MaskedLinear] = {}  # declared score name -> wrapper (kept after merge)
        self._general_grads: dict[str, torch.Tensor] = {}  # b of this step, consumed by the score hooks
        self._recorded: tuple | None = None  # (args, kwargs, pooled features) of the last training forward
        self._collecting_general_grads = False
        self._in_frozen_pass = False
        self._handles: list = []

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
                if config.gdr:
                    self._handles.append(wrapper.scores.register_hook(functools.partial(self._dropped_gradient, name)))
        if config.gdr:
            self._handles.append(backbone.register_forward_hook(self._record_features, with_kwargs=True))

    # -- the training hooks -------------------------------------------------------------
    def extra_loss(self, context: LossContext) -> dict[str, torch.Tensor]:
        """The mask-norm penalty; with ``gdr``, also prepares this step's ``b`` for the score hooks."""
        if self.merged:
            return {}
        if self.config.gdr:
            self._general_grads = self._general_knowledge_grads(_zero_shot_of(context.head))
        if self.config.norm_weight == 0:
            return {}
        return {"mask_norm": self.config.norm_weight * self.mask_norm()}

    def mask_norm(self) -> torch.Tensor:
        """``sum_sites ||S_site||_2`` (unsquared L2 norm of each score tensor)."""
        return torch.stack([torch.linalg.vector_norm(w.scores) for w in self._masks.values()]).sum()

    def on_train_batch_end(self, step: int) -> None:
        self._forget_step()

    def _forget_step(self) -> None:
        """Nothing of a finished step may leak into the next one's gradients (or keep its graph)."""
        self._general_grads.clear()
        self._recorded = None

    # -- gradient dropout ---------------------------------------------------------------
    def _record_features(self, backbone, args, kwargs, output) -> None:
        """Forward hook: remember the training forward's inputs and pooled features."""
        if backbone.training and torch.is_grad_enabled() and output.requires_grad and not self._in_frozen_pass:
            self._recorded = (args, kwargs, output)

    def _general_knowledge_grads(self, zero_shot: tuple[torch.Tensor, float] | None = None) -> dict[str, torch.Tensor]:
        """``b``: the gradient of ``L_gk`` w.r.t. every score, for the recorded forward; against
        ``zero_shot`` = (class text embeddings, logit scale) when given."""
        recorded, self._recorded = self._recorded, None
        if recorded is None:
            return {}
        args, kwargs, features = recorded
        with self._frozen_model(self.backbone), torch.no_grad():
            frozen = self.backbone(*args, **kwargs)
        config: MaskTuningConfig = self.config
        if zero_shot is not None:
            class_embeddings, logit_scale = zero_shot
            loss = zero_shot_knowledge_loss(features, frozen, class_embeddings, float(logit_scale),
                                            config.gdr_temperature)
        else:
            loss = general_knowledge_loss(features, frozen, config.gdr_logit_scale, config.gdr_temperature)
        names = list(self._masks)
        self._collecting_general_grads = True  # the score hooks must pass b through untouched
        try:
            # the graph is kept for the task's own backward through the same forward
            grads = torch.autograd.grad(loss, [self._masks[n].scores for n in names],
                                        retain_graph=True, allow_unused=True)
        finally:
            self._collecting_general_grads = False
        return {n: g for n, g in zip(names, grads) if g is not None}

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

    def _dropped_gradient(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        """Score hook: GDR of ``a`` (the score's whole gradient: task loss + penalty) given ``b``."""
        if self._collecting_general_grads or not self._masks[name].training:
            return grad
        general_grad = self._general_grads.pop(name, None)
        if general_grad is None:  # extra_loss did not run for this step: nothing to drop against
            return grad
        return gradient_dropout(grad, general_grad, self.config.gdr_lambda)

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
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._forget_step()

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
