"""CLIP adaptation methods that live in the head: CoOp, CLIP-Adapter, Tip-Adapter(-F), CLIP-LoRA's text side.

Each head reads the pooled, *projected* image feature (the CLIP embedding,
``backbone.anatomy.feature_dim``; the clip family keeps the projection by default) and returns
class logits ``logit_scale * cos(image feature, class text feature)`` plus what the method adds.
``logit_scale`` is the model's learnt temperature, exp'ed (100 for OpenAI's CLIP, which the
official code hard-codes as ``100.`` or reads as ``clip_model.logit_scale.exp()``).

=================  ======================================  ===================================
head               trains                                   text side
=================  ======================================  ===================================
``coop``           M context vectors (x C with ``csc``)     frozen tower in the head, run on the
                                                            learnt prompts every training step
``clip_adapter``   Linear(D, D/4)-ReLU-Linear(D/4, D)-ReLU  the frozen zero-shot classifier
``tip_adapter``    nothing; ``finetune``: the cache keys    the frozen zero-shot classifier
``text_lora``      LoRA on the text blocks' q, k, v         tower in the head, class features
                                                            re-encoded every training step
=================  ======================================  ===================================

CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024) is ``text_lora`` plus our ``lora`` adapter on the
image tower with CLIP-LoRA's numbers (see :func:`text_lora`).

Heads that run a text tower (``coop``, ``text_lora``) hold it as ``head.text`` and declare
``frozen_prefixes``: its frozen weights are rebuilt from the backbone's, so adapter checkpoints
keep only what was trained (the context vectors; the LoRA factors). In evaluation mode with
gradients off they encode the class prompts once and reuse the features until the head goes
back to training, moves, or loads a state (:class:`_TextTowerHead`). Every head offers
``zero_shot_classifier()`` (the prompt ensemble of the task's templates on the frozen tower),
which mask tuning's general-knowledge term reads.

All four train with the runner's optimiser (AdamW, linear warm-up + cosine, the run's lr):
each docstring gives the official recipe so that a spec can follow it, and where the official
optimiser is not AdamW (CoOp's SGD) says so.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters.base import AdapterConfig, require
from ..adapters.lora import LoRAConfig, LoRALinear
from ..backbones.anatomy import CANONICAL_SITE_PATHS, QKV_PARTS, qkv_rows
from ..errors import AdaptbenchError
from ..registry import register_head
from .text_heads import prompt_ensemble, task_prompts, zero_shot_embeddings

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")
CONTEXT_INIT_STD = 0.02  # CoOp trainers/coop.py:90


# -- shared pieces -----------------------------------------------------------------------------
def _cosine_logits(features: torch.Tensor, class_features: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """``logit_scale * normalize(features) @ class_features.T`` (class features already unit norm)."""
    return logit_scale * F.normalize(features, dim=-1) @ class_features.to(features.dtype).T


def _text_tower(backbone):
    """The backbone's frozen text tower, whose embedding must be the image feature's width."""
    tower = backbone.text_tower()  # NotApplicable (n/a) on a backbone without one
    if tower.embed_dim != backbone.anatomy.feature_dim:
        raise AdaptbenchError(f"backbone {backbone.name!r}: its text features have {tower.embed_dim} dimensions, "
                              f"its image features {backbone.anatomy.feature_dim}; keep the projection "
                              f"(backbone option keep_projection: true)")
    return tower


def _ensemble(features: torch.Tensor, num_classes: int) -> torch.Tensor:
    """CLIP's prompt ensemble of (C * T, D) class-major features, differentiably: per class the
    normalised mean of the normalised template features (``text_heads.prompt_ensemble``)."""
    features = F.normalize(features, dim=-1)
    if features.shape[0] == num_classes:
        return features
    return F.normalize(features.reshape(num_classes, -1, features.shape[-1]).mean(dim=1), dim=-1)


def _token_counts(tokens: torch.Tensor) -> torch.Tensor:
    """Tokens of each row between start- and end-of-text (open_clip pads with 0)."""
    return (tokens != 0).sum(dim=-1) - 2


class _TextTowerHead(nn.Module):
    """A head that encodes its class prompts with its own text tower (``self.text``).

    Training, or any forward with gradients on, encodes them anew; in evaluation mode with
    gradients off the features are computed once and kept until :meth:`train`, a device or
    dtype move, or a state load (what changes them)."""

    def __init__(self, tower: nn.Module, class_names: tuple[str, ...], templates: tuple[str, ...]):
        super().__init__()
        self.text = tower
        self.logit_scale = float(tower.logit_scale)
        self.class_names = tuple(class_names)
        self.templates = tuple(templates)
        self._eval_features: torch.Tensor | None = None
        # the frozen tower's prompt ensemble, made on first request (moves with the module)
        self.register_buffer("zero_shot_embeddings", None, persistent=False)

    def encode_classes(self) -> torch.Tensor:
        """(C, D) unit-norm class text features as the head stands."""
        raise NotImplementedError

    def class_features(self) -> torch.Tensor:
        if self.training or torch.is_grad_enabled():
            return self.encode_classes()
        if self._eval_features is None:
            self._eval_features = self.encode_classes()
        return self._eval_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return _cosine_logits(features, self.class_features(), self.logit_scale)

    def zero_shot_classifier(self) -> tuple[torch.Tensor, float]:
        if self.zero_shot_embeddings is None:
            self.zero_shot_embeddings = self._frozen_prompt_ensemble()
        return self.zero_shot_embeddings, self.logit_scale

    def _frozen_prompt_ensemble(self) -> torch.Tensor:
        """The task's zero-shot classifier on the frozen tower (``text_heads.prompt_ensemble``)."""
        was_training = self.text.training
        self.text.eval()
        try:
            embeddings = prompt_ensemble(self.text, self.class_names, self.templates)
            return embeddings.to(self.text.token_embedding.weight.device)
        finally:
            self.text.train(was_training)

    # what invalidates the evaluation features
    def train(self, mode: bool = True):
        self._eval_features = None
        return super().train(mode)

    def _apply(self, *args, **kwargs):
        self._eval_features = None
        return super()._apply(*args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._eval_features = None
        return super()._load_from_state_dict(*args, **kwargs)


# -- CoOp ----------------------------------------------------------------------------------------
@dataclass
class CoOpConfig(AdapterConfig):
    n_ctx: int = field(default=16, metadata={
        "help": "M, the number of learnable context vectors (with ctx_init: the phrase's token count instead)"})
    ctx_init: str = field(default="", metadata={
        "help": "initialise the context from this phrase's token embeddings (e.g. 'a photo of a'; "
                "'_' reads as a space); empty: N(0, 0.02) vectors"})
    csc: bool = field(default=False, metadata={
        "help": "class-specific context: one set of context vectors per class (default: one shared set)"})
    class_token_position: str = field(default="end", metadata={
        "help": "where the class name goes: end ('X X X X name.'), middle or front"})

    def validate(self) -> None:
        require(self.n_ctx >= 1, f"head coop option n_ctx={self.n_ctx}: expected an integer >= 1")
        require(self.class_token_position in CLASS_TOKEN_POSITIONS,
                f"head coop option class_token_position={self.class_token_position!r}: expected one of "
                f"{', '.join(CLASS_TOKEN_POSITIONS)}")
        require("{" not in self.ctx_init and "}" not in self.ctx_init,
                f"head coop option ctx_init={self.ctx_init!r}: expected a plain phrase (the class name is "
                f"placed by class_token_position, not by a '{{}}')")


class CoOpHead(_TextTowerHead):
    """CoOp's prompt learner (see :func:`coop`): learnt context vectors, frozen text tower."""

    frozen_prefixes: ClassVar[tuple[str, ...]] = ("text.",)

    def __init__(self, tower: nn.Module, class_names: tuple[str, ...], templates: tuple[str, ...],
                 config: CoOpConfig):
        super().__init__(tower, class_names, templates)
        num_classes, width = len(class_names), tower.width
        with torch.no_grad():
            if config.ctx_init:
                phrase = config.ctx_init.replace("_", " ")
                phrase_tokens = tower.tokenize([phrase])
                n_ctx = int(_token_counts(phrase_tokens)[0])
                require(n_ctx >= 1, f"head coop option ctx_init={config.ctx_init!r}: the phrase has no tokens")
                context = tower.token_embedding(phrase_tokens)[0, 1:1 + n_ctx].float()
                if config.csc:
                    context = context.expand(num_classes, -1, -1)
            else:
                n_ctx, phrase = config.n_ctx, " ".join(["X"] * config.n_ctx)
                shape = (num_classes, n_ctx, width) if config.csc else (n_ctx, width)
                context = torch.empty(shape, device=tower.token_embedding.weight.device)
                nn.init.normal_(context, std=CONTEXT_INIT_STD)
            self.ctx = nn.Parameter(context.clone())
            name_lengths = _token_counts(tower.tokenize(list(class_names))).tolist()
            longest = max(name_lengths)
            required = 1 + n_ctx + longest + 2  # start, context, name, '.', end
            if required > tower.context_length:
                raise AdaptbenchError(
                    f"head coop: {n_ctx} context tokens and a class name of {longest} tokens "
                    f"({class_names[name_lengths.index(longest)]!r}) need {required} text positions; "
                    f"backbone's text tower has {tower.context_length} (lower n_ctx)")
            tokens = tower.tokenize([f"{phrase} {name}." for name in class_names])
            embedded = tower.token_embedding(tokens).float()
        self.n_ctx = n_ctx
        self.class_token_position = config.class_token_position
        # rebuilt from the backbone's weights and the class names (CoOp ignores them at load too)
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("token_prefix", embedded[:, :1], persistent=False)  # start of text
        self.register_buffer("token_suffix", embedded[:, 1 + n_ctx:], persistent=False)  # name, '.', end, padding
        order = _prompt_order(config.class_token_position, n_ctx, name_lengths, tokens.shape[1])
        self.register_buffer("order", order, persistent=False)

    def prompts(self) -> torch.Tensor:
        """(C, L, W) prompt embeddings: start, context and suffix, in the configured order."""
        context = self.ctx
        if context.dim() == 2:
            context = context.unsqueeze(0).expand(len(self.class_names), -1, -1)
        end = torch.cat([self.token_prefix, context.to(self.token_prefix.dtype), self.token_suffix], dim=1)
        if self.order is None:
            return end
        return end.gather(1, self.order.unsqueeze(-1).expand(-1, -1, end.shape[-1]))

    def encode_classes(self) -> torch.Tensor:
        return F.normalize(self.text.encode_embedded(self.prompts(), self.tokens), dim=-1)


def _prompt_order(position: str, n_ctx: int, name_lengths: list[int], length: int) -> torch.Tensor | None:
    """Per class, the positions of the 'end' layout [start, ctx, name, '.', end, pad] that make
    the ``position`` layout (None for 'end'): 'middle' is [start, ctx[:M/2], name, ctx[M/2:],
    '.', ...], 'front' [start, name, ctx, '.', ...] (CoOp trainers/coop.py:136-177). The end of
    text stays where it was, so the tokens still locate it."""
    if position == "end":
        return None
    rows = []
    for name_length in name_lengths:
        context = list(range(1, 1 + n_ctx))
        name = list(range(1 + n_ctx, 1 + n_ctx + name_length))
        rest = list(range(1 + n_ctx + name_length, length))
        if position == "middle":
            half = n_ctx // 2
            rows.append([0, *context[:half], *name, *context[half:], *rest])
        else:
            rows.append([0, *name, *context, *rest])
    return torch.tensor(rows, dtype=torch.long)


def coop(backbone, spec, **options) -> nn.Module:
    """CoOp (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022): learnt prompt context.

    Official code: KaiyangZhou/CoOp ``trainers/coop.py`` (PromptLearner L60-182, TextEncoder
    L37-57, CustomCLIP L185-208). The prompt of class c is ``[SOS] v_1 ... v_M [name_c] . [EOS]``
    with M learnt context vectors ``v`` in the token-embedding space (shared by every class, or
    one set per class with ``csc``, L84-89), initialised N(0, 0.02) (L90) or from the token
    embeddings of a phrase (``ctx_init``, L72-80); the class name at the end, in the middle
    (M/2 vectors either side) or at the front (L126-177). The frozen text tower runs the prompt
    embeddings (``TextTower.encode_embedded``: positions, causal blocks, ln_final, end-of-text
    pooling, projection: L46-57); logits = ``logit_scale * cos(image feature, text feature)``
    (L195-208). Only the context is trained; its count is M x W (x C with ``csc``): 16 x 512 =
    8,192 on ViT-B/16 (text width 512).

    Official recipe (``configs/trainers/CoOp/vit_b16*.yaml``, ``scripts/coop/main.sh``, COOP.md;
    Dassl's optimiser defaults): **SGD** (momentum 0.9, weight decay 5e-4), lr 0.002, cosine,
    one warm-up epoch at a constant 1e-5, batch 32; 200 epochs at 8/16 shots, 100 at 2/4 shots,
    50 at 1 shot and on ImageNet; random-resized-crop + flip; M = 16, class token 'end'; fp16.
    Our trainer is AdamW with a linear warm-up: the epochs, lr and batch size can follow CoOp's,
    the optimiser cannot (an AdamW lr equivalent to SGD 0.002 is not known: search it).

    Departures: with ``ctx_init`` every token of the phrase is learnt (CoOp counts words,
    ``len(ctx_init.split(" "))``, and leaves the extra BPE tokens of a multi-token word frozen:
    the same for one-token words such as 'a photo of a'); ``csc`` with ``ctx_init`` gives each
    class its own copy of the phrase (CoOp ignores ``csc`` then); class names are the task's
    (CoOp replaces '_' by ' '); the model stays float32 (the runner's precision applies).
    """
    config = CoOpConfig.from_dict(options, adapter="coop", what="head")
    names, templates = task_prompts(spec)
    return CoOpHead(_text_tower(backbone), names, templates, config)


# -- CLIP-Adapter ----------------------------------------------------------------------------------
@dataclass
class CLIPAdapterConfig(AdapterConfig):
    ratio: float = field(default=0.2, metadata={
        "help": "residual ratio: the feature is ratio * adapter(f) + (1 - ratio) * f (official 0.2)"})
    reduction: int = field(default=4, metadata={"help": "bottleneck reduction: hidden width D / reduction"})

    def validate(self) -> None:
        require(0.0 <= self.ratio <= 1.0, f"head clip_adapter option ratio={self.ratio}: expected 0 <= ratio <= 1")
        require(self.reduction >= 1, f"head clip_adapter option reduction={self.reduction}: expected an integer >= 1")


class CLIPAdapterHead(nn.Module):
    """Residual feature adapter on the image feature, then the frozen zero-shot classifier."""

    def __init__(self, class_embeddings: torch.Tensor, logit_scale: float, config: CLIPAdapterConfig):
        super().__init__()
        dim = class_embeddings.shape[1]
        hidden = max(1, dim // config.reduction)
        self.adapter = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(),
                                     nn.Linear(hidden, dim, bias=False), nn.ReLU())
        self.ratio = config.ratio
        self.logit_scale = logit_scale
        # rebuilt from the backbone and the task: not part of the trained state
        self.register_buffer("class_embeddings", class_embeddings.clone(), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        mixed = self.ratio * self.adapter(features) + (1.0 - self.ratio) * features
        return _cosine_logits(mixed, self.class_embeddings, self.logit_scale)

    def zero_shot_classifier(self) -> tuple[torch.Tensor, float]:
        return self.class_embeddings, self.logit_scale


def clip_adapter(backbone, spec, **options) -> nn.Module:
    """CLIP-Adapter (Gao et al., "CLIP-Adapter: Better Vision-Language Models with Feature Adapters", 2021).

    Official code: gaopengcuhk/CLIP-Adapter ``clip_adapter.py``. A bottleneck MLP
    ``Linear(D, D/4, bias=False)-ReLU-Linear(D/4, D, bias=False)-ReLU`` (``Adapter``, L55-67)
    on the image feature, mixed with it as ``ratio * adapter(f) + (1 - ratio) * f`` with
    ``ratio = 0.2`` (L100-105), then ``logit_scale * cos`` against the frozen text features of
    the class prompts (L107-115). Trained: the two linears, 2 D^2 / 4 parameters: 131,072 for
    D = 512 (ViT-B/16); the official file hard-codes ``Adapter(1024, 4)`` (RN50's D, L97):
    524,288. The paper also describes a text-side adapter (the same MLP on the class features,
    which doubles the count); the official code has only the visual one, and so do we.

    Official recipe: the CoOp code base (Dassl) and its commands (README L13-14), so CoOp's
    schedule with the optimiser of the config used; the file itself fixes neither lr nor ratio
    search (the paper tunes ratio per dataset). Our trainer is AdamW.

    Departures: the class features are the task's prompt ensemble (``class_text_embeddings``:
    every template, normalised, averaged; the official uses one hand-written template per
    dataset, ``CUSTOM_TEMPLATES`` L18-34, encoded each forward with the frozen tower: the same
    features); float32 instead of the model's dtype.
    """
    config = CLIPAdapterConfig.from_dict(options, adapter="clip_adapter", what="head")
    embeddings, scale = zero_shot_embeddings(backbone, spec)
    return CLIPAdapterHead(embeddings, scale, config)


# -- Tip-Adapter ---------------------------------------------------------------------------------
@dataclass
class TipAdapterConfig(AdapterConfig):
    alpha: float = field(default=1.17, metadata={
        "help": "residual ratio of the cache logits (official init_alpha: 1.17 on ImageNet; 1.17-10 per dataset)"})
    beta: float = field(default=1.0, metadata={
        "help": "sharpness of the affinities exp(-beta (1 - cos)) (official init_beta: 1)"})
    finetune: bool = field(default=False, metadata={
        "help": "Tip-Adapter-F: train the cache keys (default: training-free, run with epochs: 0)"})

    def validate(self) -> None:
        require(self.alpha >= 0, f"head tip_adapter option alpha={self.alpha}: expected >= 0")
        require(self.beta >= 0, f"head tip_adapter option beta={self.beta}: expected >= 0")


class TipAdapterHead(nn.Module):
    """Zero-shot logits plus ``alpha * exp(-beta (1 - f keys^T)) @ one_hot(labels)`` (see :func:`tip_adapter`)."""

    def __init__(self, class_embeddings: torch.Tensor, logit_scale: float, config: TipAdapterConfig):
        super().__init__()
        self.alpha, self.beta, self.finetune = config.alpha, config.beta, config.finetune
        self.logit_scale = logit_scale
        self.num_classes = class_embeddings.shape[0]
        self.register_buffer("class_embeddings", class_embeddings.clone(), persistent=False)
        empty = torch.empty(0, class_embeddings.shape[1])
        # the cache comes from training data: it is the head's saved state
        if config.finetune:
            self.cache_keys = nn.Parameter(empty)
        else:
            self.register_buffer("cache_keys", empty)
        self.register_buffer("cache_labels", torch.empty(0, dtype=torch.long))

    @property
    def prepared(self) -> bool:
        return self.cache_keys.shape[0] > 0

    @torch.no_grad()
    def prepare(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Build the cache from the training split's features: keys = the L2-normalised features,
        values = their one-hot labels (kept as the labels). A cache already built, or loaded
        from a checkpoint (trained keys of Tip-Adapter-F), is kept."""
        if self.prepared:
            return
        if features.shape[0] != labels.shape[0] or features.dim() != 2:
            raise AdaptbenchError(f"head tip_adapter: prepare needs (N, D) features and N labels, got "
                                  f"{tuple(features.shape)} and {tuple(labels.shape)}")
        device = self.class_embeddings.device
        keys = F.normalize(features.detach().float(), dim=-1).to(device)
        self._set_cache(keys, labels.detach().long().to(device))

    def _set_cache(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        if isinstance(self.cache_keys, nn.Parameter):
            self.cache_keys.data = keys  # the same Parameter: an optimiser built before still sees it
        else:
            self.cache_keys = keys
        self.cache_labels = labels

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the cache's size is the training split's: take the stored one
        keys, labels = state_dict.get(prefix + "cache_keys"), state_dict.get(prefix + "cache_labels")
        if keys is not None and labels is not None:
            device = self.class_embeddings.device
            self._set_cache(torch.empty_like(keys, device=device, dtype=torch.float32),
                            torch.empty_like(labels, device=device, dtype=torch.long))
        return super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.prepared:
            raise AdaptbenchError("head tip_adapter has an empty cache: prepare(features, labels) builds it from the "
                                  "training split before any forward")
        features = F.normalize(features, dim=-1)
        clip_logits = self.logit_scale * features @ self.class_embeddings.to(features.dtype).T
        affinity = features @ self.cache_keys.to(features.dtype).T
        weights = torch.exp(-self.beta * (1.0 - affinity))
        # weights @ one_hot(labels), without the (N, C) matrix
        cache_logits = weights.new_zeros(features.shape[0], self.num_classes).index_add(1, self.cache_labels, weights)
        return clip_logits + self.alpha * cache_logits

    def zero_shot_classifier(self) -> tuple[torch.Tensor, float]:
        return self.class_embeddings, self.logit_scale


def tip_adapter(backbone, spec, **options) -> nn.Module:
    """Tip-Adapter (Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification", ECCV 2022).

    Official code: gaopengcuhk/Tip-Adapter ``main.py``, ``utils.py``, ``configs/*.yaml``. A
    key-value cache of the few-shot training set: keys = L2-normalised CLIP image features,
    values = one-hot labels (``build_cache_model``, utils.py L38-71). For a test feature f
    (normalised), ``A = exp(-beta (1 - f keys^T))`` and

        logits = logit_scale * f W^T + alpha * A values                (main.py L36-42)

    with W the zero-shot class embeddings (``clip_classifier``, utils.py L18-35). Tip-Adapter-F
    (``finetune``) makes the keys a trainable linear layer initialised from the cache and trains
    it with the cross-entropy of those logits, everything else frozen (main.py L66-106): N x D
    trainable parameters, N = shots x C (16 x C x 512 at 16 shots on ViT-B/16). The keys are
    not re-normalised while training (as official). Without ``finetune`` nothing trains:
    run with ``epochs: 0``.

    Official recipe: ``init_beta: 1`` everywhere, ``init_alpha`` per dataset (1.17 ImageNet,
    OxfordPets, Food101, SUN397; 2 DTD, EuroSAT; 3 Caltech101, StanfordCars, UCF101; 5
    FGVCAircraft; 10 Flowers102: ``configs/*.yaml`` L20-21), then a grid search (``search_hp``,
    utils.py L99-129: beta over 200 steps of [0.1, search_scale[0]), alpha over 20 of [0.1,
    search_scale[1])). Tip-Adapter-F: AdamW lr 1e-3, eps 1e-4, cosine over every step
    (main.py L72-73), batch 256, 20 epochs (EuroSAT 100), train augmentation random-resized-crop
    (scale 0.5-1) + flip (L173-181).

    Departures: the keys are the training features the runner gives ``prepare`` (one pass, the
    run's own augmentation) where the official averages 10 augmented passes before normalising
    (``augment_epoch: 10``, utils.py L46-60); the values are stored as the labels (the same
    one-hot product, without an N x C matrix). The official main.py searches alpha and beta on
    the validation features but keeps the Tip-Adapter-F epoch with the best *test* accuracy
    (L111-126), and main_imagenet.py searches alpha/beta on the *test* features (L43): here
    alpha and beta are options, searched on validation through the spec grid
    (``grid: {head_options.alpha: [...], head_options.beta: [...]}``), and the runner's protocol
    picks checkpoints. ``prepare`` keeps a cache already built or loaded (trained keys survive).
    """
    config = TipAdapterConfig.from_dict(options, adapter="tip_adapter", what="head")
    embeddings, scale = zero_shot_embeddings(backbone, spec)
    return TipAdapterHead(embeddings, scale, config)


# -- CLIP-LoRA's text side ---------------------------------------------------------------------------
# CLIP-LoRA scales the update by alpha / sqrt(r) (loralib/layers.py L42); ours is alpha / r:
# alpha = sqrt(2) with r = 2 gives its 1 / sqrt(2).
CLIP_LORA_ALPHA = math.sqrt(2.0)


@dataclass
class TextLoRAConfig(LoRAConfig):
    r: int = field(default=2, metadata={"help": "rank of the update B A (CLIP-LoRA: 2)"})
    alpha: float = field(default=CLIP_LORA_ALPHA, metadata={
        "help": "scaling numerator: the update is (alpha/r) B A; default sqrt(2) = CLIP-LoRA's "
                "alpha/sqrt(r) with its alpha 1, r 2"})
    dropout: float = field(default=0.25, metadata={"help": "dropout on the LoRA branch input (CLIP-LoRA: 0.25)"})
    targets: tuple[str, ...] = field(default=QKV_PARTS, metadata={
        "help": "text-block sites to adapt, any of q, k, v, qkv, attn_out, mlp_in, mlp_out (CLIP-LoRA: q, k, v)"})
    blocks: tuple[int, ...] | None = field(default=None, metadata={
        "help": "text block indices to adapt (default: every block)"})
    template: str = field(default="", metadata={
        "help": "one prompt template with '{}' for the class name (CLIP-LoRA: 'a photo of a {}.'); "
                "empty: the task's templates"})

    adapter_name: ClassVar[str] = "head text_lora"

    def validate(self) -> None:
        super().validate()
        require(not self.template or self.template.count("{}") == 1,
                f"head text_lora option template={self.template!r}: expected exactly one '{{}}' for the class name")


class TextLoRAHead(_TextTowerHead):
    """Class text features from a LoRA-adapted text tower, re-encoded every training step."""

    def __init__(self, tower: nn.Module, class_names: tuple[str, ...], templates: tuple[str, ...],
                 config: TextLoRAConfig):
        super().__init__(tower, class_names, templates)
        # the frozen classifier first: the LoRA updates start at 0, but the zero-shot one must
        # stay that of the frozen tower after training
        self.zero_shot_embeddings = self._frozen_prompt_ensemble()
        self.register_buffer("tokens", tower.tokenize([t.format(n) for n in class_names for t in templates]),
                             persistent=False)
        self.wrappers = _wrap_text_blocks(tower, config)

    # the tower's frozen tensors; its LoRA factors are trained, so checkpoints keep them
    frozen_prefixes: ClassVar[tuple[str, ...]] = ("text.",)

    def encode_classes(self) -> torch.Tensor:
        return _ensemble(self.text.encode(self.tokens), len(self.class_names))


def _wrap_text_blocks(tower: nn.Module, config: TextLoRAConfig) -> list[LoRALinear]:
    """Wrap the chosen sites of the text blocks with :class:`LoRALinear` (q, k, v share the fused
    ``qkv``, each with its own factors on its third of the rows, as on the image side)."""
    total = len(tower.blocks)
    indices = range(total) if config.blocks is None else sorted({int(i) % total for i in config.blocks
                                                                 if -total <= int(i) < total})
    if config.blocks is not None and len(indices) != len(set(config.blocks)):
        raise AdaptbenchError(f"head text_lora option blocks={config.blocks}: the text tower has {total} blocks")
    wrappers = []
    for index in indices:
        block = tower.blocks[index]
        per_site: dict[str, dict[str, slice]] = {}
        for target in config.targets:
            site = "qkv" if target in QKV_PARTS else target
            linear = _get(block, CANONICAL_SITE_PATHS[site])
            rows = qkv_rows(target, linear.out_features) if target in QKV_PARTS else slice(0, linear.out_features)
            per_site.setdefault(site, {})[target] = rows
        for site, slices in per_site.items():
            path = CANONICAL_SITE_PATHS[site]
            wrapper = LoRALinear(_get(block, path), slices, config)
            parent, _, attr = path.rpartition(".")
            setattr(_get(block, parent), attr, wrapper)
            wrappers.append(wrapper)
    return wrappers


def _get(module: nn.Module, path: str) -> nn.Module:
    return functools.reduce(getattr, path.split("."), module)


def text_lora(backbone, spec, **options) -> nn.Module:
    """CLIP-LoRA's text side (Zanella & Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models", CVPRW 2024).

    Official code: MaxZanella/CLIP-LoRA ``lora.py``, ``loralib/utils.py``, ``loralib/layers.py``,
    ``run_utils.py``. LoRA on the query, key and value projections of every attention block of
    *both* encoders (``apply_lora``, loralib/utils.py L107-134; ``--params q k v``,
    ``--position all``, ``--encoder both``: run_utils.py L32-34), rank 2, alpha 1, dropout 0.25
    on the LoRA input (run_utils.py L35-37), the update scaled by ``alpha / sqrt(r)``
    (loralib/layers.py L42), A Kaiming-uniform and B = 0 (L63-68). The class features are
    re-encoded through the adapted text tower at every training step (lora.py L94-101) and the
    logits are ``logit_scale * cos`` (L110-113); evaluation encodes them once (L9-32).

    This head is the text side: the frozen text tower with our :class:`LoRALinear` on its
    blocks' fused ``qkv`` (a factor pair per q, k, v), ``(alpha / r) B A`` with the default
    alpha = sqrt(2) reproducing ``1 / sqrt(2)``. The image side is the ``lora`` adapter with
    ``{r: 2, alpha: 1.4142135623730951, dropout: 0.25, targets: [q, k, v]}``. Trainable, ViT-B/16
    (widths 768 image, 512 text, 12 + 12 blocks): 3 x 2 x (2 x 768) x 12 = 110,592 image +
    3 x 2 x (2 x 512) x 12 = 73,728 text = 184,320.

    Official recipe: AdamW lr 2e-4, weight decay 1e-2, betas (0.9, 0.999), cosine to 1e-6 over
    ``500 x shots`` iterations, batch 32, fp16 autocast (lora.py L73-76, run_utils.py L28-30);
    the test set is evaluated once at the end (``VALIDATION = False``, lora.py L37).

    Departures: the prompts are the task's templates (prompt ensemble, re-encoded every step)
    unless ``template`` names one (CLIP-LoRA uses 'a photo of a {}.' for every dataset,
    ``datasets/*.py``); q, k and v share one dropout mask of the input (officially each
    projection draws its own); the evaluation features are recomputed after every return to
    training, as the official evaluation does.
    """
    config = TextLoRAConfig.from_dict(options, adapter="text_lora", what="head")
    names, templates = task_prompts(spec)
    if config.template:
        templates = (config.template,)
    return TextLoRAHead(_text_tower(backbone), names, templates, config)


for _factory, _config in ((coop, CoOpConfig), (clip_adapter, CLIPAdapterConfig), (tip_adapter, TipAdapterConfig),
                          (text_lora, TextLoRAConfig)):
    _factory.config = _config
    _factory.reads = "pooled"

tip_adapter.reads_training_split = True  # built from the k-shot split even untrained (epochs: 0)
register_head("coop", coop)
register_head("clip_adapter", clip_adapter)
register_head("tip_adapter", tip_adapter)
register_head("text_lora", text_lora)
