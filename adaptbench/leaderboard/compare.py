"""Two rows of one leaderboard, compared paired: ``adaptbench compare A B RESULTS`` and
:func:`adaptbench.api.compare`.

Rows are found by the label the board shows (its ``Adapter`` column; ``"<label> | <backbone>"``
when one label names rows on several backbones). The numbers are the board's: per cell the two
means over seeds and their difference, and for the overall mean the difference, its 95 %
paired-bootstrap interval and two-sided p-value from the board's replicates
(``stats.BoardBootstrap.compare``: the same resampled seeds and test sets for both rows).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ..errors import AdaptbenchError

if TYPE_CHECKING:
    from ..records import RunRecord
    from .aggregate import Leaderboard
    from .stats import Comparison


def compare(records: RunRecord | str | os.PathLike | Iterable[RunRecord | str | os.PathLike], a: str, b: str,
            benchmark: str | None = None) -> Comparison:
    """Rows ``a`` and ``b`` (shown labels) of the leaderboard of ``records`` (run records, record
    files or folders), compared paired; ``benchmark`` picks the board when the records make
    several. A label that names no row is one line listing the board's labels."""
    from .aggregate import build_leaderboards

    boards = build_leaderboards(_loaded(records))
    if not boards:
        raise AdaptbenchError("compare: no final run records: only tune records were given")
    board = _board_of(boards, (a, b), benchmark)
    ids = [_row_id(board, label) for label in (a, b)]
    if ids[0] == ids[1]:
        raise AdaptbenchError(f"compare: {a!r} and {b!r} are the same row")
    still = [label for label, row_id in zip((a, b), ids) if board.bootstrap.interval(row_id) is None]
    if still:  # no spread to test a difference against: any difference would look certain
        raise AdaptbenchError(f"compare: row {still[0]!r} has nothing to resample (one seed per task and no "
                              "per-sample test scores in its records): its difference from the other row "
                              "cannot be tested; run more seeds or re-run its cells to store per-sample scores")
    comparison = board.bootstrap.compare(*ids, labels=(a, b))
    comparison.cells.index = [_cell_name(cell) for cell in comparison.cells.index]
    return comparison


def _loaded(records) -> list[RunRecord]:
    from ..records import RunRecord
    from .records import load_records

    given = [records] if isinstance(records, (str, os.PathLike, RunRecord)) else list(records)
    loaded = [item for item in given if isinstance(item, RunRecord)]
    paths = [item for item in given if not isinstance(item, RunRecord)]
    if any(not isinstance(item, (str, os.PathLike)) for item in paths):
        raise AdaptbenchError("compare records: expected RunRecords or paths")
    if paths:
        loaded += load_records(paths)
    if not loaded:
        raise AdaptbenchError("compare: no run records given")
    return loaded


def row_labels_of(board: Leaderboard) -> list[str]:
    """The labels that name our rows on ``board``: the shown label, with ``| <backbone>`` when
    the label alone names several rows."""
    ours = board.summary[~board.summary["reported"].astype(bool)]
    counts = ours["adapter"].value_counts()
    return [label if counts[label] == 1 else f"{label} | {backbone}"
            for label, backbone in zip(ours["adapter"], ours["backbone"])]


def _matches(board: Leaderboard, label: str):
    ours = board.summary[~board.summary["reported"].astype(bool)]
    name, _, backbone = (part.strip() for part in label.partition("|"))
    hits = ours[ours["adapter"] == label]
    if hits.empty and backbone:
        hits = ours[(ours["adapter"] == name) & (ours["backbone"] == backbone)]
    return hits


def _board_of(boards: Sequence[Leaderboard], labels: tuple[str, str], benchmark: str | None) -> Leaderboard:
    if benchmark is not None:
        chosen = [board for board in boards if board.benchmark == benchmark]
        if not chosen:
            raise AdaptbenchError(f"compare --benchmark {benchmark!r}: no such board; the records make "
                                  f"{', '.join(board.benchmark for board in boards)}")
        return chosen[0]
    if len(boards) == 1:
        return boards[0]
    holding = [board for board in boards if all(not _matches(board, label).empty for label in labels)]
    if len(holding) == 1:
        return holding[0]
    names = ", ".join(board.benchmark for board in (holding or boards))
    raise AdaptbenchError(f"compare: the records make several boards ({names}); pick one with --benchmark")


def _row_id(board: Leaderboard, label: str) -> str:
    hits = _matches(board, label)
    if hits.empty:
        raise AdaptbenchError(f"compare: no row {label!r} on the {board.benchmark} board; its rows: "
                              f"{', '.join(row_labels_of(board))}")
    if len(hits) > 1:
        options = ", ".join(f"'{row.adapter} | {row.backbone}'" for row in hits.itertuples())
        raise AdaptbenchError(f"compare: {label!r} names {len(hits)} rows on the {board.benchmark} board; "
                              f"give one of {options}")
    row = hits.iloc[0]
    if board.bootstrap is None or row["row_id"] not in board.bootstrap.row_ids:
        raise AdaptbenchError(f"compare: row {label!r} has no complete mean on the {board.benchmark} board "
                              "(a task failed, is n/a or was not run), so it cannot be compared")
    return str(row["row_id"])


def _cell_name(cell) -> str:
    if isinstance(cell, tuple):  # few-shot boards: (k, task)
        k, task = cell
        return f"k={k} {task.partition('/')[2] or task}"
    return str(cell).partition("/")[2] or str(cell)


def render_comparison(comparison: Comparison, mean_column: str = "Mean (tasks)"):
    """A rich renderable: per cell the two means and A - B, then the overall difference, its
    interval, p-value and verdict."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{escape(comparison.a)} vs {escape(comparison.b)}", header_style="bold")
    table.add_column("task")
    for column in (comparison.a, comparison.b, "A - B"):
        table.add_column(escape(column), justify="right")
    for name, cell in comparison.cells.iterrows():
        table.add_row(escape(str(name)), f"{cell['A']:.2f}", f"{cell['B']:.2f}", f"{cell['difference']:+.2f}")
    mean_a, mean_b = comparison.cells["A"].mean(), comparison.cells["B"].mean()
    table.add_row(Text(mean_column, style="bold"), f"{mean_a:.2f}", f"{mean_b:.2f}", f"{comparison.difference:+.2f}",
                  end_section=True)
    line = (f"{mean_column}: A - B = {comparison.difference:+.2f}, 95% CI {comparison.low:+.2f} to "
            f"{comparison.high:+.2f}, p = {comparison.p_value:.3g} (paired bootstrap, {comparison.mode}) -> "
            f"{comparison.verdict()}")
    return Group(table, Text(line))
