"""Class names and prompt templates for CLIP's text heads, shipped as package data.

``_prompts/<benchmark>.json`` maps a dataset key (the catalogue's: a VTAB-1k folder, an FGVC
or CoOp key) to ``{"classes": [...], "templates": [...], "source": "..."}``: the class names
in the label order of the data the readers read (NOAH's VTAB-1k dumps follow TFDS's label
order), templates with one ``{}`` for the class name (``template.format(name)``), and where
both came from. ``classes`` is left out where the data name their classes themselves (the
readers' ``class_names``: CoOp's split files, CUB's folders); ``source`` says which names
were constructed rather than copied (dSprites' and smallNORB's bins, for instance).

A file is checked when first read: every template has exactly one ``{}`` and no other
brace, every key is a dataset of its benchmark, and the class count is the dataset's.
Plain JSON and no torch, so ``adaptbench ls`` can build the catalogue cheaply.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from ..errors import AdaptbenchError, did_you_mean
from .formats import COOP_DATASETS, FGVC_DATASETS, VTAB1K_TASKS
from .images import shorten

__all__ = ["BENCHMARKS", "Prompts", "class_names_for", "prompts_of", "read_prompts", "templates_for"]

#: benchmark -> {dataset key: number of classes}
BENCHMARKS: dict[str, dict[str, int]] = {
    "vtab1k": {folder: classes for folder, (_, classes) in VTAB1K_TASKS.items()},
    "fgvc": {key: classes for key, (_, _, classes) in FGVC_DATASETS.items()},
    "coop": {key: entry[3] for key, entry in COOP_DATASETS.items()},
}
FIELDS = ("classes", "templates", "source")


@dataclass(frozen=True)
class Prompts:
    """One dataset's class names (empty: the data name them) and templates."""

    classes: tuple[str, ...]
    templates: tuple[str, ...]
    source: str = ""


def templates_for(benchmark: str, key: str) -> tuple[str, ...]:
    """The prompt templates of a dataset, each with one ``{}`` for the class name."""
    return _entry(benchmark, key).templates


def class_names_for(benchmark: str, key: str) -> tuple[str, ...]:
    """The class names of a dataset in label order; empty where its data name them."""
    return _entry(benchmark, key).classes


def _entry(benchmark: str, key: str) -> Prompts:
    table = prompts_of(benchmark)
    if key not in table:
        raise AdaptbenchError(f"no prompts for {benchmark} dataset {key!r} in {_path(benchmark)}"
                              f"{did_you_mean(key, table)}; expected one of {', '.join(table)}")
    return table[key]


@cache
def prompts_of(benchmark: str) -> dict[str, Prompts]:
    """The checked prompt table of a benchmark (read once)."""
    if benchmark not in BENCHMARKS:
        raise AdaptbenchError(f"no prompt data for benchmark {benchmark!r}{did_you_mean(benchmark, BENCHMARKS)}; "
                              f"expected one of {', '.join(BENCHMARKS)}")
    return read_prompts(_path(benchmark), BENCHMARKS[benchmark])


def _path(benchmark: str) -> Path:
    return Path(str(resources.files(__package__) / "_prompts" / f"{benchmark}.json"))


def read_prompts(path: Path, class_counts: Mapping[str, int]) -> dict[str, Prompts]:
    """``{key: Prompts}`` of one prompt file, checked against ``class_counts`` (key -> number
    of classes); every problem is one line naming the file and the key."""
    path = Path(path)
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise AdaptbenchError(f"prompt file {path} cannot be read ({err}); expected UTF-8 JSON") from None
    except json.JSONDecodeError as err:
        raise AdaptbenchError(f"{path}:{err.lineno}: invalid JSON ({err.msg}, column {err.colno}); expected "
                              f'{{"<dataset>": {{"classes": [...], "templates": [...]}}}}') from None
    if not isinstance(table, dict):
        raise AdaptbenchError(f"{path}: holds a JSON {type(table).__name__}; expected an object of datasets")
    return {key: _checked(path, key, entry, class_counts) for key, entry in table.items()}


def _checked(path: Path, key: str, entry: object, class_counts: Mapping[str, int]) -> Prompts:
    where = f"{path}: dataset {key!r}"
    if key not in class_counts:
        raise AdaptbenchError(f"{where} is not a dataset of the benchmark{did_you_mean(key, class_counts)}; "
                              f"expected one of {', '.join(class_counts)}")
    if not isinstance(entry, dict) or set(entry) - set(FIELDS):
        got = sorted(set(entry) - set(FIELDS)) if isinstance(entry, dict) else shorten(entry, 60)
        raise AdaptbenchError(f"{where}: got {got}; expected an object with the fields {', '.join(FIELDS)}")
    templates = entry.get("templates")
    if not isinstance(templates, list) or not templates:
        raise AdaptbenchError(f"{where}: templates is {shorten(templates, 60)}; expected a non-empty list of strings")
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1 or template.count("{") + template.count("}") != 2:
            raise AdaptbenchError(f"{where}: template {shorten(template)} does not hold exactly one '{{}}' (and no "
                                  f"other brace); expected one '{{}}' for the class name")
    classes = entry.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
        raise AdaptbenchError(f"{where}: classes is {shorten(classes, 60)}; expected a list of strings")
    if classes and len(classes) != class_counts[key]:
        raise AdaptbenchError(f"{where}: {len(classes)} class names; expected {class_counts[key]}, the dataset's "
                              f"number of classes, in label order")
    repeated = [(name, count) for name, count in Counter(classes).items() if count > 1]
    if repeated:
        raise AdaptbenchError(f"{where}: class name {repeated[0][0]!r} is listed {repeated[0][1]} times; "
                              f"expected each class named once")
    return Prompts(tuple(classes), tuple(templates), str(entry.get("source", "")))
