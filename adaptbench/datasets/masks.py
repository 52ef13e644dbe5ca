"""The ``masks`` field of the decode cache: a segmentation mask as an ``(H, W) uint8`` label map.

A segmentation sample is ``(image path, mask path)``. Two kinds of mask files exist:

* label maps (mmseg layouts): one class index per pixel, 255 = ignore, stored as ``L``,
  ``P`` (a palette PNG such as VOC's, whose pixel values are the labels; the colours are only
  for viewing) or 16/32-bit integer PNGs. With ``reduce_zero_label`` (ADE20K) the file's 0 is
  "other" and class k is stored as k + 1; the labels are then mapped as mmseg's
  ``LoadAnnotations`` maps them: 0 -> 255, every other value minus 1, 255 stays 255.
* binary masks (medical and camouflage sets): any image whose bright pixels are foreground;
  Kvasir-SEG's are JPEGs, noisy around 0 and 255, hence ``value > threshold`` -> 1.

A mask must have its image's size (a resized or misnamed mask would silently misalign the
labels) and hold only known labels (a label >= ``num_classes`` would fail deep inside the
loss, or be counted as a class that does not exist). Every problem is one line naming the
mask file and the split list or folder that listed it. The label map is resized with
nearest-neighbour resampling (torchvision's ``transforms.v2`` on a ``tv_tensors.Mask``), so
no label is invented between two classes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import AdaptbenchError
from .decoded import ArraySpec, Field
from .images import DECODE_ERRORS, Sample, unreadable_image_error

__all__ = ["IGNORE_INDEX", "LABEL_MAP_MODES", "MaskField", "reduce_zero_label"]

IGNORE_INDEX = 255
#: PIL modes that hold one integer per pixel: 8-bit gray, palette indices, 16 and 32-bit integers.
LABEL_MAP_MODES = frozenset({"L", "P", "I;16", "I;16L", "I;16B", "I"})
LABEL_MAP = "a single-channel label map (class index per pixel, 255 = ignore)"


def reduce_zero_label(labels: np.ndarray) -> np.ndarray:
    """mmseg's ``reduce_zero_label``: 0 ("other") -> 255 (ignore), k -> k - 1, 255 stays 255."""
    return np.where((labels == 0) | (labels == IGNORE_INDEX), IGNORE_INDEX, labels - 1).astype(labels.dtype)


def _mask_error(mask: Path, source: str, problem: str, expected: str) -> AdaptbenchError:
    """The one line of every mask problem: the file, the problem, who listed it, what was expected."""
    listed = f" (listed in {source})" if source else ""
    return AdaptbenchError(f"mask {os.path.abspath(mask)} {problem}{listed}; expected {expected}")


