"""Task heads, registered by name: what turns backbone features into a task's outputs.

A head factory is called as ``factory(backbone, spec)`` (``spec``: the task's
:class:`~adaptbench.tasks.catalog.TaskSpec`) and returns an ``nn.Module``. Head parameters
are counted apart from the adapter's in every parameter report (``head`` vs ``trainable``).
``version`` (an attribute of the factory, default 1) enters the run id.
"""

from __future__ import annotations

from torch import nn

from ..errors import AdaptbenchError
from ..registry import HEADS, register_head


def linear_head(backbone, spec) -> nn.Module:
    """Linear classifier on the pooled feature (PyTorch's default init), the PETL-on-VTAB head."""
    return nn.Linear(backbone.anatomy.feature_dim, spec.num_classes)


linear_head.kinds = ("classification",)


def build_head(name: str, backbone, spec, prompt: str = "none") -> nn.Module:
    """The head ``name`` for ``spec`` on ``backbone`` (registry: ``adaptbench ls heads``).

    A factory may say which task kinds it serves (``factory.kinds``) and which prompts it
    takes (``factory.prompts``; only promptable heads receive ``prompt``)."""
    factory = HEADS.get(name)
    check_head(name, factory, spec.kind, prompt)
    if prompt != "none":
        return factory(backbone, spec, prompt=prompt)
    return factory(backbone, spec)


def check_head(name: str, factory, kind: str, prompt: str = "none") -> None:
    """Refuse, in one line, a head for another task kind or a prompt the head cannot take."""
    kinds = getattr(factory, "kinds", None)
    if kinds is not None and kind not in kinds:
        raise AdaptbenchError(f"head {name!r} is for {' / '.join(kinds)} tasks, not {kind}; "
                              f"see `adaptbench ls heads`")
    prompts = getattr(factory, "prompts", ("none",))
    if prompt not in prompts:
        raise AdaptbenchError(f"head {name!r} takes no {prompt!r} prompt; expected prompt "
                              f"{' or '.join(repr(p) for p in prompts)}")


def head_version(name: str) -> int:
    return int(getattr(HEADS.get(name), "version", 1))


register_head("linear", linear_head)
