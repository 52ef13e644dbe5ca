"""adaptbench: benchmark parameter-efficient adaptation of frozen vision foundation models.

Importing the package is cheap (no torch): the heavy parts load when used. The Python API
(PEP 562: each name imports its module on first access)::

    import adaptbench

    record = adaptbench.train({"task": "micro/digits", "backbone": "vit_micro", "adapter": "linear",
                               "epochs": 1}, out="results")        # -> RunRecord
    frame = adaptbench.load_records("results")                    # -> pandas.DataFrame
    print(adaptbench.leaderboard(["results"], format="md"))       # md, csv, tex or html
    summary = adaptbench.run_matrix("benchmarks/micro.yaml", workers=2)   # -> MatrixSummary

    backbone = adaptbench.load_backbone("vit_micro")
    adapter = adaptbench.build_adapter("lora", backbone, {"r": 4})

``adaptbench.leaderboard`` is both the subpackage (``from adaptbench.leaderboard import
build_leaderboards``) and a function: the subpackage's module object is callable (it sets its
own module class; ``adaptbench.make_leaderboard`` is the same function under a plain name).
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import AdaptbenchError

__version__ = "0.1.0"

#: Public name -> (module, attribute), imported on first access.
_LAZY: dict[str, tuple[str, str]] = {
    "load_backbone": ("adaptbench.backbones", "load_backbone"),
    "build_adapter": ("adaptbench.adapters", "build_adapter"),
    "train": ("adaptbench.api", "train"),
    "run_matrix": ("adaptbench.api", "run_matrix"),
    "load_records": ("adaptbench.api", "load_records"),
    "make_leaderboard": ("adaptbench.api", "make_leaderboard"),
    "compare": ("adaptbench.api", "compare"),
    "RunConfig": ("adaptbench.config", "RunConfig"),
    "RunPolicy": ("adaptbench.config", "RunPolicy"),
    "BackboneOptions": ("adaptbench.config", "BackboneOptions"),
    "RunRecord": ("adaptbench.records", "RunRecord"),
}
_LEADERBOARD = "leaderboard"

__all__ = ["AdaptbenchError", "BackboneOptions", "RunConfig", "RunPolicy", "RunRecord",
           "build_adapter", "compare", "leaderboard", "load_backbone", "load_records", "make_leaderboard", "run_matrix",
           "train"]


def __getattr__(name: str) -> Any:
    """PEP 562: import a public name's module on first access (then the name is cached)."""
    if name == _LEADERBOARD:  # the subpackage, which makes itself callable
        return importlib.import_module(f"{__name__}.{_LEADERBOARD}")
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The package's names, the lazy ones included."""
    return sorted({*globals(), *_LAZY, _LEADERBOARD})
