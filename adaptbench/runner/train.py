"""One run: backbone x adapter x task x seed -> a trained model and a run record.

The run dispatches on the task's kind (``adaptbench.tasks.kinds``): the kind builds the
module, the datasets and the metrics; nothing here knows what classification is.

Bad input (names, data, checkpoints) is checked before anything is trained, and the task's
splits before any backbone is built, and raises :class:`AdaptbenchError`; ``adaptbench
train`` then writes no record, while the matrix runner (``record_setup_failures``) records it,
since every cell of a matrix must end with a record. A run that starts and then fails (NaN
loss, out of memory, an unreadable image met mid-epoch) is recorded with status ``failed`` and
its error, and the error is raised again for the caller. An adapter that cannot run on the
backbone at all (:class:`~adaptbench.adapters.base.NotApplicable`) is a result, not bad
input: it is always recorded, with status ``n/a`` and the reason, then raised.

``epochs: 0`` evaluates the untrained model (a zero-shot head, a frozen baseline).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import RunConfig, RunPolicy, uses_cuda
from ..errors import AdaptbenchError, one_line
from .protocol import split_plan
from .store import ResultStore
from ..records import RunRecord, TaskInfo, meta_info


@dataclass
class RunPlace:
    """Where and how a run executes (not part of its identity).

    ``out_dir`` is the result store's location (``runner/store.py``): a folder or an fsspec
    URL; the matrix makes it absolute before any job leaves the driver.
    """

    out_dir: str | Path = Path("results")
    data_root: str | None = None
    accelerator: str = "auto"
    num_workers: int | None = None
    progress: bool = False
    save_adapter: bool = True
    policy: RunPolicy = field(default_factory=RunPolicy)
    plugin_files: tuple[str, ...] = ()  # --plugin files each worker loads before its first cell
    heartbeat_s: float = 30.0  # a running cell renews its lease this often (executor settings)
    resume: bool = False  # keep a resume checkpoint per epoch and start from it (matrix cells)
    keep_backbones: int = 0  # built backbones a long-lived worker keeps for its later cells (backbones/kept.py)
    started_at: float | None = None  # time.time() when this worker took the cell: set-up is measured from it


@dataclass
class RunResult:
    record: RunRecord
    record_path: Path | str  # a URL in a remote store
    checkpoint_path: Path | str | None


# -- identity ----------------------------------------------------------------------------------
def code_versions(config: RunConfig, spec) -> dict[str, int]:
    """The behaviour versions of the code a run's result depends on (they enter its id)."""
    from ..adapters import adapter_class
    from ..tasks.heads import head_version
    from ..tasks.kinds import task_kind
    from ..tasks.samples import reader_of

    kind = task_kind(spec.kind)
    return {"adapter": int(adapter_class(config.adapter).version), "kind": kind.version,
            "head": head_version(config.resolved_head(kind.default_head)), "reader": int(reader_of(spec).version)}


def resolved_config(config: RunConfig, spec=None) -> dict[str, Any]:
    """The config with every default filled in and the code versions: recorded and hashed."""
    from ..config import BACKBONE_OPTIONS_OMITTED_AT_DEFAULT, OMITTED_AT_DEFAULT
    from ..registry import TASKS
    from ..tasks.kinds import task_kind

    spec = spec or TASKS.get(config.task)
    resolved = config.model_dump(mode="json")
    for name, default in OMITTED_AT_DEFAULT.items():
        if resolved[name] == default:
            del resolved[name]
    for name in BACKBONE_OPTIONS_OMITTED_AT_DEFAULT:
        if resolved["backbone_options"].get(name) is None:
            resolved["backbone_options"].pop(name, None)
    resolved["head"] = config.resolved_head(task_kind(spec.kind).default_head)
    resolved["epochs"] = config.resolved_epochs(spec.default_epochs)
    resolved["warmup_epochs"] = config.resolved_warmup(spec.default_epochs)
    resolved["code_versions"] = code_versions(config, spec)
    return resolved


def cell_id(config: RunConfig) -> str:
    """The run id of ``config``: the hash of its resolved form (its record's file name)."""
    from ..records import config_hash

    return config_hash(resolved_config(config))


