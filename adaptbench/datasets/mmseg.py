"""Semantic segmentation in mmsegmentation's folder layout, read the way mmseg reads it
(``mmseg/datasets/basesegdataset.py``, ``load_data_list``)::

    <root>/<folder>/img_dir/{train,val}/<stem><img_suffix>       (default ".jpg")
    <root>/<folder>/ann_dir/{train,val}/<stem><seg_map_suffix>   (default ".png")
    <root>/<folder>/splits/{train,val}.txt                       optional: the split's stems

Without a split list the image folder is listed (recursively, as mmseg does; the stem is the
path below the folder without the suffix); with one (mmseg's ``ann_file``) its lines name the
stems. Every image is paired with the mask of the same stem, and the pairs are sorted by
stem, so a split does not depend on the order the file system lists files in. Named
``variant`` s keep a dataset's own folder names: ``ade20k`` reads ADE's
``images/{training,validation}`` and ``annotations/{training,validation}``; ``voc`` reads
``JPEGImages`` and ``SegmentationClass`` through the lists ``ImageSets/Segmentation/{train,val}.txt``.

These layouts ship train and val only, and val is the reported split; so hyper-parameters
are tuned on a held-out part of train: ``tune_val`` is a fixed, seeded fraction of train
(``options["tune_val_fraction"]``, default 0.1, at least one image) and ``tune_train`` the
rest; the final run trains on ``train`` and evaluates once on ``val``.

Masks are not opened here (``masks.MaskField`` decodes them, applying the dataset's
``reduce_zero_label``), and no torch is imported: only folders are listed and split lists read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AdaptbenchError, did_you_mean
from .formats import SPLITS
from .images import SampleList, read_text_file, shorten

__all__ = ["MMSEG_SPLITS", "TUNE_SEED", "VARIANTS", "Variant", "files_by_stem", "held_out", "mmseg_layout",
           "mmseg_samples", "read_id_list"]

MMSEG_SPLITS: tuple[str, ...] = SPLITS["mmseg"]
TUNE_SEED = 0  # the tune split is the same for every run, method and machine
DEFAULT_TUNE_VAL_FRACTION = 0.1


@dataclass(frozen=True)
class Variant:
    """A dataset's folder names, relative to ``<root>/<folder>``: ``{dir}`` is the split's
    folder name (``dirs`` renames train/val), ``{split}`` the split's own name."""

    images: str
    masks: str
    split_list: str
    lists_required: bool = False  # the image folder holds more than the split (VOC)
    dirs: Mapping[str, str] = field(default_factory=dict)

    def path(self, template: str, split: str) -> str:
        return template.format(dir=self.dirs.get(split, split), split=split)


VARIANTS: dict[str, Variant] = {
    "mmseg": Variant("img_dir/{dir}", "ann_dir/{dir}", "splits/{split}.txt"),
    "ade20k": Variant("images/{dir}", "annotations/{dir}", "splits/{split}.txt",
                      dirs={"train": "training", "val": "validation"}),
    "voc": Variant("JPEGImages", "SegmentationClass", "ImageSets/Segmentation/{split}.txt", lists_required=True),
}


