"""Evaluate a saved adapter checkpoint (adapter + head) on a task split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import AdaptbenchError


def evaluate_checkpoint(
    checkpoint: str | Path,
    task: str,
    backbone_name: str,
    weights: str | None = None,
    split: str | None = None,
    data_root: str | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    accelerator: str = "auto",
) -> dict[str, dict[str, float]]:
    """{split: {metric: value}} of the checkpoint's model on ``split`` (default: test)."""
    import lightning as L

    from ..adapters.checkpoint import load_adapter, read_checkpoint
    from ..backbones import load_backbone
    from ..registry import TASKS
    from ..tasks.classification import ClassificationModule
    from ..tasks.data import make_loader, task_samples

    spec = TASKS.get(task)
    split = split or spec.splits[3]
    samples = task_samples(spec, split, data_root)
    metadata, _ = read_checkpoint(checkpoint)
    head_info = _head_info(metadata, checkpoint, spec)
    backbone = load_backbone(backbone_name, weights=weights)
    adapter, head_state = load_adapter(backbone, checkpoint)
    module = ClassificationModule(backbone, adapter, spec.num_classes, pool=head_info["pool"])
    module.head.load_state_dict(head_state)
    loader = make_loader(samples, backbone.data_config, batch_size, False, num_workers, 0, f"{spec.name}:{split}")
    trainer = L.Trainer(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False)
    trainer.test(module, loader, verbose=False)
    return {split: {k.removeprefix("test_"): float(v) for k, v in trainer.logged_metrics.items()}}


def _head_info(metadata: dict[str, str], checkpoint, spec) -> dict[str, Any]:
    if "head" not in metadata:
        raise AdaptbenchError(f"adapter checkpoint {checkpoint} holds no task head; it cannot be evaluated")
    info = json.loads(metadata["head"])
    if info["num_classes"] != spec.num_classes:
        raise AdaptbenchError(
            f"adapter checkpoint {checkpoint} has a head for {info['num_classes']} classes "
            f"(task {info['task']!r}), but task {spec.name!r} has {spec.num_classes}"
        )
    return info
