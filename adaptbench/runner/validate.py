"""``adaptbench validate SPEC``: check a spec, its adapters' options, its weights and its data,
without training anything. ``adaptbench run`` runs the same checks first, so a matrix never
starts only to fail every cell on a missing folder.

Weights are checked where they would come from, never loaded nor downloaded; anatomies come
from backbones built on the meta device (``capabilities.py``). A pair whose adapter cannot run
on its backbone is listed as ``n/a`` with the reason: a fact about the pair, not a problem
(its cells are recorded n/a by ``adaptbench run``, not run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import AdaptbenchError
from .capabilities import Capabilities
from .cells import search_groups
from .protocol import split_plan
from .spec import GRID_OPTION_PREFIX, AdapterEntry, BackboneEntry, MatrixSpec


@dataclass(frozen=True)
class Check:
    kind: str  # "adapter" | "backbone" | "task" | "pair"
    subject: str
    ok: bool
    detail: str
    not_applicable: bool = False  # a pair that cannot run: listed, not a problem


def validate_spec(spec: MatrixSpec, data_root: str | None = None,
                  capabilities: Capabilities | None = None) -> list[Check]:
    """One check per adapter, backbone and task of the spec, then one per n/a pair."""
    capabilities = capabilities or Capabilities()
    root = data_root or spec.data_root
    tuned = any(entry.grid for entry in spec.adapters)
    return ([_checked("adapter", entry.label, _adapter_detail, spec, entry) for entry in spec.adapters]
            + [_checked("backbone", entry.name, _backbone_detail, entry, capabilities) for entry in spec.backbones]
            + [_checked("task", task, _task_detail, task, root, tuned) for task in spec.tasks]
            + not_applicable_pairs(spec, capabilities))


#: Search budgets (grid points per adapter entry) further apart than this ratio are warned about.
BUDGET_RATIO = 2.0


def search_budget_warning(spec: MatrixSpec) -> str | None:
    """A warning when the spec's adapters search numbers of configurations more than
    ``BUDGET_RATIO`` apart: a method tuned over 10 points and one over 1 are not compared on
    equal terms (the papers' own searches differ so; the leaderboard notes it too)."""
    budgets = {entry.label: len(entry.grid_points()) for entry in spec.adapters}
    if not budgets or max(budgets.values()) <= BUDGET_RATIO * min(budgets.values()):
        return None
    listed = ", ".join(f"{label} {points}" for label, points in sorted(budgets.items(), key=lambda kv: -kv[1]))
    return (f"unequal search budgets, more than {BUDGET_RATIO:g}x apart (configurations searched per task: "
            f"{listed}); a method searched over more points can win by its search alone")


def problems(checks: list[Check]) -> list[str]:
    return [f"{check.kind} {check.subject}: {check.detail}" for check in checks if not check.ok]


def not_applicable_pairs(spec: MatrixSpec, capabilities: Capabilities) -> list[Check]:
    """Each (backbone, adapter with one of its option sets) that cannot run, with the reason.

    Pairs whose backbone or options are broken are not judged: those are problems of the
    backbone or adapter check.
    """
    pairs = []
    for backbone in spec.backbones:
        for entry in spec.adapters:
            option_sets = _option_sets(entry)
            for options in option_sets:
                reason = capabilities.reason(backbone.name, entry.name, options)
                if reason is not None:
                    subject = _pair_subject(entry, backbone, options if len(option_sets) > 1 else None)
                    pairs.append(Check("pair", subject, True, f"n/a: {reason}", not_applicable=True))
    return pairs


def not_applicable_cells(spec: MatrixSpec, capabilities: Capabilities) -> int:
    """How many cells ``adaptbench run`` would record n/a without running them (as the runner
    decides it: a tune cell by its own options; final cells by theirs, or all n/a when every
    tune cell of their search is)."""
    count = 0
    for group in search_groups(spec):
        tune = [capabilities.cell_message(cell) for cell in group.tune_cells()]
        count += sum(line is not None for line in tune)
        if group.has_grid:
            count += len(spec.seeds) if all(tune) else 0
        else:
            count += sum(capabilities.cell_message(cell) is not None for cell in group.final_cells({}))
    return count


def _checked(kind: str, subject: str, detail, *args) -> Check:
    try:
        return Check(kind, subject, True, detail(*args))
    except AdaptbenchError as err:
        return Check(kind, subject, False, err.message)


def _grid_options(entry: AdapterEntry, point: dict[str, Any]) -> dict[str, Any]:
    """The adapter options at one grid point (the entry's, overridden by ``options.*`` keys)."""
    return {**entry.options, **{key.removeprefix(GRID_OPTION_PREFIX): value
                                for key, value in point.items() if key.startswith(GRID_OPTION_PREFIX)}}


def _option_sets(entry: AdapterEntry) -> list[dict[str, Any]]:
    """The distinct option sets the grid produces (a grid over lr alone gives one)."""
    distinct: list[dict[str, Any]] = []
    for point in entry.grid_points():
        options = _grid_options(entry, point)
        if options not in distinct:
            distinct.append(options)
    return distinct


def _pair_subject(entry: AdapterEntry, backbone: BackboneEntry, options: dict[str, Any] | None) -> str:
    shown = "" if options is None else " (" + ", ".join(f"{k}={v}" for k, v in options.items()) + ")"
    return f"{entry.label}{shown} on {backbone.name}"


def _adapter_detail(spec: MatrixSpec, entry: AdapterEntry) -> str:
    """Every option set the grid can produce must be accepted by the adapter's config, and
    every precision its cells use must keep the adapter's state."""
    from ..adapters import adapter_class
    from ..adapters.base import check_precision

    config_class = adapter_class(entry.name).config_class
    points = entry.grid_points()
    for point in points:
        config_class.from_dict(_grid_options(entry, point), adapter=entry.name)
    for precision in entry_precisions(spec, entry):
        check_precision(entry.name, precision)
    _check_heads(spec, entry)
    search = f"grid of {len(points)} points" if entry.grid else "no grid"
    return f"{entry.name} options ok; {search}"


def _backbone_detail(entry: BackboneEntry, capabilities: Capabilities) -> str:
    """Weights present (asked of the backbone's family, never loaded nor downloaded here) and
    an anatomy that can be read (the backbone built on the meta device)."""
    from ..backbones import check_backbone_options, check_backbone_weights

    check_backbone_options(entry.name, entry.options)
    weights = check_backbone_weights(entry.name, entry.weights)
    anatomy = capabilities.anatomy(entry.name)
    return (f"weights {weights}; {anatomy.token_layout} tokens, {anatomy.num_blocks} blocks, "
            f"d={anatomy.embed_dim}")


def _task_detail(task: str, data_root: str | None, tuned: bool) -> str:
    """The splits the protocol will read exist and list images that exist."""
    from ..registry import TASKS

    spec = TASKS.get(task)
    if spec.embedded:
        return "embedded (generated on first use)"
    from ..datasets.images import check_images_exist
    from ..tasks.samples import task_samples

    stages = ("tune", "final") if tuned else ("final",)
    splits = []
    for stage in stages:
        plan = split_plan(spec, stage)
        splits.extend(split for split in (plan.train_split, plan.eval_split) if split not in splits)
    sizes = {}
    for split in splits:
        samples = task_samples(spec, split, data_root)
        check_images_exist(samples)  # a run checks once, when it first decodes the split
        sizes[split] = len(samples)
    return ", ".join(f"{split} {size}" for split, size in sizes.items())


def spec_precisions(spec) -> list[str]:
    """Every precision a spec's cells can run under (its train, each adapter's, each grid's)."""
    return sorted({precision for entry in spec.adapters for precision in entry_precisions(spec, entry)})


def _check_heads(spec, entry: AdapterEntry) -> None:
    """The head (and prompt) every cell of the entry would build fits the kind of every task."""
    from ..registry import HEADS, TASKS
    from ..tasks.heads import check_head
    from ..tasks.kinds import task_kind

    def setting(name: str, default):
        return entry.train.get(name, spec.train.get(name, default))

    heads = set(entry.grid.get("head", [setting("head", None)]))
    prompts = set(entry.grid.get("prompt", [setting("prompt", "none")]))
    for kind in sorted({TASKS.get(task).kind for task in spec.tasks}):
        for head in heads:
            name = head or task_kind(kind).default_head
            for prompt in prompts:
                check_head(name, HEADS.get(name), kind, prompt)


def entry_precisions(spec, entry: AdapterEntry) -> set[str]:
    """The precisions one adapter entry's cells run under (``auto`` unless a train block says)."""
    found = {entry.train.get("precision", spec.train.get("precision", "auto"))}
    found.update(entry.grid.get("precision", []))
    return found