def record_path_for(out_dir: str | Path, run_id: str) -> Path | str:
    """Where the record of run ``run_id`` lives (its adapter checkpoint sits beside it): a path
    in a local store, a URL in a remote one."""
    from .store import ResultStore

    store = ResultStore.at(out_dir)
    location = store.record_location(run_id)
    return Path(location) if store.is_local else location


def start_record(config: RunConfig, annotations: dict[str, Any] | None = None,
                 policy: RunPolicy | None = None) -> RunRecord:
    """The record of ``config`` with its identity and no outcome yet."""
    from ..registry import TASKS

    spec = TASKS.get(config.task)
    annotations = dict(annotations or {})
    return RunRecord.start(resolved_config(config, spec), grid=annotations.get("grid"),
                           task_info=task_info(spec), annotations=annotations,
                           policy=(policy or RunPolicy()).model_dump())


def task_info(spec) -> TaskInfo:
    """What the leaderboard needs to know about a task, stored in the record itself."""
    return TaskInfo(benchmark=spec.name.partition("/")[0], group=spec.group, kind=spec.kind,
                    num_classes=spec.num_classes)


# -- one run -----------------------------------------------------------------------------------
def run(
    config: RunConfig,
    place: RunPlace,
    *,
    annotations: dict[str, Any] | None = None,
    callbacks: Sequence[Any] = (),
    record_setup_failures: bool = False,
) -> RunResult:
    """Train and evaluate one configuration; write its record (see the module docstring).

    ``annotations`` go into ``run_info.matrix`` (the matrix runner's labels and, for final
    cells of a search, the grid searched; not part of the run id). ``callbacks`` are extra
    Lightning callbacks (progress reporting). ``record_setup_failures``: also record bad
    input found before training as a failed run (the matrix runner sets it).
    """
    config = config.for_accelerator(place.accelerator)  # "auto" precision: the id holds the real one
    place = replace(place, policy=place.policy.for_device(uses_cuda(place.accelerator)))
    record = start_record(config, annotations, place.policy)
    store = ResultStore.at(place.out_dir)
    record_path = record_path_for(store, record.run_id)
    started = time.perf_counter()
    try:
        prepared = _prepare(config, place, record.config)  # all bad input surfaces here
    except Exception as err:
        if is_not_applicable(err):
            record.mark_not_applicable(one_line(err))
            _write(record, store, _device_name(place.accelerator))
        elif record_setup_failures:
            record.mark_failed(one_line(err), wall_time_s=time.perf_counter() - started)
            _write(record, store, _device_name(place.accelerator))
        raise
    try:
        outcome = _fit_and_evaluate(prepared, record.config, place, callbacks)
    except Exception as err:  # recorded, then raised again (Ctrl-C leaves no record: re-run it)
        record.mark_failed(one_line(err), wall_time_s=time.perf_counter() - started)
        _write(record, store, prepared.device)
        raise
    checkpoint = _save_checkpoint(prepared, store, record.run_id) if place.save_adapter else None
    record.mark_success(wall_time_s=time.perf_counter() - started,
                        checkpoint=str(checkpoint) if checkpoint else None, **outcome)
    _write(record, store, prepared.device)
    if place.resume:  # the record is written: the resume checkpoint has served (runner/resume.py)
        from .resume import discard

        discard(store, record.run_id)
    return RunResult(record, record_path, checkpoint)


def _write(record: RunRecord, store: ResultStore, device: str) -> None:
    record.meta_info = meta_info(device)
    store.write_record(record)


def record_unrun_failure(config: RunConfig, out_dir: str | Path, error: str, annotations: dict[str, Any],
                         device: str) -> Path | str:
    """Record a cell that could not run (its worker died, or its search chose nothing) as failed."""
    record = start_record(config, annotations)
    record.mark_failed(error)
    _write(record, ResultStore.at(out_dir), device)
    return record_path_for(out_dir, record.run_id)


