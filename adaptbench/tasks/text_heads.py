"""Heads made from CLIP's text tower: the zero-shot classifier and PETL_Vision's text-initialised head.

A class embedding is CLIP's prompt ensemble (Radford et al. 2021, section 3.1.4; open_clip's
``build_zero_shot_classifier``): every template filled with the class name, encoded by the text
tower, L2-normalised, averaged over templates and normalised again. Logits are
``logit_scale * cos(image feature, class embedding)`` (``logit_scale`` = the model's learnt
temperature, exp'ed: 100 for OpenAI's CLIP), on the *projected* image feature (the CLIP
embedding: ``keep_projection``, the clip family's default).

The embeddings depend on (backbone, weights, class names, templates) only, so they are
computed once and cached as safetensors under ``$ADAPTBENCH_CACHE/text/v1/``, keyed by the
backbone's name and weights hash, the names and the templates: a run that does not train the
text side never loads the text tower again.

* ``zeroshot_text``: the frozen zero-shot classifier (``epochs: 0`` is zero-shot CLIP; with an
  adapter it is the fixed classifier the image tower is adapted against). ``trainable=true``
  trains the class embeddings from there (a cosine classifier initialised from text).
* ``text_linear``: PETL_Vision's text-initialised head (``build_clip_zs_classifier.py``): a
  linear layer on the unnormalised feature with weight ``logit_scale * class embedding`` and
  bias 0, trained. Before training its predictions are the zero-shot ones (the per-image
  norm does not change an argmax).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters.base import AdapterConfig
from ..errors import AdaptbenchError
from ..registry import register_head

TEXT_CACHE_VERSION = "v1"


# -- prompts --------------------------------------------------------------------------------
def task_prompts(spec) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(class names, templates) of ``spec``, checked: names for every class, one ``{}`` per template."""
    names, templates = tuple(spec.class_names), tuple(spec.templates) or ("a photo of a {}.",)
    if not names:
        raise AdaptbenchError(f"task {spec.name!r} has no class names, which a text head needs; name its "
                              f"classes in the task's data (CoOp split files) or the prompt data files")
    if len(names) != spec.num_classes:
        raise AdaptbenchError(f"task {spec.name!r} has {len(names)} class names for {spec.num_classes} classes")
    for template in templates:
        if template.count("{}") != 1:
            raise AdaptbenchError(f"task {spec.name!r}: prompt template {template!r} must hold exactly one '{{}}' "
                                  f"(where the class name goes)")
    return names, templates


# -- class embeddings ------------------------------------------------------------------------
def class_text_embeddings(backbone, class_names, templates) -> tuple[torch.Tensor, float]:
    """(C, D) normalised prompt-ensemble embeddings and the logit scale, from the cache or
    computed with the backbone's text tower (see the module docstring)."""
    from safetensors.torch import load_file, save_file

    from ..datasets.decoded import cache_root
    from ..files import atomic_path

    path = _cache_path(cache_root(), backbone, class_names, templates)
    if path.is_file():
        stored = load_file(str(path))
        return stored["embeddings"], float(stored["logit_scale"])
    tower = backbone.text_tower()
    embeddings = prompt_ensemble(tower, class_names, templates)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        save_file({"embeddings": embeddings.contiguous(), "logit_scale": torch.tensor(tower.logit_scale)},
                  str(temporary), metadata={"backbone": backbone.name, "classes": json.dumps(list(class_names)),
                                            "templates": json.dumps(list(templates))})
    return embeddings, tower.logit_scale


@torch.no_grad()
def prompt_ensemble(tower, class_names, templates) -> torch.Tensor:
    """CLIP's prompt ensemble: per class, the normalised mean of normalised template embeddings."""
    texts = [template.format(name) for name in class_names for template in templates]
    features = F.normalize(tower.encode_texts(texts).float(), dim=-1)
    per_class = features.reshape(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(per_class, dim=-1).cpu()


def _cache_path(root: Path, backbone, class_names, templates) -> Path:
    identity = json.dumps({"backbone": backbone.name, "weights": backbone.weights_id,
                           "classes": list(class_names), "templates": list(templates)}, sort_keys=True)
    key = hashlib.sha256(identity.encode()).hexdigest()[:24]
    return root / "text" / TEXT_CACHE_VERSION / f"{key}.safetensors"


def zero_shot_embeddings(backbone, spec) -> tuple[torch.Tensor, float]:
    """The zero-shot classifier of ``spec`` on ``backbone``: its class embeddings and logit scale."""
    names, templates = task_prompts(spec)
    embeddings, scale = class_text_embeddings(backbone, names, templates)
    if embeddings.shape[1] != backbone.anatomy.feature_dim:
        raise AdaptbenchError(f"backbone {backbone.name!r}: its text embeddings have {embeddings.shape[1]} "
                              f"dimensions, its image features {backbone.anatomy.feature_dim}; keep the "
                              f"projection (backbone option keep_projection: true)")
    return embeddings, scale


# -- heads -------------------------------------------------------------------------------------
class ZeroShotTextHead(nn.Module):
    """``logit_scale * normalize(feature) @ normalize(class embeddings).T``."""

    def __init__(self, embeddings: torch.Tensor, logit_scale: float, trainable: bool = False):
        super().__init__()
        self.logit_scale = logit_scale
        if trainable:
            self.class_embeddings = nn.Parameter(embeddings.clone())
        else:
            self.register_buffer("class_embeddings", embeddings.clone())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        weights = F.normalize(self.class_embeddings, dim=-1)
        return self.logit_scale * F.normalize(features, dim=-1) @ weights.to(features.dtype).T

    def zero_shot_classifier(self) -> tuple[torch.Tensor, float]:
        return F.normalize(self.class_embeddings.detach(), dim=-1), self.logit_scale


@dataclass
class ZeroShotTextOptions(AdapterConfig):
    trainable: bool = field(default=False, metadata={
        "help": "train the class embeddings (a cosine classifier initialised from text); default frozen"})


def zeroshot_text(backbone, spec, **options) -> nn.Module:
    """CLIP's zero-shot classifier from class names x templates (frozen unless ``trainable``)."""
    config = ZeroShotTextOptions.from_dict(options, adapter="zeroshot_text", what="head")
    embeddings, scale = zero_shot_embeddings(backbone, spec)
    return ZeroShotTextHead(embeddings, scale, trainable=config.trainable)


class TextInitLinear(nn.Linear):
    """A linear classifier whose initial weights are the zero-shot classifier (PETL_Vision)."""

    def __init__(self, embeddings: torch.Tensor, logit_scale: float):
        super().__init__(embeddings.shape[1], embeddings.shape[0])
        with torch.no_grad():
            self.weight.copy_(logit_scale * embeddings)
            self.bias.zero_()
        self._zero_shot = (embeddings.clone(), logit_scale)

    def zero_shot_classifier(self) -> tuple[torch.Tensor, float]:
        return self._zero_shot[0].to(self.weight.device), self._zero_shot[1]


def text_linear(backbone, spec) -> nn.Module:
    """PETL_Vision's text-initialised linear head (weight = logit scale x class embeddings, bias 0)."""
    embeddings, scale = zero_shot_embeddings(backbone, spec)
    return TextInitLinear(embeddings, scale)


zeroshot_text.reads = text_linear.reads = "pooled"
zeroshot_text.config = ZeroShotTextOptions
register_head("zeroshot_text", zeroshot_text)
register_head("text_linear", text_linear)
