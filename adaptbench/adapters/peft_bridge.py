"""The bridge to HF PEFT: ``peft:<method>`` runs any PEFT tuner on the anatomy's linear sites.

Mangrulkar et al., "PEFT: State-of-the-art Parameter-Efficient Fine-Tuning methods",
https://github.com/huggingface/peft (2022-). PEFT implements the methods; this module only
places them and holds them to adaptbench's adapter contract.

For a frozen linear ``W0`` at a chosen site, PEFT replaces the module by its layer
``y = f_theta(W0, x)`` keeping ``W0`` as ``base_layer``; per method (PEFT's default init):

=========  =============================================================  ==========  =====
method     layer (PEFT ``tuners/<method>/layer.py``)                      identity    merge
=========  =============================================================  ==========  =====
lora       ``W0 x + (alpha/r) B A x``, ``B = 0``                          yes         yes
loha       ``W0 x + (alpha/r) ((W1a W1b) * (W2a W2b)) x``, ``W2b = 0``    yes         yes
lokr       ``W0 x + (alpha/r) (W1 kron W2a W2b) x``, ``W1 = 0``           yes         yes
oft        ``(R W0) x``, R = Cayley(S) block-diagonal, ``S = 0``          yes         yes
boft       ``(R_butterfly W0 diag(s)) x``, ``R = I``, ``s = 1``           yes         yes
vera       ``W0 x + diag(b) B diag(d) A x``, ``b = 0``, A, B frozen       yes         yes
fourierft  ``W0 x + s IDFT2(c at n fixed random frequencies) x``          no (c ~N)   yes
hra        ``W0 prod_i (I - 2 u_i u_i^T / |u_i|^2) x``, paired ``u``      yes         yes
ia3        ``l * (W0 x)`` (qkv) and ``W0 (l * x)`` (mlp_out), ``l = 1``   yes         yes
=========  =============================================================  ==========  =====

The other methods of the installed PEFT (VB-LoRA, RandLoRA, SHiRA, C3A, RoAd, WaveFT, MiSS,
HiRA, DeLoRA, GraLoRA, GLoRA, Lily, ...) run through the same code; ``METHOD_FACTS`` records
for each what was checked (identity at init, exact merge) and why. A method a newer PEFT adds
is offered with no claim (neither identity nor merge). PEFT's prompt-learning and
language-model-only methods are refused with their reason (``adaptbench._peft_methods.PEFT_REFUSED``).

Initialisation and defaults are PEFT's (its config dataclass defaults, e.g. ``r = 8``),
except the targets, which are anatomy sites: ``qkv`` (PEFT's own ViT default is
``query, value``; timm fuses them, so the fused linear is adapted whole), and for ``ia3``
``qkv`` plus ``mlp_out`` (the (IA)^3 paper rescales keys, values and the MLP's hidden
activation; PEFT scales a "feedforward" module's input, which for ``mlp_out`` is that
hidden activation; on the fused ``qkv`` it also rescales the queries: a departure from
the paper that PEFT imposes on fused projections).

How it works: the per-method config dataclass exposes the PEFT config's simple fields
(int, float, bool, str, their optionals and literal choices; PEFT's own names and
defaults) plus ``targets`` and ``blocks``; building it runs PEFT's validation. ``attach``
resolves the sites to the backbone's module names, instantiates PEFT's tuner class on the
backbone with those names as ``target_modules`` (the tuner rather than
``inject_adapter_in_model``, which refuses tuners with state shared across layers, e.g.
VeRA's frozen projections), then declares every new tensor that requires grad as
``blocks.{i}.{site}.<PEFT parameter path>`` (or ``shared.<path>`` when several sites hold
it). ``merge()`` calls each PEFT layer's ``merge`` and puts its base layer back.
AdaLoRA (``peft:adalora``; Zhang et al., "Adaptive Budget Allocation for Parameter-Efficient
Fine-Tuning", ICLR 2023) is more than a layer, and uses the training hooks (``hooks.py``):
``W0 x + (alpha / ranknum) B (A * E) x`` with ``E`` (the singular values) 0 at init, whose
triplets PEFT's ``RankAllocator`` prunes from ``init_r`` towards ``target_r`` per layer on a cubic
budget schedule over ``tinit`` .. ``total_step - tfinal``. ``on_train_start(total_steps)`` sets
the config's ``total_step`` (the allocator reads it at every call; it is not an option, and
``tinit < total_steps - tfinal`` is checked there); ``on_train_batch_end(step)`` calls the
tuner's ``update_and_allocate(step)``, which reads every factor's ``.grad`` (sensitivity
``|p * grad|``): it must run after ``optimizer.step()`` and before ``zero_grad``. PEFT adds the
orthogonal regulariser ``orth_reg_weight * mean over A, B of ||A A^T - I||_F, ||B^T B - I||_F``
only to a transformers output's ``.loss`` (``AdaLoraModel.forward``); ``extra_loss`` returns
it as ``orth_reg``. PEFT's ``r`` (unused by AdaLoRA: ``init_r`` is its rank) is not exposed.

Options that would touch the frozen backbone are not exposed (``bias`` trains its biases:
use ``bitfit``; ``fan_in_fan_out`` is for GPT-2's Conv1D), and an initialisation that
rewrites the frozen weights (LoRA's ``init_lora_weights=pissa``) is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from .._peft_methods import PEFT_INSTALL_HINT, installed_peft_methods
from ..backbones.anatomy import LINEAR_SITES
from ..errors import AdaptbenchError
from .base import Adapter, AdapterConfig, blocks_of, require
from .hooks import LossContext

ADAPTER_NAME = "default"  # PEFT's name for the one adapter a layer holds


@dataclass(frozen=True)
class MethodFacts:
    """What adaptbench checked about one PEFT method on its linear sites."""

    targets: tuple[str, ...]
    identity_at_init: bool
    mergeable: bool
    why: str  # the reason for the flags (PEFT's default init and merge)


# Checked empirically by tests/test_adapter_conformance.py (identity at init to 1e-6,
# merged == unmerged to 1e-5, no dead tensor after one step) and tests/test_peft_bridge.py.
METHOD_FACTS = {
    "lora": MethodFacts(("qkv",), True, True, "B = 0 at init; merge adds (alpha/r) B A to W"),
    "loha": MethodFacts(("qkv",), True, True, "hada_w2_b = 0 makes the Hadamard product 0; merge adds it"),
    "lokr": MethodFacts(("qkv",), True, True, "lokr_w1 = 0 makes the Kronecker product 0; merge adds it"),
    "oft": MethodFacts(("qkv",), True, True, "skew S = 0 gives R = I; merge multiplies W by R"),
    "boft": MethodFacts(("qkv",), True, True, "butterfly blocks start at I and the scale at 1; merge folds both"),
    "vera": MethodFacts(("qkv",), True, True, "lambda_b = 0 at init; merge adds diag(b) B diag(d) A"),
    "fourierft": MethodFacts(("qkv",), False, True,
                             "PEFT's default init_weights=False draws the spectrum from N(0, 1) (the "
                             "paper's Gaussian init), so the update is non-zero at init; merge adds it"),
    "hra": MethodFacts(("qkv",), True, True, "reflections start in equal pairs (H H = I); merge multiplies W"),
    "ia3": MethodFacts(("qkv", "mlp_out"), True, True, "l = 1 at init; merge scales W's rows or columns"),
    "vblora": MethodFacts(("qkv",), False, True, "both factors are drawn from the random vector bank: non-zero at init"),
    "c3a": MethodFacts(("qkv",), False, True, "PEFT's default init is xavier_uniform: non-zero at init"),
    "unilora": MethodFacts(("qkv",), False, True, "theta_d ~ U(+-0.02) at init: a small non-zero update"),
    "glora": MethodFacts(("qkv",), True, True, "A, B, C, D, E start at 0; its D scales the base bias, so it "
                                               "only learns where that bias is non-zero"),
    "beft": MethodFacts(("qkv",), True, False, "bias update starts at 0; PEFT cannot merge it into a "
                                               "bias-free linear (vit_tiny_test_reg's qkv)"),
    "lily": MethodFacts(("qkv",), True, False, "B experts start at 0; PEFT's Lily layer has no merge"),
    "adalora": MethodFacts(("qkv",), True, True, "E (the singular values) = 0 at init; merge adds "
                                                 "B (A * E) alpha / ranknum to W"),
    **{m: MethodFacts(("qkv",), True, True, "identity at init and exact merge, checked on the tiny ViTs")
       for m in ("adamss", "deft", "delora", "frod", "gralora", "hira", "miss", "osf", "peanut", "psoft",
                 "pvera", "randlora", "road", "shira", "supertuning", "tinylora", "waveft")},
}
# A method of a newer PEFT that adaptbench has not checked: claim nothing about it.
UNCHECKED = MethodFacts(("qkv",), False, False, "not checked by adaptbench")

# PEFT config fields that adaptbench sets itself or that would break the contract.
_NOT_EXPOSED = {
    "target_modules", "exclude_modules", "layers_to_transform", "layers_pattern",  # from targets/blocks
    "feedforward_modules",  # ia3: the mlp_out sites (see the module docstring)
    "modules_to_save", "target_parameters", "trainable_token_indices",  # other modules than the sites
    "bias",  # unfreezes backbone biases; trainability comes from declare() only (use bitfit)
    "fan_in_fan_out",  # for GPT-2's Conv1D; anatomy sites are nn.Linear
    "use_effective_conv2d",  # convolutions only
    "megatron_core", "use_qalora", "qalora_group_size",  # sharded or quantised base layers
    "ensure_weight_tying", "save_projection",  # about PEFT's own models and files
}
# Per method: PEFT fields the method ignores or adaptbench sets from the run.
_NOT_EXPOSED_BY_METHOD = {
    "adalora": {"r", "total_step"},  # r: unused (init_r is the rank); total_step: on_train_start
}
_SIMPLE_TYPES = (int, float, bool, str)


# -- the config ----------------------------------------------------------------------------
@dataclass
class PeftBridgeConfig(AdapterConfig):
    """Base of the per-method configs: ``targets`` and ``blocks`` plus PEFT's simple fields."""

    peft_method: ClassVar[str] = ""
    peft_config_class: ClassVar[type] = object
    peft_fields: ClassVar[dict[str, tuple[type, ...]]] = {}  # name -> accepted types

    def __post_init__(self) -> None:
        self._coerce_peft_fields()
        super().__post_init__()

    def validate(self) -> None:
        name = f"peft:{self.peft_method}"
        require(len(self.targets) > 0, f"{name} option targets: expected at least one site")
        for target in self.targets:
            require(target in LINEAR_SITES, f"{name} target {target!r}: expected one of {LINEAR_SITES}")
        self.peft_config(list(self.targets))  # PEFT's own validation, as one line

    def peft_options(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.peft_fields}

    def peft_config(self, target_modules: list[str], feedforward_modules: list[str] | None = None):
        """The PEFT config for these module names (raises one line when PEFT refuses it)."""
        extra = {"feedforward_modules": feedforward_modules or []} if self.peft_method == "ia3" else {}
        try:
            return self.peft_config_class(target_modules=target_modules, **extra, **self.run_placeholders(),
                                          **self.peft_options())
        except (ValueError, TypeError) as err:
            raise AdaptbenchError(f"peft:{self.peft_method} options {self.peft_options()}: {_one_line(err)}") from None

    def run_placeholders(self) -> dict[str, Any]:
        """PEFT fields that only the run knows, with values that pass PEFT's validation until
        the training hooks set the real ones (none by default)."""
        return {}

    def _coerce_peft_fields(self) -> None:
        """CLI values arrive as strings; PEFT wants its types (``init_weights`` may be a
        bool or a named scheme, so "true"/"false" become bools)."""
        for key, accepted in self.peft_fields.items():
            value = getattr(self, key)
            if isinstance(value, str) and accepted != (str,):
                setattr(self, key, _parse(self.peft_method, key, value, accepted))