def record_not_applicable(config: RunConfig, out_dir: str | Path, message: str,
                          annotations: dict[str, Any]) -> Path | str:
    """Record a cell whose adapter cannot run on its backbone as n/a, without running it.

    ``message``: ``"<adapter> on <backbone>: n/a: <reason>"`` (``records.not_applicable_message``).
    """
    record = start_record(config, annotations)
    record.mark_not_applicable(message)
    _write(record, ResultStore.at(out_dir), "none (not applicable, not run)")
    return record_path_for(out_dir, record.run_id)


def is_not_applicable(err: BaseException) -> bool:
    """True for the adapter's "cannot run on this backbone" (an n/a result, not a failure)."""
    from ..adapters.base import NotApplicable

    return isinstance(err, NotApplicable)


# -- preparing ---------------------------------------------------------------------------------
@dataclass
class Prepared:
    """Everything a run trains and evaluates, built and checked."""

    spec: Any
    kind: Any
    plan: Any
    backbone: Any
    adapter: Any
    module: Any
    loaders: dict[str, Any]
    settings: dict[str, Any]
    device: str
    timings: dict[str, float] = field(default_factory=dict)


def check_splits(config: RunConfig, data_root: str | None) -> dict[str, list]:
    """Read the split lists a run will use (no image decoded, no torch): a wrong data root,
    a missing or empty split file answers here, before any backbone is built."""
    from ..registry import TASKS
    from ..tasks.samples import task_samples

    spec = TASKS.get(config.task)
    plan = split_plan(spec, config.stage)
    return {split: task_samples(spec, split, data_root) for split in (plan.train_split, plan.eval_split)}


def _prepare(config: RunConfig, place: RunPlace, resolved: dict[str, Any]) -> Prepared:
    """Check the data, then build backbone, adapter, head and module, and decode the splits."""
    import lightning as L

    from ..adapters import build_adapter
    from ..adapters.base import check_precision
    from ..backbones.kept import load_backbone_kept
    from ..registry import TASKS
    from ..tasks.data import split_batches
    from ..tasks.heads import build_head
    from ..tasks.kinds import task_kind
    from ..tasks.samples import with_class_names

    spec = with_class_names(TASKS.get(config.task), place.data_root)  # CoOp tasks: names from the data
    kind = task_kind(spec.kind)
    plan = split_plan(spec, config.stage)
    samples = few_shot_samples(config, kind, spec, plan, check_splits(config, place.data_root))
    check_precision(config.adapter, config.precision)
    L.seed_everything(config.seed, workers=True, verbose=False)
    started = time.perf_counter()
    backbone, reused = load_backbone_kept(config.backbone, weights=config.weights, options=config.backbone_options,
                                          keep=place.keep_backbones)
    timings = {"backbone_s": time.perf_counter() - started, "backbone_reused": float(reused)}
    adapter = build_adapter(config.adapter, backbone, config.adapter_options)
    settings = {"lr": config.lr, "weight_decay": config.weight_decay, "warmup_epochs": resolved["warmup_epochs"],
                "label_smoothing": config.label_smoothing, "pool": config.pool, "head": resolved["head"],
                "head_options": dict(config.head_options), "prompt": config.prompt, "seed": config.seed}
    head = build_head(resolved["head"], backbone, spec, prompt=config.prompt, options=config.head_options)
    module = kind.build_module(backbone, adapter, head, spec, settings)
    if resolved["epochs"] > 0 and not module.trainable_parameters():
        raise AdaptbenchError(f"adapter {config.adapter!r} with head {resolved['head']!r} trains nothing; "
                              f"evaluate it with epochs: 0, or pick a trainable head or adapter")
    if place.policy.compile:
        backbone.compile()  # in place: parameter names, hooks and the adapter's references stay
    started = time.perf_counter()
    # an untrained run reads its training split only when its head is built from it (a cache model)
    roles = [("eval", plan.eval_split)]
    if resolved["epochs"] > 0 or hasattr(head, "prepare"):
        roles.insert(0, ("train", plan.train_split))
    batches = {
        role: split_batches(kind, samples[split], backbone.data_config, spec, split, config.batch_size,
                            shuffle=role == "train", seed=config.seed, workers=place.num_workers)
        for role, split in roles
    }
    timings["decode_s"] = time.perf_counter() - started
    return Prepared(spec, kind, plan, backbone, adapter, module, batches, settings,
                    _device_name(place.accelerator), timings)


