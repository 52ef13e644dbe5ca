"""Image classification: pooled backbone feature -> head -> class logits; top-1 accuracy
(the module is ``tasks/modules/classification.py``)."""

from __future__ import annotations

from typing import Any

from ..registry import register_task_kind
from .kinds import TaskKind


class ClassificationKind(TaskKind):
    """Image classification: cross-entropy, top-1 accuracy (VTAB-1k, FGVC)."""

    primary_metric = "top1"
    higher_is_better = True
    augmentation = "none"

    def metrics(self, spec):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy

        # validate_args=False: the checks read values on the host (a sync per step); the
        # readers have already checked every label against the class count.
        return MetricCollection({"top1": MulticlassAccuracy(spec.num_classes, average="micro", validate_args=False)})

    def sample_reduction(self, spec) -> str:
        return "accuracy"  # one bit per test image: correct or not

    def build_module(self, backbone, adapter, head, spec, settings: dict[str, Any]):
        from .modules.classification import ClassificationModule

        return ClassificationModule(backbone, adapter, head, self.metrics(spec), lr=settings["lr"],
                                    weight_decay=settings["weight_decay"], warmup_epochs=settings["warmup_epochs"],
                                    label_smoothing=settings.get("label_smoothing", 0.0),
                                    pool=settings.get("pool"))

    def head_info(self, spec, settings: dict[str, Any], backbone) -> dict[str, Any]:
        return {**super().head_info(spec, settings, backbone), "pool": settings.get("pool") or backbone.default_pool}


register_task_kind("classification", ClassificationKind)