def _parse(method: str, key: str, value: str, accepted: tuple[type, ...]) -> Any:
    text = value.strip().lower()
    if type(None) in accepted and text == "none":
        return None
    if bool in accepted and text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        if kind in accepted:
            try:
                return kind(value)
            except ValueError:
                pass
    if str in accepted:
        return value
    raise AdaptbenchError(f"adapter 'peft:{method}' option {key}={value!r}: expected a value of type "
                          f"{' or '.join(t.__name__ for t in accepted)}")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _accepted_types(hint: Any) -> tuple[type, ...] | None:
    """The simple types a PEFT field accepts (None when it is not a simple field)."""
    if hint in _SIMPLE_TYPES:
        return (hint,)
    if typing.get_origin(hint) is typing.Literal:
        return (str,) if all(isinstance(a, str) for a in typing.get_args(hint)) else None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = [_accepted_types(a) if a is not type(None) else (type(None),) for a in typing.get_args(hint)]
        if all(parts):
            return tuple(dict.fromkeys(t for part in parts for t in part))
    return None


def _our_hint(types: tuple[type, ...]) -> Any:
    """The annotation of our field (``int``, ``bool | str``, ``int | None``, ...): ``_coerce`` in
    base.py converts the plain ones; ``_coerce_peft_fields`` the unions it leaves as strings."""
    return functools.reduce(operator.or_, types)


