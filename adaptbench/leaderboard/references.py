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

Columns: ``method`` (the paper's name), ``benchmark`` (vtab1k | fgvc | seg | ...),
``mean_kind`` (which of our columns the value belongs to: a mean, see
:data:`MEAN_COLUMN_OF_KIND`, or ``task:<task name>`` for one task's column), ``value`` (the
board's metric in %), ``trainable_params_m`` (millions, without head; may be empty),
``backbone`` (its label, as ``records.backbone_label`` writes ours), ``head``, ``source``,
``shots`` (k per class of a few-shot number; ``0`` for a number without any training example,
zero-shot, which a few-shot board shows in every k column; empty for a number trained on the
task's whole training set -- every row written before few-shot boards; a CSV without the
column reads as all empty).

A published row applies only to a board with a row of ours in the same setting: same
benchmark, same backbone, same head. The classification rows are ViT-B/16 with the
``augreg_in21k`` weights and a linear head; the ADE20K rows (V-PETL's dense table, which is
Mona's) are Swin-L with UperNet, which adaptbench does not run, so they are listed for the
day it does and never shown beside a ViT or SAM row.
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
ADAPTER_OF_METHOD = {"bi_adaptformer_32": "bi_adaptformer", "clip_lora": "lora"}


def load_references() -> pd.DataFrame:
    """The whole table, plus ``adapter`` (our name for the method); ``shots`` is a float, NaN
    where empty."""
    with resources.files(__package__).joinpath("references.csv").open(encoding="utf-8") as handle:
        table = pd.read_csv(handle)
    table["shots"] = pd.to_numeric(table["shots"], errors="coerce") if "shots" in table else np.nan
    table["adapter"] = table["method"].map(lambda method: ADAPTER_OF_METHOD.get(method, method))
    return table


def references_for(benchmark: str, settings: set[tuple[str, str]]) -> pd.DataFrame:
    """The published rows that compare with a board of ``benchmark`` whose rows of ours run
    ``settings`` = {(backbone label, head)}."""
    table = load_references()
    matches = [(row.benchmark == benchmark and (row.backbone, row.head) in settings) for row in table.itertuples()]
    return table[matches].reset_index(drop=True)


def column_of(mean_kind: str) -> str | None:
    """The board column of a published value: a mean column, or None for ``task:<name>``
    (the caller puts it in that task's column)."""
    return None if mean_kind.startswith("task:") else MEAN_COLUMN_OF_KIND[mean_kind]
