"""The adapter contract (DESIGN.md, "Adapter").

An adapter is a config dataclass plus an :class:`Adapter` subclass that

* ``attach(backbone)``: wraps anatomy sites and *declares* its trainable tensors by name
  (trainability comes from the declaration only: every other parameter stays frozen);
* is the identity at initialisation when ``identity_at_init`` is True;
* ``merge()``: folds itself into the backbone weights where the maths allows
  (``mergeable``), after which it costs no extra inference parameters;
* saves and loads only its own tensors (``adaptbench.adapters.checkpoint``);
* reports its parameters (``adaptbench.adapters.accounting.parameter_report``).

A site wrapper (:class:`SiteWrapper`) keeps the module it replaces as ``base_layer``
(PEFT's convention) and knows how to fold itself into it.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import AdaptbenchError

if typing.TYPE_CHECKING:
    from .hooks import LossContext


@dataclass
class AdapterConfig:
    """Base of every adapter config. Fields carry ``metadata={"help": ...}``; defaults are
    the paper's; ``validate`` (run by ``__post_init__``) rejects impossible values."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`AdaptbenchError` naming the field and the expected value."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any], adapter: str = "", what: str = "adapter") -> AdapterConfig:
        """Build from user values (CLI ``--adapter-arg k=v``, spec files, checkpoints); ``what``
        names the owner in errors (``adapter``, or ``head`` for a head's options)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise AdaptbenchError(
                f"{what} {adapter or cls.__name__!r} has no option {unknown[0]!r}; "
                f"expected one of {sorted(known)}"
            )
        hints = typing.get_type_hints(cls)
        coerced = {k: _coerce(k, v, hints.get(k), adapter or cls.__name__, what) for k, v in values.items()}
        return cls(**coerced)

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _coerce(name: str, value: Any, hint: Any, adapter: str, what: str = "adapter") -> Any:
    """Values from the command line arrive as strings; turn them into the field's type."""
    if not isinstance(value, str) or hint is None or hint is str:
        return _listify(value, hint)
    try:
        if hint is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        if hint in (int, float):
            return hint(value)
        sequence = _sequence_hint(hint)
        if sequence is not None:
            if value.lower() == "none" and type(None) in typing.get_args(hint):
                return None
            item_type = _item_type(sequence)
            return tuple(item_type(part.strip()) for part in value.split(",") if part.strip())
        if _is_optional_int(hint):
            return None if value.lower() in ("none", "") else int(value)
    except ValueError:
        raise AdaptbenchError(
            f"{what} {adapter!r} option {name}={value!r}: expected {_type_in_words(hint)}"
        ) from None
    return value


def _type_in_words(hint: Any) -> str:
    """What a command-line option of type ``hint`` accepts, as an error message says it."""
    words = {bool: "true or false", int: "an integer", float: "a number"}
    if hint in words:
        return words[hint]
    sequence = _sequence_hint(hint)
    if sequence is not None:
        item = {int: "integers", float: "numbers"}.get(_item_type(sequence), "names")
        return f"a comma-separated list of {item}"
    if _is_optional_int(hint):
        return "an integer or none"
    return f"a value of type {hint}"


def _listify(value: Any, hint: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _sequence_hint(hint: Any) -> Any:
    """The tuple/list type inside ``hint`` (``tuple[int, ...] | None`` -> ``tuple[int, ...]``)."""
    candidates = [hint, *typing.get_args(hint)] if typing.get_origin(hint) is not None else [hint]
    for candidate in candidates:
        if typing.get_origin(candidate) in (tuple, list):
            return candidate
    return None


def _item_type(sequence_hint: Any) -> type:
    args = [a for a in typing.get_args(sequence_hint) if a is not Ellipsis]
    return args[0] if args and args[0] in (int, float, str) else str


def _is_optional_int(hint: Any) -> bool:
    return set(typing.get_args(hint)) == {int, type(None)}


def require(condition: bool, message: str) -> None:
    """Config validation helper: raise the user-facing error when ``condition`` fails."""
    if not condition:
        raise AdaptbenchError(message)


class SiteWrapper(nn.Module):
    """A module placed at an anatomy site that keeps the original as ``base_layer``."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer

    def merged_module(self) -> nn.Module:
        """The base layer with this wrapper's effect folded into its weights."""
        raise NotImplementedError(f"{type(self).__name__} cannot be merged")


@dataclass
class ParameterReport:
    """Parameter accounting of one adapted model (head = the task's head)."""

    trainable: int  # declared trainable tensors, head excluded
    head: int
    extra_inference: int  # parameters the adapted model runs with beyond the backbone's
    checkpoint_bytes: int  # adapter-only safetensors file, head excluded
    backbone: int  # parameters of the frozen backbone, adapter excluded
    # what extra_inference becomes once merge() has run (0 for mergeable adapters): the
    # inference cost a deployed model pays, which is the figure papers compare
    extra_inference_merged: int = 0

    @property
    def trainable_with_head(self) -> int:
        return self.trainable + self.head

    def to_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "trainable_with_head": self.trainable_with_head}