def make_config_class(method: str, peft_config_class: type, facts: MethodFacts,
                      base: type[PeftBridgeConfig] = PeftBridgeConfig) -> type[PeftBridgeConfig]:
    hints = typing.get_type_hints(peft_config_class)
    base_fields = {f.name for f in dataclasses.fields(_peft().config.PeftConfig)}
    hidden = _NOT_EXPOSED | _NOT_EXPOSED_BY_METHOD.get(method, set())
    specs, accepted = [], {}
    for f in dataclasses.fields(peft_config_class):
        types = _accepted_types(hints.get(f.name))
        if f.name in base_fields or f.name in hidden or types is None or f.default is dataclasses.MISSING:
            continue
        accepted[f.name] = types
        specs.append((f.name, _our_hint(types), field(default=f.default, metadata={"help": _help(f)})))
    specs += [
        ("targets", tuple[str, ...], field(default=facts.targets, metadata={
            "help": f"anatomy sites to adapt, any of {', '.join(LINEAR_SITES)}"})),
        ("blocks", tuple[int, ...] | None, field(default=None, metadata={
            "help": "block indices to adapt (default: every block)"})),
    ]
    config = dataclasses.make_dataclass(f"Peft{_camel(method)}Config", specs, bases=(base,),
                                        namespace={"__module__": __name__})
    config.peft_method = method
    config.peft_config_class = peft_config_class
    config.peft_fields = accepted
    return config


