"""CoOp's few-shot CLIP benchmark on disk (KaiyangZhou/CoOp ``DATASETS.md``, ``datasets/*.py``),
read in three layouts (a task's ``options["layout"]``):

``split_zhou`` (nine of the eleven data sets)::

    <root>/<folder>/<image folder>/<image path>
    <root>/<folder>/split_zhou_<Name>.json   {"train": [["<image path>", <label>, "<class name>"], ...],
                                              "val": [...], "test": [...]}

image paths relative to the image folder (CoOp ``oxford_pets.py``, ``save_split`` /
``read_split``); the class names are the entries' third column, by label.

``fgvc_aircraft``: ``<root>/fgvc_aircraft/variants.txt`` (one class name per line, the label
is the line's index) and ``images_variant_{train,val,test}.txt`` with lines
``<image id> <variant>``, images ``images/<image id>.jpg`` (CoOp ``fgvc_aircraft.py``).

``imagenet``: ``<root>/imagenet/images/{train,val}/<wnid>/<image>`` with ``classnames.txt``
lines ``<wnid> <class name>``; labels follow the sorted wnids, as CoOp's sorted folders do
(and ImageNet's usual class index). CoOp tests on ImageNet's val; it tunes nothing, so it
has no val split. Here ``val`` is a seeded, fixed ``tune_val_per_class`` images of each
class held out of ``images/train`` (default 10 per class, PETL_Vision's ImageNet val size),
and ``train`` is the rest, so tuning never evaluates on images it trained on; ``test`` is
``images/val``.

A split file is read whole and strictly, every problem one line naming the file and the
entry (``train[12]``) or line: the three split keys, non-empty lists of well-formed entries,
labels in ``0..C-1``, one class name per label and one label per class name. Only split
files are read and folders listed: no image is opened, and neither torch nor numpy is
imported (images are checked when the decode cache first decodes the split).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import AdaptbenchError, did_you_mean
from .formats import SPLITS
from .images import SampleList, read_text_file, shorten

__all__ = ["COOP_SPLITS", "LAYOUTS", "coop_class_names", "coop_layout", "coop_samples", "read_zhou_split"]

COOP_SPLITS: tuple[str, ...] = SPLITS["coop"]
SHIPPED = ("train", "val", "test")
LAYOUTS = ("split_zhou", "fgvc_aircraft", "imagenet")
ENTRY = '["<image path>", <label>, "<class name>"]'
OBJECT = '{"train": [' + ENTRY + ', ...], "val": [...], "test": [...]}'
TUNE_SEED = 0  # ImageNet's held-out val is the same for every run, method and machine
DEFAULT_TUNE_VAL_PER_CLASS = 10


# -- layouts -----------------------------------------------------------------------------------
def _layout(options: Mapping[str, Any]) -> str:
    name = options.get("layout", "split_zhou")
    if name not in LAYOUTS:
        raise AdaptbenchError(f"unknown CoOp layout {name!r} in the task's options{did_you_mean(str(name), LAYOUTS)}; "
                              f"expected one of {', '.join(LAYOUTS)}")
    return name


def _files(folder: str, options: Mapping[str, Any]) -> tuple[str, str, str]:
    """(layout, image folder, split file) of a task, from its options."""
    layout = _layout(options)
    default = {"imagenet": "classnames.txt", "fgvc_aircraft": "variants.txt"}.get(layout)
    split_file = options.get("split_file", default)
    if not split_file:
        raise AdaptbenchError(f"CoOp task on {folder!r} has no split_file in its options; expected the name of "
                              f"its split file, e.g. split_zhou_OxfordPets.json")
    return layout, options.get("image_folder", "images"), split_file


def coop_layout(folder: str, options: Mapping[str, Any]) -> str:
    """The files a CoOp dataset must have, for error messages."""
    layout, image_folder, split_file = _files(folder, options)
    base = f"<root>/{folder}"
    images = f"{base}/{image_folder}" if image_folder else base
    if layout == "imagenet":
        return (f"{images}/{{train,val}}/<wnid>/<image> with {base}/{split_file} lines '<wnid> <class name>' "
                f"(CoOp's ImageNet layout)")
    if layout == "fgvc_aircraft":
        return (f"{base}/{split_file} (one variant per line), {base}/images_variant_{{train,val,test}}.txt lines "
                f"'<image id> <variant>', images {images}/<image id>.jpg")
    return f"{base}/{split_file} = {OBJECT}, image paths relative to {images}/"


def coop_samples(root: Path, folder: str, split: str, num_classes: int, options: Mapping[str, Any]) -> SampleList:
    """The (image path, label) samples of one split (see the module docstring)."""
    if split not in SHIPPED:
        raise AdaptbenchError(f"unknown CoOp split {split!r}{did_you_mean(split, SHIPPED)}; "
                              f"expected one of {', '.join(SHIPPED)}")
    layout, image_folder, split_file = _files(folder, options)
    base = _dataset_folder(root, folder, options)
    if layout == "imagenet":
        return _imagenet_samples(base, folder, split, num_classes, options)
    images = _image_folder(base, image_folder, folder, options)
    if layout == "fgvc_aircraft":
        return _aircraft_samples(base, images, split, num_classes, folder, options)
    path = base / split_file
    entries = read_zhou_split(path, num_classes, coop_layout(folder, options))[split]
    return SampleList([(images / image, label) for _, image, label, _ in entries], f"{path}, key {split!r}",
                      [f"{path}: {at}" for at, _, _, _ in entries])


def coop_class_names(root: Path, folder: str, num_classes: int, options: Mapping[str, Any]) -> tuple[str, ...]:
    """The class names in label order, as the data name them."""
    layout, _, split_file = _files(folder, options)
    base = _dataset_folder(root, folder, options)
    expected = coop_layout(folder, options)
    if layout == "imagenet":
        return tuple(name for _, name in _imagenet_classes(base / split_file, num_classes, expected))
    if layout == "fgvc_aircraft":
        return tuple(_variants(base / split_file, num_classes, expected))
    path = base / split_file
    named: dict[int, str] = {}
    for entries in read_zhou_split(path, num_classes, expected).values():
        named.update((label, name) for _, _, label, name in entries)
    missing = [label for label in range(num_classes) if label not in named]
    if missing:
        raise AdaptbenchError(f"{path}: label(s) {shorten(missing)} occur in no split, so have no class name; "
                              f"expected every label of 0..{num_classes - 1} to be named")
    return tuple(named[label] for label in range(num_classes))


def _dataset_folder(root: Path, folder: str, options: Mapping[str, Any]) -> Path:
    base = Path(root) / folder
    if not base.is_dir():
        state = "is not a folder" if base.exists() else "does not exist"
        raise AdaptbenchError(f"CoOp dataset folder {base} {state}; expected {coop_layout(folder, options)}")
    return base


def _image_folder(base: Path, image_folder: str, folder: str, options: Mapping[str, Any]) -> Path:
    images = base / image_folder
    if not images.is_dir():
        state = "is not a folder" if images.exists() else "does not exist"
        raise AdaptbenchError(f"image folder {images} {state}; expected {coop_layout(folder, options)}")
    return images


# -- split_zhou --------------------------------------------------------------------------------
def read_zhou_split(path: Path, num_classes: int, expected: str = "") -> dict[str, list[tuple[str, str, int, str]]]:
    """``{split: [(where, image path, label, class name), ...]}`` of a ``split_zhou_*.json``,
    checked whole (``where``: ``train[12]``); each problem is one line naming the file."""
    path = Path(path)
    text = read_text_file(path, "split file", f"the CoOp layout {expected or OBJECT}")
    if not text.strip():
        raise AdaptbenchError(f"split file {path} is empty; expected a JSON object {OBJECT}")
    try:
        split = json.loads(text)
    except json.JSONDecodeError as err:
        raise AdaptbenchError(f"{path}:{err.lineno}: invalid JSON ({err.msg}, column {err.colno}); "
                              f"expected {OBJECT}") from None
    if not isinstance(split, dict):
        raise AdaptbenchError(f"{path}: holds a JSON {type(split).__name__}; expected an object {OBJECT}")
    missing = [key for key in SHIPPED if key not in split]
    if missing:
        raise AdaptbenchError(f"{path}: no {missing[0]!r} key (keys: {shorten(sorted(split))}); "
                              f"expected the keys 'train', 'val' and 'test', {OBJECT}")
    checker = _Names(path, num_classes)
    return {key: [checker.entry(key, index, entry) for index, entry in enumerate(_entries(path, key, split[key]))]
            for key in SHIPPED}


def _entries(path: Path, key: str, entries: object) -> list:
    if not isinstance(entries, list):
        raise AdaptbenchError(f"{path}: {key!r} holds {shorten(entries, 60)}; expected a list of {ENTRY}")
    if not entries:
        raise AdaptbenchError(f"{path}: split {key!r} is empty; expected at least one entry {ENTRY}")
    return entries


class _Names:
    """Checks entries one by one: each well formed, its label in range, labels and class names
    one-to-one across the whole file, and no image in two splits (a test image seen in
    training); remembers where each was first seen."""

    def __init__(self, path: Path, num_classes: int):
        self.path, self.num_classes = path, num_classes
        self.name_of: dict[int, tuple[str, str]] = {}  # label -> (name, where)
        self.label_of: dict[str, tuple[int, str]] = {}  # name -> (label, where)
        self.split_of: dict[str, tuple[str, str]] = {}  # image path -> (split, where)

    def entry(self, key: str, index: int, entry: object) -> tuple[str, str, int, str]:
        at = f"{key}[{index}]"
        if not _well_formed(entry):
            raise AdaptbenchError(f"{self.path}: {at} is {shorten(entry)}; expected {ENTRY} "
                                  f"(a non-empty path, an integer label, a non-empty class name)")
        image, label, name = entry
        if not 0 <= label < self.num_classes:
            raise AdaptbenchError(f"{self.path}: {at}: label {label} is outside 0..{self.num_classes - 1}; "
                                  f"expected a label of the task's {self.num_classes} classes")
        named, first = self.name_of.setdefault(label, (name, at))
        if named != name:
            raise AdaptbenchError(f"{self.path}: {at} names label {label} {name!r}, but {first} names it {named!r}; "
                                  f"expected one class name per label")
        labelled, first = self.label_of.setdefault(name, (label, at))
        if labelled != label:
            raise AdaptbenchError(f"{self.path}: {at} gives class {name!r} label {label}, but {first} gives it "
                                  f"label {labelled}; expected one label per class name")
        listed, first = self.split_of.setdefault(image, (key, at))
        if listed != key:
            raise AdaptbenchError(f"{self.path}: {at} lists {image!r}, which {first} lists too; expected train, "
                                  f"val and test to share no image")
        return at, image, label, name


def _well_formed(entry: object) -> bool:
    if not isinstance(entry, list) or len(entry) != 3:
        return False
    image, label, name = entry
    return (isinstance(image, str) and bool(image.strip()) and isinstance(label, int)
            and not isinstance(label, bool) and isinstance(name, str) and bool(name.strip()))


# -- fgvc_aircraft -----------------------------------------------------------------------------
def _lines(path: Path, what: str, expected: str) -> list[tuple[int, str]]:
    """(line number, stripped line) of a text list; blank lines only at the end, none empty."""
    lines = read_text_file(path, what, expected).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise AdaptbenchError(f"{what} {path} is empty; expected {expected}")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise AdaptbenchError(f"{path}:{number}: blank line; expected {expected}, blank lines only at the end")
    return [(number, line.strip()) for number, line in enumerate(lines, start=1)]


def _variants(path: Path, num_classes: int, expected: str) -> list[str]:
    variants, first = [], {}
    for number, variant in _lines(path, "variant list", expected):
        if variant in first:
            raise AdaptbenchError(f"{path}:{number}: variant {variant!r} is listed again (first at line "
                                  f"{first[variant]}); expected each variant once")
        first[variant] = number
        variants.append(variant)
    if len(variants) != num_classes:
        raise AdaptbenchError(f"{path} lists {len(variants)} variants; expected {num_classes}, one per line")
    return variants


def _aircraft_samples(base: Path, images: Path, split: str, num_classes: int, folder: str,
                      options: Mapping[str, Any]) -> SampleList:
    expected = coop_layout(folder, options)
    variants_path = base / _files(folder, options)[2]
    label_of = {variant: label for label, variant in enumerate(_variants(variants_path, num_classes, expected))}
    path = base / f"images_variant_{split}.txt"
    samples, where = [], []
    for number, line in _lines(path, "split list", expected):
        image_id, _, variant = line.partition(" ")
        variant = variant.strip()
        if not variant:
            raise AdaptbenchError(f"{path}:{number}: got {shorten(line)}; expected '<image id> <variant>' "
                                  f"(e.g. '1025794 707-320')")
        if variant not in label_of:
            raise AdaptbenchError(f"{path}:{number}: variant {variant!r} is not in {variants_path}"
                                  f"{did_you_mean(variant, label_of)}; expected one of its {num_classes} variants")
        samples.append((images / f"{image_id}.jpg", label_of[variant]))
        where.append(f"{path}:{number}")
    return SampleList(samples, str(path), where)


# -- imagenet ----------------------------------------------------------------------------------
def _imagenet_classes(path: Path, num_classes: int, expected: str) -> list[tuple[str, str]]:
    """(wnid, class name) in label order: sorted by wnid."""
    names: dict[str, str] = {}
    first: dict[str, int] = {}
    for number, line in _lines(path, "class list", expected):
        wnid, _, name = line.partition(" ")
        if not name.strip():
            raise AdaptbenchError(f"{path}:{number}: got {shorten(line)}; expected '<wnid> <class name>' "
                                  f"(e.g. 'n01440764 tench')")
        if wnid in first:
            raise AdaptbenchError(f"{path}:{number}: wnid {wnid!r} is listed again (first at line {first[wnid]}); "
                                  f"expected each class once")
        first[wnid], names[wnid] = number, name.strip()
    if len(names) != num_classes:
        raise AdaptbenchError(f"{path} lists {len(names)} classes; expected {num_classes}, one '<wnid> <class name>' "
                              f"per line")
    return sorted(names.items())


def _imagenet_samples(base: Path, folder: str, split: str, num_classes: int,
                      options: Mapping[str, Any]) -> SampleList:
    _, image_folder, split_file = _files(folder, options)
    expected = coop_layout(folder, options)
    wnids = [wnid for wnid, _ in _imagenet_classes(base / split_file, num_classes, expected)]
    split_dir = _image_folder(base, image_folder, folder, options) / ("val" if split == "test" else "train")
    files = _class_folders(split_dir, wnids, base / split_file, expected)
    source = str(split_dir)
    if split != "test":
        per_class = _tune_val_per_class(options)
        files = [_held_out_part(split_dir / wnid, names, per_class, split == "val")
                 for wnid, names in zip(wnids, files, strict=True)]
        source += (f", the {per_class} images per class held out for tuning" if split == "val"
                   else f" less the {per_class} images per class held out as val")
    samples = [(split_dir / wnid / name, label) for label, wnid in enumerate(wnids) for name in files[label]]
    return SampleList(samples, source)


def _class_folders(split_dir: Path, wnids: list[str], class_list: Path, expected: str) -> list[list[str]]:
    """The sorted image file names of each class folder ``split_dir/<wnid>``, in ``wnids`` order."""
    if not split_dir.is_dir():
        state = "is not a folder" if split_dir.exists() else "does not exist"
        raise AdaptbenchError(f"image folder {split_dir} {state}; expected {expected}")
    folders, loose = set(), []
    with os.scandir(split_dir) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            (folders.add if entry.is_dir() else loose.append)(entry.name)
    if loose and not folders:  # ImageNet's val as shipped: 50,000 images in one folder
        raise AdaptbenchError(f"{split_dir} holds images directly (e.g. {sorted(loose)[0]!r}) and no class folder; "
                              f"expected {split_dir}/<wnid>/<image>, one folder per class (sort ImageNet's val into "
                              f"class folders)")
    unknown = sorted(folders - set(wnids))
    if unknown:
        raise AdaptbenchError(f"class folder {split_dir / unknown[0]} is not listed in {class_list}"
                              f"{did_you_mean(unknown[0], wnids)}; expected the folders to be its wnids")
    for wnid in wnids:
        if wnid not in folders:
            raise AdaptbenchError(f"class folder {split_dir / wnid} does not exist; expected a folder for each of the "
                                  f"{len(wnids)} classes of {class_list}")
    return [_images_in(split_dir / wnid) for wnid in wnids]


def _images_in(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        names = sorted(entry.name for entry in entries if not entry.name.startswith(".") and entry.is_file())
    if not names:
        raise AdaptbenchError(f"class folder {folder} holds no image; expected at least one image per class")
    return names


def _tune_val_per_class(options: Mapping[str, Any]) -> int:
    count = options.get("tune_val_per_class", DEFAULT_TUNE_VAL_PER_CLASS)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise AdaptbenchError(f"task option tune_val_per_class is {shorten(count)}; expected an integer >= 1")
    return count


def _held_out_part(folder: Path, names: list[str], count: int, held: bool) -> list[str]:
    """The ``count`` names of ``folder`` held out for tuning (``held``) or the rest, drawn with
    a seed of the folder's name alone, so one class's images never move another's draw."""
    if count >= len(names):
        raise AdaptbenchError(f"class folder {folder} holds {len(names)} image(s), too few to hold out {count} for "
                              f"the tune split 'val'; expected more than {count}")
    chosen = set(random.Random(f"{TUNE_SEED}:{folder.name}").sample(range(len(names)), count))
    return [name for index, name in enumerate(names) if (index in chosen) == held]
