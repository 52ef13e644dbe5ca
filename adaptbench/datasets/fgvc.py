"""FGVC in VPT's JSON layout (``src/data/datasets/json_dataset.py``)::

    <root>/<folder>/{train,val,test}.json     {"<image path>": <class id>, ...}
    <root>/<folder>/<image sub-folder>/<image path>

Class ids may start at 1 and have gaps: they are remapped to 0..C-1 in sorted order of the
ids found in ``train.json`` (the training split holds every class, so val and test get the
same mapping; an id that only val or test knows is an error). ``trainval`` is train.json
followed by val.json.

An annotation file is read strictly, every problem one line naming the file (and the key):
UTF-8 JSON, an object with at least one image, each image path non-empty and listed once,
each class id a non-negative integer.

The folder names, image sub-folders, class counts and split names (``FGVC_DATASETS``,
``FGVC_SPLITS``) live in ``formats.py``, plain data that ``adaptbench ls`` reads without
torch; they are re-exported here.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import AdaptbenchError, did_you_mean
from .formats import FGVC_DATASETS, FGVC_SPLITS
from .images import Sample, SampleList, check_images_exist, read_text_file, shorten

__all__ = ["FGVC_DATASETS", "FGVC_SPLITS", "fgvc_samples", "read_annotations"]

LAYOUT = '<root>/<dataset folder>/{train,val,test}.json, each {"<image path>": <class id>}'
OBJECT = '{"<image path>": <class id>, ...}'


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    # json.loads keeps the last of two equal keys silently: an image listed twice
    found = {}
    for key, value in pairs:
        if key in found:
            raise _DuplicateKey(key)
        found[key] = value
    return found


def read_annotations(path: Path) -> dict[str, int]:
    """One annotation file as {image path: class id}, with errors that name the file."""
    path = Path(path)
    text = read_text_file(path, "annotation file", f"the FGVC layout {LAYOUT}")
    if not text.strip():
        raise AdaptbenchError(f"annotation file {path} is empty; expected a JSON object {OBJECT}")
    try:
        annotations = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as err:
        raise AdaptbenchError(
            f"{path}:{err.lineno}: invalid JSON ({err.msg.removesuffix(' at')}, column {err.colno}); "
            f"expected a JSON object {OBJECT}"
        ) from None
    except _DuplicateKey as err:
        raise AdaptbenchError(f"{path}: image {shorten(err.key)} is listed twice; expected each image once") from None
    if not isinstance(annotations, dict):
        raise AdaptbenchError(
            f"{path}: holds a JSON {_json_type(annotations)}; expected an object {OBJECT}"
        )
    if not annotations:
        raise AdaptbenchError(f"{path}: holds an empty JSON object (no images); expected an object {OBJECT} "
                              f"with at least one image")
    for image, class_id in annotations.items():
        if not image.strip():
            raise AdaptbenchError(f"{path}: image path {image!r} is empty; expected {OBJECT}")
        if not isinstance(class_id, int) or isinstance(class_id, bool):  # bool is an int subclass
            raise AdaptbenchError(f"{path}: class id of {shorten(image)} is {shorten(class_id)}; expected an integer")
        if class_id < 0:
            raise AdaptbenchError(f"{path}: class id of {shorten(image)} is {class_id}; expected an integer >= 0")
    return annotations


def _json_type(value: object) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def fgvc_samples(root: Path, dataset: str, split: str, check_files: bool = True) -> SampleList:
    """The validated samples of one split of an FGVC dataset, with contiguous labels;
    ``check_files``: also check that every listed image exists (see ``vtab_samples``)."""
    if dataset not in FGVC_DATASETS:
        raise AdaptbenchError(f"unknown FGVC dataset {dataset!r}{did_you_mean(dataset, FGVC_DATASETS)}")
    if split not in FGVC_SPLITS:
        raise AdaptbenchError(f"unknown FGVC split {split!r}; expected one of {', '.join(FGVC_SPLITS)}")
    folder_name, image_folder, num_classes = FGVC_DATASETS[dataset]
    folder = Path(root) / folder_name
    contiguous = _contiguous_ids(folder / "train.json", num_classes)
    files = ["train.json", "val.json"] if split == "trainval" else [f"{split}.json"]
    samples, where = [], []
    for name in files:
        labelled = _labelled(folder / name, folder / image_folder, contiguous)
        samples += [sample for sample, _ in labelled]
        where += [f"{folder / name}, key {shorten(image)}" for _, image in labelled]
    samples = SampleList(samples, " + ".join(str(folder / name) for name in files), where)
    if check_files:
        check_images_exist(samples)
    return samples


def _contiguous_ids(train_file: Path, num_classes: int) -> dict[int, int]:
    """Class id -> 0..C-1, in sorted order of the ids that train.json uses."""
    class_ids = sorted(set(read_annotations(train_file).values()))
    # More ids than the head has outputs would fail later, deep inside the loss.
    if len(class_ids) > num_classes:
        raise AdaptbenchError(
            f"{train_file}: {len(class_ids)} distinct class ids; expected at most {num_classes}"
        )
    return {class_id: index for index, class_id in enumerate(class_ids)}


def _labelled(path: Path, image_root: Path, contiguous: dict[int, int]) -> list[tuple[Sample, str]]:
    """((image path, contiguous label), the key that listed it) for every entry of ``path``."""
    samples = []
    for image, class_id in read_annotations(path).items():
        if class_id not in contiguous:
            raise AdaptbenchError(
                f"{path}: class id {class_id} of {image!r} does not occur in "
                f"{path.parent / 'train.json'}; expected one of the ids train.json uses"
            )
        samples.append(((image_root / image, contiguous[class_id]), image))
    return samples
