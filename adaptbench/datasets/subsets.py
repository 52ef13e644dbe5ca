"""Few-shot subsets of a training split, drawn with a seed (``RunConfig.shots``).

The draw depends on the seed and on *what* the split holds, never on the order in which its
file lists it: samples are sorted by their path first (CoOp draws from a list in file order,
and caches the draw as a pickle; here the draw is recomputed, exactly, from the seed). The
result keeps the split file's ``source`` and the per-sample ``where`` for error messages.
"""

from __future__ import annotations

import numpy as np

from ..errors import AdaptbenchError
from .images import SampleList


def per_class_subset(samples, shots: int, seed: int, task: str, allow_fewer: bool = False) -> SampleList:
    """``shots`` samples of every class (stratified), drawn with ``seed``; ``allow_fewer``: a
    class with fewer keeps all it has (CoOp's validation draw) instead of being an error."""
    order = _sorted_indices(samples)
    by_class: dict[int, list[int]] = {}
    for index in order:
        by_class.setdefault(int(samples[index][1]), []).append(index)
    short = {label: len(members) for label, members in by_class.items() if len(members) < shots}
    if short and not allow_fewer:
        label, count = next(iter(sorted(short.items())))
        raise AdaptbenchError(f"shots {shots}: class {label} of task {task!r} has only {count} training "
                              f"samples; expected at least {shots} per class")
    rng = np.random.default_rng(seed)
    chosen = sorted(int(i) for label in sorted(by_class)
                    for i in rng.choice(by_class[label], size=min(shots, len(by_class[label])), replace=False))
    return _subset(samples, chosen)


def image_subset(samples, shots: int, seed: int, task: str) -> SampleList:
    """``shots`` samples of the split (dense tasks: k images), drawn with ``seed``."""
    if shots > len(samples):
        raise AdaptbenchError(f"shots {shots}: task {task!r} has only {len(samples)} training images; "
                              f"expected at most that many")
    rng = np.random.default_rng(seed)
    chosen = sorted(int(i) for i in rng.choice(_sorted_indices(samples), size=shots, replace=False))
    return _subset(samples, chosen)


def _sorted_indices(samples) -> list[int]:
    return sorted(range(len(samples)), key=lambda i: (str(samples[i][0]), str(samples[i][1])))


def _subset(samples, chosen: list[int]) -> SampleList:
    where = getattr(samples, "where", None)
    source = getattr(samples, "source", "")
    return SampleList([samples[i] for i in chosen], source=source,
                      where=[where[i] for i in chosen] if where is not None else None)
