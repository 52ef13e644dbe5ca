"""Datasets -> DataLoaders, and the image preprocessing of the classification protocol.

Images are resized to the backbone's input size with no crop, and normalised with the
backbone's mean and std (both stated in the run record). No augmentation: the VTAB-1k
protocol as NOAH and VPT run it.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from .samples import DATA_ROOT_ENV, task_samples  # noqa: F401 - re-exported for callers


def image_transform(data_config) -> T.Compose:
    interpolation = T.InterpolationMode(data_config.interpolation)
    return T.Compose([
        T.Resize(tuple(data_config.input_size), interpolation=interpolation, antialias=True),
        T.ToTensor(),
        T.Normalize(data_config.mean, data_config.std),
    ])


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int) -> DataLoader:
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
