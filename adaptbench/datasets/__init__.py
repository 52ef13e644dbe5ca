"""Readers for the real on-disk formats (VTAB-1k, FGVC) and the generated micro tasks.

``vtab.py`` and ``fgvc.py`` read the layouts the community ships (see DESIGN.md, "Data
formats"), whose fixed facts (folders, class counts, splits) are in ``formats.py``;
``images.py`` turns (path, label) lists into a torch Dataset; ``micro.py`` generates the
embedded tasks into the VTAB-1k layout, so the same readers serve both.

The names below are exported lazily (PEP 562): ``adaptbench.tasks.catalog`` imports this
package for the format facts and the micro task table, and ``adaptbench ls`` must not pay
for torch or numpy. Nothing here imports ``adaptbench.tasks``: tasks depend on datasets.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Sample": "images",
    "SampleList": "images",
    "load_rgb": "images",
    "decoded_split": "decoded",
    "cached_arrays": "decoded",
    "ImageField": "decoded",
    "LabelField": "decoded",
    "check_images_exist": "images",
    "VTAB_SPLITS": "formats",
    "VTAB1K_TASKS": "formats",
    "read_split_file": "vtab",
    "vtab_samples": "vtab",
    "FGVC_DATASETS": "formats",
    "FGVC_SPLITS": "formats",
    "fgvc_samples": "fgvc",
    "MICRO_TASKS": "micro",
    "MicroTask": "micro",
    "ensure_micro_task": "micro",
    "micro_cache_root": "micro",
    "task_checksum": "micro",
    "verify_micro_task": "micro",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
