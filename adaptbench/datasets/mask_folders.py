"""Binary segmentation as image and mask folders, the layout medical and camouflage sets ship
(Kvasir-SEG: "images and masks in separate folders, the image name and its ground truth the
same", ``DebeshJha/Kvasir-SEG``)::

    <root>/<folder>/images/<id><image_suffix>     Kvasir-SEG: <id>.jpg
    <root>/<folder>/masks/<id><mask_suffix>       Kvasir-SEG: <id>.jpg; SALT: <id>_mask.png
    <root>/<folder>/{train,val,test}.txt          one id per line

An id is the image's file name without ``image_suffix``; a line holding the whole file name
is accepted too. ``trainval`` is train.txt followed by val.txt (an id in both is an error:
it would be trained on while picking hyper-parameters). Each split keeps its list's order.

Only the two folders are listed and the split lists read (no image is opened, no torch);
``masks.MaskField(binary=True)`` thresholds the masks when the split is decoded.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import AdaptbenchError, did_you_mean
from .formats import SPLITS
from .images import SampleList
from .mmseg import files_by_stem, read_id_list

__all__ = ["MASK_FOLDER_SPLITS", "mask_folder_layout", "mask_folder_samples"]

MASK_FOLDER_SPLITS: tuple[str, ...] = SPLITS["mask_folders"]


def _suffixes(options: Mapping[str, Any]) -> tuple[str, str]:
    return options.get("image_suffix", ".jpg"), options.get("mask_suffix", ".png")


def mask_folder_layout(folder: str, options: Mapping[str, Any]) -> str:
    """The files a dataset in this layout must have, for error messages."""
    image_suffix, mask_suffix = _suffixes(options)
    base = f"<root>/{folder}"
    return (f"{base}/images/<id>{image_suffix} with masks {base}/masks/<id>{mask_suffix}, "
            f"split lists {base}/{{train,val,test}}.txt with one id per line")


def mask_folder_samples(root: Path, folder: str, split: str, options: Mapping[str, Any]) -> SampleList:
    """The (image, mask) pairs of one split, in the order of its list (see the module docstring)."""
    if split not in MASK_FOLDER_SPLITS:
        raise AdaptbenchError(f"unknown split {split!r}{did_you_mean(split, MASK_FOLDER_SPLITS)}; "
                              f"expected one of {', '.join(MASK_FOLDER_SPLITS)}")
    base = Path(root) / folder
    image_suffix, mask_suffix = _suffixes(options)
    expected = f"the image/mask folder layout {mask_folder_layout(folder, options)}"
    images = files_by_stem(base / "images", image_suffix, "image", expected)
    masks = files_by_stem(base / "masks", mask_suffix, "mask", expected)
    names = ["train", "val"] if split == "trainval" else [split]
    listed = _listed([base / f"{name}.txt" for name in names], expected, image_suffix)
    pairs = [_pair(image_id, at, images, masks, base, options) for at, image_id in listed]
    return SampleList(pairs, " + ".join(str(base / f"{name}.txt") for name in names), [at for at, _ in listed])


def _listed(lists: list[Path], expected: str, image_suffix: str) -> list[tuple[str, str]]:
    """(``file:line``, id) of every line of ``lists``, in order, each id once across them."""
    listed, first_at = [], {}
    for path in lists:
        for number, image_id in read_id_list(path, "split list", expected, strip_suffix=image_suffix):
            if image_id in first_at:
                raise AdaptbenchError(f"{path}:{number}: id {image_id!r} is also listed at {first_at[image_id]}; "
                                      f"expected train and val to share no image")
            first_at[image_id] = f"{path}:{number}"
            listed.append((first_at[image_id], image_id))
    return listed


def _pair(image_id: str, at: str, images: Mapping[str, Path], masks: Mapping[str, Path], base: Path,
          options: Mapping[str, Any]) -> tuple[Path, Path]:
    image_suffix, mask_suffix = _suffixes(options)
    if image_id not in images:
        raise AdaptbenchError(f"{at}: id {image_id!r} has no image; expected {base / 'images' / (image_id + image_suffix)}")
    if image_id not in masks:
        raise AdaptbenchError(f"image {images[image_id]} has no mask: expected "
                              f"{base / 'masks' / (image_id + mask_suffix)} (listed at {at})")
    return images[image_id], masks[image_id]
