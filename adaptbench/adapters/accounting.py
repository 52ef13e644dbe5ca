"""Parameter accounting of an adapted model (DESIGN.md, "Adapter"): trainable tensors with and
without the head, extra inference parameters before and after merging, checkpoint bytes."""

from __future__ import annotations

from torch import nn

from .base import Adapter, ParameterReport
from .checkpoint import checkpoint_bytes


def parameter_report(adapter: Adapter, head: nn.Module | None = None) -> ParameterReport:
    """The report of ``adapter`` (attached) with the task's ``head``, counted apart."""
    extra = adapter.extra_inference_params()
    return ParameterReport(
        trainable=adapter.trainable_count(),
        head=sum(p.numel() for p in head.parameters() if p.requires_grad) if head is not None else 0,
        extra_inference=extra,
        checkpoint_bytes=0 if adapter.merged else checkpoint_bytes(adapter),
        backbone=adapter.backbone_params,
        extra_inference_merged=adapter.kept_after_merge() if adapter.mergeable else extra,
    )