def few_shot_samples(config: RunConfig, kind, spec, plan, samples: dict[str, list]) -> dict[str, list]:
    """The splits of a ``shots``-shot run: k per class of the training split, drawn with the
    seed; a tune run also validates on ``min(k, 4)`` per class (``TaskKind.few_shot_validation``).
    The test split is never subsampled."""
    if config.shots is None:
        return samples
    samples = dict(samples)
    samples[plan.train_split] = kind.few_shot(samples[plan.train_split], config.shots, config.seed, spec)
    if not plan.eval_is_test:
        samples[plan.eval_split] = kind.few_shot_validation(samples[plan.eval_split], config.shots, config.seed, spec)
    return samples


# -- training and evaluating -----------------------------------------------------------------
def trainer_for(place: RunPlace, precision: str, max_epochs: int, callbacks: Sequence[Any] = ()):
    """A Lightning Trainer under the run's policy (determinism, matmul precision). Lightning's
    checkpointing is on only when ``callbacks`` hold a checkpoint callback (``resume.py``): it
    then adds no default ``ModelCheckpoint`` of its own."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Checkpoint

    from lightning.pytorch.plugins.environments import SLURMEnvironment

    policy = place.policy.for_device(uses_cuda(place.accelerator))
    torch.set_float32_matmul_precision(policy.matmul_precision)
    # In a Slurm job Lightning would requeue on SIGUSR1 itself, saving a whole-module checkpoint
    # (the frozen backbone too): requeueing belongs to the executor, resuming to resume.py.
    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None
    return L.Trainer(
        max_epochs=max_epochs, accelerator=place.accelerator, devices=1, precision=precision,
        logger=False, enable_checkpointing=any(isinstance(callback, Checkpoint) for callback in callbacks),
        enable_model_summary=False, enable_progress_bar=place.progress, callbacks=list(callbacks),
        num_sanity_val_steps=0, plugins=plugins,
        deterministic="warn" if policy.deterministic else False,
        benchmark=not policy.deterministic,
    )


def _place_inputs(prepared: Prepared, resolved: dict[str, Any], place: RunPlace, trainer) -> str:
    """Put the batches where the trainer runs; train on cached backbone features when they
    stand in exactly for the backbone (``features.py``). Returns what the batches hold."""
    from .features import feature_batches, why_not_cached

    module, kind, spec = prepared.module, prepared.kind, prepared.spec
    device = trainer.strategy.root_device
    module.set_inputs(kind.batch_transform(prepared.backbone.data_config, train=True, spec=spec))
    reason = why_not_cached(module, prepared.adapter, kind) if place.policy.feature_cache else "turned off"
    if reason is not None:
        for batches in prepared.loaders.values():
            batches.to(device)
        return f"decoded images (features not cached: {reason})"
    started = time.perf_counter()
    identity = {"backbone": resolved["backbone"], "backbone_options": resolved["backbone_options"],
                "pool": prepared.settings["pool"], "precision": resolved["precision"],
                "kind": spec.kind, "kind_version": resolved["code_versions"]["kind"]}
    splits = {"train": prepared.plan.train_split, "eval": prepared.plan.eval_split}
    prepared.loaders = {role: feature_batches(batches, module, trainer, spec.name, splits[role], identity)
                        for role, batches in prepared.loaders.items()}
    module.set_inputs(None, from_features=True)
    prepared.timings["features_s"] = time.perf_counter() - started
    return "cached backbone features"


def _fit_and_evaluate(prepared: Prepared, resolved: dict[str, Any], place: RunPlace,
                      callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train (from the cell's resume checkpoint when ``place.resume`` finds one) and evaluate."""
    from contextlib import nullcontext

    from ..adapters.accounting import parameter_report
    from ..records import config_hash
    from ..tasks.heads import prepare_head
    from .measure import ThroughputMeter, peak_memory, reset_peak_memory
    from .wise import WiseFT

    plan, module = prepared.plan, prepared.module
    epochs = resolved["epochs"]
    meter = ThroughputMeter()
    reset_peak_memory()  # several runs may share one worker process
    resume = None
    if place.resume and epochs > 0:  # a checkpoint per epoch, keyed by the cell id (runner/resume.py)
        from .resume import ResumeCheckpoint

        resume = ResumeCheckpoint(place.out_dir, config_hash(resolved))
    trainer = trainer_for(place, resolved["precision"], epochs, [meter, *callbacks, *([resume] if resume else [])])
    inputs = _place_inputs(prepared, resolved, place, trainer)
    loaders, timings = prepared.loaders, prepared.timings
    metrics: dict[str, dict[str, float]] = {}
    every_epoch = place.policy.validation == "every_epoch" and not plan.eval_is_test
    started = time.perf_counter()
    if "train" in loaders and prepare_head(module, loaders["train"], trainer.strategy.root_device):
        timings["head_prepare_s"] = time.perf_counter() - started
    wise = WiseFT(module) if resolved.get("wise_ft") and plan.eval_is_test else None
    started = time.perf_counter()
    if epochs > 0:
        with resume.restoring(module, epochs) if resume is not None else nullcontext() as ckpt_path:
            # weights_only: a resume checkpoint is read by torch's restricted unpickler (no code runs)
            trainer.fit(module, loaders["train"], loaders["eval"] if every_epoch else None,
                        ckpt_path=ckpt_path, weights_only=True)
        metrics[plan.train_split] = _split_metrics(trainer.logged_metrics, "train_")
    timings["fit_s"] = time.perf_counter() - started
    if resume is not None and resume.resumed_from_epoch is not None:
        timings["resumed_from_epoch"] = resume.resumed_from_epoch  # epochs done before this run's fit_s
    if place.started_at is not None and meter.first_step_at is not None:
        # from the worker taking the cell (or starting, if later) to its first step: imports,
        # backbone, decoding, feature caching -- what long-lived workers save
        timings["setup_s"] = max(0.0, meter.first_step_at - place.started_at)
    started = time.perf_counter()
    samples = None
    if plan.eval_is_test:
        evaluated = trainer.test(module, loaders["eval"], verbose=False)
        samples = _test_sample_scores(module)  # before WiSE-FT's evaluations replace them
    else:  # the tune stage's score: one validation after the last epoch (unless every epoch)
        evaluated = [trainer.logged_metrics] if every_epoch else trainer.validate(module, loaders["eval"], verbose=False)
    timings["eval_s"] = time.perf_counter() - started
    prefix = "test_" if plan.eval_is_test else "val_"
    metrics[plan.eval_split] = _split_metrics(evaluated[0] if evaluated else {}, prefix)
    if wise is not None:
        metrics[plan.eval_split].update(wise.evaluate(resolved["wise_ft"], trainer, loaders["eval"]))
    kind = prepared.kind
    primary = kind.primary_metric_of(prepared.spec)
    if primary not in metrics[plan.eval_split]:
        raise AdaptbenchError(f"evaluation on {prepared.spec.name}:{plan.eval_split} produced no "
                              f"{primary!r} (got {sorted(metrics[plan.eval_split]) or 'nothing'})")
    memory_bytes, memory_kind = peak_memory(module.device)
    eval_size = len(loaders["eval"].dataset)
    samples = sample_scores(kind, prepared.spec, primary, samples, eval_size)
    train_per_s = meter.images_per_second()
    eval_per_s = eval_size / timings["eval_s"] if timings["eval_s"] > 0 and not every_epoch else None
    return {
        "stage": plan.stage,
        "metrics": metrics,
        "primary_metric": primary,
        "higher_is_better": kind.higher_is_better,
        "params": parameter_report(prepared.adapter, module.head).to_dict(),
        "adapter_stats": prepared.adapter.stats(),
        "extra_losses": sorted(key.removeprefix("train_extra_") for key in trainer.logged_metrics
                               if key.startswith("train_extra_")),
        "train_images_per_s": train_per_s,
        "eval_images_per_s": eval_per_s,
        "timings": {name: round(value, 4) for name, value in timings.items()},
        "peak_memory_bytes": memory_bytes,
        "peak_memory_kind": memory_kind,
        **({"samples": samples} if samples is not None else {}),
        "data": {
            "train_split": plan.train_split, "eval_split": plan.eval_split,
            "train_size": len(loaders["train"].dataset) if "train" in loaders else 0, "eval_size": eval_size,
            "inputs": inputs,
            **kind.data_description(prepared.backbone.data_config, prepared.spec),
            "throughput": throughput(kind, prepared.spec, train_per_s, eval_per_s),
        },
    }


