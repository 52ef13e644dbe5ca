"""Procedural images with generated captions: the world the micro CLIP is pretrained in.

CLIP learns from images and the text that goes with them; ``clip_micro`` does so at micro
scale, on pairs drawn here. An image is one of the procedural micro scenes, drawn by the very
functions that generate the micro tasks (``micro.py``: ``texture_image``, ``count_image``,
``location_image``, ``orientation_image``), so those tasks lie inside this distribution; its
caption says what the scene shows, in the task's own class names
(``micro_catalog.MICRO_CLASS_NAMES``) put into one of several templates per kind: the task's
zero-shot templates (``MICRO_TEMPLATES``) and as many others. For variety, half of the images
are tinted with one of ``TINTS`` (the gray scene times the colour) and their caption says so
(``"a photo of three shapes, tinted red."``); untinted images stay gray, as the micro tasks'
PNGs decoded as RGB are.

The captions teach the concepts, never the tasks' images: each call draws from the stream
``np.random.default_rng([STREAM_TAG, seed, stream])``, whose first word is no task's seed (the
tasks draw from ``default_rng([task seed, split index])``, and numpy pads short seed lists with
zeros, so a distinct first word is what keeps the streams apart). The same arguments give the
same images and captions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import AdaptbenchError
from .micro import count_image, location_image, orientation_image, texture_image
from .micro_catalog import MICRO_CLASS_NAMES, MICRO_TEMPLATES

__all__ = ["CAPTION_KINDS", "CAPTION_TEMPLATES", "STREAM_TAG", "TINTS", "CaptionedImages", "caption_texts",
           "captioned_images"]

STREAM_TAG = 0xC0117E5  # the first word of every caption stream's seed: no task seed is this large
SIZE = 32

# The micro tasks whose scenes are drawn, with the function that draws a scene of a given label.
_DRAW: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "texture": texture_image,
    "count": count_image,
    "location": location_image,
    "orientation": orientation_image,
}
CAPTION_KINDS: tuple[str, ...] = tuple(_DRAW)

# Templates beyond the zero-shot ones, so that the prompts are not the only sentences seen.
_MORE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "texture": ("{}.", "a gray image of {}.", "a surface covered in {}.", "a texture of {}."),
    "count": ("{}.", "a picture showing {}.", "a gray image of {}.", "a dark image with {}."),
    "location": ("one sprite {}.", "an object {}.", "a bright spot {}.", "a single shape {}."),
    "orientation": ("a stick at {}.", "a bar rotated to {}.", "a thin ellipse at {}.", "a stroke at {}."),
}
#: kind -> the caption templates (one ``{}`` for the class name): the zero-shot ones first.
CAPTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    kind: MICRO_TEMPLATES[kind] + _MORE_TEMPLATES[kind] for kind in CAPTION_KINDS
}
#: colour name -> the RGB gain a tinted image's gray is multiplied by.
TINTS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.3, 0.3), "green": (0.3, 1.0, 0.3), "blue": (0.35, 0.45, 1.0),
    "yellow": (1.0, 1.0, 0.3), "cyan": (0.3, 1.0, 1.0), "magenta": (1.0, 0.3, 1.0), "orange": (1.0, 0.6, 0.2),
}
_TINT_SUFFIX = ", tinted {}."


@dataclass(frozen=True)
class CaptionedImages:
    """Images (N, 32, 32, 3) uint8 with their captions, and what each shows: the kind (an index
    into ``CAPTION_KINDS``), the micro task's label, the tint (an index into ``TINTS``, -1: gray)."""

    images: np.ndarray
    captions: tuple[str, ...]
    kinds: np.ndarray
    labels: np.ndarray
    tints: np.ndarray


def captioned_images(count: int, seed: int = 0, stream: int = 0, tint_probability: float = 0.5,
                     kinds: Sequence[str] = CAPTION_KINDS, mix: Sequence[float] | None = None) -> CaptionedImages:
    """``count`` captioned scenes from the stream (seed, stream); a scene is of ``kinds[i]`` with
    probability proportional to ``mix[i]`` (default: all equally likely)."""
    unknown = [kind for kind in kinds if kind not in _DRAW]
    if unknown or not kinds:
        raise AdaptbenchError(f"caption kinds {list(kinds)}: expected some of {', '.join(CAPTION_KINDS)}")
    mix = np.ones(len(kinds)) if mix is None else np.asarray(mix, dtype=np.float64)
    if mix.shape != (len(kinds),) or (mix < 0).any() or mix.sum() <= 0:
        raise AdaptbenchError(f"caption mix {mix.tolist()}: expected {len(kinds)} weights >= 0, not all 0")
    cumulative = np.cumsum(mix / mix.sum())
    rng = np.random.default_rng([STREAM_TAG, seed, stream])
    colours = list(TINTS)
    images = np.empty((count, SIZE, SIZE, 3), np.uint8)
    captions, kind_of, label_of, tint_of = [], np.empty(count, np.int64), np.empty(count, np.int64), np.empty(count, np.int64)
    for i in range(count):
        kind = kinds[min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(kinds) - 1)]
        names = MICRO_CLASS_NAMES[kind]
        label = int(rng.integers(len(names)))
        gray = _DRAW[kind](rng, label)
        templates = CAPTION_TEMPLATES[kind]
        caption = templates[int(rng.integers(len(templates)))].format(names[label])
        tint = int(rng.integers(len(colours))) if rng.random() < tint_probability else -1
        if tint < 0:
            images[i] = gray[..., None]
        else:
            gain = np.asarray(TINTS[colours[tint]])
            images[i] = np.rint(gray[..., None] * gain).astype(np.uint8)  # gain <= 1: stays in 0..255
            caption = caption.removesuffix(".") + _TINT_SUFFIX.format(colours[tint])
        captions.append(caption)
        kind_of[i], label_of[i], tint_of[i] = CAPTION_KINDS.index(kind), label, tint
    return CaptionedImages(images, tuple(captions), kind_of, label_of, tint_of)


def caption_texts() -> tuple[str, ...]:
    """Every word-bearing piece a caption or a zero-shot prompt is made of (templates without
    their ``{}``, class names, tint phrases): a tokenizer's vocabulary covers all captions once it
    covers these, since open_clip's BPE never merges across a space or punctuation."""
    pieces = [template.replace("{}", " ") for kind in CAPTION_KINDS for template in CAPTION_TEMPLATES[kind]]
    pieces += [name for names in MICRO_CLASS_NAMES.values() for name in names]
    pieces += [template.replace("{}", " ") for templates in MICRO_TEMPLATES.values() for template in templates]
    pieces += [_TINT_SUFFIX.format(colour) for colour in TINTS]
    return tuple(dict.fromkeys(pieces))
