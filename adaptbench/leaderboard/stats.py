"""Statistics on a leaderboard: bootstrap intervals of each row's overall mean, ranks with
intervals, ties, and paired comparisons of two rows.

**What is resampled.** A row's overall mean (``Mean (tasks)``; ``Mean`` over k and tasks on
few-shot boards) is the mean over its cells (tasks) of the mean over seeds of the cell's
score. One bootstrap replicate redraws what that number rests on, hierarchically:

1. per cell, the seeds, with replacement (S of the cell's S seeds);
2. per task, the test samples, with replacement (N of N): one draw per (replicate, task),
   shared by every seed and every row -- a replicate is one new test set that every model is
   evaluated on, which is what pairs the rows (they were all evaluated on the same images);
3. each drawn (seed, test set) gives the task's metric recomputed from the record's per-sample
   scores (``records.SampleScores``, ``tasks/sample_metrics.py``): accuracy from one bit per
   sample, mIoU from per-image intersections and unions, Dice from per-image Dice;
4. the replicate's overall mean is the mean over cells of the mean over the drawn seeds.

The seed draws are shared as well (a row with S seeds draws the same seed positions as every
other row with S seeds). :data:`RESAMPLES` (1000) replicates from a fixed seed (:data:`SEED`),
so a board is reproducible. The work is vectorised: per task, the draws of a block of
replicates are an (R, N) matrix of counts, and one matrix product gives every row's and seed's
weighted sums at once; the only Python loops are over blocks, tasks, rows and seeds.

When a record of a compared row has no per-sample scores (records written before they
existed, kinds that give none, e.g. a plugin's), the whole board resamples seeds only (step 2
dropped), and its note says so: mixing the two would make the rows' intervals incomparable.
A row with one seed per cell then has no interval.

**Intervals.** Percentile intervals (2.5 %, 97.5 %) of the replicates.

**Ranks.** In every replicate every row is ranked (best = 1, equal values share the smaller
rank); a row's rank interval is the 2.5 % -- 97.5 % range of its ranks.

**Ties.** Two rows are tied when the 95 % paired-bootstrap interval of their difference (the
same replicates for both) contains 0. The board shows ties as a compact letter display: rows
sharing a letter are tied pairwise (letters go to maximal runs of rows, in rank order, all of
whose pairs are tied).

**Comparing two rows** (:meth:`BoardBootstrap.compare`): the mean difference A - B, its
paired-bootstrap 95 % interval and a two-sided bootstrap p-value, ``2 min(P(d <= 0),
P(d >= 0))`` over the replicates d, with the +1 correction ((count + 1) / (R + 1)), capped at 1.
This is the interval inverted into a test (p < 0.05 exactly when the 95 % percentile interval
leaves out 0, up to the correction); no permutation test is run.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95
#: Largest count matrix (replicates x samples) and column block (samples x columns) built at once.
MAX_ELEMENTS = 8_000_000
SAMPLES, SEEDS = "samples and seeds", "seeds only"


@dataclass
class Comparison:
    """A paired comparison of two rows (``A - B``, in the board's units; positive: A higher)."""

    a: str
    b: str
    cells: pd.DataFrame  # index: cell; columns A, B, difference
    difference: float
    low: float
    high: float
    p_value: float
    higher_is_better: bool = True
    mode: str = SAMPLES

    @property
    def significant(self) -> bool:
        return not (self.low <= 0.0 <= self.high)

    def verdict(self, alpha: float = 1 - LEVEL) -> str:
        if self.p_value >= alpha or not self.significant:
            return f"no significant difference at {alpha:g}"
        a_higher = self.difference > 0
        return f"{self.a} better" if a_higher == self.higher_is_better else f"{self.b} better"


@dataclass
class BoardBootstrap:
    """Bootstrap replicates of a board's rows (see the module docstring)."""

    row_ids: list[str]  # the rows resampled, in replicate order
    point: pd.Series  # row_id -> the row's overall mean (the board's number)
    replicates: np.ndarray  # (rows, resamples): the overall mean in each replicate
    cell_means: pd.DataFrame  # row_id x cell: mean over seeds
    mode: str  # SAMPLES or SEEDS
    higher_is_better: bool = True
    lacking: int = 0  # records of the compared rows without usable per-sample scores
    varies: dict[str, bool] = field(default_factory=dict)  # whether the row's replicates vary at all

    def _row(self, row_id: str) -> np.ndarray:
        return self.replicates[self.row_ids.index(row_id)]

    def interval(self, row_id: str) -> tuple[float, float] | None:
        """The 95 % percentile interval of the row's overall mean (None: nothing varies)."""
        if not self.varies.get(row_id, False):
            return None
        low, high = np.percentile(self._row(row_id), [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
        return float(low), float(high)

    def difference(self, a: str, b: str) -> tuple[float, float, float, float]:
        """(mean difference a - b, interval low, high, two-sided bootstrap p-value)."""
        replicates = self._row(a) - self._row(b)
        low, high = np.percentile(replicates, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
        resamples = len(replicates)
        tail = min(int((replicates <= 0).sum()), int((replicates >= 0).sum()))
        p_value = min(1.0, 2 * (tail + 1) / (resamples + 1))
        return float(self.point[a] - self.point[b]), float(low), float(high), p_value

    def tied(self, a: str, b: str) -> bool:
        _, low, high, _ = self.difference(a, b)
        return bool(low <= 0.0 <= high)

    def ranks(self) -> np.ndarray:
        """(rows, resamples): each row's rank in each replicate (1 = best; equal values share the smaller)."""
        signed = self.replicates if self.higher_is_better else -self.replicates
        return 1 + (signed[None, :, :] > signed[:, None, :]).sum(axis=1)

    def rank_intervals(self) -> dict[str, tuple[int, int]]:
        ranks = self.ranks()
        low = np.quantile(ranks, 0.5 * (1 - LEVEL), axis=1, method="inverted_cdf")
        high = np.quantile(ranks, 0.5 * (1 + LEVEL), axis=1, method="inverted_cdf")
        return {row_id: (int(lo), int(hi)) for row_id, lo, hi in zip(self.row_ids, low, high)}

    def tie_groups(self, order: Sequence[str]) -> dict[str, str]:
        """Compact letter display over ``order`` (row ids, best first): rows sharing a letter are
        tied pairwise."""
        order = [row_id for row_id in order if row_id in self.row_ids]
        tied = {(a, b): self.tied(a, b) for i, a in enumerate(order) for b in order[i + 1:]}
        runs, reach = [], -1
        for start in range(len(order)):
            end = start
            while end + 1 < len(order) and all(tied[(order[i], order[end + 1])] for i in range(start, end + 1)):
                end += 1
            if end > reach:  # not inside an earlier run
                runs.append((start, end))
                reach = end
        letters = {row_id: "" for row_id in order}
        for index, (start, end) in enumerate(runs):
            for row_id in order[start:end + 1]:
                letters[row_id] += _letter(index)
        return letters

    def compare(self, a: str, b: str, labels: tuple[str, str] | None = None) -> Comparison:
        difference, low, high, p_value = self.difference(a, b)
        cells = pd.DataFrame({"A": self.cell_means.loc[a], "B": self.cell_means.loc[b]})
        cells["difference"] = cells["A"] - cells["B"]
        names = labels or (a, b)
        return Comparison(names[0], names[1], cells, difference, low, high, p_value, self.higher_is_better, self.mode)


def _letter(index: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    return alphabet[index] if index < len(alphabet) else f"{alphabet[index % 26]}{index // 26}"


# -- building the replicates ------------------------------------------------------------------
def bootstrap_rows(final: pd.DataFrame, row_ids: Sequence[str], by: Sequence[str], scope: Sequence[Hashable],
                   higher_is_better: bool = True, *, task_of: Callable[[Any], str] | None = None,
                   resamples: int = RESAMPLES, seed: int = SEED) -> BoardBootstrap | None:
    """Replicates of the overall mean (over the cells ``scope``, values of the columns ``by``) of
    each row in ``row_ids``, from the successful records in ``final`` (the board's facts,
    with ``score`` in % and ``samples``). Every row must have a score in every cell.
    ``task_of(cell)``: the task whose test set a cell is evaluated on (default: the cell)."""
    if not row_ids:
        return None
    by, scope = list(by), list(scope)
    task_of = task_of or (lambda cell: cell)
    ok = final[final["ok"] & final["row_id"].isin(row_ids)]
    keys = list(zip(*(ok[column] for column in by))) if len(by) > 1 else list(ok[by[0]])
    ok = ok.assign(_cell=keys)
    ok = ok[ok["_cell"].isin(scope)].sort_values(["row_id", "seed"], kind="stable")
    groups = {key: frame for key, frame in ok.groupby(["row_id", "_cell"], sort=False)}
    cells = {(row_id, cell): groups[(row_id, cell)] for row_id in row_ids for cell in scope}
    unpacked, lacking = _unpacked_samples(ok)
    counts_agree = all(len({unpacked[index][1]["_count"] for index in frame.index if index in unpacked}) <= 1
                       for frame in _by_task(cells, scope, task_of).values())
    mode = SAMPLES if lacking == 0 and counts_agree else SEEDS
    replicates = np.zeros((len(row_ids), resamples))
    for cell in scope:
        seed_draws = _seed_draws(cells, row_ids, cell, resamples, seed)
        if mode == SAMPLES:
            values = _sample_replicates([cells[(row_id, cell)] for row_id in row_ids], unpacked, task_of(cell),
                                        resamples, seed)
        else:
            values = [np.repeat(frame["score"].to_numpy(float)[:, None], resamples, axis=1)
                      for frame in (cells[(row_id, cell)] for row_id in row_ids)]
        for position, row_id in enumerate(row_ids):
            draws = seed_draws[len(values[position])]  # (resamples, S)
            replicates[position] += np.take_along_axis(values[position].T, draws, axis=1).mean(axis=1)
    replicates /= len(scope)
    cell_means = pd.DataFrame([[cells[(row_id, cell)]["score"].mean() for cell in scope] for row_id in row_ids],
                              index=list(row_ids), columns=pd.Index(scope))
    point = cell_means.mean(axis=1)
    varies = {row_id: mode == SAMPLES or any(len(cells[(row_id, cell)]) > 1 for cell in scope)
              for row_id in row_ids}
    return BoardBootstrap(list(row_ids), point, replicates, cell_means, mode, higher_is_better, lacking, varies)


def _unpacked_samples(ok: pd.DataFrame) -> tuple[dict[Any, tuple[str, dict]], int]:
    """{record index: (reduction, arrays + "_count")} of the records whose per-sample scores can
    recompute their score here, and how many records lack them."""
    from ..tasks.sample_metrics import reduction

    found, lacking = {}, 0
    for index, samples, metric in zip(ok.index, ok["samples"], ok["metric"]):
        if not hasattr(samples, "unpacked") or samples.metric != metric or reduction(samples.reduction) is None:
            lacking += 1
            continue
        arrays = samples.unpacked()
        arrays["_count"] = samples.count
        found[index] = (samples.reduction, arrays)
    return found, lacking


def _by_task(cells: dict, scope: list, task_of) -> dict[str, pd.DataFrame]:
    by_task: dict[str, list[pd.DataFrame]] = {}
    for (_, cell), frame in cells.items():
        by_task.setdefault(task_of(cell), []).append(frame)
    return {task: pd.concat(frames) for task, frames in by_task.items()}


def _stream(seed: int, key: Any, part: int) -> np.random.Generator:
    """A random stream per (board seed, cell or task, purpose): the same whatever else is on the board."""
    return np.random.default_rng([seed, zlib.crc32(repr(key).encode()), part])


def _seed_draws(cells: dict, row_ids: Sequence[str], cell: Any, resamples: int, seed: int) -> dict[int, np.ndarray]:
    """{S: (resamples, S) seed positions drawn with replacement}, one draw shared by the rows with S seeds."""
    sizes = sorted({len(cells[(row_id, cell)]) for row_id in row_ids})
    uniform = _stream(seed, cell, 0).random((max(sizes), resamples))  # row s: the s-th draw of every replicate
    return {size: np.floor(uniform[:size].T * size).astype(np.int64) for size in sizes}


def _sample_replicates(frames: list[pd.DataFrame], unpacked: dict, task: str, resamples: int,
                       seed: int) -> list[np.ndarray]:
    """Per row, (S, resamples) scores (%) of its seeds on the replicates' test sets of ``task``."""
    from ..tasks.sample_metrics import reduction

    items = [(position, row, index) for position, frame in enumerate(frames) for row, index in enumerate(frame.index)]
    count = unpacked[items[0][2]][1]["_count"]
    columns = [np.asarray(reduction(unpacked[index][0]).columns(unpacked[index][1]), dtype=np.float64)
               for _, _, index in items]
    chunks = []  # (items, their columns side by side, column offsets)
    for chunk in _chunks([block.shape[1] for block in columns], count):
        stacked = np.concatenate([columns[i] for i in chunk], axis=1)
        if _exact_in_float32(stacked):  # one bit per sample: sums of counts stay exact, at half the cost
            stacked = stacked.astype(np.float32)
        chunks.append((chunk, stacked, np.cumsum([0] + [columns[i].shape[1] for i in chunk])))
    results = [np.empty((len(frame), resamples)) for frame in frames]
    rng = _stream(seed, task, 1)
    block = max(1, MAX_ELEMENTS // max(1, count))
    for start in range(0, resamples, block):
        size = min(block, resamples - start)
        drawn = rng.integers(0, count, (size, count)) + (np.arange(size) * count)[:, None]
        weights = np.bincount(drawn.ravel(), minlength=size * count).reshape(size, count)
        total = np.full(size, float(count))
        for chunk, stacked, offsets in chunks:
            sums = (weights.astype(stacked.dtype) @ stacked).astype(np.float64)
            for i, low, high in zip(chunk, offsets[:-1], offsets[1:]):
                position, row, index = items[i]
                finish = reduction(unpacked[index][0]).finish
                results[position][row, start:start + size] = 100.0 * finish(sums[:, low:high], total)
    return results


def _exact_in_float32(columns: np.ndarray) -> bool:
    """Whether every resample's weighted sum of ``columns`` is exact in float32: non-negative
    integers whose largest times the sample count (the weights sum to it) stays below 2^24."""
    return bool(columns.min(initial=0) >= 0 and np.all(columns == np.round(columns))
                and columns.max(initial=0) * len(columns) < 2**24)


def _chunks(widths: Sequence[int], count: int) -> list[list[int]]:
    """Items grouped so that each group's columns (samples x width) stay under MAX_ELEMENTS."""
    chunks, current, width = [], [], 0
    for i, item in enumerate(widths):
        if current and (width + item) * count > MAX_ELEMENTS:
            chunks.append(current)
            current, width = [], 0
        current.append(i)
        width += item
    return chunks + [current] if current else chunks


# -- what a board shows ----------------------------------------------------------------------
CI_COLUMN = "95% CI"
RANK_COLUMN = "Rank (95%)"
TIE_COLUMN = "Tie group"
STATS_COLUMNS = (CI_COLUMN, RANK_COLUMN, TIE_COLUMN)


def board_statistics(final: pd.DataFrame, summary: pd.DataFrame, by: Sequence[str], scope: Sequence[Hashable],
                     higher_is_better: bool, *, task_of: Callable[[Any], str] | None = None,
                     missing: str = "–", decimals: int = 2) -> tuple[BoardBootstrap | None, dict[str, dict[str, Any]]]:
    """The bootstrap of a board's ranked rows of ours (``summary``: ``row_id``, ``rank``,
    ``mean_tasks``) and, per row id, its shown texts (``STATS_COLUMNS``) and numbers
    (``ci_low``, ``ci_high``, ``rank_low``, ``rank_high``, ``tie_group``). Unranked rows get
    ``missing`` texts."""
    ranked = summary[summary["rank"].notna() & ~summary["reported"].astype(bool)].sort_values("rank", kind="stable")
    row_ids = list(ranked["row_id"])
    boot = bootstrap_rows(final, row_ids, by, scope, higher_is_better, task_of=task_of) if row_ids else None
    if boot is None:
        return None, {}
    rank_ranges = boot.rank_intervals()
    # A row whose replicates cannot vary (seeds only, one seed per task) has no interval; its
    # rank range and ties would claim a certainty nothing measured, so it gets neither.
    intervals = {row_id: boot.interval(row_id) for row_id in row_ids}
    varying = [row_id for row_id in row_ids if intervals[row_id] is not None]
    groups = boot.tie_groups(varying) if varying else {}
    shown = {}
    for row_id, rank in zip(ranked["row_id"], ranked["rank"]):
        interval = intervals[row_id]
        low, high = rank_ranges[row_id] if interval is not None else (np.nan, np.nan)
        shown[row_id] = {
            CI_COLUMN: missing if interval is None else f"{interval[0]:.{decimals}f}–{interval[1]:.{decimals}f}",
            RANK_COLUMN: f"{int(rank)}" if interval is None else f"{int(rank)} ({low}–{high})",
            TIE_COLUMN: groups.get(row_id, missing),
            "ci_low": np.nan if interval is None else interval[0],
            "ci_high": np.nan if interval is None else interval[1],
            "rank_low": low, "rank_high": high, "tie_group": groups.get(row_id, ""),
        }
    return boot, shown


def statistics_note(boot: BoardBootstrap | None, mean_column: str) -> str:
    """What the interval, rank range and tie group mean, and what was resampled."""
    if boot is None:
        return f"{CI_COLUMN}, {RANK_COLUMN}, {TIE_COLUMN}: no ranked row of ours, so no statistics."
    if boot.mode == SAMPLES:
        resampled = ("seeds per task and test samples per task (one new test set per replicate, shared by "
                     "every row and seed: paired), each task's metric recomputed from the records' "
                     "per-sample scores")
    else:
        resampled = (f"seeds only: {boot.lacking} record(s) of the ranked rows hold no per-sample test scores "
                     "(written before records stored them, or a task kind that gives none), so test samples "
                     "are not resampled; a row with one seed per task has no interval, rank range or tie group (–)")
    return (f"{CI_COLUMN}: 95% percentile bootstrap interval of {mean_column} ({len(boot.replicates[0])} "
            f"replicates, fixed seed {SEED}), resampling {resampled}. {RANK_COLUMN}: the rank and the "
            f"2.5–97.5% range of the row's ranks over the same replicates. {TIE_COLUMN}: rows sharing a letter "
            "are tied pairwise -- the paired bootstrap 95% interval of their difference contains 0. "
            "Reported rows and rows without a complete mean have none.")
