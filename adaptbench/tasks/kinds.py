"""Task kinds: what a kind of task trains, reads and measures.

A :class:`TaskKind` (registered with ``register_task_kind``; plugins through an
``adaptbench.tasks`` entry point named ``kind.<name>``) supplies

* its LightningModule (``build_module``), a :class:`TaskModule` subclass that says what one
  forward and the task's loss compute;
* its data: a Dataset over the samples its format reader lists (``dataset``), plus the
  description of the preprocessing and augmentation that goes into every record;
* its torchmetrics ``MetricCollection``, its primary metric and whether higher is better;
* what its checkpoint must remember about the head (``head_info``);
* optionally, how its primary metric is recomputed from per-sample test scores
  (``sample_reduction``, with the module's ``sample_scores``): the leaderboard's intervals.

The runner and ``eval`` dispatch on ``spec.kind`` and never import a kind's code by name.
``version`` enters the run id of every run of the kind.

The LightningModules live in ``tasks/modules/`` and are imported only by ``build_module``:
validating a spec, listing the registry or driving a matrix never imports Lightning.

Data: a kind names the per-sample arrays it decodes once into the cache (``fields``: uint8
images and int labels for image kinds; masks or frames for dense and video kinds) and the
transform that turns a batch of them into model inputs on the device (``batch_transform``:
normalisation, augmentation). A module's ``forward`` is ``decode(encode(inputs))``: ``encode``
is the backbone's part, ``decode`` the head's. When the backbone is frozen and deterministic up
to the head, the runner caches what ``encode`` returns and trains the head on it
(``runner/features.py``); a kind that only implements ``forward`` simply never gets that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

if TYPE_CHECKING:
    from torchmetrics import MetricCollection

    from .modules.base import TaskModule

# The module base, for plugin kinds that import it from here (loads Lightning on first use).
_MODULE_NAMES = ("TaskModule", "NonFiniteLossError", "warmup_cosine", "NONFINITE_CHECK_EVERY")


def __getattr__(name: str):
    if name in _MODULE_NAMES:
        from .modules import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class TaskKind:
    """Base of task kinds (see the module docstring). Subclasses set the class attributes and
    implement :meth:`metrics` and :meth:`build_module`; image kinds keep the default
    :meth:`fields` and :meth:`batch_transform` (uint8 images and int labels, normalised)."""

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    primary_metric: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    augmentation: ClassVar[str] = "none"
    default_head: ClassVar[str] = "linear"
    sample_unit: ClassVar[str] = "images"  # what one sample is, in throughput figures
    # what the kind's module hands its head: "pooled" features (B, C) or a "feature_map"
    # (B, C, H', W'); a head serves every kind that gives it what it reads (``factory.reads``)
    head_input: ClassVar[str] = "pooled"

    def metrics(self, spec) -> MetricCollection:
        raise NotImplementedError

    def few_shot(self, samples, shots: int, seed: int, spec):
        """``shots`` labelled samples per class, drawn with ``seed`` (stratified, in an order
        that does not depend on how the split file lists them). Kinds whose samples are not
        (image, class) pairs override it."""
        from ..datasets.subsets import per_class_subset

        return per_class_subset(samples, shots, seed, spec.name)

    def few_shot_validation(self, samples, shots: int, seed: int, spec):
        """The validation split of a ``shots``-shot tune run: ``min(shots, 4)`` per class, or all a
        class has when fewer (CoOp's protocol: ``generate_fewshot_dataset(val, min(k, 4))``)."""
        from ..datasets.subsets import per_class_subset

        return per_class_subset(samples, min(shots, 4), seed, spec.name, allow_fewer=True)

    def primary_metric_of(self, spec) -> str:
        """The metric that ranks ``spec``'s leaderboard (a dataset may name another one of the
        kind's metrics, e.g. Dice for a binary medical task)."""
        return self.primary_metric

    def sample_reduction(self, spec) -> str | None:
        """The reduction (``tasks/sample_metrics.py``) that recomputes ``spec``'s primary metric
        from the arrays the module's ``sample_scores`` returns, on the test set or any resample
        of it; None: the kind gives no per-sample scores (its rows' intervals resample seeds only)."""
        return None

    def metric_from_samples(self, spec, arrays: dict, weights=None):
        """The primary metric (a fraction) from per-sample ``arrays``, each sample weighted by
        ``weights`` ((R, N) draws per resample; None: the full set) -> R values."""
        from .sample_metrics import metric

        name = self.sample_reduction(spec)
        if name is None:
            raise NotImplementedError(f"task kind {self.name or type(self).__name__!r} gives no per-sample scores")
        return metric(name, arrays, weights)

    def build_module(self, backbone, adapter, head: nn.Module, spec, settings: dict[str, Any]) -> TaskModule:
        """The LightningModule; ``settings`` holds lr, weight_decay, warmup_epochs, label_smoothing, pool."""
        raise NotImplementedError

    def fields(self, data_config, spec) -> dict:
        """The per-sample arrays decoded once into the cache, in batch order (inputs first)."""
        from ..datasets.decoded import ImageField, LabelField

        return {"images": ImageField(tuple(data_config.input_size), data_config.interpolation), "labels": LabelField()}

    def batch_transform(self, data_config, train: bool, spec=None) -> nn.Module | None:
        """Decoded batch -> model inputs, on the device (the PIL path's ToTensor + Normalize).
        The transform is a submodule of the task module, so it follows its train / eval mode
        (a kind with training-time augmentation reads ``self.training``)."""
        from .batches import NormalizeImages

        return NormalizeImages(data_config.mean, data_config.std)

    def frames_per_sample(self, spec, evaluation: bool = False) -> int:
        """Images one sample puts through the backbone (a video clip: its frames, every test
        view counted in evaluation); throughput is reported per sample and per frame."""
        return 1

    def data_description(self, data_config, spec=None) -> dict[str, Any]:
        """Preprocessing facts stored in every record (``spec``: the task, for per-task facts)."""
        return {"input_size": list(data_config.input_size), "mean": list(data_config.mean),
                "std": list(data_config.std), "resize": "no crop", "augmentation": self.augmentation}

    def head_info(self, spec, settings: dict[str, Any], backbone) -> dict[str, Any]:
        """What an adapter checkpoint must remember to rebuild the head for ``eval``."""
        return {"task": spec.name, "num_classes": spec.num_classes}

    def check_head_info(self, info: dict[str, Any], spec, checkpoint) -> None:
        """Refuse a checkpoint whose head cannot serve ``spec`` (one line naming the file)."""
        from ..errors import AdaptbenchError

        if info.get("num_classes") != spec.num_classes:
            raise AdaptbenchError(
                f"adapter checkpoint {checkpoint} has a head for {info.get('num_classes')} classes "
                f"(task {info.get('task')!r}), but task {spec.name!r} has {spec.num_classes}"
            )


def task_kind(name: str) -> TaskKind:
    """The registered kind ``name``, instantiated."""
    from ..registry import TASK_KINDS

    kind = TASK_KINDS.get(name)
    return kind() if isinstance(kind, type) else kind