@dataclass(frozen=True)
class Needs:
    """What an adapter needs of a backbone's anatomy (see :meth:`Adapter.unsupported`)."""

    layouts: tuple[str, ...] = ("BNC", "BHWC")  # token layouts it can act on
    class_token: bool = False
    global_sites: tuple[str, ...] = ()


class NotApplicable(AdaptbenchError):
    """The adapter cannot run on this backbone: the pair is ``n/a`` (with this reason), not failed."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message

    def __reduce__(self):  # both fields survive a worker process
        return type(self), (self.args[0], self.reason)


class Adapter:
    """Base of every adapter. Subclasses implement :meth:`_attach` (and ``_merge`` when
    the default, swapping every :class:`SiteWrapper` for its ``merged_module``, is not it)."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[AdapterConfig]] = AdapterConfig
    identity_at_init: ClassVar[bool] = True  # additive methods start as the identity
    mergeable: ClassVar[bool] = False
    # True when the declared tensors are new parameters run at inference (LoRA, SSF, ...);
    # False when they are existing backbone weights (BitFit, LN tuning, full).
    adds_parameters: ClassVar[bool] = True
    # True when training runs a randomly drawn sub-network (MoSA) and evaluation the whole
    # one: a tensor may then miss the gradient of one training step without being dead.
    stochastic_training: ClassVar[bool] = False
    #: True when the adapter mixes the frames of a clip (``geometry.frames``): a temporal
    #: adapter. Every other adapter runs frame-wise on video, each frame as if it were an image.
    temporal: ClassVar[bool] = False
    #: Why the adapter's trained state must stay float32 (None: any precision). It then refuses
    #: the precisions that store parameters in half precision (``16-true``, ``bf16-true``).
    fp32_state: ClassVar[str | None] = None
    needs: ClassVar[Needs] = Needs()
    # Bumped whenever the method's maths changes: it enters every run's cell id, so a resumed
    # matrix re-runs the cells an older version produced (lm-eval's task VERSION).
    version: ClassVar[int] = 1

    def __init__(self, config: AdapterConfig | None = None):
        self.config = config if config is not None else self.config_class()
        self.backbone = None
        self.merged = False
        self._declared: dict[str, nn.Parameter] = {}
        self._wrapped: list[tuple[str, int | None, SiteWrapper]] = []
        self._backbone_params = 0

    # -- attaching ----------------------------------------------------------------------
    def attach(self, backbone) -> Adapter:
        if self.backbone is not None:
            raise RuntimeError(f"adapter {self.name!r} is already attached")
        reason = self.unsupported(backbone.anatomy, self.config)
        if reason is not None:
            raise NotApplicable(f"{self.name} on {backbone.name}: n/a: {reason}", reason)
        self.backbone = backbone
        self._backbone_params = sum(p.numel() for p in backbone.sealed_parameters())
        self._attach(backbone)
        # new modules are born in training mode: give them the backbone's mode, so that an
        # adapter attached to a backbone in eval mode runs no dropout or sampling
        backbone.train(backbone.training)
        # Only the sealed backbone's own tensors are frozen: an adapter attached earlier
        # keeps training (adapters compose).
        for param in backbone.sealed_parameters():
            param.requires_grad_(False)
        for param in self._declared.values():
            param.requires_grad_(True)
        return self

    # -- capabilities -------------------------------------------------------------------
    @classmethod
    def unsupported(cls, anatomy, config: AdapterConfig) -> str | None:
        """Why this adapter (with ``config``) cannot run on a backbone with ``anatomy``, or
        None. Checked before attaching, by ``validate`` and by the runner, so an impossible
        pair is reported ``n/a`` with its reason instead of failing. The default reads
        :attr:`needs`; methods with other constraints (FacT's widths) extend it."""
        needs = cls.needs
        if anatomy.token_layout not in needs.layouts:
            return (f"needs a token layout in {needs.layouts}; the backbone's is {anatomy.token_layout!r}"
                    f"{' (a grid of patches with no token sequence)' if anatomy.token_layout == 'BHWC' else ''}")
        if needs.class_token and not anatomy.has_class_token:
            return "needs a class token; the backbone has none"
        missing = [site for site in needs.global_sites if site not in anatomy.global_sites]
        if missing:
            return f"needs the backbone-wide sites {missing}; the backbone has {list(anatomy.global_sites)}"
        return None

    def _attach(self, backbone) -> None:
        raise NotImplementedError

    def declare(self, name: str, param: nn.Parameter) -> None:
        """Declare ``param`` trainable under ``name`` (the name used in checkpoints)."""
        if name in self._declared:
            raise RuntimeError(f"{self.name}: tensor {name!r} declared twice")
        self._declared[name] = param

    def wrap_site(self, site: str, block: int | None, make: typing.Callable[[nn.Module], SiteWrapper]) -> SiteWrapper:
        """Replace ``site`` by ``make(current module)`` and remember it for ``merge``."""
        wrapper = make(self.backbone.site(site, block))
        self.backbone.replace_site(site, block, wrapper)
        self._wrapped.append((site, block, wrapper))
        return wrapper

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self._declared)

    def changes_backbone(self) -> bool:
        """True when the adapter trains, wraps or perturbs anything inside the backbone; False
        (the linear probe) means the backbone's output depends on the image alone, so the
        runner may cache it (``runner/features.py``)."""
        return bool(self._declared or self._wrapped or self.stochastic_training)

    # -- training hooks (``hooks.py``), called by every task kind ------------------------------
    def extra_loss(self, context: LossContext) -> dict[str, torch.Tensor]:
        """Terms the method adds to the task's loss, by name (none by default)."""
        return {}

    def on_train_start(self, total_steps: int) -> None:
        """Called once before training, with the number of optimiser steps it will take."""

    def on_train_batch_end(self, step: int) -> None:
        """Called after optimiser step ``step`` (0-based); nothing by default."""

    # -- merging ------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into the backbone weights (no extra inference cost after)."""
        if not self.mergeable:
            raise AdaptbenchError(f"adapter {self.name!r} cannot be merged into the backbone")
        if not self.merged:
            self._merge()
            self.merged = True

    def _merge(self) -> None:
        # Unwrap in reverse order, so that a site wrapped twice is restored innermost last.
        for site, block, wrapper in reversed(self._wrapped):
            self.backbone.replace_site(site, block, wrapper.merged_module())
        self._wrapped.clear()

    # -- state --------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint stores (by default the declared ones)."""
        if self.merged:
            raise AdaptbenchError(
                f"adapter {self.name!r} is merged into the backbone; save it before merging"
            )
        return {name: p.detach() for name, p in self._declared.items()}

    def check_stored_names(self, tensors: dict[str, torch.Tensor], source: str = "") -> dict[str, torch.Tensor]:
        """Refuse a checkpoint whose tensor names differ from what this adapter stores;
        returns what it would store (``state_tensors()``), for shape checks."""
        expected = self.state_tensors()
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise AdaptbenchError(
                f"adapter checkpoint {source} does not match adapter {self.name!r}: "
                f"missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        return expected

    @torch.no_grad()
    def load_state_tensors(self, tensors: dict[str, torch.Tensor], source: str = "") -> None:
        self.check_stored_names(tensors, source)
        for name, target in self._declared.items():
            if tensors[name].shape != target.shape:
                raise AdaptbenchError(
                    f"adapter checkpoint {source}: tensor {name!r} has shape "
                    f"{tuple(tensors[name].shape)}, expected {tuple(target.shape)}"
                )
            target.copy_(tensors[name])

    # -- accounting ---------------------------------------------------------------------
    @property
    def backbone_params(self) -> int:
        """Parameters of the sealed backbone, without any adapter's."""
        return self._backbone_params

    def trainable_count(self) -> int:
        unique = {id(p): p for p in self._declared.values()}
        return sum(p.numel() for p in unique.values())

    def extra_inference_params(self) -> int:
        if self.merged or not self.adds_parameters:
            return 0
        return self.inference_params()

    def kept_after_merge(self) -> int:
        """Parameters a mergeable adapter still adds once merged (ZeroI2V's temporal
        embedding); 0 for most: merging folds everything into the backbone."""
        return 0

    def stats(self) -> dict[str, float]:
        """Method-specific figures for the run record (mask tuning: the fraction of weights
        masked). Read after training, before any merge; empty by default."""
        return {}

    def inference_params(self) -> int:
        """Parameters the unmerged adapter runs with at inference: by default every declared
        tensor; an adapter that folds some of them at evaluation (MoSA averages its
        per-module biases) counts what it really runs."""
        return self.trainable_count()

class InPlaceAdapter(Adapter):
    """An adapter that trains existing backbone tensors in place (BitFit, LN tuning, full,
    linear probe): nothing to merge, and no parameters added at inference."""

    mergeable = True
    adds_parameters = False

    def _merge(self) -> None:
        """The trained tensors already are the backbone's."""


def check_precision(adapter: str, precision: str) -> None:
    """Refuse a precision that would store ``adapter``'s fp32 state in half precision (one line)."""
    from ..config import HALF_PARAMETER_PRECISIONS
    from . import adapter_class

    reason = adapter_class(adapter).fp32_state
    if reason and precision in HALF_PARAMETER_PRECISIONS:
        raise AdaptbenchError(f"adapter {adapter} with precision {precision}: {reason}; expected a precision "
                              f"that keeps parameters in float32 (auto, 32-true, bf16-mixed or 16-mixed)")


def blocks_of(config_blocks: tuple[int, ...] | None, backbone) -> list[int]:
    """The block indices a config selects (None: every block); negative counts from the end."""
    total = backbone.anatomy.num_blocks
    if config_blocks is None:
        return list(range(total))
    chosen = []
    for index in config_blocks:
        index = int(index)
        if not -total <= index < total:
            raise AdaptbenchError(f"block {index} out of range: backbone {backbone.name!r} has {total} blocks")
        chosen.append(index % total)
    return sorted(set(chosen))