def _help(f: dataclasses.Field) -> str:
    text = " ".join(str(f.metadata.get("help", "")).split())
    return f"PEFT: {text}" if text else "PEFT option"


def _camel(method: str) -> str:
    return "".join(part.capitalize() for part in method.split("_"))


# -- the adapter ----------------------------------------------------------------------------
class PeftBridge(Adapter):
    """An HF PEFT method on anatomy sites (base of the per-method ``peft:<method>`` classes)."""

    peft_method: ClassVar[str] = ""
    tuner_class: ClassVar[type] = object
    facts: ClassVar[MethodFacts] = UNCHECKED

    def __init__(self, config: AdapterConfig | None = None):
        super().__init__(config)
        self._sites: list[tuple[str, int]] = []
        self._tuner = None  # PEFT's tuner (BaseTuner) over the backbone: methods with training hooks use it

    def _attach(self, backbone) -> None:
        config: PeftBridgeConfig = self.config
        self._sites = [(site, block) for block in blocks_of(config.blocks, backbone) for site in config.targets]
        module_names = _module_names(backbone)
        names = {(site, block): module_names[id(backbone.site(site, block))] for site, block in self._sites}
        feedforward = [name for (site, _), name in names.items() if site == "mlp_out"]
        peft_config = config.peft_config(sorted(names.values()), feedforward)
        existing = {id(p) for p in backbone.parameters()}
        frozen_before = _targeted_weights(backbone, self._sites)
        self._inject(backbone, peft_config)
        self._refuse_rewritten_weights(frozen_before)
        for name, param in self._new_tensors(backbone, existing, names).items():
            self.declare(name, param)
        if backbone.anatomy.token_layout != "BNC":
            # SAM's linears see (B, H, W, C) grids and windows; some PEFT layers reshape
            # assuming (B, N, C): give them rows of tokens, which every linear-site method
            # treats alike (each acts on the last dimension)
            for site, block in self._sites:
                backbone.replace_site(site, block, TokenRows(backbone.site(site, block)))

    def _inject(self, backbone, peft_config) -> None:
        try:
            self._tuner = self.tuner_class(backbone, peft_config, adapter_name=ADAPTER_NAME)
        except (ValueError, TypeError, RuntimeError, AttributeError, NotImplementedError) as err:
            raise AdaptbenchError(
                f"peft:{self.peft_method} cannot adapt {backbone.name!r} at {list(self.config.targets)}: "
                f"{_one_line(err)}"
            ) from None
        backbone.__dict__.pop("peft_config", None)  # the tuner leaves its config dict on the model

    def _refuse_rewritten_weights(self, frozen_before: dict[tuple, torch.Tensor]) -> None:
        """Some PEFT inits (PiSSA, OLoRA, ...) subtract their start from W: the frozen backbone
        would no longer be the one the weights hash names, and an adapter-only file would not
        restore the model."""
        for (site, block, key), before in frozen_before.items():
            now = dict(self.backbone.site(site, block).get_base_layer().named_parameters())[key]
            if not torch.equal(now, before):
                raise AdaptbenchError(
                    f"peft:{self.peft_method} with {self.config.peft_options()} rewrites the frozen "
                    f"backbone weight {site}.{key} of block {block} at initialisation; adaptbench "
                    f"adapters must leave the backbone untouched (choose another init)"
                )

    def _new_tensors(self, backbone, existing: set[int], names: dict) -> dict[str, nn.Parameter]:
        """Stable names for every tensor PEFT added that requires grad."""
        holders: dict[int, list[str]] = {}
        params: dict[int, nn.Parameter] = {}
        for (site, block), module_name in names.items():
            layer = backbone.get_submodule(module_name)
            for path, param in layer.named_parameters(remove_duplicate=False):
                if id(param) not in existing and param.requires_grad:
                    holders.setdefault(id(param), []).append(f"blocks.{block}.{site}.{_strip_adapter(path)}")
                    params[id(param)] = param
        declared = {}
        for key, where in holders.items():
            name = where[0] if len(where) == 1 else "shared." + where[0].split(".", 3)[3]
            declared[name] = params[key]
        for path, param in backbone.named_parameters():  # trainable state PEFT put elsewhere
            if id(param) not in existing and param.requires_grad and id(param) not in params:
                declared[f"shared.{_strip_adapter(path)}"] = param
        return declared

    @torch.no_grad()
    def _merge(self) -> None:
        for site, block in self._sites:
            layer = self.backbone.site(site, block)
            layer = layer.base_layer if isinstance(layer, TokenRows) else layer
            layer.merge(adapter_names=[ADAPTER_NAME])
            self.backbone.replace_site(site, block, layer.get_base_layer())


