"""Run records: one JSON per run, schema-versioned, written atomically.

Layout (DESIGN.md, "Run record"; PEFT's ``method_comparison`` convention)::

    {
      "schema_version": 1,
      "run_info":   {run_id, created_at, config (resolved), seed, versions, git},
      "train_info": {status, error, stage, metrics {split: {name: value}}, primary_metric,
                     higher_is_better, params, wall_time_s, train_images_per_s,
                     peak_memory_bytes, peak_memory_kind, data, checkpoint},
      "meta_info":  {host, platform, python, device, cpu_count}
    }

``train_info.status`` is ``success``, ``failed`` (``error`` says why) or ``n/a``: the adapter
cannot run on the backbone at all (VPT on SAM's grid of patches). An n/a record is written
without running anything; its ``error`` is the one line ``"<adapter> on <backbone>: n/a:
<reason>"`` (what :class:`~adaptbench.adapters.base.NotApplicable` says) and ``na_reason``
the bare reason, for tables. It is a result, not a failure: never retried.

A record is written to a temporary file in the same folder and renamed into place, so a
reader (or a killed run) never sees half a record.
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
from typing import Any

from ..files import atomic_write

SCHEMA_VERSION = 1
SUCCESS, FAILED, NOT_APPLICABLE = "success", "failed", "n/a"
STATUSES = (SUCCESS, FAILED, NOT_APPLICABLE)
_NA_SEPARATOR = ": n/a: "


def run_id(config: dict[str, Any]) -> str:
    """A deterministic id: the hash of the resolved configuration."""
    canonical = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def write_record(record: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``record`` as JSON to ``path`` atomically (temp file + rename)."""
    return atomic_write(path, json.dumps(record, indent=2, sort_keys=True, default=str))


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    with open(path) as handle:
        return json.load(handle)


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
    package_dir = Path(__file__).resolve().parent.parent
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


def new_record(config: dict[str, Any], seed: int) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "run_info": {
            "run_id": run_id(config),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": config,
            "seed": seed,
            "versions": library_versions(),
            "git": git_state(),
        },
        "train_info": {"status": None, "error": None},
        "meta_info": {},
    }


# -- outcomes --------------------------------------------------------------------------------
def status_of(record: dict[str, Any]) -> str | None:
    """``success`` / ``failed`` / ``n/a``, or None when the record has no outcome yet."""
    return (record.get("train_info") or {}).get("status")


def not_applicable_message(adapter: str, backbone: str, reason: str) -> str:
    """The one line an impossible pair reads as (the shape of NotApplicable's message)."""
    return f"{adapter} on {backbone}{_NA_SEPARATOR}{reason}"


def reason_of(message: str) -> str:
    """The bare reason in an n/a line (the whole line when it is not shaped like one)."""
    _, separator, reason = message.partition(_NA_SEPARATOR)
    return reason if separator else message


def mark_not_applicable(record: dict[str, Any], message: str) -> None:
    """Set ``record``'s outcome to n/a; ``message`` as :func:`not_applicable_message` makes it."""
    record["train_info"].update(status=NOT_APPLICABLE, error=message, na_reason=reason_of(message))


def not_applicable_line(record: dict[str, Any]) -> str | None:
    """The n/a line of an n/a record (None for any other status)."""
    if status_of(record) != NOT_APPLICABLE:
        return None
    return record["train_info"].get("error") or "n/a"


def not_applicable_reason(record: dict[str, Any]) -> str | None:
    """The bare reason of an n/a record (None for any other status)."""
    line = not_applicable_line(record)
    return None if line is None else record["train_info"].get("na_reason") or reason_of(line)
