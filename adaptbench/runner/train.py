"""One run: backbone x adapter x task x seed -> a trained model and a run record.

Bad input (names, data, checkpoints) is checked before anything is trained and raises
:class:`AdaptbenchError`; ``adaptbench train`` then writes no record, while the matrix
runner (``record_setup_failures``) records it, since every cell of a matrix must end with a
record. A run that starts and then fails (NaN loss, out of memory, an unreadable image met
mid-epoch) is recorded with status ``failed`` and its error, and the error is raised again
for the caller. An adapter that cannot run on the backbone at all
(:class:`~adaptbench.adapters.base.NotApplicable`) is a result, not bad input: it is always
recorded, with status ``n/a`` and the reason, then raised.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AdaptbenchError, one_line
from .protocol import STAGES, split_plan
from .records import FAILED, SUCCESS, mark_not_applicable, meta_info, new_record, write_record


@dataclass
class RunConfig:
    """Everything that decides a run's result (its hash is the run id)."""

    task: str
    backbone: str
    adapter: str
    adapter_options: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None  # None: the backbone's default
    seed: int = 0
    stage: str = "final"
    epochs: int | None = None  # None: the task's default
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int | None = None  # None: 10% of the epochs
    label_smoothing: float = 0.0
    pool: str | None = None  # None: the backbone's default (class token, else mean)
    precision: str = "32-true"

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise AdaptbenchError(f"--stage {self.stage!r}: expected one of {STAGES}")
        for name in ("batch_size", "epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise AdaptbenchError(f"--{name.replace('_', '-')} {value}: expected an integer >= 1")
        if self.lr <= 0:
            raise AdaptbenchError(f"--lr {self.lr}: expected a positive number")


@dataclass
class RunPlace:
    """Where and how a run executes (not part of its identity)."""

    out_dir: Path = Path("results")
    data_root: str | None = None
    accelerator: str = "auto"
    num_workers: int | None = None
    progress: bool = False
    save_adapter: bool = True


@dataclass
class RunResult:
    record: dict[str, Any]
    record_path: Path
    checkpoint_path: Path | None


def resolved_config(config: RunConfig, spec) -> dict[str, Any]:
    """The config with every default filled in, as recorded and hashed."""
    resolved = dataclasses.asdict(config)
    resolved["epochs"] = config.epochs or spec.default_epochs
    if config.warmup_epochs is None:
        resolved["warmup_epochs"] = max(0, round(0.1 * resolved["epochs"]))
    return resolved


def run(
    config: RunConfig,
    place: RunPlace,
    *,
    annotations: dict[str, Any] | None = None,
    callbacks: Sequence[Any] = (),
    record_setup_failures: bool = False,
) -> RunResult:
    """Train and evaluate one configuration; write its record (see the module docstring).

    ``annotations`` go into ``run_info.matrix`` (the matrix runner's labels; not part of the
    run id). ``callbacks`` are extra Lightning callbacks (progress reporting).
    ``record_setup_failures``: also record bad input found before training as a failed run
    (the matrix runner, which must leave a record for every cell, sets it).
    """
    from ..registry import TASKS

    config.validate()
    spec = TASKS.get(config.task)
    resolved = resolved_config(config, spec)
    record = new_record(resolved, config.seed)
    record["run_info"]["task_info"] = task_info(spec)
    if annotations:
        record["run_info"]["matrix"] = dict(annotations)
    record_path = record_path_for(place.out_dir, record["run_info"]["run_id"])
    started = time.perf_counter()
    try:
        prepared = _prepare(config, place, spec, resolved)  # all bad input surfaces here
    except Exception as err:
        if is_not_applicable(err):
            _write_not_applicable(record, record_path, err, _device_name(place.accelerator))
        elif record_setup_failures:
            _write_failure(record, record_path, err, started, _device_name(place.accelerator))
        raise
    try:
        outcome = _fit_and_evaluate(prepared, resolved, place, callbacks)
    except Exception as err:  # recorded, then raised again (Ctrl-C leaves no record: re-run it)
        _write_failure(record, record_path, err, started, prepared["device"])
        raise
    checkpoint = _save_checkpoint(prepared, place, record_path) if place.save_adapter else None
    record["train_info"].update(
        status=SUCCESS,
        wall_time_s=time.perf_counter() - started,
        checkpoint=str(checkpoint) if checkpoint else None,
        **outcome,
    )
    record["meta_info"] = meta_info(prepared["device"])
    write_record(record, record_path)
    return RunResult(record, record_path, checkpoint)


def record_path_for(out_dir: Path, run_id: str) -> Path:
    """Where the record of run ``run_id`` lives (its adapter checkpoint sits beside it)."""
    return Path(out_dir) / f"{run_id}.json"


def task_info(spec) -> dict[str, Any]:
    """What the leaderboard needs to know about a task, stored in the record itself."""
    return {"benchmark": spec.name.partition("/")[0], "group": spec.group, "num_classes": spec.num_classes}


def record_unrun_failure(config: RunConfig, out_dir: Path, error: str, annotations: dict[str, Any],
                         device: str) -> Path:
    """Record a cell that could not run (its worker died, or its search chose nothing) as failed."""
    record = _unrun_record(config, annotations, device)
    record["train_info"].update(status=FAILED, error=error)
    return write_record(record, record_path_for(out_dir, record["run_info"]["run_id"]))


def record_not_applicable(config: RunConfig, out_dir: Path, message: str, annotations: dict[str, Any]) -> Path:
    """Record a cell whose adapter cannot run on its backbone as n/a, without running it.

    ``message``: ``"<adapter> on <backbone>: n/a: <reason>"`` (``records.not_applicable_message``).
    """
    record = _unrun_record(config, annotations, "none (not applicable, not run)")
    mark_not_applicable(record, message)
    return write_record(record, record_path_for(out_dir, record["run_info"]["run_id"]))


def _unrun_record(config: RunConfig, annotations: dict[str, Any], device: str) -> dict[str, Any]:
    """A record with the cell's identity and no outcome yet, as ``run`` would have started it."""
    from ..registry import TASKS

    spec = TASKS.get(config.task)
    record = new_record(resolved_config(config, spec), config.seed)
    record["run_info"]["task_info"] = task_info(spec)
    record["run_info"]["matrix"] = dict(annotations)
    record["meta_info"] = meta_info(device)
    return record


def _write_failure(record: dict[str, Any], path: Path, err: BaseException, started: float, device: str) -> None:
    record["train_info"].update(status=FAILED, error=_error_line(err),
                                wall_time_s=time.perf_counter() - started)
    record["meta_info"] = meta_info(device)
    write_record(record, path)


def is_not_applicable(err: BaseException) -> bool:
    """True for the adapter's "cannot run on this backbone" (an n/a result, not a failure)."""
    from ..adapters.base import NotApplicable

    return isinstance(err, NotApplicable)


def _write_not_applicable(record: dict[str, Any], path: Path, err: BaseException, device: str) -> None:
    mark_not_applicable(record, _error_line(err))
    record["meta_info"] = meta_info(device)
    write_record(record, path)


def _prepare(config: RunConfig, place: RunPlace, spec, resolved: dict[str, Any]) -> dict[str, Any]:
    """Build data loaders, backbone, adapter and module; every user error is raised here."""
    import lightning as L

    from ..adapters import build_adapter
    from ..backbones import load_backbone
    from ..tasks.classification import ClassificationModule
    from ..tasks.data import make_loader, task_samples

    plan = split_plan(spec, config.stage)
    train_samples = task_samples(spec, plan.train_split, place.data_root)
    eval_samples = task_samples(spec, plan.eval_split, place.data_root)
    L.seed_everything(config.seed, workers=True, verbose=False)
    backbone = load_backbone(config.backbone, weights=config.weights)
    adapter = build_adapter(config.adapter, backbone, config.adapter_options)
    module = ClassificationModule(
        backbone, adapter, spec.num_classes, pool=config.pool, lr=config.lr,
        weight_decay=config.weight_decay, warmup_epochs=resolved["warmup_epochs"],
        label_smoothing=config.label_smoothing,
    )
    workers = place.num_workers if place.num_workers is not None else _default_workers(spec)
    loaders = {
        "train": make_loader(train_samples, backbone.data_config, config.batch_size, True,
                             workers, config.seed, f"{spec.name}:{plan.train_split}"),
        "eval": make_loader(eval_samples, backbone.data_config, config.batch_size, False,
                            workers, config.seed, f"{spec.name}:{plan.eval_split}"),
    }
    return {"spec": spec, "plan": plan, "backbone": backbone, "adapter": adapter,
            "module": module, "loaders": loaders, "device": _device_name(place.accelerator)}


def _default_workers(spec) -> int:
    # The embedded tasks decode tiny PNGs: worker processes cost more than they save.
    return 0 if spec.embedded else min(8, max(1, (os.cpu_count() or 2) - 1))


def _fit_and_evaluate(prepared: dict[str, Any], resolved: dict[str, Any], place: RunPlace,
                      callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    import lightning as L

    from ..tasks.classification import HIGHER_IS_BETTER, PRIMARY_METRIC
    from ..adapters.accounting import parameter_report
    from .measure import ThroughputMeter, peak_memory, reset_peak_memory

    plan, module, loaders = prepared["plan"], prepared["module"], prepared["loaders"]
    meter = ThroughputMeter()
    reset_peak_memory()  # several runs may share one worker process
    trainer = L.Trainer(
        max_epochs=resolved["epochs"], accelerator=place.accelerator, devices=1,
        precision=resolved["precision"], logger=False, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=place.progress, callbacks=[meter, *callbacks],
        # The final stage never looks at its evaluation split during training.
        limit_val_batches=0 if plan.eval_is_test else 1.0,
        num_sanity_val_steps=0, deterministic="warn",
    )
    val_loader = None if plan.eval_is_test else loaders["eval"]
    trainer.fit(module, loaders["train"], val_loader)
    metrics = {plan.train_split: _split_metrics(trainer.logged_metrics, "train_")}
    if plan.eval_is_test:
        trainer.test(module, loaders["eval"], verbose=False)
        metrics[plan.eval_split] = _split_metrics(trainer.logged_metrics, "test_")
    else:
        metrics[plan.eval_split] = _split_metrics(trainer.logged_metrics, "val_")
    memory_bytes, memory_kind = peak_memory(module.device)
    data_config = prepared["backbone"].data_config
    return {
        "stage": plan.stage,
        "metrics": metrics,
        "primary_metric": PRIMARY_METRIC,
        "higher_is_better": HIGHER_IS_BETTER,
        "params": parameter_report(prepared["adapter"], module.head).to_dict(),
        "adapter_stats": prepared["adapter"].stats(),
        "train_images_per_s": meter.images_per_second(),
        "peak_memory_bytes": memory_bytes,
        "peak_memory_kind": memory_kind,
        "data": {
            "train_split": plan.train_split, "eval_split": plan.eval_split,
            "train_size": len(loaders["train"].dataset), "eval_size": len(loaders["eval"].dataset),
            "input_size": list(data_config.input_size), "mean": list(data_config.mean),
            "std": list(data_config.std), "resize": "no crop", "augmentation": "none",
        },
    }


def _split_metrics(logged: dict[str, Any], prefix: str) -> dict[str, float]:
    return {key.removeprefix(prefix): float(value) for key, value in logged.items() if key.startswith(prefix)}


def _save_checkpoint(prepared: dict[str, Any], place: RunPlace, record_path: Path) -> Path:
    from ..adapters.checkpoint import save_adapter

    path = record_path.with_suffix(".adapter.safetensors")
    module, spec = prepared["module"], prepared["spec"]
    head_info = {"task": spec.name, "num_classes": spec.num_classes,
                 "pool": module.hparams.pool or prepared["backbone"].default_pool}
    return save_adapter(prepared["adapter"], path, head=module.head, head_info=head_info)


def _device_name(accelerator: str) -> str:
    import torch

    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores)"


def _error_line(err: BaseException) -> str:
    return one_line(err)


def quiet_lightning() -> None:
    """Lightning's banners (GPU available, tips, ...) are noise in a benchmark log."""
    import logging
    import warnings

    import lightning  # noqa: F401 - sets its loggers' levels on import: override after

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (".*does not have many workers.*", ".*no `val_dataloader`.*", ".*LeafSpec.*",
                    ".*litlogger.*"):
        warnings.filterwarnings("ignore", message=message)