def _test_sample_scores(module) -> dict[str, Any] | None:
    collect = getattr(module, "test_sample_scores", None)  # a plugin's module need not be a TaskModule
    return collect() if collect is not None else None


def sample_scores(kind, spec, primary: str, arrays: dict[str, Any] | None, eval_size: int):
    """A final run's per-sample test scores for its record (``records.SampleScores``); None when
    its kind gives none (``TaskKind.sample_reduction``, ``TaskModule.sample_scores``) or they do
    not cover the test split once."""
    from ..records import SampleScores

    reduction = kind.sample_reduction(spec) if hasattr(kind, "sample_reduction") else None  # plugins may lack it
    if reduction is None or not arrays or any(len(array) != eval_size for array in arrays.values()):
        return None
    return SampleScores.of(primary, reduction, arrays)


def throughput(kind, spec, train_per_s: float | None, eval_per_s: float | None) -> dict[str, float | None]:
    """Samples (``kind.sample_unit``: images, clips) and frames per second, in training and
    evaluation (``train_images_per_s`` counts samples); evaluation frames count every test view."""
    rates: dict[str, float | None] = {}
    for stage, per_s in (("train", train_per_s), ("eval", eval_per_s)):
        frames = kind.frames_per_sample(spec, evaluation=stage == "eval")
        rates[f"{stage}_{kind.sample_unit}_per_s"] = per_s
        rates[f"{stage}_frames_per_s"] = per_s * frames if per_s is not None else None
    return rates


