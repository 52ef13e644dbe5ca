"""Published numbers shown beside ours, always marked "reported" with their source.

The data is ``references.csv`` (package data), copied from the project's reference notes,
which say:

    Published numbers for ViT-B/16 (ImageNet-21k supervised), to show beside reproduced ones
    in leaderboards, always marked as "reported" with their source. ``mean19`` is the plain
    mean over the 19 VTAB-1k tasks; ``group_mean`` is the mean of the Natural/Specialized/
    Structured means; ``mean5`` is the FGVC mean. Several rows of V-PETL's table match NOAH's
    digit for digit (copied, not re-run), and BitFit appears as 62.05 here and ~72 in other
    reproductions: a leaderboard should make such disagreements visible, not hide them.

So each (method, source) pair stays its own row: full fine-tuning shows 65.57 (mean over
tasks, V-PETL) and 68.9 (mean of group means, NOAH) on two rows, never averaged or merged.

Few-shot numbers (the CoOp protocol: 11 datasets, k = 1, 2, 4, 8, 16 shots per class, 3
seeds) are the ``coop`` rows, ``mean11``: the averages HealthX-Lab/CLIP-SVD's README
re-reports for zero-shot CLIP, CoOp, CoCoOp, CLIP-Adapter, Tip-Adapter(-F), the linear probe,
CLIP-LoRA and CLIP-SVD. That README does not name the backbone; ``clip:ViT-B-16/openai`` is
the reference notes' reading, marked uncertain in the source text.

Columns: ``method`` (the paper's name; a row of ours pairs with it by its label, else by its
adapter name through :data:`ADAPTER_OF_METHOD`), ``benchmark`` (vtab1k | fgvc | seg | ...),
``mean_kind`` (which of our columns the value belongs to: a mean, see
:data:`MEAN_COLUMN_OF_KIND`, or ``task:<task name>`` for one task's column), ``value`` (the
board's metric in %), ``trainable_params_m`` (millions, without head; may be empty),
``backbone`` (the architecture, as our backbone label without its weights tag), ``weights``
(the checkpoint the number started from: ``orig_in21k`` is Google's original ViT-B_16.npz,
``augreg_in21k`` Steiner et al.'s; empty when the source does not say), ``head``, ``recipe``
(whose training recipe produced it: ``noah``, ``vpetl``, ``ssf``, ...; our rows carry the
spec's ``recipe``), ``config`` (the method's configuration behind the number, when it is not
the default), ``source``, ``shots`` (k per class of a few-shot number; ``0`` for a number
without any training example, zero-shot, which a few-shot board shows in every k column; empty
for a number trained on the task's whole training set).

A published row is shown on a board with a row of ours on the same benchmark, architecture and
head (a Swin-L UperNet number never sits beside a ViT or SAM row). It is *comparable* with a
row of ours only when the weights and the recipe match too; otherwise the board says what
differs (:func:`setting_differences`). Only a comparable pair can raise a disagreement flag
(``aggregate.py``).
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd

#: ``mean_kind`` -> the leaderboard column its value belongs in.
MEAN_COLUMN_OF_KIND = {"mean19": "Mean (tasks)", "mean5": "Mean (tasks)", "mean11": "Mean (tasks)",
                       "group_mean": "Mean (groups)"}

#: Paper names whose adaptbench adapter has another name (others are the same name;
#: methods without an adapter here, such as noah or hst, keep theirs).
ADAPTER_OF_METHOD = {"bi_adaptformer_32": "bi_adaptformer", "clip_lora": "lora", "fact_tk": "fact"}


def load_references() -> pd.DataFrame:
    """The whole table, plus ``adapter`` (our name for the method); ``shots`` is a float, NaN
    where empty; text columns read "" where empty."""
    with resources.files(__package__).joinpath("references.csv").open(encoding="utf-8") as handle:
        table = pd.read_csv(handle, dtype={"weights": str, "recipe": str, "config": str})
    for column in ("weights", "recipe", "config"):
        table[column] = table[column].fillna("") if column in table else ""
    table["shots"] = pd.to_numeric(table["shots"], errors="coerce") if "shots" in table else np.nan
    table["adapter"] = table["method"].map(lambda method: ADAPTER_OF_METHOD.get(method, method))
    return table


def split_backbone_label(label: str) -> tuple[str, str]:
    """(architecture, weights) of a backbone label as ``records.backbone_label`` writes it:
    ``vit_base_patch16_224.orig_in21k`` -> (``vit_base_patch16_224``, ``orig_in21k``);
    ``clip:ViT-B-16/openai`` -> (``clip:ViT-B-16``, ``openai``); ``vit_micro [w.safetensors]``
    -> (``vit_micro``, ``w.safetensors``); ``vit_micro`` -> (``vit_micro``, "")."""
    name, _, file = label.partition(" [")
    if file:
        return name, file.removesuffix("]")
    if name.startswith("clip:") and "/" in name:
        return tuple(name.rsplit("/", 1))  # type: ignore[return-value]
    if "." in name:
        return tuple(name.rsplit(".", 1))  # type: ignore[return-value]
    return name, ""


def reference_label(ref) -> str:
    """A published row's backbone as our labels write it (architecture and weights)."""
    if not ref.weights:
        return ref.backbone
    return f"{ref.backbone}{'/' if ref.backbone.startswith('clip:') else '.'}{ref.weights}"


