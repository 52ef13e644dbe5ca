"""The Pareto plot of a leaderboard: accuracy against trainable parameters (log scale).

x is the row's trainable parameters *without* the task head, in millions; y is its mean over
tasks. A log axis cannot show 0, and the linear probe trains nothing but the head, so rows
with 0 parameters are drawn at a floor one decade below the smallest positive count, and
that tick is labelled "0" (the axis label says so). The Pareto front of our rows (no other
row has fewer-or-equal parameters and a higher-or-equal mean) is joined by a step line, per
backbone; rows with an ``n/a`` cell have no mean and are left out. Published numbers that
are means over tasks (``mean19`` / ``mean5``) are drawn with another marker; those that are
means of group means are left out, since the y axis is the mean over tasks and mixing the two
is the error this project exists to avoid.

A few-shot board (k columns) gets another plot (:func:`fewshot_figure`): its mean over tasks
against k, one line per row, x on a log2 axis (k = 1, 2, 4, 8, 16 evenly spaced); a zero-shot
row is a flat line, published rows are dashed. :func:`plot_board` picks the plot of a board.
"""

from __future__ import annotations

import io
import math

import pandas as pd

from .aggregate import MEAN_TASKS, Leaderboard

FIGURE_SIZE = (7.5, 4.8)  # inches
DPI = 120


def plot_board(board: Leaderboard) -> bytes:
    """The board's plot as PNG bytes: accuracy against k on few-shot boards, else the Pareto plot."""
    return _png(fewshot_figure(board) if board.shots else pareto_figure(board))


def plot_caption(board: Leaderboard) -> tuple[str, str]:
    """(alt text, caption) of :func:`plot_board`'s plot."""
    if board.shots:
        caption = ("Mean over tasks against k training examples per class (log2 scale), one line per row; "
                   "a zero-shot row is flat, published rows are dashed.")
        return f"{board.benchmark}: mean over tasks vs shots per class", caption
    caption = ("Accuracy (mean over tasks) against trainable parameters without head, log scale; "
               "the dashed line is the Pareto front of our rows.")
    return f"{board.benchmark}: mean over tasks vs trainable parameters", caption


def plot_pareto(board: Leaderboard) -> bytes:
    """The board's Pareto plot as PNG bytes."""
    return _png(pareto_figure(board))


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def fewshot_figure(board: Leaderboard):
    """A few-shot board's plot: the mean over tasks at each k, one line per row (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator

    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    columns = [f"k={k}" for k in board.shots]
    lines = board.summary.dropna(subset=columns, how="all")
    if lines.empty:
        axes.text(0.5, 0.5, "no row has a number at any k yet", ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
    colours = matplotlib.colormaps["tab10"]
    for index, (_, row) in enumerate(lines.iterrows()):  # a Series: "k=1" is no attribute name
        values = row[columns].astype(float).tolist()
        reported = bool(row["reported"])
        label = f"{row['adapter']} ({row['backbone']}, {row['head']})" + (" [reported]" if reported else "")
        axes.plot(board.shots, values, marker="x" if reported else "o", markersize=4,
                  linestyle="--" if reported else "-", linewidth=1.2, color=colours(index % 10),
                  alpha=0.75 if reported else 1.0, label=label)
    if not lines.empty:
        axes.set_xscale("log", base=2)
        axes.xaxis.set_major_locator(FixedLocator(board.shots))
        axes.xaxis.set_minor_locator(NullLocator())
        axes.set_xticklabels([str(k) for k in board.shots])
        axes.set_xlabel("shots per class k (log2 scale)")
        axes.set_ylabel("mean over tasks (%)")
        axes.grid(True, which="major", alpha=0.3)
        axes.legend(fontsize=7, loc="best")
    axes.set_title(f"{board.benchmark}: mean over tasks vs shots per class")
    return figure


def pareto_figure(board: Leaderboard):
    """The board's Pareto plot as a matplotlib Figure (Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    ours, reported = _points(board.summary)
    if ours.empty and reported.empty:
        axes.text(0.5, 0.5, "no row has a complete mean yet", ha="center", va="center",
                  transform=axes.transAxes)
        axes.set_axis_off()
    else:
        floor = _zero_floor(pd.concat([ours["params_m"], reported["params_m"]]))
        _draw(axes, ours, reported, floor)
        _zero_tick(axes, floor)
    axes.set_title(f"{board.benchmark}: {MEAN_TASKS.lower()} vs trainable parameters")
    return figure


