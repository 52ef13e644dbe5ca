"""Pretrain the micro SAM on procedural colour-region scenes: the recipe behind ``sam_micro``'s weights.

segment-anything's encoder and decoder were trained on SA-1B and are adapted elsewhere
(medical images, remote sensing, ...). ``sam_micro`` follows that at micro scale: its image
encoder (``SAM_MICRO_CONFIG`` in ``adaptbench/backbones/families/micro.py``: segment-anything's
own ``ImageEncoderViT``, 64x64 input, 16x16 grid, width 96, 4 blocks with 4x4 windows and
global attention in blocks 1 and 3, neck 64) is trained here together with the prompt-free
:class:`~adaptbench.tasks.sam_decoder.SamDecoderHead` (SAM's prompt encoder and mask decoder,
one mask token per class, decoder MLP 512 = 8 x 64), by pixel-wise cross-entropy on its
(B, K, 64, 64) logits, on a source domain unlike the micro segmentation tasks (real nuclei;
objects classed by their outline):

**colour-region scenes** (:func:`source_scenes`). A 64x64 RGB scene is a full background
layer and 2-4 overlapping regions (ellipses, irregular blobs, wavy bands and wavy half-planes
at random places, sizes and angles). Every layer is a surface of one of K = 6 hue families
(``SOURCE_CLASSES``: red, yellow, green, cyan, blue, magenta; the hue drawn within 18 degrees
of the family's centre, saturation and brightness at random) rendered with a random texture
(``SOURCE_TEXTURES``: flat, stripes, rings, checker, speckle, waves, at a random scale and
orientation) between two shades of its hue; the label of a pixel is the hue family of the
top layer there. Region shape and texture say nothing of the class: what is learnt is to
delineate surfaces and to see their colour through a texture, pixel-precise at 4x the grid.
Scenes are vectorised numpy, seeded (the same ``(count, seed)`` gives the same arrays).

Why hue and not texture as the class: with texture classes (the same six patterns, random
colours) neither this encoder with SAM's decoder nor with a linear head left the chance-level
loss (ln 6) in 400 steps of 32 scenes, a budget's worth; a 3-layer CNN reached 33% pixel
accuracy in 200 steps. Hue classes under texture nuisance train in that budget (97% pixel
accuracy after 160 steps), and still ask for texture-invariant, boundary-exact features.

The file keeps segment-anything's checkpoint keys (``image_encoder.*``, ``prompt_encoder.*``,
``mask_decoder.*``), so the SAM family reads it as it reads an official ``sam_vit_b_01ec64.pth``
and ``SamViT.companion_state`` hands the ``sam_decoder`` head its pretrained decoder (6 mask
tokens: class c of a task starts from token c mod 6). Its safetensors metadata (one JSON value
under ``METADATA_KEY``) records the command, the settings, the library versions, the held-out
source-domain mIoU and that of the trivial predictor (the most frequent class everywhere).

Training: AdamW (no weight decay on norms, biases, positions), a linear warm-up then cosine
decay per step; every epoch sees fresh scenes from the stream (seed, epoch). Deterministic
given the seed and the thread count on one machine and library version; elsewhere the last
bits differ, so the shipped file is pinned by its sha256.

    adaptbench pretrain-micro --model sam_micro --out sam_micro.safetensors   # the shipped file's settings

The shipped file (the defaults of ``SamPretrainSettings``): 2 epochs of 6,000 fresh scenes,
batch 32 (376 steps), 0.9686 held-out mIoU on 256 scenes (pixel accuracy 0.9841; the trivial
predictor 0.0332). On 2 CPU cores its first epoch took 176 s, so the run takes about 6
minutes; the shipped file's run took 12.4 minutes because other processes shared the cores.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import AdaptbenchError
from ..files import atomic_write, sha256_of
from .micro import check_counts, pretraining, reproducing_command

__all__ = ["SOURCE_CLASSES", "SOURCE_TEXTURES", "SamPretrainSettings", "mean_iou", "micro_sam_modules",
           "pretrain_micro_sam", "read_sam_pretrain_metadata", "sam_shipping_note", "source_scenes"]

METADATA_KEY = "adaptbench.pretrain_micro_sam"
HELD_OUT_STREAM = 1_000_003  # the held-out scenes' epoch index: never one the training uses
SOURCE_CLASSES = ("red", "yellow", "green", "cyan", "blue", "magenta")  # hue families, 60 degrees apart
SOURCE_TEXTURES = ("flat", "stripes", "rings", "checker", "speckle", "waves")  # nuisance: any class, any texture
SIZE = 64
MAX_REGIONS = 4  # overlapping regions on top of the background layer (2-4 per scene)
CHUNK = 128  # scenes rendered at once
LOG_EVERY = 50  # steps between progress lines


# -- the source domain ----------------------------------------------------------------------------
_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)


def source_scenes(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` source scenes: images (count, 64, 64, 3) uint8 and labels (count, 64, 64) int64 (hue families)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for start in range(0, count, CHUNK):
        chunk_images, chunk_labels = _scene_chunk(rng, min(CHUNK, count - start))
        images.append(chunk_images)
        labels.append(chunk_labels)
    if not images:
        return np.zeros((0, SIZE, SIZE, 3), np.uint8), np.zeros((0, SIZE, SIZE), np.int64)
    return np.concatenate(images), np.concatenate(labels)


def _scene_chunk(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    classes = rng.integers(len(SOURCE_CLASSES), size=n)
    canvas, labels = _textures(rng, classes), np.repeat(classes[:, None, None], SIZE * SIZE, 1).reshape(n, SIZE, SIZE)
    regions = rng.integers(2, MAX_REGIONS + 1, size=n)
    for layer in range(MAX_REGIONS):
        present = (layer < regions)[:, None, None]
        depth = _region_depth(rng, n)
        classes = rng.integers(len(SOURCE_CLASSES), size=n)
        alpha = (np.clip(depth + 0.5, 0.0, 1.0) * present).astype(np.float32)[..., None]  # a 1-pixel soft edge
        canvas -= alpha * canvas
        canvas += alpha * _textures(rng, classes)
        labels = np.where((depth > 0) & present, classes[:, None, None], labels)
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * rng.uniform(0.0, 6.0, (n, 1, 1, 1)).astype(np.float32)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), labels.astype(np.int64)


def _region_depth(rng: np.random.Generator, n: int) -> np.ndarray:
    """Signed depth (pixels, > 0 inside) of an ellipse, blob, wavy band or wavy half-plane per scene."""
    kind = rng.integers(4, size=n)
    centre, angle = rng.uniform(0, SIZE, (n, 2)), rng.uniform(0, 2 * np.pi, n)
    size, shape = rng.uniform(0, 1, n), rng.uniform(0, 1, (n, 3))  # read per kind below
    phases = rng.uniform(0, 2 * np.pi, (n, 3))
    depth = np.empty((n, SIZE, SIZE))
    for k, region in enumerate((_ellipse, _blob, _band, _half_plane)):
        chosen = np.flatnonzero(kind == k)
        if len(chosen):
            c = chosen[:, None, None]
            dy, dx = _YY - _column(centre[chosen, 0]), _XX - _column(centre[chosen, 1])
            cos, sin = np.cos(angle)[c], np.sin(angle)[c]
            u, v = dx * cos + dy * sin, dy * cos - dx * sin
            depth[chosen] = region(u, v, size[c], shape[c.squeeze(-1)], phases[c.squeeze(-1)])
    return depth


def _ellipse(u, v, size, shape, phases):
    major = 8 + 20 * size
    minor = major * (0.33 + 0.67 * shape[..., :1])
    return minor * (1.0 - np.sqrt((u / major) ** 2 + (v / minor) ** 2))


def _blob(u, v, size, shape, phases):
    theta = np.arctan2(v, u)
    wobble = 1.0 + sum(0.2 * shape[..., i: i + 1] * np.sin((i + 2) * theta + phases[..., i: i + 1]) for i in range(3))
    return (8 + 14 * size) * wobble - np.sqrt(u * u + v * v)


def _wave(u, shape, phases):
    return 5 * shape[..., :1] * np.sin(2 * np.pi * u / (16 + 32 * shape[..., 1:2]) + phases[..., :1])


def _band(u, v, size, shape, phases):
    return 4 + 8 * size - np.abs(v + _wave(u, shape, phases))


def _half_plane(u, v, size, shape, phases):
    return v + _wave(u, shape, phases)


def _textures(rng: np.random.Generator, classes: np.ndarray) -> np.ndarray:
    """One surface per scene, of hue family ``classes[i]``, as colours (n, 64, 64, 3): a random
    texture between two shades of a hue drawn near the family's centre (within 18 degrees)."""
    n = len(classes)
    hue = (classes + rng.uniform(-0.3, 0.3, n)) / len(SOURCE_CLASSES) % 1.0
    value = rng.uniform(0.3, 1.0, n)
    other = np.clip(value + rng.choice([-1.0, 1.0], n) * rng.uniform(0.3, 0.6, n), 0.25, 1.0)
    first = _hsv_to_rgb(hue, rng.uniform(0.5, 1.0, n), value)
    second = _hsv_to_rgb(hue, rng.uniform(0.5, 1.0, n), other)
    texture = rng.integers(len(SOURCE_TEXTURES), size=n)
    pattern = np.empty((n, SIZE, SIZE))
    for k, draw in enumerate(_PATTERNS):
        chosen = np.flatnonzero(texture == k)
        if len(chosen):
            pattern[chosen] = draw(rng, len(chosen))
    # colours in float32: the scenes end as uint8, and this halves the compositing's memory traffic
    first, second = first.astype(np.float32), second.astype(np.float32)
    return first[:, None, None, :] + (second - first)[:, None, None, :] * pattern.astype(np.float32)[..., None]