@dataclass(frozen=True)
class MaskField(Field):
    """The mask as an ``(H, W) uint8`` label map at ``size`` = (height, width), nearest resampled."""

    size: tuple[int, int]
    num_classes: int
    binary: bool = False
    reduce_zero_label: bool = False
    threshold: int = 127

    def __post_init__(self) -> None:
        if len(self.size) != 2 or any(not isinstance(side, (int, np.integer)) or side < 1 for side in self.size):
            raise AdaptbenchError(f"mask size {self.size!r}; expected (height, width), two positive integers")
        if not 1 <= self.num_classes <= IGNORE_INDEX:
            raise AdaptbenchError(f"mask field with {self.num_classes} classes; expected 1..255 (255 is the "
                                  f"ignore index, so a uint8 label map holds at most 255 classes)")
        if self.binary and (self.reduce_zero_label or self.num_classes != 2):
            raise AdaptbenchError(f"binary mask field with num_classes={self.num_classes}, reduce_zero_label="
                                  f"{self.reduce_zero_label}; expected 2 classes (background, foreground) "
                                  f"and no reduce_zero_label")
        if not 0 <= self.threshold <= 254:
            raise AdaptbenchError(f"mask threshold {self.threshold}; expected 0..254 (foreground is value > threshold)")

    def array_spec(self) -> ArraySpec:
        return ArraySpec(tuple(self.size), "uint8")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "size": list(self.size), "num_classes": self.num_classes,
                "binary": self.binary, "reduce_zero_label": self.reduce_zero_label, "threshold": self.threshold}

    def decode(self, sample: Sample, source: str) -> np.ndarray:
        image_path, mask_path = Path(sample[0]), Path(sample[1])
        mask = _open_mask(mask_path, source)
        _check_size(mask, mask_path, image_path, source)
        labels = self._binary(mask) if self.binary else self._labels(mask, mask_path, source)
        return _resize_nearest(labels, self.size)

    def _binary(self, mask: Image.Image) -> np.ndarray:
        return (np.asarray(mask.convert("L")) > self.threshold).astype(np.uint8)

    def _labels(self, mask: Image.Image, path: Path, source: str) -> np.ndarray:
        if mask.mode not in LABEL_MAP_MODES:
            article = "an" if mask.mode[0] in "AEFIHLMNORSX" else "a"
            raise _mask_error(path, source, f"is {article} {mask.mode} image", LABEL_MAP)
        raw = np.asarray(mask).astype(np.int64)  # 16/32-bit maps: check before narrowing to uint8
        _check_labels(raw, path, source, self.num_classes, self.reduce_zero_label)
        labels = raw.astype(np.uint8)
        return reduce_zero_label(labels) if self.reduce_zero_label else labels


def _open_mask(path: Path, source: str) -> Image.Image:
    """The mask, fully decoded (a truncated file fails here, naming it)."""
    try:
        with Image.open(path) as mask:
            mask.load()
            return mask.copy()  # detached from the closed file
    except FileNotFoundError:
        raise _mask_error(path, source, "does not exist", "a mask file for every listed image") from None
    except IsADirectoryError:
        raise _mask_error(path, source, "is a directory", "a mask image file") from None
    except DECODE_ERRORS as err:
        text = str(err).strip()
        reason = text.splitlines()[0] if text else type(err).__name__
        raise _mask_error(path, source, f"cannot be read: {reason}", "a readable image file") from None


def _check_size(mask: Image.Image, mask_path: Path, image_path: Path, source: str) -> None:
    try:
        with Image.open(image_path) as image:  # the header only: the image field decodes it
            image_size = image.size
    except FileNotFoundError:
        raise unreadable_image_error(image_path, source, "the file does not exist") from None
    except DECODE_ERRORS as err:
        raise unreadable_image_error(image_path, source, err) from None
    if mask.size != image_size:
        raise _mask_error(mask_path, source, f"is {_wxh(mask.size)} but its image {os.path.abspath(image_path)} "
                          f"is {_wxh(image_size)}", "the same size")


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _check_labels(raw: np.ndarray, path: Path, source: str, num_classes: int, reduce_zero: bool) -> None:
    """Every value a class (after reduce_zero_label) or 255; else name the first bad value."""
    top = num_classes if reduce_zero else num_classes - 1  # reduced: the file's 1..C are classes 0..C-1
    bad = (raw < 0) | ((raw > top) & (raw != IGNORE_INDEX))
    if not bad.any():
        return
    value = int(raw[bad].min())
    count = int((raw == value).sum())
    allowed = (f"0..{top} (reduce_zero_label: 0 is ignored, k is class k-1 of {num_classes}) or 255 = ignore"
               if reduce_zero else f"0..{top} ({num_classes} classes) or 255 = ignore")
    raise _mask_error(path, source, f"holds label value {value} in {count} pixel(s)", f"values {allowed}")


def _resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    # torch is imported here, not at module level: readers and ``adaptbench ls`` stay light
    import torch
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional

    resized = functional.resize(tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(labels))[None]), list(size))
    return resized[0].numpy().astype(np.uint8, copy=False)
