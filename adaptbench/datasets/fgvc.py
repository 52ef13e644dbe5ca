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

Class names (``fgvc_class_names``) come from the data where its own files hold them: CUB's and
Stanford Dogs' class folders (``001.Black_footed_Albatross/...``, ``n02085620-Chihuahua/...``,
the first component of each image path in ``train.json``), NABirds' ``classes.txt`` (``817 Oak
Titmouse``) by the class-id folder (``0817/...``). Stanford Cars keeps its names in MATLAB's
``devkit/cars_meta.mat`` and VPT's Oxford Flowers folder holds none: those have none here (the
package data in ``_prompts/fgvc.json`` names the flowers).

The folder names, image sub-folders, class counts and split names (``FGVC_DATASETS``,
``FGVC_SPLITS``) live in ``formats.py``, plain data that ``adaptbench ls`` reads without
torch; they are re-exported here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from ..errors import AdaptbenchError, did_you_mean
from .formats import FGVC_DATASETS, FGVC_SPLITS
from .images import Sample, SampleList, check_images_exist, read_text_file, shorten

__all__ = ["FGVC_DATASETS", "FGVC_SPLITS", "fgvc_class_names", "fgvc_samples", "read_annotations"]

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


# -- class names -------------------------------------------------------------------------------
#: dataset -> (the class folder's pattern, its example, folder -> name); NABirds' folder is a
#: class id that its classes.txt names.
_CLASS_FOLDERS: dict[str, tuple[str, str, Callable[[re.Match], str]]] = {
    "cub": (r"\d+\.(.+)", "001.Black_footed_Albatross", lambda found: found[1].replace("_", " ")),
    "stanford_dogs": (r"n\d+-(.+)", "n02085620-Chihuahua", lambda found: found[1].replace("_", " ")),
    "nabirds": (r"\d+", "0817", lambda found: found[0]),
}


def fgvc_class_names(root: Path, dataset: str, num_classes: int | None = None) -> tuple[str, ...] | None:
    """The class names in label order, from the dataset's own files (see the module
    docstring); None for a dataset whose files do not name its classes. ``num_classes``:
    the task's (default: the dataset's)."""
    if dataset not in _CLASS_FOLDERS:
        return None
    folder_name, _, classes = FGVC_DATASETS[dataset]
    num_classes = classes if num_classes is None else num_classes
    train = Path(root) / folder_name / "train.json"
    folders = _class_folders(train, dataset, num_classes)
    if dataset == "nabirds":
        names = _nabirds_classes(Path(root) / folder_name / "classes.txt")
        for class_id in folders:
            if int(class_id) not in names:
                raise AdaptbenchError(f"class id {int(class_id)} (folder {class_id!r} of {train}) is not in "
                                      f"{Path(root) / folder_name / 'classes.txt'}; expected a line "
                                      f"'<id> <class name>' for it")
        return tuple(names[int(class_id)] for class_id in folders)
    return tuple(folders)


def _class_folders(train: Path, dataset: str, num_classes: int) -> list[str]:
    """The name (CUB, Dogs) or the class id folder (NABirds) of each label, from the folder
    that ``train.json`` puts its images in; one folder per class and one class per folder."""
    pattern, example, name_of = _CLASS_FOLDERS[dataset]
    annotations = read_annotations(train)
    label_of = {class_id: index for index, class_id in enumerate(sorted(set(annotations.values())))}
    if len(label_of) != num_classes:
        raise AdaptbenchError(f"{train}: {len(label_of)} distinct class ids; expected {num_classes}, to name "
                              f"every class from its folder")
    folder_of: dict[int, tuple[str, str]] = {}  # label -> (folder, image)
    label_in: dict[str, tuple[int, str]] = {}  # folder -> (class id, image)
    for image, class_id in annotations.items():
        folder, _, rest = image.partition("/")
        found = re.fullmatch(pattern, folder)
        if not rest or found is None:
            raise AdaptbenchError(f"{train}: image {shorten(image)} is not in a class folder like {example!r}; "
                                  f"expected '<class folder>/<image>' keys, the folder naming the class")
        seen, first = folder_of.setdefault(label_of[class_id], (folder, image))
        if seen != folder:
            raise AdaptbenchError(f"{train}: class id {class_id} has image {shorten(image)} in folder {folder!r} and "
                                  f"{shorten(first)} in {seen!r}; expected the images of a class in one folder")
        other, first = label_in.setdefault(folder, (class_id, image))
        if other != class_id:
            raise AdaptbenchError(f"{train}: folder {folder!r} holds {shorten(image)} of class id {class_id} and "
                                  f"{shorten(first)} of class id {other}; expected one class per folder")
    return [name_of(re.fullmatch(pattern, folder_of[label][0])) for label in range(num_classes)]


def _nabirds_classes(path: Path) -> dict[int, str]:
    """NABirds' classes.txt: ``{class id: name}`` from lines ``<id> <class name>``."""
    expected = "lines '<class id> <class name>' (NABirds' classes.txt, e.g. '817 Oak Titmouse')"
    names: dict[int, str] = {}
    for number, line in enumerate(read_text_file(path, "class list", expected).splitlines(), start=1):
        if not line.strip():
            continue
        class_id, _, name = line.strip().partition(" ")
        if not class_id.isdigit() or not name.strip():
            raise AdaptbenchError(f"{path}:{number}: got {shorten(line)}; expected {expected}")
        names[int(class_id)] = name.strip()
    if not names:
        raise AdaptbenchError(f"class list {path} is empty; expected {expected}")
    return names