# -- AdaLoRA: a method with training hooks -------------------------------------------------------
@dataclass
class AdaLoraBridgeConfig(PeftBridgeConfig):
    """The AdaLoRA fields are PEFT's; ``total_step`` comes from the run (``on_train_start``)."""

    def validate(self) -> None:
        # checked here because PEFT fails on them only mid-training (a modulo by zero, kthvalue)
        require(self.init_r >= 1, f"peft:adalora option init_r={self.init_r}: expected an integer >= 1")
        require(0 <= self.target_r <= self.init_r,
                f"peft:adalora option target_r={self.target_r}: expected 0 <= target_r <= init_r={self.init_r}")
        require(self.deltaT >= 1, f"peft:adalora option deltaT={self.deltaT}: expected an integer >= 1")
        for name in ("tinit", "tfinal"):
            require(getattr(self, name) >= 0, f"peft:adalora option {name}={getattr(self, name)}: expected >= 0")
        super().validate()

    def run_placeholders(self) -> dict[str, Any]:
        # the shortest schedule PEFT accepts; on_train_start replaces it by the run's length
        return {"total_step": self.tinit + self.tfinal + 1}


class AdaLoraBridge(PeftBridge):
    """``peft:adalora``: PEFT's AdaLoRA layers, its rank allocator driven by the training hooks."""

    def __init__(self, config: AdapterConfig | None = None):
        super().__init__(config)
        self.total_steps: int | None = None

    def on_train_start(self, total_steps: int) -> None:
        config = self.config
        require(total_steps >= 1, f"peft:adalora: a run of {total_steps} optimiser steps has no budget schedule")
        require(config.tinit < total_steps - config.tfinal,
                f"peft:adalora options tinit={config.tinit}, tfinal={config.tfinal}: expected "
                f"tinit < total_steps - tfinal for this run's {total_steps} optimiser steps (lower tinit or tfinal)")
        # the allocator holds the tuner's config object: both read total_step from it at every call
        self._tuner.rankallocator.set_total_step(total_steps)
        self.total_steps = total_steps

    def on_train_batch_end(self, step: int) -> None:
        if self.merged:
            return
        if self.total_steps is None:
            raise AdaptbenchError("peft:adalora: on_train_start(total_steps) must run before on_train_batch_end: "
                                  "the rank budget is scheduled over the run's length")
        missing = [name for name, param in self._declared.items() if param.grad is None]
        if missing:
            raise AdaptbenchError(
                f"peft:adalora: on_train_batch_end({step}) found no gradient on {missing[0]}: call it after "
                f"optimizer.step() and before optimizer.zero_grad() (the rank allocator reads .grad)"
            )
        self._tuner.update_and_allocate(step)

    def extra_loss(self, context: LossContext) -> dict[str, torch.Tensor]:
        weight = self.config.orth_reg_weight
        if weight == 0 or self.merged:
            return {}
        return {"orth_reg": weight * orthogonality_penalty(self._singular_vectors())}

    def _singular_vectors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(A, B) of every layer: right (r x in) and left (out x r) singular-vector factors."""
        return [(self._declared[f"blocks.{block}.{site}.lora_A"], self._declared[f"blocks.{block}.{site}.lora_B"])
                for site, block in self._sites]


def orthogonality_penalty(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The mean, over every A and every B, of ``||A A^T - I||_F`` and ``||B^T B - I||_F``: the
    r x r Gram matrices of the singular vectors against the identity (``AdaLoraModel.forward``)."""
    grams = [gram for a, b in pairs for gram in (a @ a.T, b.T @ b)]
    return torch.stack([torch.linalg.matrix_norm(gram - torch.eye(len(gram), dtype=gram.dtype, device=gram.device))
                        for gram in grams]).mean()


