"""Evaluate a saved adapter checkpoint (adapter + head) on a task split, through the task's kind."""

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
    num_workers: int | None = None,
    accelerator: str = "auto",
) -> dict[str, dict[str, float]]:
    """{split: {metric: value}} of the checkpoint's model on ``split`` (default: test)."""
    from ..adapters.checkpoint import load_adapter, read_checkpoint
    from ..backbones import load_backbone
    from ..registry import TASKS
    from ..config import auto_precision
    from ..tasks.data import split_batches
    from ..tasks.heads import build_head, load_head_state
    from ..tasks.kinds import task_kind
    from ..tasks.samples import task_samples, with_class_names
    from .train import RunPlace, trainer_for

    spec = with_class_names(TASKS.get(task), data_root)
    kind = task_kind(spec.kind)
    split = split or spec.splits[3]
    samples = task_samples(spec, split, data_root)  # the data first: no backbone for a wrong root
    metadata, _ = read_checkpoint(checkpoint)
    head_info = _head_info(metadata, checkpoint)
    kind.check_head_info(head_info, spec, checkpoint)
    backbone = load_backbone(backbone_name, weights=weights)
    adapter, head_state = load_adapter(backbone, checkpoint)
    prompt = head_info.get("prompt", "none")
    head = build_head(head_info.get("head", kind.default_head), backbone, spec, prompt=prompt,
                      options=head_info.get("head_options"))
    try:
        load_head_state(head, head_state)
    except RuntimeError as err:  # torch's message spans lines: keep its first
        raise AdaptbenchError(f"adapter checkpoint {checkpoint}: its head does not fit task {spec.name!r} on "
                              f"{backbone_name}: {str(err).strip().splitlines()[-1].strip()}") from None
    settings = {"lr": 1.0, "weight_decay": 0.0, "warmup_epochs": 0, "pool": head_info.get("pool"), "prompt": prompt}
    module = kind.build_module(backbone, adapter, head, spec, settings)
    module.set_inputs(kind.batch_transform(backbone.data_config, train=False, spec=spec))
    batches = split_batches(kind, samples, backbone.data_config, spec, split, batch_size, shuffle=False, seed=0,
                            workers=num_workers)
    trainer = trainer_for(RunPlace(accelerator=accelerator), auto_precision(accelerator), max_epochs=0)
    evaluated = trainer.test(module, batches.to(trainer.strategy.root_device), verbose=False)
    return {split: {k.removeprefix("test_"): float(v) for k, v in (evaluated[0] if evaluated else {}).items()}}


def _head_info(metadata: dict[str, str], checkpoint) -> dict[str, Any]:
    if "head" not in metadata:
        raise AdaptbenchError(f"adapter checkpoint {checkpoint} holds no task head; it cannot be evaluated")
    try:
        return json.loads(metadata["head"])
    except json.JSONDecodeError:
        raise AdaptbenchError(f"adapter checkpoint {checkpoint}: its head metadata is not valid JSON") from None
