"""Few-shot leaderboards: shots per class as the columns (the CoOp protocol's table).

A board whose final records have ``shots`` (k training examples per class) has k columns --
``k=1``, ``k=2``, ... (the values present) -- where other boards have task columns:

* a cell is the mean over the board's tasks of the per-task score, shown as mean ± sample
  std over seeds: per seed the mean over the tasks, then the mean and std (ddof=1) of those
  over the seeds (the ± only when every task ran the same two or more seeds, one seed shows
  the mean alone: ``aggregate._mean_of``);
* a row evaluated without training (``epochs: 0``) and without shots -- zero-shot CLIP -- is
  one model whatever k: its score fills every k column (CoOp's "65.36 (all K)");
* a row trained on the whole training set (no shots, epochs > 0) fills a ``k=all`` column,
  which ``Mean`` leaves out;
* ``Mean``: the mean over the numeric k columns (per seed over k and tasks, then over seeds);
  rows rank by it.

Rows are what they are on every board: a row config (its ``row_id``, which for a few-shot
record leaves ``shots`` out), shown as label, backbone and head. The per-task cells (task x
k, per row) are ``Leaderboard.per_task``, long format: the Markdown has a task x k table per
row under the main one, ``write_leaderboards`` a ``-tasks.csv``.

Published few-shot numbers (``references.csv`` rows with ``shots``; ``0`` is zero-shot, in
every k column) sit beside ours in the same setting (benchmark, backbone, head), and only
when our tasks are all the tasks their mean is over (``mean11``: the 11 CoOp datasets); a
board that covers fewer says in a note that they are left out and why.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .aggregate import (
    COST_COLUMNS,
    DECIMALS,
    LEADING_COLUMNS,
    MISSING,
    OUTCOME_NOTE,
    PARAMS,
    ROW_KEY,
    Leaderboard,
    _cell_text,
    _cells,
    _costs,
    _direction,
    _group_sort_key,
    _na_facts,
    _na_notes,
    _ordered_tasks,
    _rank_text,
    _ranked,
    _row_order,
    _task_column,
    cost_notes,
    reported_source,
    scope_mean,
    wise_alphas,
    wise_column,
    wise_means,
    wise_note,
    with_statistics,
    without_statistics_as_missing,
)
from .references import reference_label, references_for, setting_differences
from .stats import STATS_COLUMNS, statistics_note

MEAN = "Mean"
ALL = "all"  # the k of a row trained on the whole training set
BY = ["k", "task"]  # a few-shot cell of a row: one k, one task


def is_few_shot(final: pd.DataFrame) -> bool:
    """True when some final record of the board trained on ``shots`` per class."""
    return bool(final["k"].ne("").any())


def k_column(k: str) -> str:
    return f"k={k}"


def fewshot_board(benchmark: str, final: pd.DataFrame, warnings: list[str], wise: bool = False) -> Leaderboard:
    records_used = len(final)
    final, ks = _by_k(final)
    numeric = [k for k in ks if k != ALL]
    tasks = _ordered_tasks(final)
    metric, higher_is_better = _direction(final, warnings)
    alphas = wise_alphas(final, warnings) if wise else []
    memory_kinds = set(final["peak_memory_kind"].dropna())
    rows_of = dict(tuple(final.groupby("row_id", sort=True)))
    ours = [_our_row(rows, tasks, ks, numeric, alphas, memory_kinds) for rows in rows_of.values()]
    summary = _ranked(pd.DataFrame([numbers for numbers, _ in ours]), higher_is_better)
    texts = [dict(text, Rank=_rank_text(rank)) for (_, text), rank in zip(ours, summary["rank"])]
    summary, texts, bootstrap = with_statistics(final, summary, texts, BY, [(k, task) for k in numeric for task in tasks],
                                                higher_is_better, task_of=lambda cell: cell[1])
    reported, reference_notes = _reported_rows(benchmark, final, tasks, ks, numeric, alphas)
    if reported:
        summary = pd.concat([summary, pd.DataFrame([numbers for numbers, _ in reported])], ignore_index=True)
        texts += [text for _, text in reported]
    order = _row_order(summary)
    columns = [*LEADING_COLUMNS, *map(k_column, ks), MEAN, *map(wise_column, alphas), *STATS_COLUMNS, *COST_COLUMNS]
    board = Leaderboard(
        benchmark=benchmark,
        table=pd.DataFrame(without_statistics_as_missing(texts)).loc[order, columns].reset_index(drop=True).astype(str),
        summary=summary.loc[order].reset_index(drop=True),
        tasks=tasks, groups=sorted(set(final["group"]), key=_group_sort_key), metric=metric,
        higher_is_better=higher_is_better, records_used=records_used, warnings=warnings,
        k_columns=list(map(k_column, ks)), shots=[int(k) for k in numeric],
        wise_columns=list(map(wise_column, alphas)), bootstrap=bootstrap,
    )
    board.per_task = _per_task(board.summary, rows_of, tasks, ks)
    board.na_notes = _na_notes(board.summary)
    board.notes = _notes(board, final, reference_notes) + [statistics_note(bootstrap, MEAN)] + board.na_notes
    return board


def _by_k(final: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``final`` with every record's ``k`` set -- a zero-shot row's records once per k column,
    ``all`` for a row trained on all the data -- and the k columns in order."""
    untrained = (final["k"] == "") & (final["epochs"] == 0)
    zero_shot = untrained.groupby(final["row_id"]).all()
    is_zero = final["row_id"].isin(zero_shot[zero_shot].index)
    trained = final[~is_zero]
    trained = trained.assign(k=trained["k"].replace("", ALL))
    ks = sorted(set(trained["k"]), key=lambda k: (k == ALL, 0 if k == ALL else int(k)))
    copies = [final[is_zero].assign(k=k) for k in ks]
    return pd.concat([trained, *copies], ignore_index=True), ks


