"""A spec -> cells: one cell is one run (backbone x adapter x task x seed x stage).

The protocol lives here once (DESIGN.md, "Protocol"): when an adapter has a hyper-parameter
grid, every grid point is a *tune* cell (train800 -> val200, first seed); the point with the
best validation score is then used for the *final* cells (train800val200 -> test, every
seed). Without a grid there are only final cells.

A cell's id is the run id of its resolved configuration (a hash), so its record is
``<store>/<cell id>.json`` whoever ran it, wherever: a re-run finds the records it already has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..records import SUCCESS, RunRecord
from .spec import GRID_HEAD_OPTION_PREFIX, GRID_OPTION_PREFIX, AdapterEntry, BackboneEntry, MatrixSpec
from .store import ResultStore
from .train import cell_id


@dataclass(frozen=True)
class Cell:
    """One run of the matrix, with the labels its record and the leaderboard carry."""

    config: RunConfig
    label: str  # the adapter's row label in the leaderboard
    annotations: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def cell_id(self) -> str:
        return cell_id(self.config)

    @property
    def stage(self) -> str:
        return self.config.stage

    def describe(self) -> str:
        shots = "" if self.config.shots is None else f" | {self.config.shots}-shot"
        return f"{self.config.task} | {self.config.backbone} | {self.label}{shots} | seed {self.config.seed}"


@dataclass(frozen=True)
class SearchGroup:
    """One (backbone, adapter, task): its tune cells (maybe none) and how to make its final cells."""

    spec: MatrixSpec
    backbone: BackboneEntry
    adapter: AdapterEntry
    task: str
    accelerator: str = "auto"  # resolves ``precision: auto`` (the cell id holds the real one)
    shots: int | None = None  # this group's k (the spec's shots list), None: all training data

    @property
    def has_grid(self) -> bool:
        return bool(self.adapter.grid)

    def tune_cells(self) -> list[Cell]:
        if not self.has_grid:
            return []
        seed = self.spec.seeds[0]  # the search runs once, on the first seed
        return [self._cell(point, seed, "tune") for point in self.adapter.grid_points()]

    def final_cells(self, point: dict[str, Any], selection: dict[str, Any] | None = None) -> list[Cell]:
        # The grid searched is part of the row's identity: its final cells' chosen values
        # differ per task, the row they make does not.
        annotations = {"grid": self.adapter.grid} if self.has_grid else {}
        if selection:
            annotations["selection"] = selection
        return [self._cell(point, seed, "final", annotations) for seed in self.spec.seeds]

    def default_point(self) -> dict[str, Any]:
        """The grid point that stands in for the search when it cannot choose (the first)."""
        return self.adapter.grid_points()[0]

    def _cell(self, point: dict[str, Any], seed: int, stage: str, extra: dict[str, Any] | None = None) -> Cell:
        config = cell_config(self.spec, self.backbone, self.adapter, self.task, point, seed, stage, self.shots)
        config = config.for_accelerator(self.accelerator)
        annotations = {"spec": self.spec.name, "adapter_label": self.adapter.label, **(extra or {})}
        recipe = self.spec.recipe_of(self.adapter)
        if recipe:
            annotations["recipe"] = recipe
        if stage == "tune":
            annotations["grid_point"] = point
        return Cell(config, self.adapter.label, annotations)


def cell_config(spec: MatrixSpec, backbone: BackboneEntry, adapter: AdapterEntry, task: str,
                point: dict[str, Any], seed: int, stage: str, shots: int | None = None) -> RunConfig:
    """Trainer settings: the spec's, then the adapter's, then the grid point's; ``shots``: the
    group's k from the spec's shots list."""
    train = {**({"shots": shots} if shots is not None else {}), **spec.train, **adapter.train}
    options = dict(adapter.options)
    head_options = dict(train.get("head_options") or {})
    for key, value in point.items():
        if key.startswith(GRID_OPTION_PREFIX):
            options[key.removeprefix(GRID_OPTION_PREFIX)] = value
        elif key.startswith(GRID_HEAD_OPTION_PREFIX):
            head_options[key.removeprefix(GRID_HEAD_OPTION_PREFIX)] = value
        else:
            train[key] = value
    if head_options:
        train["head_options"] = head_options
    return RunConfig(task=task, backbone=backbone.name, adapter=adapter.name, adapter_options=options,
                     weights=backbone.weights, backbone_options=spec.backbone_options_for(backbone, adapter), seed=seed, stage=stage, **train)


def search_groups(spec: MatrixSpec, accelerator: str = "auto") -> list[SearchGroup]:
    """Every (backbone, adapter, task, shots) of the spec, in the order written (shots vary
    fastest, then adapters); ``accelerator``: where its cells will run (it decides what
    ``precision: auto`` means)."""
    return [SearchGroup(spec, backbone, adapter, task, accelerator, shots)
            for backbone in spec.backbones for task in spec.tasks for adapter in spec.adapters
            for shots in entry_shots(spec, adapter)]


def entry_shots(spec: MatrixSpec, adapter: AdapterEntry) -> tuple[int | None, ...]:
    """The k values an adapter entry runs: the spec's shots list, unless the entry fixes its own
    (``train: {shots: ...}``) or trains nothing (``epochs: 0``: zero-shot needs no k)."""
    if "shots" in adapter.train:
        return (adapter.train["shots"],)
    epochs = adapter.train.get("epochs", spec.train.get("epochs"))
    if epochs == 0 and not _head_reads_training_split(adapter.train.get("head", spec.train.get("head"))):
        return (None,)
    return spec.shots


def _head_reads_training_split(head: str | None) -> bool:
    """An untrained head built from the training split (Tip-Adapter's cache) still needs its k."""
    from ..registry import HEADS

    return head is not None and bool(getattr(HEADS.get(head), "reads_training_split", False))


# -- records in the result store --------------------------------------------------------------
def record_status(store: ResultStore | str | Path, cell: Cell) -> str | None:
    """'success' / 'failed' / 'n/a' from the cell's record, or None when it has none (or it is unreadable)."""
    record = load_cell_record(store, cell)
    return None if record is None else record.status


def load_cell_record(store: ResultStore | str | Path, cell: Cell) -> RunRecord | None:
    """The cell's record; None when it was never written (records are written atomically, so
    never half-written) or is not one this version reads (the cell then runs again)."""
    return ResultStore.at(store).read_record(cell.cell_id)


def choose_grid_point(group: SearchGroup, store: ResultStore | str | Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The grid point with the best validation score among the group's successful tune runs.

    Returns (point, selection) where ``selection`` says what was compared, for the final
    records; None when no tune run has succeeded (yet). Ties go to the earlier point.
    """
    best: tuple[float, dict[str, Any], str] | None = None
    tried = []
    for cell in group.tune_cells():
        record = load_cell_record(store, cell)
        if record is None or record.status != SUCCESS or record.primary_score() is None:
            continue
        score, signed = record.primary_score(), record.signed_score()
        point = cell.annotations["grid_point"]
        tried.append({"run_id": cell.cell_id, "point": point, "score": score})
        if best is None or signed > best[0]:
            best = (signed, point, cell.cell_id)
    if best is None:
        return None
    selection = {"by": "val score of the tune stage (first seed)", "chosen": best[1],
                 "chosen_run_id": best[2], "tried": tried}
    return best[1], selection

