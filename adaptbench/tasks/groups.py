"""Task groups: each benchmark (``vtab1k``) and each of its groups (``vtab1k/natural``), from
the registered tasks (plugins' included), as specs name them in ``tasks:``."""

from __future__ import annotations

from ..registry import TASKS
from .catalog import builtin_task_specs


def task_groups() -> dict[str, list[str]]:
    """Group name -> task names: each benchmark (``vtab1k``) and each of its groups (``vtab1k/natural``)."""
    groups: dict[str, list[str]] = {}
    for name in _in_catalogue_order(TASKS.names()):
        benchmark, sep, _ = name.partition("/")
        if not sep:
            continue
        spec = TASKS.get(name)
        groups.setdefault(benchmark, []).append(name)
        groups.setdefault(f"{benchmark}/{spec.group}", []).append(name)
    return groups


def _in_catalogue_order(names: list[str]) -> list[str]:
    """Built-in tasks in the order the benchmarks list them (VTAB's Natural first), then plugins'."""
    order = {spec.name: index for index, spec in enumerate(builtin_task_specs())}
    return sorted(names, key=lambda name: (order.get(name, len(order)), name))
