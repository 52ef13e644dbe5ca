"""Task heads, registered by name: what turns backbone features into a task's outputs.

A head factory is called as ``factory(backbone, spec, **options)`` (``spec``: the task's
:class:`~adaptbench.tasks.catalog.TaskSpec`; ``options``: ``RunConfig.head_options``) and
returns an ``nn.Module``. Attributes of the factory:

* ``kinds``: the task kinds it serves; ``prompts``: the prompts it takes (``sam_decoder``);
* ``config``: an :class:`~adaptbench.adapters.base.AdapterConfig` subclass holding its options
  (the paper's defaults, help text, ``validate``); a factory without one takes no options;
* ``version`` (default 1): enters the run id.

Head parameters that require a gradient are trained with the adapter's and counted apart from
them in every parameter report (``head`` vs ``trainable``). A head module may also offer,
and the runner calls them without knowing which head it is:

* ``prepare(features, labels)``: once, before training and evaluation, with the pooled
  features of the training split (a cache model such as Tip-Adapter's is built from them);
* ``zero_shot_classifier() -> (class embeddings, logit scale)``: the text classifier a method
  may compare against (mask tuning's general-knowledge term);
* ``frozen_prefixes``: state-dict prefixes rebuilt from the backbone's weights (a frozen text
  tower), left out of adapter checkpoints (trained tensors under them are kept).

A factory may also set ``reads_training_split``: the head is built from the training split
even when nothing trains (Tip-Adapter), so an ``epochs: 0`` row still runs once per k.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..errors import AdaptbenchError
from ..registry import HEADS, register_head


def linear_head(backbone, spec) -> nn.Module:
    """Linear classifier on the pooled feature (PyTorch's default init), the PETL-on-VTAB head."""
    return nn.Linear(backbone.anatomy.feature_dim, spec.num_classes)


linear_head.reads = "pooled"


def build_head(name: str, backbone, spec, prompt: str = "none", options: Mapping[str, Any] | None = None) -> nn.Module:
    """The head ``name`` for ``spec`` on ``backbone`` (registry: ``adaptbench ls heads``).

    A factory says what it reads (``factory.reads``: ``"pooled"`` features, a ``"feature_map"``),
    which must be what the task's kind hands its head (``TaskKind.head_input``), which prompts it
    takes (``factory.prompts``; only promptable heads receive ``prompt``) and which options
    (``factory.config``)."""
    factory = HEADS.get(name)
    check_head(name, factory, spec.kind, prompt)
    options = check_head_options(name, factory, options)
    if prompt != "none":
        options["prompt"] = prompt
    return factory(backbone, spec, **options)


def check_head_options(name: str, factory, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` checked against the head's ``config`` (one line naming a wrong option or
    value), returned as given (the factory builds its config from them)."""
    options = dict(options or {})
    config = getattr(factory, "config", None)
    if config is None:
        if options:
            raise AdaptbenchError(f"head {name!r} takes no options; got {', '.join(sorted(options))}")
        return options
    config.from_dict(options, adapter=name, what="head")
    return options


def head_checkpoint_state(head: nn.Module) -> dict[str, Any]:
    """The head's tensors an adapter checkpoint keeps: its trained ones always, the rest unless
    under one of its ``frozen_prefixes``."""
    frozen = tuple(getattr(head, "frozen_prefixes", ()))
    trained = {name for name, param in head.named_parameters() if param.requires_grad}
    return {key: value for key, value in head.state_dict().items() if key in trained or not key.startswith(frozen)}


def load_head_state(head: nn.Module, state: Mapping[str, Any]) -> None:
    """Load what :func:`head_checkpoint_state` saved (the frozen parts come from the backbone)."""
    frozen = tuple(getattr(head, "frozen_prefixes", ()))
    missing, unexpected = head.load_state_dict(dict(state), strict=False)
    missing = [key for key in missing if not (frozen and key.startswith(frozen))]
    if missing or unexpected:
        problem = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise RuntimeError(f"head state does not fit: {problem}")


def prepare_head(module, batches, device) -> bool:
    """Give a head that builds itself from the training split (``prepare``) that split's
    features, encoded by the module's backbone and adapter; False when the head has no ``prepare``."""
    import torch

    head = module.head
    if not hasattr(head, "prepare"):
        return False
    features, labels = [], []
    was_training = module.training
    module.to(device)  # where the batches are (Lightning moves it there again, a no-op)
    module.eval()
    with torch.no_grad():
        for batch in batches:
            inputs, targets = module.on_after_batch_transfer(batch, 0)
            features.append(inputs if module.from_features else module.encode(inputs))
            labels.append(targets)
    module.train(was_training)
    head.prepare(torch.cat(features), torch.cat(labels))
    return True


def check_head(name: str, factory, kind: str, prompt: str = "none") -> None:
    """Refuse, in one line, a head that reads something the task's kind does not give its head
    (a pooled-feature classifier on a segmentation task), or a prompt the head cannot take.
    A plugin head may name the kinds it serves instead (``factory.kinds``)."""
    from .kinds import task_kind

    reads, kinds = getattr(factory, "reads", None), getattr(factory, "kinds", None)
    gives = task_kind(kind).head_input
    if (reads is not None and reads != gives) or (kinds is not None and kind not in kinds):
        serves = f"reads {reads} features" if reads is not None else f"is for {' / '.join(kinds)} tasks"
        raise AdaptbenchError(f"head {name!r} {serves}, but {kind} tasks give their head {gives} features; "
                              f"see `adaptbench ls heads`")
    prompts = getattr(factory, "prompts", ("none",))
    if prompt not in prompts:
        raise AdaptbenchError(f"head {name!r} takes no {prompt!r} prompt; expected prompt "
                              f"{' or '.join(repr(p) for p in prompts)}")


def head_version(name: str) -> int:
    return int(getattr(HEADS.get(name), "version", 1))


register_head("linear", linear_head)
