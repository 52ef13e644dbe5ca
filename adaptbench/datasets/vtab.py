"""VTAB-1k in NOAH's on-disk layout (``data/vtab-source/get_vtab1k.py``), which the
common dumps follow::

    <root>/<task>/{train800,val200,train800val200,test}.txt
    <root>/<task>/images/<split>/000123.jpg

each split file holding lines ``images/<split>/000123.jpg <int label>``, paths relative to
``<root>/<task>/``. Every split has its own image folder (train800val200's images are a
second copy). The embedded micro tasks are written in this layout too (``micro.py``).

The folder names, class counts and split names (``VTAB1K_TASKS``, ``VTAB_SPLITS``) live in
``formats.py``, plain data that ``adaptbench ls`` reads without torch; they are re-exported
here.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import AdaptbenchError
from .formats import VTAB1K_TASKS, VTAB_SPLITS
from .images import Sample, check_images_exist

__all__ = ["VTAB_SPLITS", "VTAB1K_TASKS", "read_split_file", "vtab_samples"]

LAYOUT = ('<root>/<task>/{train800,val200,train800val200,test}.txt with lines '
          '"images/<split>/<name>.jpg <label>"')
LINE_FORMAT = "'<image path> <int label>'"


def read_split_file(path: Path, num_classes: int | None = None) -> list[Sample]:
    """Parse one split file; every bad line is reported with its file and line number.

    Image paths are resolved against the split file's folder; blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise AdaptbenchError(f"split file {path} does not exist; expected the VTAB-1k layout {LAYOUT}")
    samples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            samples.append(_parse_line(path, number, line, num_classes))
    return samples


def _parse_line(path: Path, number: int, line: str, num_classes: int | None) -> Sample:
    fields = line.split()
    if len(fields) != 2:
        raise AdaptbenchError(f"{path}:{number}: got {line.strip()!r}; expected {LINE_FORMAT}")
    image, label_text = fields
    try:
        label = int(label_text)
    except ValueError:
        raise AdaptbenchError(
            f"{path}:{number}: label {label_text!r} is not an integer; expected {LINE_FORMAT}"
        ) from None
    if num_classes is not None and not 0 <= label < num_classes:
        raise AdaptbenchError(
            f"{path}:{number}: label {label} out of range; expected 0..{num_classes - 1} ({num_classes} classes)"
        )
    return path.parent / image, label


def vtab_samples(root: Path, task_dir: str, split: str, num_classes: int) -> list[Sample]:
    """The validated samples of one split of one VTAB-1k task (``<root>/<task_dir>``)."""
    if split not in VTAB_SPLITS:
        raise AdaptbenchError(f"unknown VTAB-1k split {split!r}; expected one of {', '.join(VTAB_SPLITS)}")
    folder = Path(root) / task_dir
    if not folder.is_dir():
        raise AdaptbenchError(f"VTAB-1k task folder {folder} does not exist; expected the layout {LAYOUT}")
    split_file = folder / f"{split}.txt"
    samples = read_split_file(split_file, num_classes)
    check_images_exist(samples, str(split_file))
    return samples
