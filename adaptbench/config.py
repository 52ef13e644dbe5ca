"""The run configuration, defined once: every field with its type, default, help and check.

Three pydantic models (``extra="forbid"``: an unknown key is an error, not ignored):

* :class:`RunConfig` decides a run's result. Its resolved form (task defaults filled in, plus
  the code versions of the adapter, task kind, head and reader) is hashed into the run id, so
  any change to it, or to the maths behind it, is a different cell.
* :class:`BackboneOptions` (``backbones[].options`` in a spec): how the backbone is built.
  Part of the :class:`RunConfig`, so of the run id.
* :class:`RunPolicy`: how the trainer runs (determinism, float32 matmul precision, validation
  cadence). Recorded beside the config, not hashed: it changes speed, not the method.

``adaptbench train``'s options and the spec checker (``runner/spec.py``) are generated from
these fields (:func:`cli_fields`, :func:`check_value`), and both report a bad value the same
way: the flag or ``file:line: key``, then ``expected <what the field's type says>, got <value>``.

This module imports pydantic but no torch: the CLI's start stays cheap.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from .errors import AdaptbenchError

#: Lightning's precision settings (an enumeration: a typo is refused before any cell runs),
#: and "auto": bf16-mixed on a CUDA device (16-mixed where it lacks bf16), 32-true elsewhere.
Precision = Literal["auto", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
#: Precisions that store parameters in half precision (an adapter with fp32 state refuses them).
HALF_PARAMETER_PRECISIONS = ("16-true", "bf16-true")
Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


#: RunConfig fields added after records existed: left out of the resolved config (and so of
#: the run id) while they hold their default, so earlier cells keep their ids on resume.
OMITTED_AT_DEFAULT: dict[str, Any] = {"prompt": "none", "shots": None, "head_options": {}, "wise_ft": []}


#: Input normalisations a run may ask for instead of the backbone's own (``normalization``).
Normalization = Literal["backbone", "imagenet", "inception", "none"]
NORMALIZATION_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
#: Backbone options every family honours (``load_backbone`` applies them after the factory).
GENERIC_BACKBONE_OPTIONS = ("grad_checkpointing", "drop_path", "normalization")
#: Backbone options added after records existed: left out of the resolved config while unset,
#: so earlier cells keep their ids.
BACKBONE_OPTIONS_OMITTED_AT_DEFAULT = ("drop_path", "normalization")


class BackboneOptions(_Model):
    """How a backbone is built (a family accepts the options it can honour; see ``load_backbone``)."""

    img_size: int | None = Field(None, ge=8, description="square input size; position embeddings are "
                                                         "resampled (default: the backbone's)")
    keep_projection: bool | None = Field(None, description="CLIP: keep the image projection (default: yes)")
    quick_gelu: bool | None = Field(None, description="CLIP: QuickGELU activations (default: what the "
                                                      "pretrained tag says)")
    grad_checkpointing: bool = Field(False, description="recompute block activations in the backward "
                                                        "pass (less memory, more time)")
    drop_path: float | None = Field(None, ge=0.0, lt=1.0, description=(
        "stochastic depth on the frozen backbone's residual branches in training, rising linearly "
        "over the blocks from 0 to this rate (timm's drop_path_rate; the PETL-on-VTAB recipes use "
        "0.1; default 0)"))
    normalization: Normalization | None = Field(None, description=(
        "input mean/std: backbone (its pretrained config, the default), imagenet (0.485/0.229, "
        "...), inception (0.5/0.5) or none (mean 0, std 1 on [0, 1] pixels)"))

    def factory_options(self) -> dict[str, Any]:
        """The options a family's factory receives (set ones only; the generic ones are applied
        to every family by ``load_backbone``)."""
        return {key: value for key, value in self.model_dump(exclude=set(GENERIC_BACKBONE_OPTIONS)).items()
                if value is not None}


class RunConfig(_Model):
    """Everything that decides a run's result (its resolved form is hashed into the run id)."""

    task: str = Field(description="task name, e.g. micro/digits or vtab1k/cifar (`adaptbench ls tasks`)")
    backbone: str = Field(description="backbone name, e.g. vit_micro or timm:vit_base_patch16_224.augreg_in21k")
    adapter: str = Field(description="adapter name (`adaptbench ls adapters`)")
    adapter_options: dict[str, Any] = Field(default_factory=dict, description="the adapter's options")
    weights: str | None = Field(None, description="'pretrained' (default), 'random[:seed]', or a local "
                                                  ".safetensors/.pth file")
    backbone_options: BackboneOptions = Field(default_factory=BackboneOptions,
                                              description="how the backbone is built")
    head: str | None = Field(None, description="task head (`adaptbench ls heads`; default: the task kind's, "
                                               "linear for classification, seg_linear for segmentation)")
    head_options: dict[str, Any] = Field(default_factory=dict, description="the head's options (`adaptbench ls "
                                                                          "heads`; e.g. coop's n_ctx)")
    prompt: Literal["none", "box", "point"] = Field(
        "none", description="prompts fed to a promptable head (sam_decoder): none (prompt-free), or box / "
                            "point taken from the ground-truth mask, which then leaks into the evaluation")
    shots: int | None = Field(None, ge=1, description="few-shot training: k samples per class (classification) "
                                                      "or k images (segmentation) drawn with the seed from the "
                                                      "training split (default: all)")
    wise_ft: list[float] = Field(default_factory=list, description="WiSE-FT: also evaluate the weights interpolated between "
                                                       "the initial and the trained model at these mixing "
                                                       "weights in [0, 1] (final stage)")
    seed: int = Field(0, ge=0, description="seed of the data order, the head and the adapter's init")
    stage: Literal["final", "tune"] = Field("final", description="final: train800val200 -> test; "
                                                                 "tune: train800 -> val200")
    epochs: int | None = Field(None, ge=0, description="training epochs; 0 evaluates without training "
                                                       "(default: the task's, 100; micro tasks 10)")
    batch_size: int = Field(64, ge=1, description="images per step")
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False, description="AdamW learning rate (peak, after warm-up)")
    weight_decay: float = Field(1e-4, ge=0, allow_inf_nan=False, description="AdamW weight decay")
    warmup_epochs: int | None = Field(None, ge=0, description="linear warm-up epochs, then cosine decay "
                                                              "(default: 10% of the epochs)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, allow_inf_nan=False, description="cross-entropy label smoothing")
    pool: Literal["cls", "mean"] | None = Field(None, description="feature pooling (default: the backbone's)")
    precision: Precision = Field("auto", description="Lightning precision (auto: bf16-mixed on CUDA, "
                                                     "32-true on the CPU; resolved before the run id is taken)")

    @model_validator(mode="after")
    def _wise_weights_in_unit_interval(self) -> RunConfig:
        for alpha in self.wise_ft:
            if not 0.0 <= alpha <= 1.0:
                raise ConfigError(("wise_ft",), f"expected mixing weights in [0, 1], got {alpha}")
        return self

    @model_validator(mode="after")
    def _warmup_within_epochs(self) -> RunConfig:
        # an untrained run (epochs: 0) has no schedule: a shared warm-up setting does not apply
        if self.warmup_epochs and self.epochs and self.warmup_epochs > self.epochs:
            raise ConfigError(("warmup_epochs",), f"expected at most the epochs ({self.epochs}), "
                                                  f"got {self.warmup_epochs}")
        return self

    def for_accelerator(self, accelerator: str) -> RunConfig:
        """This config with ``precision: auto`` resolved for ``accelerator`` (the id holds the
        precision a run really used)."""
        if self.precision != "auto":
            return self
        return self.model_copy(update={"precision": auto_precision(accelerator)})

    def resolved_head(self, kind_default: str) -> str:
        return self.head or kind_default

    def resolved_epochs(self, task_default: int) -> int:
        return task_default if self.epochs is None else self.epochs

    def resolved_warmup(self, task_default: int) -> int:
        epochs = self.resolved_epochs(task_default)
        if epochs == 0:
            return 0
        warmup = max(0, round(0.1 * epochs)) if self.warmup_epochs is None else self.warmup_epochs
        if warmup > epochs:
            raise AdaptbenchError(f"warmup_epochs {warmup}: expected at most the epochs ({epochs}, the "
                                  f"task's default)")
        return warmup


class RunPolicy(_Model):
    """How the trainer runs: recorded with each run (resolved for its device), not part of its
    identity: none of it changes the method, only its speed and its last bits."""

    deterministic: bool | None = Field(None, description="deterministic algorithms where torch has them "
                                                         "(default: on on the CPU, off on GPUs, where they "
                                                         "forbid cuDNN autotuning; the seed still fixes data "
                                                         "order and initialisation)")
    matmul_precision: Literal["auto", "highest", "high", "medium"] = Field(
        "auto", description="torch.set_float32_matmul_precision for fp32 matmuls (auto: high, i.e. TF32, "
                            "on CUDA; highest on the CPU)")
    validation: Literal["end", "every_epoch"] = Field(
        "end", description="tune stage: validate once after the last epoch, or after every epoch")
    compile: bool = Field(False, description="torch.compile the backbone after the adapter is attached "
                                             "(pays when compile time is small against the cell's)")
    feature_cache: bool = Field(True, description="train the head on cached backbone features when "
                                                  "nothing before the head is trained (the linear probe)")

    def for_device(self, cuda: bool) -> RunPolicy:
        """The policy with its device-dependent defaults filled in (what the record stores)."""
        return self.model_copy(update={
            "deterministic": (not cuda) if self.deterministic is None else self.deterministic,
            "matmul_precision": ("high" if cuda else "highest") if self.matmul_precision == "auto"
            else self.matmul_precision,
        })


def auto_precision(accelerator: str) -> str:
    """What ``precision: auto`` means on ``accelerator``: bf16-mixed on CUDA (16-mixed on GPUs
    without bf16), 32-true elsewhere (CPU autocast is slower than fp32 on most CPUs)."""
    if not uses_cuda(accelerator):
        return "32-true"
    import torch

    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def uses_cuda(accelerator: str) -> bool:
    """Whether Lightning's ``accelerator`` puts a run on a CUDA device here."""
    if accelerator in ("cpu", "mps"):
        return False
    import torch

    return torch.cuda.is_available()


class RunPlaceOptions(_Model):
    """Where a run executes and what it keeps (``adaptbench train``'s other options)."""

    data_root: str | None = Field(None, description="folder holding the VTAB-1k / FGVC data (or "
                                                    "ADAPTBENCH_DATA_ROOT)")
    accelerator: Accelerator = Field("auto", description="Lightning accelerator")
    num_workers: int | None = Field(None, ge=0, description="threads that decode a split into the cache "
                                                            "the first time it is read (0: this thread; "
                                                            "default: the usable CPUs)")
    out: str = Field("results", description="folder for run records")
    save_adapter: bool = Field(True, description="write the adapter checkpoint (safetensors) beside the record")
    progress: bool = Field(False, description="show Lightning's progress bar")


class EvalOptions(_Model):
    """``adaptbench eval``: a saved adapter checkpoint on one split of a task."""

    checkpoint: str = Field(description="an adapter .safetensors written by train")
    task: str = RunConfig.model_fields["task"]
    backbone: str = RunConfig.model_fields["backbone"]
    weights: str | None = RunConfig.model_fields["weights"]
    split: str | None = Field(None, description="split to evaluate (default: the task's test split)")
    data_root: str | None = RunPlaceOptions.model_fields["data_root"]
    batch_size: int = RunConfig.model_fields["batch_size"]
    num_workers: int | None = Field(None, ge=0, description="threads that decode a split into the cache "
                                                            "the first time it is read (0: this thread; "
                                                            "default: the usable CPUs)")
    accelerator: Accelerator = RunPlaceOptions.model_fields["accelerator"]
    as_json: bool = Field(False, description="print the metrics as JSON")


class ExecutorSettings(_Model):
    """Where a matrix's cells run: a spec's ``executor:`` block (cluster details live here, never
    in code). ``--executor`` and ``--workers`` override ``name`` and ``workers``."""

    name: str = Field("local", description="executor: local | ray | slurm, or a plugin's "
                                           "(entry-point group adaptbench.executors)")
    workers: int | None = Field(None, ge=1, description="cells running at the same time (default: local, "
                                                        "1; ray, what the cluster's resources fit; slurm, 1)")
    gpus_per_cell: float | None = Field(None, ge=0, description="GPUs each cell holds (default: 1 where the "
                                                                 "executor sees GPUs, else 0)")
    cpus_per_cell: int | None = Field(None, ge=1, description="CPU cores each cell holds (default: the usable "
                                                               "cores shared out between workers)")
    memory_gb: float | None = Field(None, gt=0, description="memory each cell may use (slurm: --mem)")
    partition: str | None = Field(None, description="slurm partition")
    time_limit_min: int | None = Field(None, ge=1, description="slurm: wall-clock limit of each job (default: "
                                                               "the partition's DefaultTime, else its MaxTime)")
    address: str | None = Field(None, description="ray: the cluster to join (default: start a local one)")
    long_lived: bool = Field(True, description="keep workers between cells (ray actors), so imports and "
                                               "backbones are reused; slurm runs one job per cell")
    keep_backbones: int = Field(1, ge=0, description="built backbones a long-lived worker keeps for its later "
                                                     "cells, each cell adapting a copy (0: build one per cell)")
    retries: int = Field(1, ge=0, description="times a cell whose worker died is tried again before it is "
                                              "recorded failed")
    heartbeat_s: float = Field(30.0, gt=0, description="a running cell renews its lease this often")
    lease_timeout_s: float = Field(120.0, gt=0, description="a lease not renewed for this long is stale and "
                                                            "taken over")
    folder: str | None = Field(None, description="slurm: folder for submitit's job files and logs "
                                                 "(default: <results>/.slurm)")
    options: dict[str, Any] = Field(default_factory=dict, description="engine-specific extras (ray.init "
                                                                      "keywords; slurm: submitit's slurm_* "
                                                                      "parameters)")

    @model_validator(mode="after")
    def _lease_outlives_heartbeat(self):
        if self.lease_timeout_s <= self.heartbeat_s:
            raise ValueError(f"lease_timeout_s ({self.lease_timeout_s}) must exceed heartbeat_s "
                             f"({self.heartbeat_s}), or every running cell looks stale")
        return self


class MatrixRunOptions(_Model):
    """``adaptbench run SPEC``: how to run a matrix (none of it changes a cell's id)."""

    workers: int | None = Field(None, ge=1, description="cells run at the same time (local: worker processes, "
                                                        "one per GPU on GPU machines; default: the spec's "
                                                        "executor block, else 1)")
    dry_run: bool = Field(False, description="list the cells and their status; run nothing")
    retry_failed: bool = Field(False, description="run again the cells whose record says failed")
    out: str | None = Field(None, description="folder for run records (default: the spec's out)")
    data_root: str | None = Field(None, description="data folder (default: the spec's data_root)")
    accelerator: Accelerator = RunPlaceOptions.model_fields["accelerator"]
    leaderboard: bool = Field(True, description="print and write the leaderboard at the end")
    executor: str | None = Field(None, description="where cells run: local | ray | slurm | a plugin's "
                                                   "(default: the spec's executor block, else local)")


class CompareOptions(_Model):
    """``adaptbench compare A B RESULTS``: two rows of one leaderboard, compared paired."""

    benchmark: str | None = Field(None, description="the board holding both rows, when the records make "
                                                    "several (default: the one board that has both)")


#: The RunConfig fields a spec's ``train:`` block (and a grid) may set: trainer settings.
TRAIN_FIELDS: tuple[str, ...] = ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs",
                                 "label_smoothing", "pool", "precision", "head", "head_options", "prompt", "shots",
                                 "wise_ft")