def references_for(benchmark: str, settings: set[tuple[str, str]]) -> pd.DataFrame:
    """The published rows shown on a board of ``benchmark`` whose rows of ours run ``settings``
    = {(backbone label, head)}: same architecture and head (the weights may differ: the board
    then says so)."""
    table = load_references()
    ours = {(split_backbone_label(label)[0], head) for label, head in settings}
    matches = [(row.benchmark == benchmark and (row.backbone, row.head) in ours) for row in table.itertuples()]
    return table[matches].reset_index(drop=True)


def setting_differences(ref, ours: set[tuple[str, str, str]]) -> list[str]:
    """What separates a published row from the rows of ours on its architecture and head,
    ``ours`` = {(backbone label, head, recipe)}: "weights orig_in21k (ours: augreg_in21k)",
    "recipe vpetl (ours: noah)". Empty when one row of ours runs its exact setting."""
    mine = [(split_backbone_label(label)[1], recipe) for label, head, recipe in ours
            if split_backbone_label(label)[0] == ref.backbone and head == ref.head]
    if any(weights == ref.weights and recipe == ref.recipe for weights, recipe in mine):
        return []
    differences = []
    our_weights = sorted({weights or "default" for weights, _ in mine})
    if ref.weights not in {weights for weights, _ in mine}:
        differences.append(f"weights {ref.weights or 'not stated'} (ours: {', '.join(our_weights)})")
    our_recipes = sorted({recipe or "unnamed" for _, recipe in mine})
    if ref.recipe not in {recipe for _, recipe in mine} or not differences:
        differences.append(f"recipe {ref.recipe or 'not stated'} (ours: {', '.join(our_recipes)})")
    return differences


def comparable(ref, label: str, head: str, recipe: str) -> bool:
    """Whether a row of ours (backbone label, head, recipe) runs the published row's setting:
    same architecture, weights, head and recipe, all stated."""
    architecture, weights = split_backbone_label(label)
    return bool(ref.weights and ref.recipe) and (architecture, weights, head, recipe) == (
        ref.backbone, ref.weights, ref.head, ref.recipe)


def column_of(mean_kind: str) -> str | None:
    """The board column of a published value: a mean column, or None for ``task:<name>``
    (the caller puts it in that task's column)."""
    return None if mean_kind.startswith("task:") else MEAN_COLUMN_OF_KIND[mean_kind]