def _our_row(rows: pd.DataFrame, tasks: list[str], ks: list[str], numeric: list[str], alphas: Sequence[str],
             memory_kinds: set[str]) -> tuple[dict, dict]:
    """(numbers, shown strings) of one row of ours: a cell per k, the mean over k, WiSE-FT, costs."""
    first = rows.iloc[0]
    shown = {"Adapter": first["adapter"], "Backbone": first["backbone"], "Head": first["head_name"],
             "Source": "ours"}
    numbers = {"adapter": first["adapter"], "backbone": first["backbone"], "head": first["head_name"],
               "row_id": first["row_id"], "source": "ours", "reported": False}
    for k in ks:
        numbers[k_column(k)], shown[k_column(k)] = _k_mean(rows, [k], tasks)
    every_k = [(k, task) for k in numeric for task in tasks]
    numbers["mean_tasks"], shown[MEAN] = _k_mean(rows, numeric, tasks)
    numbers["mean_groups"] = np.nan
    for column, (value, text) in wise_means(rows, alphas, BY, every_k).items():
        numbers[column], shown[column] = value, text
    costs = _costs(rows, memory_kinds)
    shown.update(costs.pop("shown"))
    per_task = _cells(rows).droplevel(ROW_KEY).reindex(tasks)
    numbers.update(costs, **_na_facts(rows, per_task, tasks))
    return numbers, shown


def _k_mean(rows: pd.DataFrame, ks: list[str], tasks: list[str]) -> tuple[float, str]:
    """The row's mean over ``tasks`` at ``ks``; – when it ran none of those k at all."""
    if not rows["k"].isin(ks).any():
        return np.nan, MISSING
    return scope_mean(rows, BY, [(k, task) for k in ks for task in tasks])


# -- published few-shot numbers -------------------------------------------------------------
def _reported_rows(benchmark: str, final: pd.DataFrame, tasks: list[str], ks: list[str], numeric: list[str],
                   alphas: Sequence[str]) -> tuple[list[tuple[dict, dict]], list[str]]:
    """The published rows in our setting (one per method and source, values in their k
    columns), and the notes about them: what they are, or why they are left out."""
    references = references_for(benchmark, set(zip(final["backbone"], final["head_name"])))
    references = references[references["shots"].notna()]
    rows, notes = [], []
    for mean_kind, refs in references.groupby("mean_kind", sort=True):
        covered, full = _covers_all_tasks(benchmark, tasks, str(mean_kind))
        if not covered:
            methods = ", ".join(sorted(set(refs["method"])))
            notes.append(f"reported: published few-shot means for this setting ({methods}) are left out: they "
                         f"average all {full} {benchmark} tasks, this table's {len(tasks)}.")
            continue
        settings = set(zip(final["backbone"], final["head_name"], final["recipe"]))
        rows += [_reported_row(group, ks, numeric, alphas, setting_differences(group.iloc[0], settings))
                 for _, group in refs.groupby(["method", "source", "backbone", "weights", "head"], sort=True)]
        notes.append(f"reported: published means over all {full} {benchmark} tasks, copied from the named source, "
                     "not re-run here, one row per (method, source), each number in the k column of its "
                     "shots; a zero-shot number fills every k column. Their Mean is over this table's k "
                     "columns. Whether their backbone is the one in their row may be uncertain: the source "
                     "says so.")
    return rows, notes


def _covers_all_tasks(benchmark: str, tasks: list[str], mean_kind: str) -> tuple[bool, int]:
    """(whether ``tasks`` are every task a published ``mean_kind`` averages, how many that is):
    the benchmark's registered tasks, else the count in the name (``mean11``)."""
    from ..registry import TASKS

    registered = {name for name in TASKS.names() if name.startswith(f"{benchmark}/")}
    if registered:
        return registered <= set(tasks), len(registered)
    count = re.fullmatch(r"mean(\d+)", mean_kind)
    full = int(count.group(1)) if count else len(tasks)
    return len(set(tasks)) >= full, full