# -- describing and checking one field ---------------------------------------------------------
def expected(field: FieldInfo) -> str:
    """What a field accepts, in words (the ``expected ...`` of every error message)."""
    annotation = field.annotation
    optional = type(None) in typing.get_args(annotation)
    base = next((arg for arg in typing.get_args(annotation) if arg is not type(None)), annotation) \
        if optional else annotation
    text = _expected_base(base, _bounds(field))
    return f"{text} or null" if optional and field.default is None else text


def _bounds(field: FieldInfo) -> dict[str, Any]:
    bounds = {}
    for item in field.metadata:
        for name in ("ge", "gt", "lt", "le"):
            value = getattr(item, name, None)
            if value is not None:
                bounds[name] = value
    return bounds


def _expected_base(base: Any, bounds: dict[str, Any]) -> str:
    if typing.get_origin(base) is Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(base))
    if base is bool:
        return "true or false"
    if base is int:
        if "ge" in bounds:
            return f"an integer >= {bounds['ge']}"
        return "an integer"
    if base is float:
        if bounds.get("gt") == 0 and len(bounds) == 1:
            return "a positive number"
        if "ge" in bounds and "lt" in bounds:
            return f"a number in [{bounds['ge']}, {bounds['lt']})"
        if "ge" in bounds:
            return f"a number >= {bounds['ge']}"
        return "a number"
    if base is str:
        return "a non-empty string"
    if typing.get_origin(base) in (list, tuple):  # on the command line: comma-separated
        items = {int: "integers", float: "numbers", str: "strings"}
        return f"a list of {items.get(next(iter(typing.get_args(base)), None), 'values')}"
    return f"a {getattr(base, '__name__', base)}"


