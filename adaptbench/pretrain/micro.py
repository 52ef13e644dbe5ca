"""Pretrain the micro ViT on procedural glyphs: the reproducible recipe behind ``vit_micro``'s weights.

The real backbones are pretrained with supervision on a large source domain (ImageNet-21k)
and adapted to other domains (VTAB-1k). ``vit_micro`` follows that recipe at micro scale:
its architecture (``MICRO_CONFIG`` in ``adaptbench/backbones/families/micro.py``) is
trained here with a linear classifier on the procedural glyph classes of
:mod:`adaptbench.datasets.glyphs`, a domain unlike any micro task, and only the backbone is
kept (timm's ``state_dict`` keys of the model with ``num_classes=0``), as a safetensors
file whose metadata (one JSON value under ``METADATA_KEY``) records the command, the
settings, the library versions and the held-out source-domain accuracy. The backbone
module never imports this one: pretraining depends on backbones and datasets, not the
reverse.

Training: AdamW (no weight decay on norms, biases, position embedding and class token,
timm's convention), a linear warm-up then cosine decay per step, cross-entropy with label
smoothing. Every epoch sees fresh glyphs, drawn from the stream (seed, epoch), so the data
augmentation lives in the generator and the model never sees an image twice. The run is
deterministic given the seed and the thread count (``torch.manual_seed``, fixed threads,
data generated from the seed) on one machine and library version; other CPUs may round
differently, so the shipped file is pinned by its sha256 rather than rebuilt on install.

    adaptbench pretrain-micro --out vit_micro.safetensors   # the settings of the shipped file

The shipped file: 50 glyph classes, 6 epochs of 50,000 fresh images, batch 64, 8 min 20 s
on 2 CPU cores, 90.5% held-out glyph accuracy (100 classes learnt slower in this budget
and gave worse linear probes on the micro tasks; batch 64 trains as many images per second
as 128 on 2 cores, with twice the steps).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import AdaptbenchError
from ..files import atomic_write, sha256_of

__all__ = ["PretrainSettings", "pretrain_micro", "read_pretrain_metadata", "shipping_note"]

METADATA_KEY = "adaptbench.pretrain_micro"
HELD_OUT_STREAM = 1_000_003  # the held-out glyphs' epoch index: never one the training uses


@dataclass(frozen=True)
class PretrainSettings:
    """Everything that decides the weights; the defaults made the shipped file."""

    images: int = 50_000  # fresh glyph images per epoch
    epochs: int = 6
    seed: int = 0
    num_classes: int = 50
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    threads: int = 2
    held_out: int = 2000  # glyph images, from a stream no epoch uses, for the final accuracy

    def __post_init__(self):
        check_counts(self, "pretrain-micro",
                     ("images", "epochs", "num_classes", "batch_size", "threads", "held_out"))

    def command(self, out: Path) -> str:
        """The command that reproduces these settings: the CLI when its flags say them all."""
        return reproducing_command(self, out, "adaptbench pretrain-micro", "adaptbench.pretrain.micro",
                                   "pretrain_micro")


def reproducing_command(settings, out: Path, cli: str, module: str, function: str) -> str:
    """The command that reproduces ``settings`` (a dataclass with images, epochs and seed, the
    CLI's flags): the CLI when its flags say them all, else a ``python -c`` call of ``function``."""
    flags = {"images": settings.images, "epochs": settings.epochs, "seed": settings.seed}
    others = {f.name: getattr(settings, f.name) for f in fields(settings)
              if f.name not in flags and getattr(settings, f.name) != f.default}
    if not others:
        return f"{cli} --out {out.name} " + " ".join(f"--{k} {v}" for k, v in flags.items())
    arguments = ", ".join(f"{k}={v!r}" for k, v in {**flags, **others}.items())
    return f"python -c \"from {module} import {function}; {function}('{out.name}', {arguments})\""


def check_counts(settings, command: str, names: Sequence[str]) -> None:
    """One line for the first bad setting: each of ``names`` an integer >= 1, ``seed`` >= 0."""
    for name in names:
        if getattr(settings, name) < 1:
            raise AdaptbenchError(f"{command}: {name}={getattr(settings, name)}; expected an integer >= 1")
    if settings.seed < 0:
        raise AdaptbenchError(f"{command}: seed={settings.seed}; expected an integer >= 0")


@contextmanager
def pretraining(threads: int) -> Iterator[None]:
    """Train with ``threads`` torch threads under a forked random state: the caller's thread
    count and random state are as they were afterwards, whatever the training did."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(previous_threads)


def pretrain_micro(out: Path, settings: PretrainSettings | None = None,
                   log: Callable[[str], None] = print, **overrides) -> Path:
    """Train the micro ViT on glyphs and write its backbone weights to ``out`` (atomically).

    ``overrides`` replace fields of ``settings`` (e.g. ``images=500, epochs=1``).
    """
    from dataclasses import replace

    settings = replace(settings or PretrainSettings(), **overrides)
    out = Path(out)
    started = time.perf_counter()
    with pretraining(settings.threads):
        model, held_out_accuracy = _train(settings, log)
        _save_backbone(model, _metadata(settings, out, held_out_accuracy), out)
    log(f"wrote {out} (held-out glyph accuracy {held_out_accuracy:.4f}, "
        f"{time.perf_counter() - started:.0f} s)")
    return out


def _train(settings: PretrainSettings, log: Callable[[str], None]) -> tuple[nn.Module, float]:
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    torch.manual_seed(settings.seed)
    model = _micro_classifier(settings.num_classes)
    optimizer = create_optimizer_v2(model, "adamw", lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = -(-settings.images // settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    scheduler = CosineLRScheduler(optimizer, t_initial=total_steps, lr_min=settings.lr * 0.01,
                                  warmup_t=int(settings.warmup_epochs * steps_per_epoch),
                                  warmup_lr_init=settings.lr * 0.01, t_in_epochs=False)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    held_out = _glyph_tensors(settings.held_out, settings, HELD_OUT_STREAM)
    step = 0
    for epoch in range(settings.epochs):
        epoch_started = time.perf_counter()
        images, labels = _glyph_tensors(settings.images, settings, epoch)
        model.train()
        loss_sum, correct = 0.0, 0
        for batch in range(0, len(labels), settings.batch_size):
            x, y = images[batch : batch + settings.batch_size], labels[batch : batch + settings.batch_size]
            logits = model(_normalise(x))
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(step)
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
        accuracy = _accuracy(model, *held_out, settings.batch_size)
        log(f"epoch {epoch + 1}/{settings.epochs}: loss {loss_sum / len(labels):.4f} "
            f"train acc {correct / len(labels):.4f} held-out acc {accuracy:.4f} "
            f"({time.perf_counter() - epoch_started:.0f} s)")
    return model, accuracy


def _micro_classifier(num_classes: int) -> nn.Module:
    import timm

    from ..backbones.families.micro import MICRO_CONFIG, MICRO_TIMM_MODEL

    return timm.create_model(MICRO_TIMM_MODEL, num_classes=num_classes, **MICRO_CONFIG)


def _glyph_tensors(count: int, settings: PretrainSettings, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 glyph images (count, 1, H, W) and labels, from the stream (seed, stream)."""
    from ..datasets.glyphs import glyph_images

    images, labels = glyph_images(count, seed=settings.seed * 1_000_033 + stream,
                                  num_classes=settings.num_classes)
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)


