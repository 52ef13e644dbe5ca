"""Loaded backbones kept between the cells of a long-lived worker.

A matrix runs many cells on one backbone (every adapter, task, seed and grid point). Building
it again for each cell -- creating the model, reading and checking its weights file, hashing
its state for ``weights_id`` -- is set-up time repeated on every cell; on a GPU it can rival
the cell's training. A worker that outlives its cells (the local executor's processes, Ray's
actors) keeps the last ``keep`` backbones it built, untouched, and gives each later cell a deep
copy: adapters then change the copy, never the kept one.

Only a backbone that is a function of its name, weights and options is kept. A factory that
draws from the run's random generators (seeded per cell) would build a different backbone
for another seed; the built-in families draw from a forked generator under a fixed weights
seed, and a plugin factory that does not is noticed here (the global generators' states
change while it builds) and rebuilt for every cell.
"""

from __future__ import annotations

import copy
import logging
import os
import random
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Backbone

log = logging.getLogger(__name__)

_KEPT: OrderedDict[tuple, Backbone] = OrderedDict()


def load_backbone_kept(name: str, weights: str | None = None, options=None, *, keep: int) -> tuple[Backbone, bool]:
    """``load_backbone(name, weights, options)`` for a cell, and whether it came from a kept one.

    ``keep``: how many built backbones this process keeps (0: build every time, keep none).
    """
    from . import check_backbone_options, load_backbone

    if keep <= 0:
        return load_backbone(name, weights=weights, options=options), False
    options = check_backbone_options(name, options)
    key = _key(name, weights, options)
    if key in _KEPT:
        _KEPT.move_to_end(key)
        return copy.deepcopy(_KEPT[key]), True
    before = _generator_states()
    backbone = load_backbone(name, weights=weights, options=options)
    if _generator_states() != before:
        log.info("backbone %s drew from the run's random generators while building: not kept", name)
        return backbone, False
    try:
        _KEPT[key] = copy.deepcopy(backbone)
    except Exception as err:  # noqa: BLE001 - a plugin backbone holding something uncopyable
        log.info("backbone %s cannot be deep-copied (%s): not kept", name, err)
        return backbone, False
    while len(_KEPT) > keep:
        _KEPT.popitem(last=False)
    return backbone, False


def forget_kept_backbones() -> None:
    """Drop every kept backbone (tests; a worker that needs the memory back)."""
    _KEPT.clear()


def _key(name: str, weights: str | None, options) -> tuple:
    """What a built backbone depends on. A weights file enters with its size and modification
    time, so a file replaced between cells is read again."""
    stamp = None
    if weights and os.path.isfile(weights):
        status = os.stat(weights)
        stamp = (os.path.abspath(weights), status.st_size, status.st_mtime_ns)
    return name, weights, stamp, options.model_dump_json()


def _generator_states() -> tuple:
    import numpy as np
    import torch

    numpy_state = np.random.get_state()
    return (bytes(torch.random.get_rng_state().numpy()), random.getstate(),
            numpy_state[0], numpy_state[1].tobytes(), numpy_state[2:])
