"""Which samples a task's split holds, read through the task's format reader (no torch).

Used before anything is built (``train`` and ``run`` check every split they will read, so a
wrong ``--data-root`` answers in the CLI's start-up time) and by the data loaders.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import AdaptbenchError
from ..registry import READERS
from .catalog import TaskSpec

DATA_ROOT_ENV = "ADAPTBENCH_DATA_ROOT"


def reader_of(spec: TaskSpec):
    """The format reader of ``spec`` (instantiated)."""
    try:
        reader = READERS.get(spec.format)
    except AdaptbenchError as err:
        raise AdaptbenchError(f"task {spec.name!r}: {err.message}") from None
    return reader() if isinstance(reader, type) else reader


def task_samples(spec: TaskSpec, split: str, data_root: str | Path | None):
    """The (path, label) list of one split of a task, read with the task's format reader."""
    if spec.embedded:
        from ..datasets.micro import ensure_micro_task

        task_folder = ensure_micro_task(spec.dataset)
        return reader_of(spec).samples(task_folder.parent, _embedded_spec(spec, task_folder.name), split)
    return reader_of(spec).samples(data_root_of(spec, data_root), spec, split)


def task_class_names(spec: TaskSpec, data_root: str | Path | None) -> tuple[str, ...]:
    """The class names of ``spec`` in label order: the specification's, else what its data
    holds (the reader's ``class_names``); empty when neither names them."""
    if spec.class_names:
        return tuple(spec.class_names)
    if spec.embedded:
        return ()
    names = reader_of(spec).class_names(data_root_of(spec, data_root), spec)
    return tuple(names or ())


def with_class_names(spec: TaskSpec, data_root: str | Path | None) -> TaskSpec:
    """``spec`` with its class names filled in from its data when the specification has none."""
    from dataclasses import replace

    if spec.class_names:
        return spec
    names = task_class_names(spec, data_root)
    return replace(spec, class_names=names) if names else spec


def _embedded_spec(spec: TaskSpec, folder: str) -> TaskSpec:
    from dataclasses import replace

    return replace(spec, dataset=folder)


def data_root_of(spec: TaskSpec, data_root: str | Path | None) -> Path:
    root = data_root or os.environ.get(DATA_ROOT_ENV)
    if not root:
        raise AdaptbenchError(
            f"task {spec.name!r} needs its data: pass --data-root <root> (or set "
            f"{DATA_ROOT_ENV}) with the layout {reader_of(spec).layout(spec)}"
        )
    return Path(root).expanduser()