def check_value(model: type[BaseModel], name: str, value: Any, *, from_text: bool = False) -> Any:
    """``value`` checked (and converted) as field ``name`` of ``model``; raises ``ValueError``
    with ``expected ...`` (the caller adds where: a flag, or file:line: key).

    Values from a spec must have the right type already (``lr: "fast"`` is an error, not a
    string to parse); values from the command line are text and are parsed (``from_text``).
    """
    field = model.model_fields[name]
    if from_text and isinstance(value, str):
        value = _parse_text(value, field)
    try:
        _validator(model, name).validate_python(value, strict=not from_text)
    except ValidationError:
        raise ValueError(f"expected {expected(field)}, got {value!r}") from None
    if isinstance(value, bool) and not _allows_bool(field):
        raise ValueError(f"expected {expected(field)}, got {value!r}")
    return value


def _allows_bool(field: FieldInfo) -> bool:
    return bool in (field.annotation, *typing.get_args(field.annotation))


def _parse_text(text: str, field: FieldInfo) -> Any:
    """A command-line string as the field's type (``null``/``none`` is None where allowed)."""
    lowered = text.strip().lower()
    if lowered in ("null", "none") and type(None) in typing.get_args(field.annotation):
        return None
    if _allows_bool(field) and lowered in ("true", "false", "yes", "no", "1", "0"):
        return lowered in ("true", "yes", "1")
    if typing.get_origin(field.annotation) is list:  # --wise-ft 0,0.5,1
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


