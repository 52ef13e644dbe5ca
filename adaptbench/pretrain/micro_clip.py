"""Pretrain the micro CLIP contrastively on captioned procedural scenes: the recipe behind ``clip_micro``.

CLIP (Radford et al., 2021) learns an image and a text encoder whose embeddings agree for
matching pairs: for a batch of N pairs with L2-normalised embeddings ``u_i`` (images) and
``v_j`` (texts) and a learnt temperature ``t`` (``logit_scale``, started at log(1/0.07) and
clamped so that ``exp(t) <= 100``), the loss is the symmetric InfoNCE

    L = 1/2 [ CE(exp(t) U V^T, I) + CE(exp(t) V U^T, I) ],

cross-entropy over each row towards its own pair. ``clip_micro`` is that at micro scale: open_clip's
own ``CLIP`` (``micro_clip_model``: the image tower ``CLIP_MICRO_VISION``, 32x32 in patches of 4,
width 96, 4 blocks of 3 heads; the text tower ``CLIP_MICRO_TEXT``, width 64, 3 blocks, context
20; both projected to 64) trained on the pairs of :mod:`adaptbench.datasets.captions`: texture,
count, location and orientation scenes drawn by the micro tasks' own generators, half of them
tinted, each with a caption in the tasks' class names. Its text is tokenized by a
:class:`~adaptbench.backbones.families.micro.MicroTokenizer` (open_clip's BPE over the caption
world's words; the table goes into the file).

Evaluation is CLIP's zero-shot classification: a class's weight is the mean of the L2-normalised
text embeddings of its name in each of the task's templates (``MICRO_TEMPLATES``), normalised
again; an image goes to the class of largest cosine (times the logit scale). It is measured on
gray scenes from a held-out caption stream (the source domain) and reported on the test split of
each micro task with class names (``MICRO_CLASS_NAMES``); neither picks anything, the run keeps
its last weights.

The file holds the whole CLIP under open_clip's ``state_dict`` keys (``visual.*``, ``transformer.*``,
``token_embedding.weight``, ``logit_scale`` ...), so that the text tower can be rebuilt; its
safetensors metadata (one JSON value under ``CLIP_MICRO_METADATA_KEY``) records the command, the
settings, the token table and context length, the accuracies and the library versions.

Training: AdamW (betas 0.9/0.98, eps 1e-6 as CLIP; no weight decay on norms, biases, embeddings of
positions and class, the logit scale), a linear warm-up then cosine decay per step; every epoch
sees fresh pairs from the stream (seed, epoch). Deterministic given the seed and the thread count
on one machine and library version; elsewhere the last bits differ, so the shipped file is pinned
by its sha256.

    adaptbench pretrain-micro --model clip_micro --out clip_micro.safetensors   # the shipped file's settings

The shipped file (the defaults of ``ClipPretrainSettings``): 3 epochs of 19,200 fresh pairs,
batch 128 (450 steps), kinds drawn 1 : 1.5 : 2 : 1.5 (texture, count, location, orientation:
x-position and counting learn slowest). Zero-shot top-1 on the micro tasks' test splits (500
images each): texture 0.970 (chance 0.167), count 0.694, location 0.944, orientation 0.920
(chance 0.125); on the held-out caption stream 0.932, 0.720, 0.908, 0.944. After 200 steps
location was still at 0.28. A step takes about 0.6 s on 2 free CPU cores (about 5 minutes in
all); the shipped file's run took 16.6 minutes because other processes shared the cores. The
file is 2.5 MB (626k parameters, 90 tokens).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import AdaptbenchError
from ..files import atomic_write, sha256_of
from .micro import check_counts, pretraining, reproducing_command

__all__ = ["ClipPretrainSettings", "EVAL_BATCH", "clip_shipping_note", "pretrain_micro_clip",
           "read_clip_pretrain_metadata", "zero_shot_accuracy", "zero_shot_weights"]

HELD_OUT_STREAM = 1_000_003  # the held-out scenes' stream: never an epoch the training uses
LOG_EVERY = 100  # steps between progress lines
EVAL_BATCH = 250  # images per forward when evaluating (the test recomputes with the same)
MAX_LOGIT_SCALE = math.log(100.0)


@dataclass(frozen=True)
class ClipPretrainSettings:
    """Everything that decides the weights; the defaults made the shipped file."""

    images: int = 19_200  # fresh captioned scenes per epoch
    epochs: int = 3
    seed: int = 0
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_epochs: float = 0.25
    tint_probability: float = 0.5
    # how often each caption kind (texture, count, location, orientation) is drawn: the
    # fine-grained ones (x-position and count) take longer to learn
    mix: tuple[float, ...] = (1.0, 1.5, 2.0, 1.5)
    threads: int = 2
    held_out: int = 250  # gray scenes per kind, from a stream no epoch uses, for the zero-shot accuracy

    def __post_init__(self):
        check_counts(self, "pretrain-micro --model clip_micro",
                     ("images", "epochs", "batch_size", "threads", "held_out"))
        if len(self.mix) != 4 or min(self.mix) < 0 or sum(self.mix) <= 0:
            raise AdaptbenchError(f"pretrain-micro --model clip_micro: mix={self.mix}; expected 4 weights >= 0 "
                                  f"(texture, count, location, orientation), not all 0")
        if not 0.0 <= self.tint_probability <= 1.0:
            raise AdaptbenchError(f"pretrain-micro --model clip_micro: tint_probability={self.tint_probability}; "
                                  f"expected a value in [0, 1]")

    def command(self, out: Path) -> str:
        """The command that reproduces these settings: the CLI when its flags say them all."""
        return reproducing_command(self, out, "adaptbench pretrain-micro --model clip_micro",
                                   "adaptbench.pretrain.micro_clip", "pretrain_micro_clip")


def pretrain_micro_clip(out: Path, settings: ClipPretrainSettings | None = None,
                        log: Callable[[str], None] = print, **overrides) -> Path:
    """Train the micro CLIP on captioned scenes and write it (and its token table) to ``out`` atomically.

    ``overrides`` replace fields of ``settings`` (e.g. ``images=256, epochs=1``).
    """
    settings = replace(settings or ClipPretrainSettings(), **overrides)
    out = Path(out)
    started = time.perf_counter()
    with pretraining(settings.threads):
        model, tokenizer, held_out = _train(settings, log)
        test = micro_task_zero_shot(model, tokenizer)
        log("zero-shot on the micro tasks' test splits: " + ", ".join(f"{k} {v:.4f}" for k, v in test.items()))
        _save(model, _metadata(settings, out, tokenizer, held_out, test), out)
    log(f"wrote {out} ({time.perf_counter() - started:.0f} s)")
    return out


def _train(settings: ClipPretrainSettings, log: Callable[[str], None]):
    from timm.scheduler import CosineLRScheduler

    from ..backbones.families.micro import default_micro_tokenizer, micro_clip_model

    torch.manual_seed(settings.seed)
    tokenizer = default_micro_tokenizer()
    model = micro_clip_model(tokenizer.vocab_size, tokenizer.context_length)
    optimizer = torch.optim.AdamW(_parameter_groups(model, settings.weight_decay), lr=settings.lr,
                                  betas=(0.9, 0.98), eps=1e-6)
    steps_per_epoch = -(-settings.images // settings.batch_size)
    total = steps_per_epoch * settings.epochs
    scheduler = CosineLRScheduler(optimizer, t_initial=total, lr_min=settings.lr * 0.01,
                                  warmup_t=int(settings.warmup_epochs * steps_per_epoch),
                                  warmup_lr_init=settings.lr * 0.01, t_in_epochs=False)
    held_out = _held_out_scenes(settings)
    step, accuracies = 0, {}
    for epoch in range(settings.epochs):
        epoch_started = time.perf_counter()
        images, tokens = _pair_tensors(settings, epoch, tokenizer)
        model.train()
        loss_sum = 0.0
        for start in range(0, len(tokens), settings.batch_size):
            loss = clip_loss(model, images[start: start + settings.batch_size], tokens[start: start + settings.batch_size])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():  # CLIP's clamp: the temperature never sharpens beyond 100
                model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
            step += 1
            scheduler.step_update(step)
            loss_sum += loss.item() * len(tokens[start: start + settings.batch_size])
            if step % LOG_EVERY == 0:
                log(f"step {step}/{total}: loss {loss.item():.4f} logit scale {model.logit_scale.exp().item():.1f} "
                    f"({time.perf_counter() - epoch_started:.0f} s into epoch {epoch + 1})")
        accuracies = {kind: zero_shot_accuracy(model, tokenizer, images_, labels, *_prompts(kind))
                      for kind, (images_, labels) in held_out.items()}
        log(f"epoch {epoch + 1}/{settings.epochs}: loss {loss_sum / len(tokens):.4f} held-out zero-shot "
            + ", ".join(f"{kind} {acc:.3f}" for kind, acc in accuracies.items())
            + f" ({time.perf_counter() - epoch_started:.0f} s)")
    return model.eval(), tokenizer, accuracies


def clip_loss(model: nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE of a batch of pairs (uint8 images, token rows)."""
    image_features = model.encode_image(normalise(images), normalize=True)
    text_features = model.encode_text(tokens, normalize=True)
    logits = model.logit_scale.exp() * image_features @ text_features.T
    target = torch.arange(len(tokens))
    return (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)) / 2


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's convention: no weight decay on gains, biases, embeddings and the logit scale."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        plain = param.ndim < 2 or "embedding" in name or "logit_scale" in name
        (no_decay if plain else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _pair_tensors(settings: ClipPretrainSettings, stream: int, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 3, 32, 32) and caption tokens (N, context) from the stream (seed, stream)."""
    from ..datasets.captions import captioned_images

    pairs = captioned_images(settings.images, settings.seed, stream, settings.tint_probability, mix=settings.mix)
    return torch.from_numpy(pairs.images).permute(0, 3, 1, 2).contiguous(), tokenizer(pairs.captions)


def _held_out_scenes(settings: ClipPretrainSettings) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per kind, ``held_out`` gray scenes (uint8 (N, 3, 32, 32)) and their labels, from a stream of their own."""
    from ..datasets.captions import CAPTION_KINDS, captioned_images

    held_out = {}
    for index, kind in enumerate(CAPTION_KINDS):
        scenes = captioned_images(settings.held_out, settings.seed, HELD_OUT_STREAM + index, 0.0, kinds=(kind,))
        held_out[kind] = (torch.from_numpy(scenes.images).permute(0, 3, 1, 2).contiguous(),
                          torch.from_numpy(scenes.labels))
    return held_out


def _prompts(kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    from ..datasets.micro_catalog import MICRO_CLASS_NAMES, MICRO_TEMPLATES

    return MICRO_CLASS_NAMES[kind], MICRO_TEMPLATES[kind]


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> what clip_micro's data config feeds it: [0, 1], then its mean and std."""
    from ..backbones.families.micro import CLIP_MICRO_MEAN, CLIP_MICRO_STD

    mean = torch.tensor(CLIP_MICRO_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_MICRO_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


@torch.no_grad()
def zero_shot_weights(model: nn.Module, tokenizer, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """(classes, D): per class, the normalised mean of its prompts' normalised text embeddings."""
    weights = []
    for name in class_names:
        embedded = model.encode_text(tokenizer([template.format(name) for template in templates]), normalize=True)
        weights.append(nn.functional.normalize(embedded.mean(0), dim=-1))
    return torch.stack(weights)


@torch.no_grad()
def zero_shot_accuracy(model: nn.Module, tokenizer, images: torch.Tensor, labels: torch.Tensor,
                       class_names: Sequence[str], templates: Sequence[str]) -> float:
    """Top-1 zero-shot accuracy on uint8 images (N, 3, H, W) in chunks of ``EVAL_BATCH``."""
    was_training = model.training
    model.eval()
    weights = zero_shot_weights(model, tokenizer, class_names, templates)
    correct = 0
    for start in range(0, len(labels), EVAL_BATCH):
        features = model.encode_image(normalise(images[start: start + EVAL_BATCH]), normalize=True)
        logits = model.logit_scale.exp() * features @ weights.T
        correct += int((logits.argmax(1) == labels[start: start + EVAL_BATCH]).sum())
    model.train(was_training)
    return correct / len(labels)


def micro_task_zero_shot(model: nn.Module, tokenizer) -> dict[str, float]:
    """Zero-shot accuracy on the test split of each micro task with class names (a report: the
    run has no choice to make, and keeps its last weights whatever this says)."""
    from ..datasets.micro import MICRO_TASKS
    from ..datasets.micro_catalog import MICRO_CLASS_NAMES

    accuracies = {}
    for name in MICRO_CLASS_NAMES:
        task = MICRO_TASKS[name]
        images, labels = task.generator(task)["test"]  # gray (N, H, W): read as RGB, as the task's PNGs are
        rgb = torch.from_numpy(images).unsqueeze(1).expand(-1, 3, -1, -1)
        accuracies[f"micro/{name}"] = zero_shot_accuracy(model, tokenizer, rgb, torch.from_numpy(labels),
                                                         *_prompts(name))
    return accuracies


def _metadata(settings: ClipPretrainSettings, out: Path, tokenizer, held_out: dict[str, float],
              test: dict[str, float]) -> dict[str, str]:
    """What made the file, as one JSON value with sorted keys (nothing here depends on the time,
    so a rerun on the same machine and library versions writes the very same bytes)."""
    from importlib.metadata import version

    import safetensors

    from .. import __version__
    from ..backbones.families.micro import (CLIP_MICRO_EMBED_DIM, CLIP_MICRO_MEAN, CLIP_MICRO_METADATA_KEY,
                                            CLIP_MICRO_STD, CLIP_MICRO_TEXT, CLIP_MICRO_VISION)
    from ..datasets.micro_catalog import MICRO_CLASS_NAMES, MICRO_TEMPLATES

    recipe = {
        **asdict(settings),
        "command": settings.command(out),
        "source_domain": "adaptbench.datasets.captions.captioned_images",
        "zero_shot_held_out": held_out,
        "zero_shot_test": test,
        "class_names": {name: list(names) for name, names in MICRO_CLASS_NAMES.items()},
        "templates": {name: list(templates) for name, templates in MICRO_TEMPLATES.items()},
        "token_table": list(tokenizer.table),
        "context_length": tokenizer.context_length,
        "tokenizer": "open_clip SimpleTokenizer BPE ids -> compact ids: 0 pad, 1 <unk>, 2 + i for token_table[i], "
                     "then <start_of_text>, <end_of_text> (the largest id: text pooling 'argmax')",
        "model_config": {"embed_dim": CLIP_MICRO_EMBED_DIM, "vision_cfg": CLIP_MICRO_VISION,
                         "text_cfg": {**CLIP_MICRO_TEXT, "context_length": tokenizer.context_length,
                                      "vocab_size": tokenizer.vocab_size}},
        "data_config": {"input_size": [CLIP_MICRO_VISION["image_size"]] * 2, "mean": list(CLIP_MICRO_MEAN),
                        "std": list(CLIP_MICRO_STD), "interpolation": "bicubic"},
        "versions": {"adaptbench": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "open_clip": version("open_clip_torch"), "safetensors": safetensors.__version__},
        "format": "open_clip CLIP state_dict (image and text towers, logit_scale)",
    }
    return {CLIP_MICRO_METADATA_KEY: json.dumps(recipe, sort_keys=True)}


def _save(model: nn.Module, metadata: dict[str, str], out: Path) -> None:
    from safetensors.torch import save

    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    atomic_write(out, save(state, metadata=metadata))


def read_clip_pretrain_metadata(path: Path) -> dict:
    """The recipe recorded in a weights file written by :func:`pretrain_micro_clip`."""
    from ..backbones.families.micro import read_micro_clip

    return read_micro_clip(Path(path))[2]


def clip_shipping_note(out: Path) -> str:
    """How to make ``out`` the weights ``clip_micro`` loads by default."""
    from ..backbones.families.micro import CLIP_MICRO_WEIGHTS

    return (f"to ship it: copy {out} to {CLIP_MICRO_WEIGHTS} and set CLIP_MICRO_WEIGHTS_SHA256 = "
            f"\"{sha256_of(out)}\" in adaptbench/backbones/families/micro.py")
