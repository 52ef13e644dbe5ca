"""Batches of a cached split (decoded images or backbone features) for Lightning's loops.

:class:`SplitBatches` replaces a ``DataLoader`` over decoded files:

* a shuffled (training) split on an accelerator is copied to the device once (VTAB-1k's 1000
  training images at 224 px are 150 MB of uint8) and batches are gathered there; on the CPU
  they are gathered from the memory map, which the page cache holds;
* an evaluation split streams from the memory map in order, through pinned buffers on CUDA so
  the copy to the device does not block;
* the order of a shuffled split is the one today's ``DataLoader(shuffle=True,
  generator=manual_seed(seed))`` draws: the indices come from such a loader over
  ``range(n)``, so the generator is consumed exactly as before, epoch after epoch.

Batches hold uint8 images; the kind's batch transform (normalisation, augmentation) runs on
the device, on whole batches, in :meth:`TaskModule.on_after_batch_transfer`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..datasets.decoded import CachedArrays


class SplitBatches:
    """An iterable of batches (a tuple of tensors, one per name in ``names``) with a length."""

    def __init__(self, split: CachedArrays, names: Sequence[str], batch_size: int, *, shuffle: bool, seed: int):
        self.split = split
        self.names = tuple(names)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.device = torch.device("cpu")
        self._on_device: dict[str, torch.Tensor] | None = None
        # One generator for the whole run: epoch after epoch it draws what the seeded shuffling
        # DataLoader over decoded files drew before the cache existed.
        self._order = torch.utils.data.DataLoader(range(len(split)), batch_size=batch_size, shuffle=True,
                                                  generator=torch.Generator().manual_seed(seed)) if shuffle else None

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    @property
    def dataset(self) -> CachedArrays:  # what a DataLoader would call it (sizes in the record)
        return self.split

    def over(self, split: CachedArrays, names: Sequence[str]) -> SplitBatches:
        """The same batches (size, and the same seeded order) over another cached split of the
        same samples, e.g. their backbone features."""
        other = copy.copy(self)
        other.split, other.names, other._on_device = split, tuple(names), None
        return other

    def to(self, device: torch.device | str) -> SplitBatches:
        """Serve batches for ``device``: a shuffled split is copied there once (not on the CPU)."""
        self.device = torch.device(device)
        if self.shuffle and self.device.type != "cpu" and self._on_device is None:
            self._on_device = {name: torch.from_numpy(np.array(self.split.arrays[name])).to(self.device)
                               for name in self.names}
        return self

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        # A generator: nothing is drawn until the first batch is asked for (Lightning may call
        # iter() once to check the loader, which must not consume an epoch's order).
        if self._order is None:
            yield from self._in_order()
            return
        for indices in self._order:
            if self._on_device is not None:
                indices = indices.to(self.device)
                yield tuple(self._on_device[name].index_select(0, indices) for name in self.names)
            else:
                rows = indices.numpy()
                yield tuple(torch.from_numpy(np.take(self.split.arrays[name], rows, axis=0)) for name in self.names)

    def _in_order(self) -> Iterator[tuple[torch.Tensor, ...]]:
        pin = self.device.type == "cuda"
        for start in range(0, len(self.split), self.batch_size):
            batch = tuple(torch.from_numpy(np.array(self.split.arrays[name][start:start + self.batch_size]))
                          for name in self.names)
            yield tuple(tensor.pin_memory() for tensor in batch) if pin else batch


class NormalizeImages(nn.Module):
    """uint8 ``(B, H, W, 3)`` images -> float ``(B, 3, H, W)``, scaled to [0, 1] and normalised.

    The same operations, in the same order and precision, as torchvision's ``ToTensor`` then
    ``Normalize`` on one image, so the result is bit-identical to the PIL path's.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255)
        return images.sub_(self.mean).div_(self.std)
