"""``adaptbench validate SPEC``: check a spec, its adapters' options, its weights and its data,
without training anything. ``adaptbench run`` runs the same checks first, so a matrix never
starts only to fail every cell on a missing folder.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import AdaptbenchError
from .protocol import split_plan
from .spec import GRID_OPTION_PREFIX, AdapterEntry, BackboneEntry, MatrixSpec


@dataclass(frozen=True)
class Check:
    kind: str  # "adapter" | "backbone" | "task"
    subject: str
    ok: bool
    detail: str


def validate_spec(spec: MatrixSpec, data_root: str | None = None) -> list[Check]:
    """One check per adapter, backbone and task of the spec."""
    root = data_root or spec.data_root
    tuned = any(entry.grid for entry in spec.adapters)
    return ([_checked("adapter", entry.label, _adapter_detail, entry) for entry in spec.adapters]
            + [_checked("backbone", entry.name, _backbone_detail, entry) for entry in spec.backbones]
            + [_checked("task", task, _task_detail, task, root, tuned) for task in spec.tasks])


def problems(checks: list[Check]) -> list[str]:
    return [f"{check.kind} {check.subject}: {check.detail}" for check in checks if not check.ok]


def _checked(kind: str, subject: str, detail, *args) -> Check:
    try:
        return Check(kind, subject, True, detail(*args))
    except AdaptbenchError as err:
        return Check(kind, subject, False, err.message)


def _adapter_detail(entry: AdapterEntry) -> str:
    """Every option set the grid can produce must be accepted by the adapter's config."""
    from ..adapters import adapter_class

    config_class = adapter_class(entry.name).config_class
    points = entry.grid_points()
    for point in points:
        options = {**entry.options, **{key.removeprefix(GRID_OPTION_PREFIX): value
                                       for key, value in point.items() if key.startswith(GRID_OPTION_PREFIX)}}
        config_class.from_dict(options, adapter=entry.name)
    search = f"grid of {len(points)} points" if entry.grid else "no grid"
    return f"{entry.name} options ok; {search}"


def _backbone_detail(entry: BackboneEntry) -> str:
    """Weights present (never downloaded here); registered backbones are built to prove it."""
    from ..backbones.weights import check_timm_weights
    from ..registry import BACKBONES

    if entry.name.startswith("timm:"):
        return f"weights {check_timm_weights(entry.name.partition(':')[2], entry.weights)}"
    if entry.name not in BACKBONES:  # a bare timm name
        return f"weights {check_timm_weights(entry.name, entry.weights)}"
    from ..backbones import load_backbone

    backbone = load_backbone(entry.name, weights=entry.weights)
    return f"weights {backbone.weights_source}"


def _task_detail(task: str, data_root: str | None, tuned: bool) -> str:
    """The splits the protocol will read exist and list images that exist."""
    from ..registry import TASKS

    spec = TASKS.get(task)
    if spec.embedded:
        return "embedded (generated on first use)"
    from ..tasks.data import task_samples

    stages = ("tune", "final") if tuned else ("final",)
    splits = []
    for stage in stages:
        plan = split_plan(spec, stage)
        splits.extend(split for split in (plan.train_split, plan.eval_split) if split not in splits)
    sizes = {split: len(task_samples(spec, split, data_root)) for split in splits}
    return ", ".join(f"{split} {size}" for split, size in sizes.items())