def _points(summary: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    # A row with an n/a cell has no mean (and no parameter count when all its cells are n/a);
    # it is dropped by name too, so that a partly n/a row never becomes a point.
    if "not_applicable" in summary:
        summary = summary[~summary["not_applicable"].fillna(False).astype(bool)]
    plottable = summary.dropna(subset=["mean_tasks", "params_m"])
    return plottable[~plottable["reported"]], plottable[plottable["reported"]]


def _zero_floor(params_m: pd.Series) -> float:
    """Where 0 parameters is drawn: one decade below the smallest positive count."""
    positive = params_m[params_m > 0]
    smallest = positive.min() if len(positive) else 1e-2
    return 10.0 ** (math.floor(math.log10(smallest)) - 1)


def _draw(axes, ours: pd.DataFrame, reported: pd.DataFrame, floor: float) -> None:
    import matplotlib

    colours = matplotlib.colormaps["tab10"]
    many_backbones = ours["backbone"].nunique() > 1
    for index, (backbone, rows) in enumerate(ours.groupby("backbone", sort=True)):
        colour = colours(index % 10)
        x = rows["params_m"].clip(lower=floor)
        label = f"ours ({backbone})" if many_backbones else "ours"
        axes.scatter(x, rows["mean_tasks"], color=colour, s=36, zorder=3, label=label)
        front = pareto_front(rows.assign(params_m=x))
        axes.step(front["params_m"], front["mean_tasks"], where="post", color=colour, alpha=0.6,
                  linestyle="--", zorder=2, label="Pareto front" + (f" ({backbone})" if many_backbones else ""))
        axes.scatter(front["params_m"], front["mean_tasks"], s=120, facecolors="none", edgecolors=colour,
                     linewidths=1.2, zorder=3)
        for row, x_value in zip(rows.itertuples(), x):
            axes.annotate(row.adapter, (x_value, row.mean_tasks), textcoords="offset points",
                          xytext=(5, 4), fontsize=8)
    if not reported.empty:
        x = reported["params_m"].clip(lower=floor)
        axes.scatter(x, reported["mean_tasks"], marker="x", color="0.45", s=36, zorder=3,
                     label="reported (published, not re-run)")
        for row, x_value in zip(reported.itertuples(), x):
            axes.annotate(row.adapter, (x_value, row.mean_tasks), textcoords="offset points",
                          xytext=(5, -10), fontsize=7, color="0.45")
    axes.set_xscale("log")
    axes.margins(x=0.08, y=0.1)  # room for the labels at the edges
    axes.set_xlabel('trainable parameters without head (M, log scale; "0" = head only)')
    axes.set_ylabel(f"{MEAN_TASKS} (%)")
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize=8, loc="best")


def _zero_tick(axes, floor: float) -> None:
    """Label the floor "0", mark the axis as broken just above it, keep the decades above."""
    from matplotlib.ticker import FixedLocator, NullLocator

    low, high = axes.get_xlim()
    low = min(low, floor / 2)
    decades = [10.0 ** k for k in range(round(math.log10(floor)) + 1, math.floor(math.log10(high)) + 1)]
    axes.set_xlim(low, high)
    axes.xaxis.set_major_locator(FixedLocator([floor, *decades]))
    axes.xaxis.set_minor_locator(NullLocator())
    axes.set_xticklabels(["0", *(f"{tick:g}" for tick in decades)])
    gap = floor * math.sqrt(10)  # half a decade above the floor: the scale is not continuous here
    axes.axvline(gap, color="0.6", linestyle=":", linewidth=1, zorder=1)
    axes.text(gap, 0, "//", transform=axes.get_xaxis_transform(), ha="center", va="center",
              fontsize=10, color="0.4", backgroundcolor="white")


def pareto_front(points: pd.DataFrame) -> pd.DataFrame:
    """The rows that no other row beats on both fewer-or-equal params and higher-or-equal mean."""
    ordered = points.sort_values(["params_m", "mean_tasks"], ascending=[True, False], kind="stable")
    best = ordered["mean_tasks"].cummax().shift(fill_value=-math.inf)
    return ordered[ordered["mean_tasks"] > best]
