"""VTAB-1k in NOAH's on-disk layout (``data/vtab-source/get_vtab1k.py``), which the
common dumps follow::

    <root>/<task>/{train800,val200,train800val200,test}.txt
    <root>/<task>/images/<split>/000123.jpg

each split file holding lines ``images/<split>/000123.jpg <int label>``, paths relative to
``<root>/<task>/``. Every split has its own image folder (train800val200's images are a
second copy). The embedded micro tasks are written in this layout too (``micro.py``).

A split file is read strictly, every problem one line naming the file (and the line): it
must be UTF-8 text, hold at least one sample, and every line up to the last must be
``<image path> <label>`` with a label in ``0..C-1``, each image listed once. Blank lines
are allowed only at the end (a final newline, or several).

The folder names, class counts and split names (``VTAB1K_TASKS``, ``VTAB_SPLITS``) live in
``formats.py``, plain data that ``adaptbench ls`` reads without torch; they are re-exported
here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import AdaptbenchError
from .formats import VTAB1K_TASKS, VTAB_SPLITS
from .images import Sample, SampleList, check_images_exist, read_text_file, shorten

__all__ = ["VTAB_SPLITS", "VTAB1K_TASKS", "checked_split", "read_split_file", "read_split_lines", "vtab_samples"]

LAYOUT = ('<root>/<task>/{train800,val200,train800val200,test}.txt with lines '
          '"images/<split>/<name>.jpg <label>"')
LINE_FORMAT = "'<image path> <int label>'"
_LABEL = re.compile(r"-?[0-9]+")


def read_split_file(path: Path, num_classes: int | None = None) -> list[Sample]:
    """Parse one split file; every bad line is reported with its file and line number.

    Image paths are resolved against the split file's folder; blank lines at the end are
    skipped. An empty split (no sample) is an error, as is a label outside ``0..C-1``.
    """
    return [sample for _, sample in read_split_lines(path, num_classes)]


def read_split_lines(path: Path, num_classes: int | None = None) -> list[tuple[int, Sample]]:
    """(line number, sample) for every sample of a split file (see :func:`read_split_file`)."""
    path = Path(path)
    text = read_text_file(path, "split file", f"the VTAB-1k layout {LAYOUT}")
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()  # trailing blank lines: a final newline, or a few
    if not lines:
        state = "is empty" if not text else "holds only blank lines"
        raise AdaptbenchError(f"split file {path} {state}; expected one line {LINE_FORMAT} per image, "
                              f"{_example(path)}")
    numbered, first_seen = [], {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise AdaptbenchError(f"{path}:{number}: blank line between samples; expected {LINE_FORMAT} on every "
                                  f"line, {_example(path)} (blank lines only at the end)")
        image, label = _parse_line(path, number, line, num_classes)
        key = os.path.normpath(image)
        if key in first_seen:
            raise AdaptbenchError(f"{path}:{number}: image {image!r} is listed again (first at line "
                                  f"{first_seen[key]}); expected each image once")
        first_seen[key] = number
        numbered.append((number, (path.parent / image, label)))
    return numbered


def _example(path: Path) -> str:
    split = path.stem if path.stem in VTAB_SPLITS else "<split>"
    return f"e.g. 'images/{split}/000123.jpg 4'"


def _parse_line(path: Path, number: int, line: str, num_classes: int | None) -> tuple[str, int]:
    fields = line.split()
    if len(fields) != 2:
        raise AdaptbenchError(
            f"{path}:{number}: got {shorten(line.strip())}; expected {LINE_FORMAT}, {_example(path)}"
        )
    image, label_text = fields
    if not _LABEL.fullmatch(label_text):
        raise AdaptbenchError(
            f"{path}:{number}: label {shorten(label_text)} is not an integer; expected {LINE_FORMAT}, {_example(path)}"
        )
    label = int(label_text)
    if label < 0 or (num_classes is not None and label >= num_classes):
        expected = f"0..{num_classes - 1} ({num_classes} classes)" if num_classes is not None else "0 or more"
        raise AdaptbenchError(f"{path}:{number}: label {label} out of range; expected {expected}")
    return image, label


def checked_split(split_file: Path, num_classes: int | None = None, check_files: bool = True) -> SampleList:
    """The samples of one split file, each remembering its line; with ``check_files`` each
    listed image is checked to exist (a missing one is named with the line that lists it)."""
    numbered = read_split_lines(split_file, num_classes)
    samples = SampleList([sample for _, sample in numbered], str(split_file),
                         [f"{split_file}:{number}" for number, _ in numbered])
    if check_files:
        check_images_exist(samples)
    return samples


def vtab_samples(root: Path, task_dir: str, split: str, num_classes: int, check_files: bool = True) -> SampleList:
    """The validated samples of one split of one VTAB-1k task (``<root>/<task_dir>``);
    ``check_files``: also check that every listed image exists (runs leave it to the decode
    cache, which checks once, when it decodes the split)."""
    if split not in VTAB_SPLITS:
        raise AdaptbenchError(f"unknown VTAB-1k split {split!r}; expected one of {', '.join(VTAB_SPLITS)}")
    folder = Path(root) / task_dir
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise AdaptbenchError(f"VTAB-1k task folder {folder} {state}; expected the layout {LAYOUT}")
    return checked_split(folder / f"{split}.txt", num_classes, check_files)
