"""Run records: one JSON per run, typed (:class:`RunRecord`), written atomically.

Layout (DESIGN.md, "Run record"; PEFT's ``method_comparison`` convention)::

    {
      "schema_version": 2,
      "run_info":   {run_id, row_id, created_at, config (resolved), row_config, seed,
                     code_versions, versions, git, task_info, matrix, policy},
      "train_info": {status, error, na_reason, stage, metrics {split: {name: value}},
                     primary_metric, higher_is_better, params, adapter_stats, extra_losses,
                     wall_time_s, train_images_per_s, peak_memory_bytes, peak_memory_kind,
                     data, checkpoint, samples},
      "meta_info":  {host, platform, python, device, cpu_count}
    }

This module is the only one that knows that nesting: the writer (``train.py``) and every
reader (resume, grid selection, the leaderboard, the CLI) go through :class:`RunRecord`.

* ``run_id`` hashes the resolved config, which holds the code versions of the adapter, task
  kind, head and data reader: changing a method's maths changes its cells' ids, so a resumed
  matrix runs them again instead of keeping numbers the old code made.
* ``row_id`` hashes ``row_config``: the config without seed, task and stage, and with the
  values a grid search chose replaced by the grid searched. It is the leaderboard row's
  identity (the label only displays it): two configs under one label are two rows.
* ``train_info.status`` is ``success``, ``failed`` (``error`` says why) or ``n/a``: the adapter
  cannot run on the backbone at all; ``error`` is then ``"<adapter> on <backbone>: n/a:
  <reason>"`` and ``na_reason`` the bare reason. n/a is a result, never retried.
* ``train_info.samples`` (final runs of kinds that give them; :class:`SampleScores`): the
  per-sample contributions to the primary metric on the test split, in test-set order, packed
  (:class:`PackedArray`: booleans as bits, numbers as their narrowest dtype, zlib, base64), so
  that the metric can be recomputed on any resample of the test samples
  (``tasks/sample_metrics.py``; the leaderboard's intervals, ``leaderboard/stats.py``).
  Optional: records without it (older ones, tune runs, plugin kinds) read as before.

Schema 1 records (before code versions and row ids) are read and upgraded in memory: their
row id is computed from their config the same way; a resumed matrix never matches them
(their run ids lack code versions), so it runs their cells again.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import AdaptbenchError
from .files import atomic_write

SCHEMA_VERSION = 2
SUCCESS, FAILED, NOT_APPLICABLE = "success", "failed", "n/a"
STATUSES = (SUCCESS, FAILED, NOT_APPLICABLE)
_NA_SEPARATOR = ": n/a: "
#: Config keys that vary within one leaderboard row (the row spans tasks and seeds).
# shots: a few-shot board's k is a column, so one method over k = 1, 4, 16 is one row
_NOT_ROW_KEYS = ("seed", "task", "stage", "shots")


def config_hash(config: dict[str, Any]) -> str:
    """A deterministic id: the hash of a (resolved) configuration."""
    canonical = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


run_id = config_hash


def row_config(config: dict[str, Any], grid: dict[str, list[Any]] | None = None) -> dict[str, Any]:
    """The config a leaderboard row stands for: without seed, task, stage and shots, and with the
    keys a grid search chose (``lr``, ``options.r``, ``head_options.alpha``) replaced by the grid
    that was searched."""
    row = {key: value for key, value in config.items() if key not in _NOT_ROW_KEYS}
    row.pop("task_defaults", None)  # resolved per task (epochs 10 on micro, 100 on VTAB)
    if grid:
        options = dict(row.get("adapter_options") or {})
        head_options = dict(row.get("head_options") or {})
        for key in grid:
            if key.startswith("options."):
                options.pop(key.removeprefix("options."), None)
            elif key.startswith("head_options."):
                head_options.pop(key.removeprefix("head_options."), None)
            else:
                row.pop(key, None)
        row["adapter_options"] = options
        if "head_options" in row:
            row["head_options"] = head_options
        row["searched"] = {key: list(values) for key, values in grid.items()}
    return row


class _Section(BaseModel):
    # Unknown keys are kept (plugins may add facts), validated types are not loosened.
    model_config = ConfigDict(extra="allow")


class TaskInfo(_Section):
    """What a table needs to know about the task, stored in the record itself."""

    benchmark: str
    group: str
    kind: str = "classification"
    num_classes: int | None = None


class RunInfo(_Section):
    run_id: str
    row_id: str = ""
    created_at: str = ""
    config: dict[str, Any]
    row_config: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    code_versions: dict[str, int] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    git: dict[str, Any] = Field(default_factory=dict)
    task_info: TaskInfo | None = None
    matrix: dict[str, Any] = Field(default_factory=dict)
    policy: dict[str, Any] = Field(default_factory=dict)


class PackedArray(BaseModel):
    """One numpy array, compact and exact in JSON: ``data`` is base64 of the zlib-compressed
    bytes -- of ``np.packbits`` for booleans (``encoding`` "bits"), of the little-endian values
    for numbers ("raw") -- and ``dtype`` / ``shape`` say how to read them back."""

    model_config = ConfigDict(extra="forbid")

    dtype: str
    shape: list[int]
    encoding: Literal["bits", "raw"] = "raw"
    data: str

    @classmethod
    def pack(cls, array: Any) -> PackedArray:
        """``array`` packed; integers are stored in the narrowest dtype that holds their values
        (they read back as that dtype, with the same values)."""
        import base64
        import zlib

        import numpy as np

        array = np.ascontiguousarray(array)
        if array.dtype == np.bool_:
            payload, encoding = np.packbits(array.ravel()).tobytes(), "bits"
        else:
            if array.dtype.kind in "iu":
                array = array.astype(_narrowest_int(array), copy=False)
            array = array.astype(array.dtype.newbyteorder("<"), copy=False)
            payload, encoding = array.tobytes(), "raw"
        return cls(dtype=array.dtype.str if encoding == "raw" else "|b1", shape=list(array.shape),
                   encoding=encoding, data=base64.b64encode(zlib.compress(payload, 9)).decode("ascii"))

    def unpack(self) -> Any:
        """The numpy array (booleans as ``bool``, numbers in the stored dtype)."""
        import base64
        import zlib

        import numpy as np

        payload = zlib.decompress(base64.b64decode(self.data))
        count = int(np.prod(self.shape, dtype=np.int64))
        if self.encoding == "bits":
            bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), count=count)
            return bits.astype(bool).reshape(self.shape)
        return np.frombuffer(payload, dtype=np.dtype(self.dtype)).reshape(self.shape).copy()


def _narrowest_int(array: Any):
    import numpy as np

    if array.size == 0:
        return np.dtype(np.uint8)
    low, high = int(array.min()), int(array.max())
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64) if low >= 0 else (np.int8, np.int16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    return array.dtype


class SampleScores(BaseModel):
    """Per-sample contributions to a final run's primary metric on its test split.

    ``arrays`` (each of first dimension ``count``, in test-set order) are what the kind's module
    returned from ``TaskModule.sample_scores``; ``reduction`` names the function of
    ``tasks/sample_metrics.py`` that turns (weighted) arrays into ``metric``: on the full set
    (every weight 1) it gives the recorded value, on a resample its value there."""

    model_config = ConfigDict(extra="allow")

    metric: str
    reduction: str
    count: int
    arrays: dict[str, PackedArray]

    @classmethod
    def of(cls, metric: str, reduction: str, arrays: dict[str, Any]) -> SampleScores:
        counts = {len(array) for array in arrays.values()}
        if len(counts) != 1:
            raise ValueError(f"per-sample arrays of different lengths: { {k: len(v) for k, v in arrays.items()} }")
        return cls(metric=metric, reduction=reduction, count=counts.pop(),
                   arrays={name: PackedArray.pack(array) for name, array in arrays.items()})

    def unpacked(self) -> dict[str, Any]:
        return {name: packed.unpack() for name, packed in self.arrays.items()}


class TrainInfo(_Section):
    status: Literal["success", "failed", "n/a"] | None = None
    error: str | None = None
    na_reason: str | None = None
    stage: str | None = None
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict)
    primary_metric: str | None = None
    higher_is_better: bool = True
    params: dict[str, int] | None = None
    adapter_stats: dict[str, float] = Field(default_factory=dict)
    extra_losses: list[str] = Field(default_factory=list)
    wall_time_s: float | None = None
    train_images_per_s: float | None = None
    eval_images_per_s: float | None = None  # evaluation split, input pipeline included
    timings: dict[str, float] = Field(default_factory=dict)  # backbone_s, decode_s, features_s, fit_s, eval_s, setup_s
    peak_memory_bytes: int | None = None
    peak_memory_kind: str | None = None
    data: dict[str, Any] | None = None
    checkpoint: str | None = None
    samples: SampleScores | None = None  # final runs: per-sample scores on the test split


class RunRecord(BaseModel):
    """One run's record (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    run_info: RunInfo
    train_info: TrainInfo = Field(default_factory=TrainInfo)
    meta_info: dict[str, Any] = Field(default_factory=dict)

    # -- making one -----------------------------------------------------------------------
    @classmethod
    def start(cls, config: dict[str, Any], *, grid: dict[str, list[Any]] | None = None,
              task_info: TaskInfo | None = None, annotations: dict[str, Any] | None = None,
              policy: dict[str, Any] | None = None) -> RunRecord:
        """A record with the run's identity and no outcome yet. ``config`` is the resolved
        config (its ``code_versions`` included); ``grid`` the search a final cell's values came from."""
        row = row_config(config, grid)
        return cls(run_info=RunInfo(
            run_id=config_hash(config), row_id=config_hash(row), created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            config=config, row_config=row, seed=config.get("seed"),
            code_versions=dict(config.get("code_versions") or {}), versions=library_versions(),
            git=git_state(), task_info=task_info, matrix=dict(annotations or {}), policy=dict(policy or {}),
        ))

    # -- reading ----------------------------------------------------------------------------
    @classmethod
    def read(cls, path: str | os.PathLike) -> RunRecord:
        """The record in ``path``; one line naming the file when it is not a readable record."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            # json's messages may end in " at" (before its own position text): drop it
            raise AdaptbenchError(f"run record {path}: not valid JSON ({err.msg.removesuffix(' at')}, line {err.lineno} "
                                  f"column {err.colno})") from None
        except (OSError, UnicodeDecodeError) as err:
            raise AdaptbenchError(f"run record {path} cannot be read: {err}") from None
        return cls.from_data(data, path)

    @classmethod
    def from_data(cls, data: Any, source: str | os.PathLike = "<record>") -> RunRecord:
        if not is_run_record(data):
            raise AdaptbenchError(f"run record {source}: expected a JSON object with run_info and train_info")
        version = data.get("schema_version", 1)
        if version not in (1, SCHEMA_VERSION):
            raise AdaptbenchError(f"run record {source}: schema_version {version!r} is not one this "
                                  f"adaptbench reads (1 or {SCHEMA_VERSION}); upgrade adaptbench")
        if version == 1:
            data = _upgraded_from_schema_1(data)
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise AdaptbenchError(f"run record {source}: {where}: {first['msg']}") from None

    def write(self, path: str | os.PathLike) -> Path:
        """Write as JSON to ``path`` atomically (temp file + rename)."""
        return atomic_write(path, json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True, default=str))

    # -- facts --------------------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return self.run_info.run_id

    @property
    def row_id(self) -> str:
        return self.run_info.row_id

    @property
    def config(self) -> dict[str, Any]:
        return self.run_info.config

    @property
    def status(self) -> str | None:
        return self.train_info.status

    @property
    def eval_split(self) -> str | None:
        return (self.train_info.data or {}).get("eval_split")

    def primary_score(self) -> float | None:
        """The primary metric on the evaluation split of a successful run (None otherwise)."""
        info = self.train_info
        if info.status != SUCCESS or not info.primary_metric:
            return None
        return (info.metrics.get(self.eval_split or "") or {}).get(info.primary_metric)

    def signed_score(self) -> float | None:
        """The primary score with its sign flipped when lower is better (so higher always wins)."""
        score = self.primary_score()
        return None if score is None else (score if self.train_info.higher_is_better else -score)

    # -- outcomes ------------------------------------------------------------------------
    def mark_failed(self, error: str, **facts: Any) -> None:
        self.train_info = self.train_info.model_copy(update={"status": FAILED, "error": error, **facts})

    def mark_not_applicable(self, message: str) -> None:
        """Outcome n/a; ``message`` as :func:`not_applicable_message` makes it."""
        self.train_info = self.train_info.model_copy(
            update={"status": NOT_APPLICABLE, "error": message, "na_reason": reason_of(message)})

    def mark_success(self, **facts: Any) -> None:
        self.train_info = TrainInfo.model_validate({**self.train_info.model_dump(), **facts, "status": SUCCESS})

    def not_applicable_line(self) -> str | None:
        """The n/a line of an n/a record (None for any other status)."""
        if self.status != NOT_APPLICABLE:
            return None
        return self.train_info.error or "n/a"

    def not_applicable_reason(self) -> str | None:
        line = self.not_applicable_line()
        return None if line is None else self.train_info.na_reason or reason_of(line)


def is_run_record(data: Any) -> bool:
    """True for a JSON object shaped like a run record (other JSON files are not records)."""
    return isinstance(data, dict) and isinstance(data.get("run_info"), dict) and isinstance(
        data.get("train_info"), dict)


def _upgraded_from_schema_1(data: dict[str, Any]) -> dict[str, Any]:
    """A schema 1 record in schema 2's shape: same facts, plus its row config and id."""
    run_info = dict(data["run_info"])
    config = run_info.get("config") if isinstance(run_info.get("config"), dict) else {}
    row = row_config(config)
    run_info.setdefault("row_config", row)
    run_info.setdefault("row_id", config_hash(row))
    train_info = {key: value for key, value in data["train_info"].items() if value is not None or key == "status"}
    return {"schema_version": SCHEMA_VERSION, "run_info": run_info, "train_info": train_info,
            "meta_info": data.get("meta_info") or {}}


# -- environment facts ---------------------------------------------------------------------
def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("adaptbench", "torch", "torchvision", "timm", "lightning", "torchmetrics", "safetensors"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def git_state() -> dict[str, Any]:
    """The commit of the adaptbench checkout that ran (None when not a git checkout)."""
    package_dir = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(package_dir), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(package_dir), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if commit.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def meta_info(device: str) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "device": device,
        "cpu_count": os.cpu_count(),
    }


# -- n/a lines -------------------------------------------------------------------------------
def not_applicable_message(adapter: str, backbone: str, reason: str) -> str:
    """The one line an impossible pair reads as (the shape of NotApplicable's message)."""
    return f"{adapter} on {backbone}{_NA_SEPARATOR}{reason}"


def reason_of(message: str) -> str:
    """The bare reason in an n/a line (the whole line when it is not shaped like one)."""
    _, separator, reason = message.partition(_NA_SEPARATOR)
    return reason if separator else message