# Methods whose adapter or config is more than the generic bridge.
METHOD_CLASSES: dict[str, tuple[type[PeftBridge], type[PeftBridgeConfig]]] = {
    "adalora": (AdaLoraBridge, AdaLoraBridgeConfig),
}


class TokenRows(nn.Module):
    """Runs a PEFT layer on the tokens as rows, (..., C) -> (N, C) -> (..., C')."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.base_layer(x.reshape(-1, x.shape[-1]))
        return rows.reshape(*x.shape[:-1], rows.shape[-1])


def _module_names(backbone: nn.Module) -> dict[int, str]:
    return {id(module): name for name, module in backbone.named_modules()}


def _targeted_weights(backbone, sites) -> dict[tuple, torch.Tensor]:
    return {(site, block, key): param.detach().clone()
            for site, block in sites for key, param in backbone.site(site, block).named_parameters()}


def _strip_adapter(path: str) -> str:
    """``lora_A.default.weight`` -> ``lora_A.weight``: one adapter per layer here."""
    return ".".join(part for part in path.split(".") if part != ADAPTER_NAME)


# -- the family resolver -----------------------------------------------------------------------
def _peft():
    try:
        import peft
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] == "peft":
            raise AdaptbenchError(PEFT_INSTALL_HINT) from None
        raise AdaptbenchError(f"HF PEFT failed to import: {type(err).__name__}: {err}") from None
    except Exception as err:  # noqa: BLE001 - a broken install becomes one line
        raise AdaptbenchError(f"HF PEFT failed to import: {type(err).__name__}: {_one_line(err)}") from None
    return peft


@functools.cache
def bridged_adapter(method: str) -> type[PeftBridge]:
    """The adapter class of ``peft:<method>`` (the registry's resolver for the family)."""
    offered, refused = installed_peft_methods()
    if method in refused:
        raise AdaptbenchError(f"adapter 'peft:{method}' cannot be used here: {refused[method]}")
    if method not in offered:
        raise AdaptbenchError(f"unknown adapter 'peft:{method}': the installed HF PEFT has no such method")
    peft = _peft()
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    peft_type = peft.PeftType[method.upper()]
    facts = METHOD_FACTS.get(method, UNCHECKED)
    base, config_base = METHOD_CLASSES.get(method, (PeftBridge, PeftBridgeConfig))
    adapter = type(f"Peft{_camel(method)}", (base,), {
        "__doc__": offered[method],
        "__module__": __name__,
        "peft_method": method,
        "tuner_class": PEFT_TYPE_TO_TUNER_MAPPING[peft_type],
        "facts": facts,
        "identity_at_init": facts.identity_at_init,
        "mergeable": facts.mergeable,
    })
    adapter.config_class = make_config_class(method, PEFT_TYPE_TO_CONFIG_MAPPING[peft_type], facts, config_base)
    adapter.name = f"peft:{method}"
    return adapter
