"""Samples -> DataLoaders for a task, with the backbone's preprocessing.

Images are resized to the backbone's input size with no crop, and normalised with the
backbone's mean and std (both stated in the run record). No augmentation: the VTAB-1k
protocol as NOAH and VPT run it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import transforms as T

from ..datasets.formats import FGVC_DATASETS
from ..errors import AdaptbenchError
from .catalog import TaskSpec

DATA_ROOT_ENV = "ADAPTBENCH_DATA_ROOT"


def image_transform(data_config) -> T.Compose:
    interpolation = T.InterpolationMode(data_config.interpolation)
    return T.Compose([
        T.Resize(tuple(data_config.input_size), interpolation=interpolation, antialias=True),
        T.ToTensor(),
        T.Normalize(data_config.mean, data_config.std),
    ])


def task_samples(spec: TaskSpec, split: str, data_root: str | Path | None):
    """The (path, label) list of one split of a task, read with the real readers."""
    from ..datasets.fgvc import fgvc_samples
    from ..datasets.micro import ensure_micro_task
    from ..datasets.vtab import vtab_samples

    if spec.embedded:
        task_folder = ensure_micro_task(spec.dataset)
        return vtab_samples(task_folder.parent, task_folder.name, split, spec.num_classes)
    root = _data_root(spec, data_root)
    if spec.format == "vtab1k":
        return vtab_samples(root, spec.dataset, split, spec.num_classes)
    if spec.format == "fgvc":
        return fgvc_samples(root, spec.dataset, split)
    raise AdaptbenchError(f"task {spec.name!r} has unknown data format {spec.format!r}")


def _data_root(spec: TaskSpec, data_root: str | Path | None) -> Path:
    root = data_root or os.environ.get(DATA_ROOT_ENV)
    if not root:
        layout = (f"<root>/{spec.dataset}/{{train800,val200,train800val200,test}}.txt"
                  if spec.format == "vtab1k" else
                  f"<root>/{FGVC_DATASETS[spec.dataset][0]}/{{train,val,test}}.json")
        raise AdaptbenchError(
            f"task {spec.name!r} needs its data: pass --data-root <root> (or set "
            f"{DATA_ROOT_ENV}) with the layout {layout}"
        )
    return Path(root).expanduser()


def make_loader(samples, data_config, batch_size: int, shuffle: bool, num_workers: int,
                seed: int, source: str) -> DataLoader:
    from ..datasets.images import ImageListDataset

    dataset = ImageListDataset(samples, transform=image_transform(data_config), source=source)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=generator,
        drop_last=False,
    )