_VALIDATORS: dict[tuple[type, str], Any] = {}


def _validator(model: type[BaseModel], name: str):
    """A TypeAdapter for one field (its annotation with its constraints), built once."""
    from typing import Annotated

    from pydantic import TypeAdapter

    key = (model, name)
    if key not in _VALIDATORS:
        field = model.model_fields[name]
        annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        _VALIDATORS[key] = TypeAdapter(annotation)
    return _VALIDATORS[key]


def check_model(model: type[BaseModel], values: dict[str, Any], *, from_text: bool = False) -> BaseModel:
    """``model(**values)``, each value checked by :func:`check_value` first so that the first bad
    field is named; raises ``ConfigError`` (with the key) on the first problem."""
    checked = {}
    for name, value in values.items():
        if name not in model.model_fields:
            raise ConfigError((name,), f"unknown key; expected one of {', '.join(model.model_fields)}")
        field = model.model_fields[name]
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            if not isinstance(value, dict):
                raise ConfigError((name,), f"expected a mapping of {', '.join(field.annotation.model_fields)}, "
                                           f"got {value!r}")
            try:
                checked[name] = check_model(field.annotation, value, from_text=from_text)
            except ConfigError as err:
                raise ConfigError((name, *err.keys), err.problem) from None
            continue
        try:
            checked[name] = check_value(model, name, value, from_text=from_text)
        except ValueError as err:
            raise ConfigError((name,), str(err)) from None
    try:
        return model(**checked)
    except ValidationError as err:  # a cross-field rule or a missing required field
        first = err.errors()[0]
        raise ConfigError(tuple(first["loc"]), _pydantic_problem(first)) from None


