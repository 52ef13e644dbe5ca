"""FGVC in VPT's JSON layout (``src/data/datasets/json_dataset.py``)::

    <root>/<folder>/{train,val,test}.json     {"<image path>": <class id>, ...}
    <root>/<folder>/<image sub-folder>/<image path>

Class ids may start at 1 and have gaps: they are remapped to 0..C-1 in sorted order of the
ids found in ``train.json`` (the training split holds every class). ``trainval`` is
train.json + val.json. Folders and class counts: ``adaptbench.tasks.catalog.FGVC_DATASETS``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import AdaptbenchError, did_you_mean
from ..tasks.catalog import FGVC_DATASETS, SPLITS
from .images import Sample, check_images_exist

FGVC_SPLITS = SPLITS["fgvc"]
LAYOUT = '<root>/<dataset folder>/{train,val,test}.json, each {"<image path>": <class id>}'


def read_annotations(path: Path) -> dict[str, int]:
    if not path.is_file():
        raise AdaptbenchError(f"annotation file {path} does not exist; expected the FGVC layout {LAYOUT}")
    try:
        annotations = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise AdaptbenchError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(annotations, dict):
        raise AdaptbenchError(f"{path}: expected a JSON object {{image path: class id}}")
    for key, value in annotations.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise AdaptbenchError(f"{path}: class id of {key!r} is {value!r}; expected an integer")
    return annotations


def fgvc_samples(root: Path, dataset: str, split: str) -> list[Sample]:
    """The validated samples of one split of an FGVC dataset, with contiguous labels."""
    if dataset not in FGVC_DATASETS:
        raise AdaptbenchError(f"unknown FGVC dataset {dataset!r}{did_you_mean(dataset, FGVC_DATASETS)}")
    if split not in FGVC_SPLITS:
        raise AdaptbenchError(f"unknown FGVC split {split!r}; expected one of {FGVC_SPLITS}")
    folder_name, image_folder, _ = FGVC_DATASETS[dataset]
    folder = Path(root) / folder_name
    train_file = folder / "train.json"
    contiguous = {cid: i for i, cid in enumerate(sorted(set(read_annotations(train_file).values())))}
    files = ["train.json", "val.json"] if split == "trainval" else [f"{split}.json"]
    samples = []
    for name in files:
        path = folder / name
        for image, class_id in read_annotations(path).items():
            if class_id not in contiguous:
                raise AdaptbenchError(f"{path}: class id {class_id} of {image!r} does not occur in {train_file}")
            samples.append((folder / image_folder / image, contiguous[class_id]))
    check_images_exist(samples, " + ".join(str(folder / n) for n in files))
    return samples