def _variant(options: Mapping[str, Any]) -> Variant:
    name = options.get("variant", "mmseg")
    if name not in VARIANTS:
        raise AdaptbenchError(f"unknown mmseg variant {name!r} in the task's options{did_you_mean(str(name), VARIANTS)}; "
                              f"expected one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def _suffixes(options: Mapping[str, Any]) -> tuple[str, str]:
    return options.get("img_suffix", ".jpg"), options.get("seg_map_suffix", ".png")


def mmseg_layout(folder: str, options: Mapping[str, Any]) -> str:
    """The files a dataset in this layout must have, for error messages."""
    variant, (img_suffix, seg_suffix) = _variant(options), _suffixes(options)
    base, dirs = f"<root>/{folder}", _split_dirs(variant)
    images, masks, lists = (template.format(dir=dirs, split="{train,val}")
                            for template in (variant.images, variant.masks, variant.split_list))
    optional = "" if variant.lists_required else " (optional)"
    return (f"{base}/{images}/<stem>{img_suffix} with masks {base}/{masks}/<stem>{seg_suffix}, "
            f"split lists{optional} {base}/{lists} with one stem per line")


def _split_dirs(variant: Variant) -> str:
    return "{" + ",".join(variant.dirs.get(split, split) for split in ("train", "val")) + "}"


def mmseg_samples(root: Path, folder: str, split: str, options: Mapping[str, Any]) -> SampleList:
    """The (image, mask) pairs of one split, sorted by stem (see the module docstring)."""
    if split not in MMSEG_SPLITS:
        raise AdaptbenchError(f"unknown mmseg split {split!r}{did_you_mean(split, MMSEG_SPLITS)}; "
                              f"expected one of {', '.join(MMSEG_SPLITS)}")
    base = Path(root) / folder
    if split in ("train", "val"):
        return _shipped_split(base, folder, split, options)
    train = _shipped_split(base, folder, "train", options)
    held = set(held_out(len(train), _tune_fraction(options), train.source))
    keep = [index for index in range(len(train)) if (index in held) == (split == "tune_val")]
    where = [train.where[index] for index in keep] if train.where is not None else None
    return SampleList([train[index] for index in keep], train.source, where)


def _tune_fraction(options: Mapping[str, Any]) -> float:
    fraction = options.get("tune_val_fraction", DEFAULT_TUNE_VAL_FRACTION)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise AdaptbenchError(f"task option tune_val_fraction is {shorten(fraction)}; "
                              f"expected a number between 0 and 1 (exclusive)")
    return float(fraction)


def held_out(count: int, fraction: float, source: str = "train") -> list[int]:
    """The sorted indices of the seeded ``fraction`` of ``count`` samples held out for tuning
    (at least one, and at least one left to train on)."""
    size = max(1, math.floor(fraction * count + 0.5))
    if size >= count:
        raise AdaptbenchError(f"train split {source} has {count} image(s), too few to hold out "
                              f"{fraction:g} of it as tune_val; expected at least 2 images")
    order = np.random.default_rng(TUNE_SEED).permutation(count)
    return sorted(int(index) for index in order[:size])


def _shipped_split(base: Path, folder: str, split: str, options: Mapping[str, Any]) -> SampleList:
    """train or val as shipped: listed from the image folder, or from the split list."""
    variant, (img_suffix, seg_suffix) = _variant(options), _suffixes(options)
    expected = f"the mmseg layout {mmseg_layout(folder, options)}"
    image_dir, mask_dir = (base / variant.path(template, split) for template in (variant.images, variant.masks))
    images = files_by_stem(image_dir, img_suffix, "image", expected)
    masks = files_by_stem(mask_dir, seg_suffix, "mask", expected)
    split_list = base / variant.path(variant.split_list, split)
    if variant.lists_required or split_list.is_file():
        listed = read_id_list(split_list, f"{split} list", expected)
        source, where = str(split_list), [f"{split_list}:{number}" for number, _ in listed]
        for number, stem in listed:
            if stem not in images:
                raise AdaptbenchError(f"{split_list}:{number}: image {stem!r} is not in {image_dir}; "
                                      f"expected {image_dir / (stem + img_suffix)}")
        stems = [stem for _, stem in listed]
    else:
        if not images:
            raise AdaptbenchError(f"image folder {image_dir} holds no '*{img_suffix}' image; expected {expected}")
        source, where, stems = str(image_dir), None, list(images)
    order = sorted(range(len(stems)), key=stems.__getitem__)
    pairs = [(images[stems[index]], _mask_of(images[stems[index]], stems[index], masks, mask_dir, seg_suffix))
             for index in order]
    return SampleList(pairs, source, [where[index] for index in order] if where is not None else None)


def _mask_of(image: Path, stem: str, masks: Mapping[str, Path], mask_dir: Path, suffix: str) -> Path:
    if stem not in masks:
        raise AdaptbenchError(f"image {image} has no mask: expected {mask_dir / (stem + suffix)}")
    return masks[stem]


# -- shared with mask_folders.py ---------------------------------------------------------------
def files_by_stem(folder: Path, suffix: str, what: str, expected: str) -> dict[str, Path]:
    """``{stem: path}`` of the files named ``<stem><suffix>`` anywhere under ``folder`` (the
    stem keeps sub-folders, as ``a/b``); one listing of the folder, no ``stat`` per file."""
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise AdaptbenchError(f"{what} folder {folder} {state}; expected {expected}")
    found = {}
    for parent, dirs, names in os.walk(folder):
        dirs.sort()
        relative = Path(parent).relative_to(folder)
        for name in names:
            # dot files are no images: macOS copies leave "._x.jpg" resource forks beside "x.jpg"
            if name.endswith(suffix) and len(name) > len(suffix) and not name.startswith("."):
                found[(relative / name[: -len(suffix)]).as_posix()] = Path(parent) / name
    return found


def read_id_list(path: Path, what: str, expected: str, strip_suffix: str = "") -> list[tuple[int, str]]:
    """(line number, id) for each line of a list of ids (mmseg's ``ann_file``, a split list),
    each id once; ``strip_suffix``: a line may also hold the file name ``<id><suffix>``.
    Blank lines are allowed at the end only, as in a VTAB-1k split file."""
    lines = read_text_file(path, what, expected).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise AdaptbenchError(f"{what} {path} is empty; expected one image id per line")
    numbered, first_seen = [], {}
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or len(text.split()) != 1:
            got = "a blank line" if not text else shorten(text)
            raise AdaptbenchError(f"{path}:{number}: got {got}; expected one image id per line (e.g. "
                                  f"'{numbered[0][1] if numbered else 'img_0001'}'), blank lines only at the end")
        image_id = text[: -len(strip_suffix)] if strip_suffix and text.endswith(strip_suffix) else text
        if image_id in first_seen:
            raise AdaptbenchError(f"{path}:{number}: id {image_id!r} is listed again (first at line "
                                  f"{first_seen[image_id]}); expected each id once")
        first_seen[image_id] = number
        numbered.append((number, image_id))
    return numbered
