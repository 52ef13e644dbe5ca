"""Task heads, registered by name: what turns backbone features into a task's outputs.

A head factory is called as ``factory(backbone, spec)`` (``spec``: the task's
:class:`~adaptbench.tasks.catalog.TaskSpec`) and returns an ``nn.Module``. Head parameters
are counted apart from the adapter's in every parameter report (``head`` vs ``trainable``).
``version`` (an attribute of the factory, default 1) enters the run id.
"""

from __future__ import annotations

from torch import nn

from ..registry import HEADS, register_head


def linear_head(backbone, spec) -> nn.Module:
    """Linear classifier on the pooled feature (PyTorch's default init), the PETL-on-VTAB head."""
    return nn.Linear(backbone.anatomy.feature_dim, spec.num_classes)


def build_head(name: str, backbone, spec) -> nn.Module:
    """The head ``name`` for ``spec`` on ``backbone`` (registry: ``adaptbench ls heads``)."""
    return HEADS.get(name)(backbone, spec)


def head_version(name: str) -> int:
    return int(getattr(HEADS.get(name), "version", 1))


register_head("linear", linear_head)