def _pydantic_problem(error: dict[str, Any]) -> str:
    return "missing (required)" if error["type"] == "missing" else error["msg"]


@dataclass
class ConfigError(Exception):
    """A bad configuration value: ``keys`` is where (field path), ``problem`` what was expected."""

    keys: tuple[Any, ...]
    problem: str

    def __str__(self) -> str:
        return f"{'.'.join(map(str, self.keys))}: {self.problem}"


# -- the command line ----------------------------------------------------------------------
@dataclass(frozen=True)
class CliField:
    """One generated ``--flag``: the model and field it sets, and its help text."""

    model: type[BaseModel]
    name: str
    flag: str
    help: str
    choices: tuple[str, ...] | None
    is_bool: bool = False


def cli_fields(model: type[BaseModel], skip: tuple[str, ...] = ()) -> list[CliField]:
    """A ``--flag`` per scalar field of ``model`` (nested models flatten into their fields)."""
    fields = []
    for name, field in model.model_fields.items():
        if name in skip or typing.get_origin(field.annotation) is dict:
            continue
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            fields.extend(cli_fields(field.annotation))
            continue
        fields.append(CliField(model, name, "--" + name.replace("_", "-"), _help(field), _choices(field),
                               is_bool=_allows_bool(field)))
    return fields


def _help(field: FieldInfo) -> str:
    text = field.description or ""
    if field.is_required():
        return f"{text} (required)"
    default = field.get_default(call_default_factory=True)
    shown = "" if default is None or "default" in text else f" (default: {default})"
    return (text + shown).replace("%", "%%")


def _choices(field: FieldInfo) -> tuple[str, ...] | None:
    for candidate in (field.annotation, *typing.get_args(field.annotation)):
        if typing.get_origin(candidate) is Literal:
            return tuple(map(str, typing.get_args(candidate)))
    return None


