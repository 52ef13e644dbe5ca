"""Primary metrics recomputed from per-sample scores, on the full test set or any resample of it.

A final run's record holds, per test sample, what the sample contributes to the primary metric
(``records.SampleScores``, from ``TaskModule.sample_scores``); a *reduction* turns those
arrays, each sample weighted by how often a resample draws it, back into the metric. Every
reduction here is a ratio of weighted sums, so one matrix product evaluates it on a thousand
resamples at once:

* ``accuracy`` -- arrays ``correct`` (bool, one per sample): sum(w * correct) / sum(w);
* ``iou`` -- arrays ``intersection``, ``union`` (per image, per class pixel counts, ignore
  index excluded): mIoU = mean over classes with sum(w * union) > 0 of
  sum(w * intersection) / sum(w * union), which on the full set is exactly the number of one
  confusion matrix over the split (torchmetrics' ``MulticlassJaccardIndex(average="macro")``,
  mmseg);
* ``dice`` -- arrays ``dice`` (per-image foreground Dice) and ``dice_counts`` (bool: the image
  has foreground in the prediction or the target): sum(w * dice) / sum(w) over counted images,
  torchmetrics' samplewise ``DiceScore``.

A reduction is ``(columns, finish)``: ``columns(arrays)`` gives an (N, m) matrix of per-sample
terms, ``finish(sums, total)`` the metric from their weighted sums (R, m) and the total weight
of each resample (R,) -> (R,). A plugin kind
whose metric is such a ratio registers its own with :func:`register_reduction` and names it in
``TaskKind.sample_reduction``; the leaderboard reads the name from the record, so it never
imports the kind. numpy only: no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Reduction:
    """How per-sample arrays become a metric: ``columns`` (arrays -> (N, m) terms) and
    ``finish`` (weighted sums (R, m), total weights (R,) -> metric (R,))."""

    columns: Callable[[Mapping[str, np.ndarray]], np.ndarray]
    finish: Callable[[np.ndarray], np.ndarray]


REDUCTIONS: dict[str, Reduction] = {}


def register_reduction(name: str, columns, finish) -> None:
    if name in REDUCTIONS:
        raise ValueError(f"sample reduction {name!r} is already registered")
    REDUCTIONS[name] = Reduction(columns, finish)


def reduction(name: str) -> Reduction | None:
    """The registered reduction ``name`` (None when unknown here: e.g. a plugin's, not loaded)."""
    return REDUCTIONS.get(name)


def metric(name: str, arrays: Mapping[str, np.ndarray], weights: np.ndarray | None = None) -> np.ndarray:
    """The metric of reduction ``name`` on ``arrays`` under ``weights`` ((R, N): how often each of
    R resamples draws each sample; None: the full set once) -> (R,) values (a fraction, not %)."""
    found = REDUCTIONS[name]
    columns = np.asarray(found.columns(arrays), dtype=np.float64)
    weights = np.ones((1, len(columns))) if weights is None else np.asarray(weights, dtype=np.float64)
    return found.finish(weights @ columns, weights.sum(axis=1))


def _ratio(sums: np.ndarray, total: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums[:, 1] > 0, sums[:, 0] / np.where(sums[:, 1] > 0, sums[:, 1], 1), np.nan)


def _accuracy_columns(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.asarray(arrays["correct"], dtype=np.float64)[:, None]


def _accuracy_finish(sums: np.ndarray, total: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, sums[:, 0] / np.where(total > 0, total, 1), np.nan)


def _iou_columns(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(arrays["intersection"], dtype=np.float64),
                           np.asarray(arrays["union"], dtype=np.float64)], axis=1)


def _iou_finish(sums: np.ndarray, total: np.ndarray) -> np.ndarray:
    classes = sums.shape[1] // 2
    intersection, union = sums[:, :classes], sums[:, classes:]
    present = union > 0
    iou = np.divide(intersection, union, out=np.zeros_like(intersection), where=present)
    counted = present.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counted > 0, iou.sum(axis=1) / np.maximum(counted, 1), np.nan)


def _dice_columns(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    counts = np.asarray(arrays["dice_counts"], dtype=np.float64)
    dice = np.nan_to_num(np.asarray(arrays["dice"], dtype=np.float64)) * counts
    return np.stack([dice, counts], axis=1)


register_reduction("accuracy", _accuracy_columns, _accuracy_finish)
register_reduction("iou", _iou_columns, _iou_finish)
register_reduction("dice", _dice_columns, _ratio)
