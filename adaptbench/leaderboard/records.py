"""Finding run records on disk and reading the few facts a leaderboard needs from each.

A *run record* is the JSON that ``adaptbench train`` / ``adaptbench run`` write, one per run
(see ``adaptbench/runner/records.py``). :func:`load_records` collects them from files and
folders; :func:`record_facts` turns one record into a flat dict (one row of the long table
that ``aggregate.py`` pivots). Only this module knows the record's nesting (the outcome
through ``runner/records.py``, which writes it), and it falls back for older records: without
``run_info.task_info`` the task's benchmark is the part of its name before the ``/`` and its
group comes from the task registry. An ``n/a`` record (the adapter cannot run on the backbone)
has no score and is not a failure: ``na`` and ``na_reason`` say so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import AdaptbenchError
from ..runner.records import SUCCESS, not_applicable_reason

#: Keys every record must have below ``run_info.config`` (the rest may be missing).
REQUIRED_CONFIG_KEYS = ("task", "backbone", "adapter")


def load_records(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """The run records in ``paths`` (files, or folders searched recursively for ``*.json``).

    Hidden files (the runner's ``.x.json.123.tmp`` temp files) are skipped, and so is a JSON
    file that is not a run record (no ``run_info`` / ``train_info``). A malformed JSON file or
    a record without a task, backbone or adapter raises :class:`AdaptbenchError` naming it.
    """
    records = []
    for path in _record_files(paths):
        record = _read_json(path)
        if _is_run_record(record):
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


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise AdaptbenchError(f"run record {path} is not valid JSON: {err.msg} at line {err.lineno}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise AdaptbenchError(f"run record {path} cannot be read: {err}") from err


def _is_run_record(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("run_info"), dict) and isinstance(
        data.get("train_info"), dict)


def _check_record(record: dict[str, Any], path: Path) -> None:
    config = record["run_info"].get("config")
    if not isinstance(config, dict):
        raise AdaptbenchError(f"run record {path} has no run_info.config: expected the resolved run config")
    missing = [key for key in REQUIRED_CONFIG_KEYS if not config.get(key)]
    if missing:
        raise AdaptbenchError(f"run record {path} lacks run_info.config.{missing[0]}: "
                              f"expected {', '.join(REQUIRED_CONFIG_KEYS)}")


def record_facts(record: dict[str, Any]) -> dict[str, Any]:
    """One record as a flat dict: identity, outcome (score in %), and costs."""
    run_info, train = record["run_info"], record["train_info"]
    config = run_info["config"]
    benchmark, group = _benchmark_and_group(run_info)
    params = train.get("params") or {}
    score, error = _score(train)
    na_reason = not_applicable_reason(record)  # the adapter cannot run on this backbone: no score, not failed
    return {
        "benchmark": benchmark,
        "group": group,
        "task": config["task"],
        "backbone": backbone_label(config),
        "adapter": (run_info.get("matrix") or {}).get("adapter_label") or config["adapter"],
        "seed": config.get("seed", run_info.get("seed")),
        "stage": config.get("stage") or train.get("stage") or "final",
        "ok": score is not None,
        "na": na_reason is not None,
        "na_reason": na_reason,
        "error": error,
        "score": score,
        "metric": train.get("primary_metric") or "top1",
        "higher_is_better": train.get("higher_is_better", True),
        "trainable": params.get("trainable"),
        "extra_inference": params.get("extra_inference"),
        "extra_inference_merged": params.get("extra_inference_merged"),
        "checkpoint_bytes": params.get("checkpoint_bytes"),
        "images_per_s": train.get("train_images_per_s"),
        "peak_memory_bytes": train.get("peak_memory_bytes"),
        "peak_memory_kind": train.get("peak_memory_kind"),
        "created_at": str(run_info.get("created_at") or ""),
        "run_id": str(run_info.get("run_id") or ""),
    }


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


def _benchmark_and_group(run_info: dict[str, Any]) -> tuple[str, str]:
    task = run_info["config"]["task"]
    info = run_info.get("task_info") or {}
    benchmark = info.get("benchmark") or task.partition("/")[0]
    group = info.get("group") or _registered_group(task)
    return benchmark, group


def _registered_group(task: str) -> str:
    from ..registry import TASKS

    try:
        return TASKS.get(task).group
    except AdaptbenchError:  # a plugin task that is not loaded here: still tabulated
        return "other"


def _score(train: dict[str, Any]) -> tuple[float | None, str | None]:
    """(100 x primary metric on the evaluation split, None) or (None, why there is none)."""
    if train.get("status") != SUCCESS:
        return None, train.get("error") or f"status {train.get('status')!r}"
    metric = train.get("primary_metric") or "top1"
    split = (train.get("data") or {}).get("eval_split") or "test"
    value = ((train.get("metrics") or {}).get(split) or {}).get(metric)
    if not isinstance(value, (int, float)):
        return None, f"no {metric} on split {split!r} in a successful record"
    return 100.0 * float(value), None
