"""A task split -> batches: decoded once into the cache, served by :class:`SplitBatches`.

The classification protocol's preprocessing is unchanged (resize to the backbone's input size
with no crop, then its mean and std; both stated in the run record; no augmentation, as NOAH
and VPT run VTAB-1k); only where it happens moved: the resize at decode time, once, and the
normalisation on the device, per batch (``kind.batch_transform``).
"""

from __future__ import annotations

from ..datasets.decoded import CachedArrays, decoded_split
from .batches import SplitBatches
from .samples import DATA_ROOT_ENV, task_samples  # noqa: F401 - re-exported for callers


def decoded(kind, samples, data_config, spec, split: str,
            workers: int | None = None) -> tuple[CachedArrays, tuple[str, ...]]:
    """The split decoded into the kind's fields (from the cache when already decoded; else
    with ``workers`` threads), and the field names in batch order."""
    fields = kind.fields(data_config, spec)
    source = getattr(samples, "source", "") or f"{spec.name}:{split}"
    cached = decoded_split(samples, fields, task=spec.name, split=split, source=source,
                           where=getattr(samples, "where", None), workers=workers)
    return cached, tuple(fields)


def split_batches(kind, samples, data_config, spec, split: str, batch_size: int, *, shuffle: bool,
                  seed: int, workers: int | None = None) -> SplitBatches:
    """Batches of decoded samples of one split (shuffled with ``seed``'s order when training)."""
    cached, names = decoded(kind, samples, data_config, spec, split, workers)
    return SplitBatches(cached, names, batch_size, shuffle=shuffle, seed=seed)