def _reported_row(refs: pd.DataFrame, ks: list[str], numeric: list[str], alphas: Sequence[str],
                  differences: Sequence[str] = ()) -> tuple[dict, dict]:
    """One published method as a row: its value per k (the zero-shot one in every k column),
    their mean when it has every numeric k of the board, its parameter count."""
    first = refs.iloc[0]
    by_shots = dict(zip(refs["shots"].astype(float), refs["value"].astype(float)))
    zero_shot = by_shots.get(0.0, np.nan)
    values = {k: zero_shot if k == ALL else by_shots.get(float(k), zero_shot) for k in ks}
    at_k = [values[k] for k in numeric]
    mean = float(np.mean(at_k)) if at_k and not np.isnan(at_k).any() else np.nan
    source = reported_source(first) + ("; not comparable: " + ", ".join(differences) if differences else "")
    params = first["trainable_params_m"]
    backbone = reference_label(first)
    shown = {"Rank": MISSING, "Adapter": first["adapter"], "Backbone": backbone, "Head": first["head"],
             "Source": source, **{k_column(k): _number_text(value) for k, value in values.items()},
             MEAN: _number_text(mean), **{wise_column(alpha): MISSING for alpha in alphas},
             **{column: MISSING for column in COST_COLUMNS}, PARAMS: MISSING if pd.isna(params) else f"{params:.4g}"}
    numbers = {"adapter": first["adapter"], "backbone": backbone, "head": first["head"], "row_id": "",
               "source": source, "reported": True, **{k_column(k): value for k, value in values.items()},
               "mean_tasks": mean, "mean_groups": np.nan, "params_m": params, "images_per_s": np.nan,
               "peak_memory_mb": np.nan, "rank": np.nan, "not_applicable": False, "na_reason": ""}
    return numbers, shown


def _number_text(value: float) -> str:
    return MISSING if pd.isna(value) else f"{value:.{DECIMALS}f}"


# -- per task, notes ------------------------------------------------------------------------
def _per_task(summary: pd.DataFrame, rows_of: dict[str, pd.DataFrame], tasks: list[str],
              ks: list[str]) -> pd.DataFrame:
    """One line per (row of ours, task, k), rows in the board's order: the shown cell and its numbers."""
    index = pd.MultiIndex.from_product([tasks, ks], names=["task", "k"])
    lines = []
    for row in summary[~summary["reported"]].itertuples():
        rows = rows_of[row.row_id]
        cells = _cells(rows, ["task", "k"]).droplevel(ROW_KEY).reindex(index)
        seeds = rows[rows["ok"]].groupby(["task", "k"])["seed"].nunique().reindex(index, fill_value=0)
        lines += [{"Adapter": row.adapter, "Backbone": row.backbone, "Head": row.head, "Task": _task_column(task),
                   "k": k, "Cell": _cell_text(cell), "mean": cell["mean"], "std": cell["std"],
                   "seeds": int(seeds[(task, k)])}
                  for (task, k), cell in cells.iterrows()]
    return pd.DataFrame(lines, columns=["Adapter", "Backbone", "Head", "Task", "k", "Cell", "mean", "std", "seeds"])


def _notes(board: Leaderboard, final: pd.DataFrame, reference_notes: list[str]) -> list[str]:
    direction = "higher" if board.higher_is_better else "lower"
    numeric = [k_column(str(k)) for k in board.shots]
    tasks = len(board.tasks)
    notes = [
        (f"k=K: 100 x {board.metric} on the evaluation split of final runs trained on K examples per "
         f"class (drawn with the seed), averaged over the {tasks} tasks: per seed the mean over the "
         "tasks, then mean ± sample std (ddof=1) over the seeds; one seed shows the mean alone, and "
         "there is no ± unless every task ran the same seeds."),
        ("A row evaluated without training (epochs 0) and without shots -- zero-shot -- is one model "
         "whatever k: its score fills every k column."),
        *([f"{k_column(ALL)}: trained on the whole training set (no shots); not in {MEAN}."]
          if k_column(ALL) in board.k_columns else []),
        (f"{MEAN}: mean over the k columns ({', '.join(numeric)}), its ± the sample std over seeds of "
         "the per-seed mean over k and tasks."),
        OUTCOME_NOTE,
        (f"Rank: by {MEAN}, {direction} is better, at {DECIMALS} decimals (equal means share a rank); "
         "rows without a complete mean and reported rows are not ranked."),
        *cost_notes(final),
        "Per-task cells (task x k, per row): the tables under this one (Markdown), <name>-tasks.csv (csv).",
    ]
    if board.wise_columns:
        notes.append(wise_note(f"the {tasks} tasks and the k columns ({', '.join(numeric)})", MEAN))
    return notes + reference_notes