def _split_metrics(logged: dict[str, Any], prefix: str) -> dict[str, float]:
    return {key.removeprefix(prefix): float(value) for key, value in logged.items() if key.startswith(prefix)}


def _save_checkpoint(prepared: Prepared, store: ResultStore, run_id: str) -> Path | str:
    from ..adapters.checkpoint import save_adapter

    location = store.adapter_location(run_id)
    head_info = {**prepared.kind.head_info(prepared.spec, prepared.settings, prepared.backbone),
                 "kind": prepared.spec.kind, "head": prepared.settings["head"],
                 "head_options": prepared.settings["head_options"]}
    with store.local_copy_to(location) as temporary:
        save_adapter(prepared.adapter, temporary, head=prepared.module.head, head_info=head_info)
    return Path(location) if store.is_local else location


# -- the environment ---------------------------------------------------------------------------
def check_environment(accelerator: str, precision: str) -> None:
    """Refuse an accelerator or precision this machine cannot run, before any cell runs (a
    cell that failed for want of a GPU would otherwise be recorded failed and skipped later).

    Full precision on the CPU (or ``auto``, which falls back to it) runs on every machine, so it
    is accepted without building a Trainer: the matrix driver then never imports Lightning (its
    import costs seconds per command; the workers pay it once each)."""
    import warnings

    if precision == "32-true" and accelerator in ("auto", "cpu"):
        return
    import lightning as L

    quiet_lightning()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            L.Trainer(accelerator=accelerator, devices=1, precision=precision, logger=False,
                      enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False)
        except Exception as err:  # noqa: BLE001 - Lightning raises several types for this
            raise AdaptbenchError(f"--accelerator {accelerator} --precision {precision}: this machine "
                                  f"cannot run it ({one_line(err)})") from None


def _device_name(accelerator: str) -> str:
    import torch

    from ..datasets.decoded import usable_cpus

    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({usable_cpus()} cores)"


def quiet_lightning() -> None:
    """Lightning's banners (GPU available, tips, ...) are noise in a benchmark log."""
    import logging
    import warnings

    import lightning  # noqa: F401 - sets its loggers' levels on import: override after

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (".*does not have many workers.*", ".*no `val_dataloader`.*", ".*LeafSpec.*",
                    ".*litlogger.*", ".*`srun` command is available.*"):
        warnings.filterwarnings("ignore", message=message)
