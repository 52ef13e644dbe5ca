"""Cached backbone features: train the head on what a frozen, deterministic backbone returns.

When nothing before the head is trained, wrapped, augmented or random, the backbone's output
(the module's ``encode``) is a pure function of the image: a linear probe that runs the
frozen backbone on every step of 100 epochs computes the same features 100 times. Here they
are computed once per (backbone weights, options, pooling, precision, device type, decoded
split), cached beside the decoded images in ``ADAPTBENCH_CACHE`` (so the 16 points of a tune
grid, and every seed, reuse them), and the head trains on them (``TaskModule.from_features``).

:func:`why_not_cached` says when this is not exact, and the runner then runs the backbone as
usual: the adapter declares a tensor or wraps a site; the kind augments its inputs or does not
split its forward into ``encode`` and ``decode``; the backbone's training mode differs from its
evaluation mode (active dropout or drop-path, batch-norm statistics); or the run's policy
turns the cache off. A method that adapts only late blocks could cache the output of block
k-1 the same way; no registered method does that today, so the cut is at the head only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..datasets.decoded import ArraySpec, CachedArrays, cache_folder, cached_arrays
from ..tasks.batches import SplitBatches


def why_not_cached(module, adapter, kind) -> str | None:
    """Why the backbone's features cannot stand in for running it (None: they can)."""
    from ..tasks.modules.base import TaskModule

    if type(module).encode is TaskModule.encode:
        return f"task kind {kind.name or type(kind).__name__} does not split its forward into encode and decode"
    module_reason = module.why_not_cacheable()
    if module_reason:
        return module_reason
    if adapter.changes_backbone():
        return f"adapter {adapter.name} trains, wraps or perturbs the backbone"
    if kind.augmentation != "none":
        return f"inputs are augmented ({kind.augmentation})"
    stochastic = training_differs(module.backbone)
    if stochastic:
        return f"the backbone's training mode differs from its evaluation mode ({stochastic})"
    return None


def training_differs(backbone: nn.Module) -> str | None:
    """The first module whose training-mode forward is not its evaluation-mode forward."""
    for name, layer in backbone.named_modules():
        if isinstance(layer, nn.modules.dropout._DropoutNd) and layer.p > 0:
            return f"dropout p={layer.p} at {name}"
        if float(getattr(layer, "drop_prob", 0.0) or 0.0) > 0:
            return f"drop-path {layer.drop_prob} at {name}"
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            return f"batch norm at {name}"
    return None


def feature_batches(batches: SplitBatches, module, trainer, task: str, split: str,
                    identity: dict[str, Any]) -> SplitBatches:
    """``batches`` (decoded samples) as batches of cached ``module.encode`` outputs and targets.

    ``identity``: what else the features depend on (backbone name, options, pooling,
    precision); the weights enter through their content hash.
    """
    device = trainer.strategy.root_device
    decoded = batches.split
    key = {**identity, "weights": module.backbone.weights_id, "device": device.type,
           "decoded": decoded.folder.name, "split": split}
    encode = _encoder(module, trainer, device)
    names = batches.names
    probe = encode(decoded.arrays[names[0]][:1])
    specs = {"features": ArraySpec(tuple(probe.shape[1:]), "float32"),
             **{name: ArraySpec(decoded.arrays[name].shape[1:], decoded.arrays[name].dtype.str) for name in names[1:]}}

    def fill(arrays: dict[str, np.ndarray]) -> None:
        for start in range(0, len(decoded), batches.batch_size):
            rows = {name: decoded.arrays[name][start:start + batches.batch_size] for name in names}
            arrays["features"][start:start + len(rows[names[0]])] = encode(rows[names[0]])
            for name in names[1:]:
                arrays[name][start:start + len(rows[name])] = rows[name]

    cached: CachedArrays = cached_arrays(cache_folder("features", task, split, key), key, len(decoded), specs, fill)
    return batches.over(cached, ("features", *names[1:])).to(device)


def _encoder(module, trainer, device: torch.device):
    """decoded inputs (numpy) -> ``module.encode`` outputs as float32 numpy, computed on
    ``device`` under the run's precision, in evaluation mode, without gradients."""
    module.to(device)

    def encode(decoded_inputs: np.ndarray) -> np.ndarray:
        inputs = torch.from_numpy(np.array(decoded_inputs)).to(device)
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                if module.batch_transform is not None:  # as on_after_batch_transfer: outside autocast
                    inputs = module.batch_transform(inputs)
                with trainer.precision_plugin.forward_context():
                    return module.encode(inputs).float().cpu().numpy()
        finally:
            module.train(was_training)

    return encode
