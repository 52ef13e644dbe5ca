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

Columns: ``method`` (the paper's name), ``benchmark`` (vtab1k | fgvc), ``mean_kind``
(which of our mean columns the value belongs to, see :data:`MEAN_COLUMN_OF_KIND`),
``value`` (accuracy in %), ``trainable_params_m`` (millions, without head; may be empty),
``source``.

They apply only to records of the same backbone and benchmark: ViT-B/16 with the
``augreg_in21k`` weights (:data:`REFERENCE_BACKBONES`), on vtab1k or fgvc.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

#: Backbone labels (``timm:`` already dropped, see ``records.backbone_label``) the numbers are for.
REFERENCE_BACKBONES = ("vit_base_patch16_224.augreg_in21k",)
REFERENCE_BACKBONE = REFERENCE_BACKBONES[0]

#: ``mean_kind`` -> the leaderboard column its value belongs in.
MEAN_COLUMN_OF_KIND = {"mean19": "Mean (tasks)", "mean5": "Mean (tasks)", "group_mean": "Mean (groups)"}

#: Paper names whose adaptbench adapter has another name (others are the same name;
#: methods without an adapter here, such as noah or hst, keep theirs).
ADAPTER_OF_METHOD = {"bi_adaptformer_32": "bi_adaptformer"}


def load_references() -> pd.DataFrame:
    """The whole table, plus ``adapter`` (our name for the method)."""
    with resources.files(__package__).joinpath("references.csv").open(encoding="utf-8") as handle:
        table = pd.read_csv(handle)
    table["adapter"] = table["method"].map(lambda method: ADAPTER_OF_METHOD.get(method, method))
    return table


def references_for(benchmark: str, backbones: set[str] | list[str]) -> pd.DataFrame:
    """The published rows that compare with a board of ``benchmark`` over ``backbones``.

    Empty unless one of the board's backbones is the reference backbone.
    """
    table = load_references()
    if not set(backbones) & set(REFERENCE_BACKBONES):
        return table.iloc[0:0]
    return table[table["benchmark"] == benchmark].reset_index(drop=True)