def _hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """(n,) hue in [0, 1), saturation, value -> (n, 3) RGB in [0, 255] (the colorsys formulas)."""
    sector = np.floor(hue * 6.0)
    f = hue * 6.0 - sector
    p, q, t = value * (1 - saturation), value * (1 - f * saturation), value * (1 - (1 - f) * saturation)
    rows = np.stack([np.stack(c, axis=-1) for c in ((value, t, p), (q, value, p), (p, value, t),
                                                     (p, q, value), (t, p, value), (value, p, q))])
    return rows[sector.astype(np.int64) % 6, np.arange(len(hue))] * 255.0


def _along(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates along and across a random direction, per scene: (n, 64, 64) each."""
    angle = rng.uniform(0, np.pi, n)[:, None, None]
    return _XX * np.cos(angle) + _YY * np.sin(angle), _YY * np.cos(angle) - _XX * np.sin(angle)


def _column(values: np.ndarray) -> np.ndarray:
    return values[:, None, None]


def _flat(rng, n):
    along, _ = _along(rng, n)
    return 0.5 + _column(rng.uniform(-0.2, 0.2, n)) * (along - along.mean(axis=(1, 2), keepdims=True)) / SIZE


def _stripes(rng, n):
    along, _ = _along(rng, n)
    return 0.5 + 0.5 * np.sin(2 * np.pi * along / _column(rng.uniform(3, 9, n)) + _column(rng.uniform(0, 2 * np.pi, n)))


def _rings(rng, n):
    cy, cx = _column(rng.uniform(-32, 96, n)), _column(rng.uniform(-32, 96, n))
    radius = np.sqrt((_YY - cy) ** 2 + (_XX - cx) ** 2)
    return 0.5 + 0.5 * np.sin(2 * np.pi * radius / _column(rng.uniform(3, 9, n)) + _column(rng.uniform(0, 2 * np.pi, n)))


def _checker(rng, n):
    along, across = _along(rng, n)
    period = _column(rng.uniform(4, 12, n))
    product = (np.sin(2 * np.pi * along / period + _column(rng.uniform(0, 2 * np.pi, n)))
               * np.sin(2 * np.pi * across / period + _column(rng.uniform(0, 2 * np.pi, n))))
    return (product > 0).astype(np.float64)


def _speckle(rng, n):
    return (rng.random((n, SIZE, SIZE)) < _column(rng.uniform(0.15, 0.5, n))).astype(np.float64)


def _waves(rng, n):
    along, across = _along(rng, n)
    bent = along + _column(rng.uniform(2, 5, n)) * np.sin(2 * np.pi * across / _column(rng.uniform(12, 30, n)))
    return 0.5 + 0.5 * np.sin(2 * np.pi * bent / _column(rng.uniform(4, 9, n)) + _column(rng.uniform(0, 2 * np.pi, n)))


_PATTERNS = (_flat, _stripes, _rings, _checker, _speckle, _waves)  # in SOURCE_TEXTURES' order


# -- the recipe -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamPretrainSettings:
    """Everything that decides the weights; the defaults made the shipped file."""

    images: int = 6_000  # fresh source scenes per epoch
    epochs: int = 2
    seed: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 0.1
    threads: int = 2
    held_out: int = 256  # scenes, from a stream no epoch uses, for the final mIoU

    def __post_init__(self):
        check_counts(self, "pretrain-micro --model sam_micro",
                     ("images", "epochs", "batch_size", "threads", "held_out"))

    def command(self, out: Path) -> str:
        """The command that reproduces these settings: the CLI when its flags say them all."""
        return reproducing_command(self, out, "adaptbench pretrain-micro --model sam_micro",
                                   "adaptbench.pretrain.micro_sam", "pretrain_micro_sam")


def pretrain_micro_sam(out: Path, settings: SamPretrainSettings | None = None,
                       log: Callable[[str], None] = print, **overrides) -> Path:
    """Train the micro SAM (encoder + prompt-free decoder) on the source scenes; write ``out`` atomically.

    ``overrides`` replace fields of ``settings`` (e.g. ``images=64, epochs=1``).
    """
    settings = replace(settings or SamPretrainSettings(), **overrides)
    out = Path(out)
    started = time.perf_counter()
    with pretraining(settings.threads):
        encoder, head, scores = _train(settings, log)
        _save(encoder, head, _metadata(settings, out, scores), out)
    log(f"wrote {out} (held-out source mIoU {scores['held_out_miou']:.4f}, trivial "
        f"{scores['trivial_miou']:.4f}; {time.perf_counter() - started:.0f} s)")
    return out


def micro_sam_modules() -> tuple[nn.Module, nn.Module]:
    """The micro SAM's image encoder and its prompt-free decoder head on the source classes."""
    from ..backbones.families.micro import SAM_MICRO_CONFIG
    from ..backbones.families.sam import build_image_encoder
    from ..tasks.sam_decoder import SamDecoderHead

    size, grid = SAM_MICRO_CONFIG["img_size"], SAM_MICRO_CONFIG["img_size"] // SAM_MICRO_CONFIG["patch_size"]
    encoder = build_image_encoder(SAM_MICRO_CONFIG)
    head = SamDecoderHead(dim=SAM_MICRO_CONFIG["out_chans"], grid=(grid, grid), input_size=(size, size),
                          num_classes=len(SOURCE_CLASSES))
    return encoder, head


def _train(settings: SamPretrainSettings, log: Callable[[str], None]) -> tuple[nn.Module, nn.Module, dict]:
    from timm.scheduler import CosineLRScheduler

    torch.manual_seed(settings.seed)
    encoder, head = micro_sam_modules()
    optimizer = torch.optim.AdamW(_parameter_groups(encoder, head, settings.weight_decay), lr=settings.lr)
    steps_per_epoch = -(-settings.images // settings.batch_size)
    scheduler = CosineLRScheduler(optimizer, t_initial=steps_per_epoch * settings.epochs, lr_min=settings.lr * 0.01,
                                  warmup_t=int(settings.warmup_epochs * steps_per_epoch),
                                  warmup_lr_init=settings.lr * 0.01, t_in_epochs=False)
    held_out = _scene_tensors(settings.held_out, settings, HELD_OUT_STREAM)
    step, scores = 0, {}
    for epoch in range(settings.epochs):
        epoch_started = time.perf_counter()
        images, labels = _scene_tensors(settings.images, settings, epoch)
        encoder.train()
        head.train()
        loss_sum = 0.0
        for batch in range(0, len(labels), settings.batch_size):
            x, y = images[batch: batch + settings.batch_size], labels[batch: batch + settings.batch_size]
            loss = nn.functional.cross_entropy(head(encoder(_normalise(x))), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(step)
            loss_sum += loss.item() * len(y)
            if step % LOG_EVERY == 0:
                log(f"step {step}/{steps_per_epoch * settings.epochs}: loss {loss.item():.4f} "
                    f"({time.perf_counter() - epoch_started:.0f} s into epoch {epoch + 1})")
        scores = _scores(encoder, head, *held_out, settings.batch_size)
        log(f"epoch {epoch + 1}/{settings.epochs}: loss {loss_sum / len(labels):.4f} held-out mIoU "
            f"{scores['held_out_miou']:.4f} pixel acc {scores['held_out_pixel_accuracy']:.4f} "
            f"({time.perf_counter() - epoch_started:.0f} s)")
    return encoder, head, scores


def _parameter_groups(encoder: nn.Module, head: nn.Module, weight_decay: float) -> list[dict]:
    """timm's convention: no weight decay on norms, biases (1-d tensors) and positions."""
    decay, no_decay = [], []
    for module in (encoder, head):
        for name, param in module.named_parameters():
            plain = param.ndim <= 1 or "pos_embed" in name or "rel_pos" in name
            (no_decay if plain else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _scene_tensors(count: int, settings: SamPretrainSettings, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 scenes (count, 3, 64, 64) and labels (count, 64, 64), from the stream (seed, stream)."""
    images, labels = source_scenes(count, seed=settings.seed * 1_000_033 + stream)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


def _normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB -> what SamViT's data config feeds it: [0, 1], then SAM's mean and std."""
    from ..backbones.families.sam import SAM_PIXEL_MEAN, SAM_PIXEL_STD

    mean = torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


@torch.no_grad()
def _scores(encoder: nn.Module, head: nn.Module, images: torch.Tensor, labels: torch.Tensor,
            batch_size: int) -> dict[str, float]:
    """Held-out mIoU (classes present in the labels or the predictions), pixel accuracy, and
    the mIoU of the trivial predictor (the most frequent held-out class everywhere)."""
    encoder.eval()
    head.eval()
    classes = len(SOURCE_CLASSES)
    confusion = torch.zeros(classes * classes, dtype=torch.int64)
    for start in range(0, len(labels), batch_size):
        predicted = head(encoder(_normalise(images[start: start + batch_size]))).argmax(1)
        target = labels[start: start + batch_size]
        confusion += torch.bincount((target * classes + predicted).flatten(), minlength=classes * classes)
    confusion = confusion.view(classes, classes).double()
    counts = confusion.sum(1)
    trivial = torch.zeros_like(confusion)
    trivial[:, int(counts.argmax())] = counts
    return {"held_out_miou": round(mean_iou(confusion), 4),
            "held_out_pixel_accuracy": round(float(confusion.diag().sum() / confusion.sum()), 4),
            "trivial_miou": round(mean_iou(trivial), 4)}


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean over classes seen (in the targets or the predictions) of TP / (TP + FP + FN)."""
    true_positive = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    seen = union > 0
    return float((true_positive[seen] / union[seen]).mean())


def _metadata(settings: SamPretrainSettings, out: Path, scores: dict[str, float]) -> dict[str, str]:
    """What made the file, as one JSON value with sorted keys (nothing here depends on the time,
    so a rerun on the same machine and library versions writes the very same bytes)."""
    from importlib.metadata import version

    import safetensors

    from .. import __version__
    from ..backbones.families.micro import SAM_MICRO_CONFIG

    recipe = {
        **asdict(settings),
        **scores,
        "command": settings.command(out),
        "source_domain": "adaptbench.pretrain.micro_sam.source_scenes",
        "source_classes": list(SOURCE_CLASSES),
        "source_textures": list(SOURCE_TEXTURES),
        "encoder_config": {k: list(v) if isinstance(v, tuple) else v for k, v in SAM_MICRO_CONFIG.items()},
        "versions": {"adaptbench": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "segment_anything": version("segment-anything"), "safetensors": safetensors.__version__},
        "format": "segment-anything checkpoint keys: image_encoder.*, prompt_encoder.*, mask_decoder.* "
                  f"({len(SOURCE_CLASSES)} mask tokens, one per source class)",
    }
    return {METADATA_KEY: json.dumps(recipe, sort_keys=True)}


def _save(encoder: nn.Module, head: nn.Module, metadata: dict[str, str], out: Path) -> None:
    from safetensors.torch import save

    state = {f"image_encoder.{name}": tensor for name, tensor in encoder.state_dict().items()}
    state.update(head.state_dict())  # prompt_encoder.*, mask_decoder.*: SAM's own key names
    atomic_write(out, save({name: tensor.detach().contiguous() for name, tensor in state.items()}, metadata=metadata))


def read_sam_pretrain_metadata(path: Path) -> dict:
    """The recipe recorded in a weights file written by :func:`pretrain_micro_sam`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        recorded = (handle.metadata() or {}).get(METADATA_KEY)
    if recorded is None:
        raise AdaptbenchError(f"{path}: no {METADATA_KEY!r} metadata; expected a file written by "
                              f"`adaptbench pretrain-micro --model sam_micro`")
    return json.loads(recorded)


def sam_shipping_note(out: Path) -> str:
    """How to make ``out`` the weights ``sam_micro`` loads by default."""
    from ..backbones.families.micro import SAM_MICRO_WEIGHTS

    return (f"to ship it: copy {out} to {SAM_MICRO_WEIGHTS} and set SAM_MICRO_WEIGHTS_SHA256 = "
            f"\"{sha256_of(out)}\" in adaptbench/backbones/families/micro.py")
