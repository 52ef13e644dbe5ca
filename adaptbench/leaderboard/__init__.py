"""Leaderboards: a pure function of run records -> tables (md, csv, tex, html, terminal) and plots.

    records = load_records(["results/"])           # folders are searched for *.json
    boards = build_leaderboards(records)           # one Leaderboard per benchmark
    write_leaderboards(boards, "leaderboard/", "leaderboard", ["md", "csv", "tex", "html"])
    rich.print(render_terminal(boards))

**Which records count.** Only final runs (``stage == "final"``): tune records are the
hyper-parameter search and are counted in the board's warnings, not shown. When one cell
(row, task, seed) has several records (the same run found in two result folders), the newest
by ``created_at`` is kept and the others are named in the warnings.

**Rows** are row configs, never labels: a row is ``run_info.row_id``, the hash of the
record's ``row_config`` (its resolved config without seed, task and stage, with grid-searched
values replaced by the grid searched, and with the code versions of the adapter, task kind,
head and reader). Its label -- ``run_info.matrix.adapter_label`` (set by ``adaptbench run``,
e.g. ``lora_r4``), else the adapter name -- only displays it. Rows that share a label get the
settings that differ among their configs appended (``lora [r=4]``, ``lora [r=8]``; see
``aggregate.row_labels``), so two configs are never merged into one row. The backbone drops
``timm:`` (the same model) and keeps non-default weights (``[random:0]``, a file name).

**Columns**, in order:

* ``Rank`` -- by ``Mean (tasks)``, best first (``higher_is_better`` from the records), compared
  at the 2 decimals shown so that equal shown means share a rank (1, 1, 3). Rows without a
  complete mean, and reported rows, have no rank (``–``).
* ``Adapter``, ``Backbone``, ``Source`` (``ours``, or ``reported: <source>``).
* one column per task (benchmark prefix dropped), grouped natural / specialized / structured /
  fgvc in the catalogue's order: 100 x top-1 on the evaluation split (``test`` for final runs),
  ``mean ± std`` over seeds with the *sample* std (ddof=1); one seed shows the mean alone.
  A task with any failed seed reads ``failed (k/n)`` and is never a number; ``n/a`` is a task
  whose records say the adapter cannot run on the backbone (status ``n/a``; the reasons are
  notes under the table, and the ``n/a reason`` column of the CSV); ``–`` is a task this row
  did not run.
* ``<Group> (mean)`` per group, only when the tasks span more than one group (or published
  group means are shown).
* ``Mean (tasks)``: the plain mean of the task means (VTAB's "mean19", FGVC's "mean5"), and
  ``Mean (groups)``: the mean of the group means (NOAH's convention). Papers mix the two, so
  both are shown, labelled. A mean is a number only when every task in it succeeded, else it
  reads ``failed`` (a task failed), ``n/a`` (a task is n/a) or ``incomplete`` (a task was not
  run). Rows without a numeric mean are not ranked nor plotted. Its ``±`` is the
  sample std over seeds of the per-seed means, when every task ran the same >= 2 seeds.
* ``95% CI``, ``Rank (95%)``, ``Tie group`` (``stats.py``), for ranked rows of ours: a 95 %
  bootstrap interval of ``Mean (tasks)`` (1000 replicates, fixed seed; resampling seeds per task
  and, when every record holds per-sample test scores, the test samples, paired across rows --
  else seeds only, and the board's note says so; ``–`` when nothing varies, e.g. one seed
  without per-sample scores); the rank with the 2.5--97.5 % range of its ranks over the
  replicates; rows sharing a letter are tied (the paired interval of their difference holds
  0). ``adaptbench compare A B RESULTS`` compares two rows paired (``compare.py``).
* ``Seeds`` (per task; a range when tasks differ), ``Params w/o head (M)`` (trainable
  parameters without the task head), ``Extra inf. params`` (added at inference; the merged
  count in brackets when merging changes it), ``Ckpt (KB)`` (adapter file, 1 KB = 1024 B),
  ``img/s`` (training throughput, mean over the row's runs), ``Peak mem (MB)`` (max over the
  row's runs; CPU runs record the process's peak RSS, GPU runs torch's peak CUDA allocation:
  the board's notes say which).

**Few-shot boards** (``fewshot.py``): when a benchmark's final records have ``shots`` (k
examples per class), its columns are ``k=1``, ``k=2``, ... instead of the tasks: each cell
the mean over the tasks, ``mean ± std`` over seeds (per seed the mean over tasks, then mean
and sample std over seeds), then ``Mean`` over the k columns, by which rows rank. A row's
identity leaves ``shots`` out (one method at every k is one row). A row evaluated without
training (``epochs: 0``) and without shots -- zero-shot -- fills every k column. The per-task
cells (task x k per row) are Markdown tables under the main one and ``<name>-tasks.csv``.
The plot is the mean over tasks against k (log2 axis), a line per row.

**WiSE-FT** (``build_leaderboards(records, wise=True)``, ``adaptbench leaderboard --wise``,
a spec's ``leaderboard: {wise: true}``): a column ``α=<alpha>`` per interpolation the records
evaluated (``metrics[<split>]["<metric>@wise<alpha>"]``), reduced like the row's mean.

**Reported numbers** (``references.py``, package data ``references.csv``) are published means
for ViT-B/16 ImageNet-21k (most from Google's original checkpoint, ``orig_in21k``; SSF's from
augreg), and, on few-shot ``coop`` boards, the CoOp 11-dataset averages for CLIP, in their k
columns, shown only when our board has all 11 tasks. They are appended as rows marked
``reported`` with their source when the board's benchmark, architecture and head are theirs;
their Source says when their weights or recipe differ from ours. Each value sits in the mean
column it was computed as, one row per (method, source), so disagreeing sources stay visible.
They average the whole benchmark; the notes say how many tasks ours cover. A row of ours in a
published row's exact setting (method, weights, recipe, head) further from it than twice its
seed std is flagged (``Leaderboard.flags``, listed first by every format).

**Statistics** (``stats.py``): a 95% bootstrap interval of each row's overall mean, resampling
seeds and test samples (the per-sample scores stored with final records), ranks with their
intervals, ties (the paired interval of a difference holds 0), and ``compare`` for two rows.

Aggregation uses pandas, plots matplotlib (Agg), the terminal view rich. ``load_records``
(files and folders -> :class:`~adaptbench.records.RunRecord` s) and ``records_frame``
(records -> one typed row each, for programs) are in ``records.py``; the arithmetic in
``aggregate.py``; formats and files in ``render.py``.
"""

from __future__ import annotations

import sys
import types

from .aggregate import Leaderboard, build_leaderboards, row_labels
from .records import load_records, records_frame
from .render import (
    FORMATS,
    render_csv,
    render_html,
    render_latex,
    render_markdown,
    render_tasks_csv,
    render_terminal,
    write_leaderboards,
)

__all__ = [
    "FORMATS",
    "Leaderboard",
    "build_leaderboards",
    "load_records",
    "records_frame",
    "render_csv",
    "render_html",
    "render_latex",
    "render_markdown",
    "render_tasks_csv",
    "render_terminal",
    "row_labels",
    "write_leaderboards",
]


class _CallableModule(types.ModuleType):
    """This subpackage's module class: ``adaptbench.leaderboard(records, format="md")`` is the
    Python API's leaderboard (:func:`adaptbench.leaderboard.text.make_leaderboard`), and the module stays a
    module for ``from adaptbench.leaderboard import build_leaderboards``."""

    def __call__(self, records, format: str = "md", wise: bool = False) -> str:  # noqa: A002 - the CLI's --format
        from .text import make_leaderboard

        return make_leaderboard(records, format=format, wise=wise)


sys.modules[__name__].__class__ = _CallableModule