def _normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 grayscale -> the micro tasks' input: the gray read as RGB, mean = std = 0.5."""
    return (images.float() / 255.0 - 0.5).div_(0.5).expand(-1, 3, -1, -1)


@torch.no_grad()
def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    model.eval()
    correct = sum(int((model(_normalise(images[i : i + batch_size])).argmax(1) == labels[i : i + batch_size]).sum())
                  for i in range(0, len(labels), batch_size))
    return correct / len(labels)


def _metadata(settings: PretrainSettings, out: Path, accuracy: float) -> dict[str, str]:
    """What made the file, as one JSON value with sorted keys: safetensors writes several
    metadata keys in a random order, and nothing here depends on the time, so a rerun on
    the same machine and library versions writes the very same bytes (and sha256)."""
    import safetensors
    import timm

    from .. import __version__

    recipe = {
        **asdict(settings),
        "command": settings.command(out),
        "source_domain": "adaptbench.datasets.glyphs",
        "held_out_accuracy": round(accuracy, 4),
        "versions": {"adaptbench": __version__, "torch": torch.__version__, "timm": timm.__version__,
                     "numpy": np.__version__, "safetensors": safetensors.__version__},
        "format": "timm state_dict of the micro ViT with num_classes=0 (no head)",
    }
    return {METADATA_KEY: json.dumps(recipe, sort_keys=True)}


def _save_backbone(model: nn.Module, metadata: dict[str, str], out: Path) -> None:
    """Write the backbone's tensors (the classifier head dropped) to ``out``, atomically."""
    from safetensors.torch import save

    head = model.default_cfg.get("classifier", "head")
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()
             if not name.startswith(f"{head}.")}
    atomic_write(out, save(state, metadata=metadata))


def read_pretrain_metadata(path: Path) -> dict:
    """The recipe recorded in a weights file written by :func:`pretrain_micro`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        recorded = (handle.metadata() or {}).get(METADATA_KEY)
    if recorded is None:
        raise AdaptbenchError(f"{path}: no {METADATA_KEY!r} metadata; expected a file written by "
                              f"`adaptbench pretrain-micro`")
    return json.loads(recorded)


def shipping_note(out: Path) -> str:
    """How to make ``out`` the weights ``vit_micro`` loads by default: the file and its pin
    both live with the backbone (``backbones/families/micro.py``), which never imports this."""
    from ..backbones.families.micro import MICRO_WEIGHTS

    return (f"to ship it: copy {out} to {MICRO_WEIGHTS} and set MICRO_WEIGHTS_SHA256 = "
            f"\"{sha256_of(out)}\" in adaptbench/backbones/families/micro.py")
