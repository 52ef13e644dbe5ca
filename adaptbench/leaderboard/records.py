"""Finding run records on disk and reading the facts a leaderboard needs from each.

A *run record* is the JSON that ``adaptbench train`` / ``adaptbench run`` write, one per run,
read through the typed :class:`~adaptbench.records.RunRecord` (the only code that knows
its nesting; schema 1 records are upgraded there). :func:`load_records` collects them from
files and folders; :func:`record_facts` turns one record into a flat dict (one row of the
long table that ``aggregate.py`` pivots); :func:`records_frame` is that long table for
programs, typed, with every config key as a column.

Facts fall back for older records: without ``run_info.task_info`` the task's benchmark is the
part of its name before the ``/`` and its group comes from the task registry. An ``n/a``
record (the adapter cannot run on the backbone) has no score and is not a failure: ``na`` and
``na_reason`` say so.

A record's leaderboard row is its ``row_id`` (the hash of its ``row_config``); ``label`` (the
matrix's ``adapter_label``, else the adapter name) only names the row on screen. A row config
holds no ``shots`` (``records.row_config``): a few-shot board's k are its columns, so one method
at k = 1, 2, 4 ... is one row.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import AdaptbenchError
from ..records import SUCCESS, RunRecord, config_hash, is_run_record, row_config

#: Keys every record must have below ``run_info.config`` (the rest may be missing).
REQUIRED_CONFIG_KEYS = ("task", "backbone", "adapter")


# -- finding and reading ---------------------------------------------------------------------
def load_records(paths: Sequence[str | os.PathLike]) -> list[RunRecord]:
    """The run records in ``paths`` (files, or folders searched recursively for ``*.json``, or
    result-store URLs such as ``s3://bucket/results/vtab1k``: the records directly in them).

    Hidden files (the runner's ``.x.json.123.tmp`` temp files) are skipped, and so is a JSON
    file that is not a run record (no ``run_info`` / ``train_info``). A malformed JSON file, a
    record of the wrong shape, or one without a task, backbone or adapter raises
    :class:`AdaptbenchError`: one line naming the file.
    """
    records = []
    urls = [os.fspath(path) for path in paths if "://" in os.fspath(path)]
    for url in urls:
        records.extend(_store_records(url))
    for path in _record_files([path for path in paths if os.fspath(path) not in urls]):
        record = _read_record(path)
        if record is not None:
            _check_record(record, path)
            records.append(record)
    if not records:
        shown = ", ".join(str(p) for p in paths) or "(no paths given)"
        raise AdaptbenchError(f"no run records (*.json with run_info and train_info) found in {shown}")
    return records


def _record_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    files = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*.json") if p.is_file() and not _is_hidden(p, path)))
        elif path.is_file():
            files.append(path)
        else:
            raise AdaptbenchError(f"results path {path} does not exist: expected a run record (.json) or a folder of them")
    return files


def _store_records(url: str) -> list[RunRecord]:
    """The records in a result store at ``url`` (``runner/store.py``), each checked like a file's."""
    from ..runner.store import ResultStore

    store = ResultStore.at(url)
    records = []
    for location in store.record_locations():
        data = store.read_bytes(location) or b""
        try:
            loaded = json.loads(data)
        except ValueError as err:
            raise AdaptbenchError(f"run record {location}: not valid JSON ({err})") from None
        if is_run_record(loaded):
            record = RunRecord.from_data(loaded, location)
            _check_record(record, location)
            records.append(record)
    return records


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _read_record(path: Path) -> RunRecord | None:
    """The record in ``path``; None for a valid JSON file that is not a run record (a matrix
    summary, a plugin's file). Every other problem is :meth:`RunRecord.read`'s one line."""
    try:
        return RunRecord.read(path)
    except AdaptbenchError:
        if _is_other_json(path):
            return None
        raise


def _is_other_json(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return not is_run_record(data)


def _check_record(record: RunRecord, path: Path) -> None:
    missing = [key for key in REQUIRED_CONFIG_KEYS if not record.config.get(key)]
    if missing:
        raise AdaptbenchError(f"run record {path} lacks run_info.config.{missing[0]}: "
                              f"expected {', '.join(REQUIRED_CONFIG_KEYS)}")


# -- one record's facts ------------------------------------------------------------------------
def record_facts(record: RunRecord) -> dict[str, Any]:
    """One record as a flat dict: identity (row and run), outcome (score in %), and costs."""
    run_info, train = record.run_info, record.train_info
    config = record.config
    benchmark, group = _benchmark_and_group(record)
    params = train.params or {}
    score, error = _score(record)
    na_reason = record.not_applicable_reason()  # the adapter cannot run on this backbone: no score, not failed
    row = run_info.row_config or row_config(config)
    row_id = run_info.row_id or config_hash(row)
    return {
        "benchmark": benchmark,
        "group": group,
        "task": config["task"],
        "backbone": backbone_label(config),
        "adapter": str(config["adapter"]),
        "label": str(run_info.matrix.get("adapter_label") or config["adapter"]) + _prompt_note(config),
        "head_name": str(config.get("head") or "linear"),  # records before heads existed: linear
        "recipe": str(run_info.matrix.get("recipe") or ""),  # the spec's named recipe ("" when unnamed)
        "search_points": _search_points(row.get("searched")),  # the grid its final config came from
        "row_id": row_id,
        "row_config": row,
        "seed": config.get("seed", run_info.seed),
        "shots": config.get("shots"),  # k per class; None: all the training data
        "epochs": config.get("epochs"),  # 0: evaluated without training
        "wise": _wise_scores(record),
        "stage": config.get("stage") or train.stage or "final",
        "status": record.status,
        "ok": score is not None,
        "na": na_reason is not None,
        "na_reason": na_reason,
        "error": error,
        "score": score,
        "metric": train.primary_metric or "top1",
        "higher_is_better": train.higher_is_better,
        "trainable": params.get("trainable"),
        "trainable_with_head": params.get("trainable_with_head"),
        "head": params.get("head"),
        "extra_inference": params.get("extra_inference"),
        "extra_inference_merged": params.get("extra_inference_merged"),
        "checkpoint_bytes": params.get("checkpoint_bytes"),
        "wall_time_s": train.wall_time_s,
        "images_per_s": train.train_images_per_s,
        "peak_memory_bytes": train.peak_memory_bytes,
        "peak_memory_kind": train.peak_memory_kind,
        "created_at": str(run_info.created_at or ""),
        "run_id": str(record.run_id or ""),
        # per-sample test scores (records.SampleScores, still packed) of a scored run, else None
        "samples": train.samples if score is not None else None,
    }


def _search_points(grid: Any) -> int:
    """How many configurations the search behind a final run tried (1: no search)."""
    if not isinstance(grid, dict) or not grid:
        return 1
    return int(np.prod([len(values) for values in grid.values()]))


def _prompt_note(config: dict[str, Any]) -> str:
    """A row whose head was given prompts from the ground truth says so in its label, always."""
    prompt = config.get("prompt", "none")
    return "" if prompt in (None, "none") else f" ({prompt} prompt from the ground truth)"


def backbone_label(config: dict[str, Any]) -> str:
    """The backbone as a row label: ``timm:`` dropped (same model), non-default weights kept.

    Random or hand-picked weights change the results, so they must not share a row with
    the pretrained ones; a local weights file is named by its file name.
    """
    name = str(config["backbone"]).removeprefix("timm:")
    weights = config.get("weights")
    if weights in (None, "", "pretrained"):
        return name
    return f"{name} [{Path(str(weights)).name}]"


def _benchmark_and_group(record: RunRecord) -> tuple[str, str]:
    task = record.config["task"]
    info = record.run_info.task_info
    benchmark = (info.benchmark if info else "") or task.partition("/")[0]
    group = (info.group if info else "") or _registered_group(task)
    return benchmark, group


def _registered_group(task: str) -> str:
    from ..registry import TASKS

    try:
        return TASKS.get(task).group
    except AdaptbenchError:  # a plugin task that is not loaded here: still tabulated
        return "other"


def _score(record: RunRecord) -> tuple[float | None, str | None]:
    """(100 x primary metric on the evaluation split, None) or (None, why there is none)."""
    if record.status != SUCCESS:
        return None, record.train_info.error or f"status {record.status!r}"
    value = record.primary_score()
    if not isinstance(value, (int, float)):
        metric = record.train_info.primary_metric or "top1"
        return None, f"no {metric} on split {record.eval_split!r} in a successful record"
    return 100.0 * float(value), None


#: ``<metric>@wise<alpha>``: the metric of the WiSE-FT interpolation at ``alpha`` (``f"{alpha:g}"``).
WISE_MARK = "@wise"


def _wise_scores(record: RunRecord) -> dict[str, float]:
    """``{alpha: 100 x primary metric}`` of the WiSE-FT interpolations a successful run evaluated
    (``metrics[<eval split>]["<metric>@wise<alpha>"]``); empty when it evaluated none."""
    if record.status != SUCCESS:
        return {}
    metric = record.train_info.primary_metric or "top1"
    metrics = record.train_info.metrics.get(record.eval_split or "") or {}
    prefix = f"{metric}{WISE_MARK}"
    return {key.removeprefix(prefix): 100.0 * float(value) for key, value in metrics.items()
            if key.startswith(prefix) and isinstance(value, (int, float))}


# -- the long table ------------------------------------------------------------------------------
#: Columns of :func:`records_frame` before the ``config.*`` ones, with their dtypes.
FRAME_COLUMNS: dict[str, str] = {
    "run_id": "string", "row_id": "string",
    "benchmark": "string", "group": "string", "task": "string", "backbone": "string",
    "adapter": "string", "label": "string", "head_name": "string", "seed": "Int64", "stage": "string",
    "status": "string", "score": "float64", "metric": "string", "higher_is_better": "bool",
    "error": "string", "na_reason": "string",
    "trainable": "Int64", "trainable_with_head": "Int64", "head": "Int64", "extra_inference": "Int64",
    "extra_inference_merged": "Int64", "checkpoint_bytes": "Int64",
    "wall_time_s": "float64", "images_per_s": "float64", "peak_memory_bytes": "Int64",
    "peak_memory_kind": "string",
    "created_at": "datetime64[ns, UTC]",
}


def records_frame(records: Iterable[RunRecord]) -> pd.DataFrame:
    """One row per run record, typed: the table behind ``adaptbench.load_records``.

    Columns, in this order (missing facts are ``<NA>`` / ``NaN`` / ``NaT``):

    * ``run_id`` (the run: hash of its resolved config), ``row_id`` (its leaderboard row: hash
      of the config without seed, task, stage and shots, grid-searched values replaced by the
      grid) -- string;
    * ``benchmark``, ``group``, ``task`` -- string;
    * ``backbone`` -- string, as the leaderboard shows it (``timm:`` dropped, non-default
      weights in brackets; the raw value is ``config.backbone``);
    * ``adapter`` (the registered name), ``label`` (the display label: the matrix's
      ``adapter_label``, else the adapter name; the leaderboard appends the config keys that
      tell apart rows sharing a label) -- string;
    * ``seed`` -- Int64; ``stage`` (``final`` or ``tune``) -- string;
    * ``status`` (``success``, ``failed``, ``n/a``), ``metric`` (the primary metric),
      ``error`` (why a run failed or is n/a), ``na_reason`` -- string; ``score`` -- float64,
      100 x the primary metric on the evaluation split (0..100 for accuracies), NaN unless
      the run succeeded; ``higher_is_better`` -- bool;
    * parameters -- Int64: ``trainable`` (without the task head), ``trainable_with_head``,
      ``head``, ``extra_inference``, ``extra_inference_merged``, ``checkpoint_bytes``;
    * costs: ``wall_time_s``, ``images_per_s`` (training) -- float64; ``peak_memory_bytes``
      -- Int64; ``peak_memory_kind`` -- string (``cpu_max_rss`` or ``cuda_max_allocated``);
    * ``created_at`` -- datetime64[ns, UTC];
    * ``config.<key>`` for every key of the resolved config of any record, nested keys
      dotted (``config.lr``, ``config.adapter_options.r``, ``config.code_versions.adapter``),
      sorted: Int64, float64, boolean or string when every value present is of that kind,
      else object (lists stay lists).
    """
    facts, configs = [], []
    for record in records:
        facts.append(record_facts(record))
        configs.append({f"config.{key}": value for key, value in flatten(record.config).items()})
    frame = pd.DataFrame(facts, columns=list(FRAME_COLUMNS))
    typed = {column: _as_dtype(frame[column], dtype) for column, dtype in FRAME_COLUMNS.items()}
    # Typed from the Python values (a DataFrame would already have made ints with gaps floats).
    for column in sorted(set().union(*configs)):
        typed[column] = _inferred([config.get(column) for config in configs])
    return pd.DataFrame(typed, index=pd.RangeIndex(len(facts)))


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``); an empty
    dict stays a value, so that a key is never lost."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _as_dtype(column: pd.Series, dtype: str) -> pd.Series:
    if dtype.startswith("datetime"):  # parsed, so that records from other time zones order right
        return pd.to_datetime(column, utc=True, errors="coerce", format="ISO8601").astype(dtype)
    if dtype in ("bool", "string"):
        return column.astype(dtype)
    return pd.to_numeric(column, errors="coerce").astype(dtype)


def _inferred(values: list[Any]) -> pd.Series:
    """A config column as the narrowest dtype that holds every value present."""
    kinds = {type(value) for value in values if value is not None}
    if kinds and kinds <= {bool}:
        return pd.Series(values, dtype="boolean")
    if kinds and kinds <= {int}:
        return pd.Series(values, dtype="Int64")
    if kinds and kinds <= {int, float}:
        return pd.Series([np.nan if value is None else value for value in values], dtype="float64")
    if kinds and kinds <= {str}:
        return pd.Series(values, dtype="string")
    return pd.Series(values, dtype="object")
