"""Run records -> one :class:`Leaderboard` per benchmark (pandas does the arithmetic).

The steps, each a small function below:

1. every record becomes one flat row (``records.record_facts``); tune records are set aside
   (they are the hyper-parameter search, not results) and counted in the warnings;
2. rows are identified by ``row_id`` (the hash of the record's ``row_config``: the config
   without seed, task and stage), never by their label: two configs that share a label are
   two rows, their labels told apart by the settings that differ (:func:`row_labels`);
3. a repeated (row, task, seed) keeps its newest record by ``created_at`` (also a warning);
4. per (row, task): seeds run, seeds failed, seeds n/a, mean and sample std (ddof=1);
5. per row: group means, the mean over tasks and the mean of group means -- numbers only when
   every task of the row succeeded -- the rank, the costs, and why any cell is n/a;
6. published numbers (``references.py``) are appended as "reported" rows when the backbone and
   benchmark match.

A board whose final records have ``shots`` is a few-shot board (``fewshot.py``): k = 1, 2,
... are its columns instead of the tasks. ``wise=True`` adds the WiSE-FT columns (``α=<alpha>``)
to either layout for rows whose records evaluated weight interpolations.

A board keeps two views of the same rows: ``table`` (strings, what every format shows) and
``summary`` (numbers, for the plot and for programs).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..records import RunRecord
from .records import flatten, record_facts
from .references import column_of, comparable, reference_label, references_for, setting_differences
from .stats import STATS_COLUMNS, BoardBootstrap, board_statistics, statistics_note

MISSING = "–"  # a cell that has no run (en dash)
NOT_APPLICABLE = "n/a"  # a cell whose adapter cannot run on the row's backbone
MEAN_TASKS = "Mean (tasks)"
MEAN_GROUPS = "Mean (groups)"
PARAMS = "Params w/o head (M)"
HEAD_PARAMS = "Head params (M)"  # trained head tensors: the whole method for CoOp, Tip-Adapter-F ...
EXTRA = "Extra inf. params"
CKPT = "Ckpt (KB)"
SPEED = "img/s"
MEMORY = "Peak mem (MB)"
LEADING_COLUMNS = ("Rank", "Adapter", "Backbone", "Head", "Source")
COST_COLUMNS = ("Seeds", PARAMS, HEAD_PARAMS, EXTRA, CKPT, SPEED, MEMORY)
GROUP_ORDER = ("natural", "specialized", "structured", "fgvc")
ROW_KEY = ["row_id"]  # a row is a config (row_config), whatever its label
DECIMALS = 2  # shown, and the precision at which ranks tie
MEMORY_KINDS = {
    "cpu_max_rss": "peak resident memory of the whole CPU process (Python, data and model)",
    "cuda_max_allocated": "peak CUDA memory allocated by torch",
}


@dataclass
class Leaderboard:
    """One benchmark's table: one row per row config (shown as adapter label and backbone),
    columns tasks, means and costs."""

    benchmark: str
    table: pd.DataFrame  # strings: what md / csv / tex / html / terminal show
    # numbers per row: adapter (the shown label), backbone, head, row_id ("" for reported rows),
    # source, reported, means, params_m, rank, and not_applicable / na_reason (why the row's
    # n/a cells cannot run; "" when none)
    summary: pd.DataFrame
    tasks: list[str]  # full task names, in column order
    groups: list[str]
    metric: str = "top1"
    higher_is_better: bool = True
    records_used: int = 0
    notes: list[str] = field(default_factory=list)  # the n/a reasons are among them (na_notes)
    warnings: list[str] = field(default_factory=list)
    na_notes: list[str] = field(default_factory=list)  # "n/a: <adapter> | <backbone>: <reason>", per row
    # few-shot boards: the k column names ("k=1", ..., "k=all" for rows trained on all the data);
    # the summary holds each one's number under the same name
    k_columns: list[str] = field(default_factory=list)
    shots: list[int] = field(default_factory=list)  # the k of the numeric k columns, ascending
    # few-shot boards: one row per (row of ours, task, k): Adapter, Backbone, Head, Task, k, Cell
    # (the shown text), mean, std, seeds; None for other boards
    per_task: pd.DataFrame | None = None
    wise_columns: list[str] = field(default_factory=list)  # "α=0", "α=0.5", ... (numbers in the summary too)
    # the rows' bootstrap replicates (stats.py): intervals, ranks, ties, paired comparisons; None
    # when no row of ours is ranked
    bootstrap: BoardBootstrap | None = None
    # our rows that differ from a comparable published number (same weights, recipe, head) by
    # more than their seed spread explains: one line each, listed first by every format
    flags: list[str] = field(default_factory=list)

    @property
    def has_reported_rows(self) -> bool:
        return bool(self.summary["reported"].any())


def build_leaderboards(records: Sequence[RunRecord | Mapping[str, Any]], wise: bool = False) -> list[Leaderboard]:
    """One leaderboard per benchmark found in ``records`` (sorted by benchmark name).

    ``records`` are :class:`RunRecord` s (``load_records``); a plain dict is read as one.
    ``wise``: add a column per WiSE-FT interpolation the records evaluated (``α=<alpha>``).
    """
    from .fewshot import fewshot_board, is_few_shot

    if not records:
        return []
    facts = _facts_table([record if isinstance(record, RunRecord) else RunRecord.from_data(record)
                          for record in records])
    boards = []
    for benchmark, rows in facts.groupby("benchmark", sort=True):
        final = rows[rows["stage"] == "final"]
        warnings = _tune_warning(len(rows) - len(final))
        if final.empty:
            continue  # only a hyper-parameter search: nothing to rank yet
        final, label_warnings = _labelled(final)
        final, duplicates = _newest_per_seed(final)
        make = fewshot_board if is_few_shot(final) else _board
        boards.append(make(str(benchmark), final,
                           warnings + label_warnings + duplicates + _failure_warnings(final), wise=wise))
    return boards


def _facts_table(records: Sequence[RunRecord]) -> pd.DataFrame:
    facts = pd.DataFrame([record_facts(record) for record in records])
    numeric = ["score", "trainable", "extra_inference", "extra_inference_merged", "checkpoint_bytes",
               "images_per_s", "peak_memory_bytes", "shots", "epochs"]
    facts[numeric] = facts[numeric].apply(pd.to_numeric, errors="coerce")  # None -> NaN
    facts["ok"] = facts["ok"].astype(bool)
    facts["na"] = facts["na"].astype(bool)
    # the few-shot column of a record: "1", "16", ...; "" for all the training data
    facts["k"] = [f"{shots:.0f}" if pd.notna(shots) else "" for shots in facts["shots"]]
    facts["missing"] = False  # a score that should be there and is not (a WiSE-FT alpha a run lacks)
    # Parsed, not compared as text: records written in other time zones must still order right.
    facts["when"] = pd.to_datetime(facts["created_at"], utc=True, errors="coerce", format="ISO8601")
    return facts


def _tune_warning(count: int) -> list[str]:
    if not count:
        return []
    return [f"ignored {count} tune record(s): the hyper-parameter search (train800 -> val200), not results"]


def _newest_per_seed(final: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Keep the newest record of each (row, task, shots, seed) -- the same cell found twice, e.g.
    in two result folders; say which were dropped."""
    key = [*ROW_KEY, "task", "k", "seed"]
    ordered = final.sort_values("when", kind="stable", na_position="first")
    kept = ordered.drop_duplicates(subset=key, keep="last")
    dropped = ordered.drop(kept.index)
    warnings = [
        f"{row.adapter} | {row.backbone} | {_cell_name(row)} | seed {row.seed}: kept the newest record, "
        f"ignored older run {row.run_id or '?'} ({row.created_at or 'no created_at'})"
        for row in dropped.itertuples()
    ]
    return kept, warnings


# -- row labels -----------------------------------------------------------------------------
#: Config keys the Backbone column already shows (never repeated in a label).
BACKBONE_KEYS = ("backbone", "weights")
MAX_SETTINGS = 4  # settings appended to a label at most (then "..."; the row id if still ambiguous)


def _labelled(final: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``final`` with ``adapter`` set to each row's shown label (see :func:`row_labels`), and
    a warning per row whose records carry several labels (one config: one row, newest label)."""
    newest = final.sort_values("when", kind="stable", na_position="first").drop_duplicates("row_id", keep="last")
    newest_label = dict(zip(newest["row_id"], newest["label"]))
    labels = row_labels({row.row_id: (row.label, row.backbone, row.row_config) for row in newest.itertuples()})
    warnings = []
    for row_id, names in final.groupby("row_id", sort=True)["label"]:
        if names.nunique() > 1:
            others = sorted(set(names) - {newest_label[row_id]})
            warnings.append(f"{labels[row_id]}: one config also labelled {', '.join(others)} in older "
                            "records; shown as one row under the newest label")
    return final.assign(adapter=final["row_id"].map(labels)), warnings


def row_labels(rows: Mapping[str, tuple[str, str, Mapping[str, Any]]]) -> dict[str, str]:
    """The shown label of each row: ``{row_id: (label, backbone, row_config)}`` -> ``{row_id: text}``.

    A label that names one row config stays as it is. Rows whose configs share a label get
    the settings that differ among those configs appended, ``key=value`` (``lora [r=4]``,
    ``lora [r=8]``; ``lora [r=8, lr=0.01]``): nested keys dotted, adapter options without
    their ``adapter_options.`` prefix, code versions as ``code.<part>``, a grid searched as
    ``lr in {0.001,0.01}``; at most :data:`MAX_SETTINGS` of them, in the order of
    :func:`_setting_order` (adapter options first). A setting a row does not have is left out
    of its label. The backbone and its weights are never appended (the Backbone
    column shows them), so one method run on two backbones keeps its plain label. Should two
    rows still read the same on one backbone, the row id is appended.
    """
    groups: dict[str, list[str]] = {}
    for row_id, (label, _, _) in rows.items():
        groups.setdefault(label, []).append(row_id)
    shown = {}
    for label, ids in groups.items():
        if len(ids) == 1:
            shown[ids[0]] = label
            continue
        flat = {row_id: {key: value for key, value in flatten(dict(rows[row_id][2])).items()
                         if key not in BACKBONE_KEYS and value != {}} for row_id in ids}  # {}: no options
        keys = set().union(*flat.values())
        everywhere = {key for key in keys if all(key in config for config in flat.values())}
        differing = sorted((key for key in keys if len({_canonical(config, key) for config in flat.values()}) > 1),
                           key=lambda key: _setting_order(key, key in everywhere))
        for row_id in ids:
            settings = [_setting_text(key, flat[row_id][key]) for key in differing if key in flat[row_id]]
            if len(settings) > MAX_SETTINGS:
                settings = [*settings[:MAX_SETTINGS], "..."]
            shown[row_id] = f"{label} [{', '.join(settings)}]" if settings else label
    seen: dict[tuple[str, str], list[str]] = {}
    for row_id, text in shown.items():
        seen.setdefault((text, rows[row_id][1]), []).append(row_id)
    for (text, _), ids in seen.items():
        if len(ids) > 1:  # rows that differ only in what a label leaves out
            shown.update({row_id: f"{text} #{row_id[:6]}" for row_id in ids})
    return shown


def _setting_order(key: str, everywhere: bool) -> tuple[int, str]:
    """Which differing settings a label shows first: the adapter and its options; other keys
    every row has; the grid searched; the code versions; last, keys only some rows have (an
    older record lacks the keys added since)."""
    if key == "adapter" or key.startswith("adapter_options."):
        return 0, key
    if key.startswith("searched."):
        return 2, key
    if key.startswith("code_versions."):
        return 3, key
    return (1 if everywhere else 4), key


def _canonical(config: dict[str, Any], key: str) -> str:
    return json.dumps([key in config, config.get(key)], sort_keys=True, default=str)


def _setting_text(key: str, value: Any) -> str:
    if key.startswith("searched."):
        values = value if isinstance(value, list) else [value]
        return f"{_short_key(key.removeprefix('searched.'))} in {{{','.join(map(_value_text, values))}}}"
    return f"{_short_key(key)}={_value_text(value)}"


def _short_key(key: str) -> str:
    for prefix, short in (("adapter_options.", ""), ("options.", ""), ("code_versions.", "code.")):
        if key.startswith(prefix):
            return short + key.removeprefix(prefix)
    return key


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "[" + ",".join(map(_value_text, value)) + "]"
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _cell_name(row) -> str:
    """A record's task, and its shots on few-shot boards: ``coop/dtd k=4``."""
    return f"{row.task} k={row.k}" if row.k else row.task


def _failure_warnings(final: pd.DataFrame, shown: int = 20) -> list[str]:
    """Each failed run with its error (the first ``shown``), so a failed cell can be traced.
    n/a runs are not failures: their reasons are notes."""
    failed = final[~final["ok"] & ~final["na"]].sort_values(["adapter", "backbone", "task", "seed"])
    warnings = [f"{row.adapter} | {row.backbone} | {_cell_name(row)} | seed {row.seed} failed: {row.error}"
                for row in failed.head(shown).itertuples()]
    if len(failed) > shown:
        warnings.append(f"... and {len(failed) - shown} more failed run(s)")
    return warnings


def _board(benchmark: str, final: pd.DataFrame, warnings: list[str], wise: bool = False) -> Leaderboard:
    tasks = _ordered_tasks(final)
    group_of = final.drop_duplicates("task").set_index("task")["group"].to_dict()
    groups = sorted(set(group_of.values()), key=_group_sort_key)
    metric, higher_is_better = _direction(final, warnings)
    references = references_for(benchmark, set(zip(final["backbone"], final["head_name"])))
    references = references[references["shots"].isna() | (references["shots"] == 0)]  # no few-shot numbers here
    alphas = wise_alphas(final, warnings) if wise else []
    # Group columns (and the mean of group means) only say something new with two groups or more,
    # or when a published mean of group means sits beside ours.
    column_groups = groups if len(groups) > 1 or (references["mean_kind"] == "group_mean").any() else []
    cells = _cells(final)
    memory_kinds = set(final["peak_memory_kind"].dropna())
    ours = [_our_row(rows, cells.loc[row_id], tasks, group_of, column_groups, memory_kinds, alphas)
            for row_id, rows in final.groupby("row_id", sort=True)]
    summary = _ranked(pd.DataFrame([numbers for numbers, _ in ours]), higher_is_better)
    texts = [dict(text, Rank=_rank_text(rank)) for (_, text), rank in zip(ours, summary["rank"])]
    summary, texts, bootstrap = with_statistics(final, summary, texts, ["task"], tasks, higher_is_better)
    references = references[[not ref.mean_kind.startswith("task:") or ref.mean_kind.removeprefix("task:") in tasks
                             for ref in references.itertuples()]]
    settings = set(zip(final["backbone"], final["head_name"], final["recipe"]))
    reported = [_reported_row(ref, tasks, column_groups, alphas, setting_differences(ref, settings))
                for ref in references.itertuples()]
    flags, unjudged, flagged = disagreement_flags(benchmark, final, summary, references, tasks, group_of)
    summary["disagrees"] = summary["row_id"].isin(flagged)
    texts = [dict(text, Source="ours ⚑") if row_id in flagged else text
             for text, row_id in zip(texts, summary["row_id"])]
    if reported:
        summary = pd.concat([summary, pd.DataFrame([numbers for numbers, _ in reported])], ignore_index=True)
        texts += [text for _, text in reported]
    order = _row_order(summary)
    board = Leaderboard(
        benchmark=benchmark,
        table=pd.DataFrame(without_statistics_as_missing(texts)).loc[order, _columns(tasks, column_groups, alphas)]
        .reset_index(drop=True).astype(str),
        summary=summary.loc[order].reset_index(drop=True),
        tasks=tasks, groups=groups, metric=metric, higher_is_better=higher_is_better,
        records_used=len(final), warnings=warnings, wise_columns=list(map(wise_column, alphas)),
        bootstrap=bootstrap, flags=flags,
    )
    board.na_notes = _na_notes(board.summary)
    board.notes = (_notes(board, final, show_groups=bool(column_groups)) + [statistics_note(bootstrap, MEAN_TASKS)]
                   + search_budget_notes(final) + unjudged + board.na_notes)
    return board


# -- published numbers we disagree with; search budgets --------------------------------------
#: Our row is flagged when it is further from a comparable published number than this many
#: sample standard deviations of its own per-seed values (about a 95% band for one run).
FLAG_SPREADS = 2.0


def disagreement_flags(benchmark: str, final: pd.DataFrame, summary: pd.DataFrame, references: pd.DataFrame,
                       tasks: list[str], group_of: dict[str, str]) -> tuple[list[str], list[str], set[str]]:
    """(flags, notes, flagged row ids): each row of ours that runs a published row's exact setting (method,
    architecture, weights, head, recipe: ``references.comparable``) and whose value in that
    row's column differs from it by more than ``FLAG_SPREADS`` sample stds over our seeds.
    A pair with one seed cannot be judged: a note says so, without a flag."""
    lines, notes, flagged = [], [], set()
    numbers = summary.set_index("row_id")
    for ref in references.itertuples():
        for row_id, rows in final.groupby("row_id", sort=True):
            first = rows.iloc[0]
            if not (_pairs_with(ref, first) and comparable(ref, first["backbone"], first["head_name"], first["recipe"])):
                continue
            column, value, per_seed = _our_value(ref, rows, numbers.loc[row_id], benchmark, tasks, group_of)
            if column is None or pd.isna(value):
                continue
            where = f"{first['adapter']} | {first['backbone']}: {column} {value:.{DECIMALS}f} vs {ref.value:.{DECIMALS}f} " \
                    f"reported by {ref.source}"
            if len(per_seed) < 2:
                notes.append(f"{where}: not judged (one seed: no spread to compare the gap of "
                             f"{value - ref.value:+.{DECIMALS}f} with)")
                continue
            spread = float(per_seed.std(ddof=1))
            if abs(value - ref.value) > FLAG_SPREADS * spread:
                flagged.add(row_id)
                lines.append(f"⚑ {where}: {value - ref.value:+.{DECIMALS}f}, more than {FLAG_SPREADS:g} x our "
                             f"seed std ({spread:.{DECIMALS}f} over {len(per_seed)} seeds)")
    return lines, notes, flagged


def _pairs_with(ref, first: pd.Series) -> bool:
    """A published method pairs with our row named after it, or with the adapter's default row."""
    label, adapter = str(first["label"]), str(first["row_config"].get("adapter", ""))
    return label == ref.method or (label == adapter and adapter == ref.adapter)


def _our_value(ref, rows: pd.DataFrame, numbers: pd.Series, benchmark: str, tasks: list[str],
               group_of: dict[str, str]) -> tuple[str | None, float, pd.Series]:
    """(our column, our value, its per-seed values) for a published row's ``mean_kind``; the
    column is None when our board cannot hold that number (a mean over tasks it lacks)."""
    from ..registry import TASKS

    per_seed = rows[rows["ok"]].pivot_table(index="seed", columns="task", values="score").reindex(columns=tasks)
    if ref.mean_kind.startswith("task:"):
        task = ref.mean_kind.removeprefix("task:")
        return _task_column(task), float(per_seed[task].mean()), per_seed[task].dropna()
    full = [name for name in TASKS.names() if name.startswith(f"{benchmark}/")]
    if full and len(tasks) != len(full):
        return None, np.nan, per_seed  # the paper averaged all the benchmark's tasks
    complete = per_seed.dropna()
    if column_of(ref.mean_kind) == MEAN_GROUPS:
        return MEAN_GROUPS, float(numbers["mean_groups"]), complete.T.groupby(group_of).mean().T.mean(axis=1)
    return MEAN_TASKS, float(numbers["mean_tasks"]), complete.mean(axis=1)


#: Search budgets (configurations tried per row) further apart than this ratio get a note.
BUDGET_RATIO = 2.0


def search_budget_notes(final: pd.DataFrame) -> list[str]:
    """A note when the rows' hyper-parameter searches tried numbers of configurations more than
    ``BUDGET_RATIO`` apart (a row tuned over more points can win by its search alone)."""
    budgets = final.groupby("adapter", sort=True)["search_points"].max()
    if budgets.empty or budgets.max() <= BUDGET_RATIO * budgets.min():
        return []
    listed = ", ".join(f"{label} {int(points)}" for label, points in budgets.sort_values(ascending=False).items())
    return [f"Search budgets differ by more than {BUDGET_RATIO:g}x (configurations tried per task: {listed}); "
            "a row searched over more points can rank higher for that alone."]


# -- statistics (stats.py) -------------------------------------------------------------------
def with_statistics(final: pd.DataFrame, summary: pd.DataFrame, texts: list[dict], by: Sequence[str],
                    scope: Sequence[Any], higher_is_better: bool, task_of=None):
    """``summary`` and the shown ``texts`` of our rows (in the same order) with the bootstrap
    columns (``stats.STATS_COLUMNS``; numbers ``ci_low`` ... in the summary), and the bootstrap."""
    bootstrap, shown = board_statistics(final, summary, by, scope, higher_is_better, task_of=task_of,
                                        missing=MISSING, decimals=DECIMALS)
    numbers = pd.DataFrame([{key: value for key, value in shown.get(row_id, {}).items() if key not in STATS_COLUMNS}
                            for row_id in summary["row_id"]], index=summary.index,
                           columns=["ci_low", "ci_high", "rank_low", "rank_high", "tie_group"])
    summary = pd.concat([summary, numbers], axis=1)
    texts = [{**text, **{column: shown.get(row_id, {}).get(column, MISSING) for column in STATS_COLUMNS}}
             for text, row_id in zip(texts, summary["row_id"])]
    return summary, texts, bootstrap


def without_statistics_as_missing(texts: list[dict]) -> list[dict]:
    """Rows without statistics (reported ones) read ``MISSING`` in the statistics columns."""
    return [{**{column: MISSING for column in STATS_COLUMNS}, **text} for text in texts]


def _ordered_tasks(final: pd.DataFrame) -> list[str]:
    """Tasks by group (natural, specialized, structured, ...), then in the catalogue's order."""
    from ..tasks.catalog import builtin_task_specs

    catalogue = {spec.name: index for index, spec in enumerate(builtin_task_specs())}
    tasks = final.drop_duplicates("task")[["task", "group"]].itertuples(index=False)
    ordered = sorted(tasks, key=lambda t: (_group_sort_key(t.group), catalogue.get(t.task, len(catalogue)), t.task))
    return [t.task for t in ordered]


def _group_sort_key(group: str) -> tuple[int, str]:
    return (GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER), group)


def _direction(final: pd.DataFrame, warnings: list[str]) -> tuple[str, bool]:
    metrics = sorted(set(final["metric"]))
    if len(metrics) > 1:
        warnings.append(f"records rank by different metrics {metrics}: the table mixes them")
    directions = set(final["higher_is_better"].astype(bool))
    if len(directions) > 1:
        warnings.append("records disagree on higher_is_better: ranking as higher is better")
    return metrics[0], True if len(directions) > 1 else bool(directions.pop())


def _cells(final: pd.DataFrame, by: Sequence[str] = ("task",)) -> pd.DataFrame:
    """Per (row, *by) -- a task; a k and a task on few-shot boards: seeds run, failed, n/a,
    missing (runs without the score: a WiSE-FT alpha they did not evaluate), mean and sample
    std of the score. ``runs`` is NaN where every run misses the score (no run)."""
    flagged = final.assign(failed=~final["ok"] & ~final["na"] & ~final["missing"], present=~final["missing"])
    grouped = flagged.groupby([*ROW_KEY, *by], sort=True)
    runs = grouped["present"].sum()
    return pd.DataFrame({
        "runs": runs.where(runs > 0),
        "failed": grouped["failed"].sum().astype(int),
        "na": grouped["na"].sum().astype(int),
        "missing": grouped["missing"].sum().astype(int),
        "mean": grouped["score"].mean(),
        "std": grouped["score"].std(ddof=1),  # NaN for one seed: shown as the mean alone
    })


def scope_mean(rows: pd.DataFrame, by: Sequence[str], scope: Sequence[Any]) -> tuple[float, str]:
    """The mean over the cells ``scope`` (values of the columns ``by``: tasks, or (k, task)
    pairs) of one row's ``rows``, with :func:`_mean_of`'s text: per seed the mean over the cells,
    then mean and sample std over seeds."""
    by = list(by)
    index = pd.MultiIndex.from_tuples(scope, names=by) if len(by) > 1 else pd.Index(scope, name=by[0])
    cells = _cells(rows, by).droplevel(ROW_KEY).reindex(index)
    ok = rows[rows["ok"]]
    per_seed = (ok.pivot_table(index="seed", columns=by, values="score") if len(ok)
                else pd.DataFrame(index=pd.Index([], name="seed")))
    return _mean_of(cells, per_seed.reindex(columns=index), _mean_over_tasks)


# -- WiSE-FT -----------------------------------------------------------------------------------
def wise_alphas(final: pd.DataFrame, warnings: list[str]) -> list[str]:
    """The WiSE-FT alphas any record of the board evaluated, ascending (a warning when none)."""
    alphas = sorted(set().union(*final["wise"]), key=float)
    if not alphas:
        warnings.append("--wise: no record of this board holds WiSE-FT metrics (<metric>@wise<alpha>)")
    return alphas


def wise_column(alpha: str) -> str:
    return f"α={alpha}"


def wise_rows(rows: pd.DataFrame, alpha: str) -> pd.DataFrame | None:
    """``rows`` with the score of the interpolation at ``alpha`` as their score; a successful
    run without it is ``missing``. None when no run of the row evaluated ``alpha``."""
    values = rows["wise"].map(lambda scores: scores.get(alpha, np.nan)).astype(float)
    if values.isna().all():
        return None
    missing = rows["ok"] & values.isna()
    return rows.assign(score=values, ok=rows["ok"] & ~missing, missing=missing)


def wise_means(rows: pd.DataFrame, alphas: Sequence[str], by: Sequence[str],
               scope: Sequence[Any]) -> dict[str, tuple[float, str]]:
    """``{α=<alpha>: (value, text)}``: each interpolation reduced like the row's mean over ``scope``."""
    means = {}
    for alpha in alphas:
        interpolated = wise_rows(rows, alpha)
        means[wise_column(alpha)] = (np.nan, MISSING) if interpolated is None else scope_mean(interpolated, by, scope)
    return means


# -- one row of ours ------------------------------------------------------------------------
def _our_row(rows: pd.DataFrame, cells: pd.DataFrame, tasks: list[str], group_of: dict[str, str],
             groups: list[str], memory_kinds: set[str], alphas: Sequence[str] = ()) -> tuple[dict, dict]:
    """(numbers, shown strings) of one row: the records of one row config."""
    first = rows.iloc[0]
    row_id, adapter, backbone = first["row_id"], first["adapter"], first["backbone"]
    cells = cells.reindex(tasks)
    shown = {"Adapter": adapter, "Backbone": backbone, "Head": first["head_name"], "Source": "ours"}
    shown.update({_task_column(task): _cell_text(cell) for task, cell in cells.iterrows()})
    means = _row_means(rows, cells, tasks, group_of, groups)
    shown.update({column: text for column, (_, text) in means.items()})
    wise = wise_means(rows, alphas, ["task"], tasks)
    shown.update({column: text for column, (_, text) in wise.items()})
    costs = _costs(rows, memory_kinds)
    shown.update(costs.pop("shown"))
    numbers = {"adapter": adapter, "backbone": backbone, "head": first["head_name"], "row_id": row_id,
               "source": "ours", "reported": False, "mean_tasks": means[MEAN_TASKS][0],
               "mean_groups": means.get(MEAN_GROUPS, (np.nan,))[0],
               **{column: value for column, (value, _) in wise.items()},
               **costs, **_na_facts(rows, cells, tasks)}
    return numbers, shown


def _na_facts(rows: pd.DataFrame, cells: pd.DataFrame, tasks: list[str]) -> dict[str, Any]:
    """Whether any cell of the row is n/a, and why: one reason, or ``task: reason`` each when
    the tasks' reasons differ (they rarely do: a pair is impossible whatever the task)."""
    na_tasks = [task for task in tasks if cells.loc[task, "na"] > 0]
    na_rows = rows[rows["na"]].drop_duplicates("task").set_index("task")["na_reason"]
    reasons = {task: str(na_rows[task]) for task in na_tasks}
    if len(set(reasons.values())) == 1:
        reason = next(iter(reasons.values()))
        if len(na_tasks) < len(tasks):
            reason = f"{', '.join(map(_task_column, na_tasks))}: {reason}"
    else:
        reason = "; ".join(f"{_task_column(task)}: {text}" for task, text in reasons.items())
    return {"not_applicable": bool(na_tasks), "na_reason": reason if na_tasks else ""}


def _task_column(task: str) -> str:
    return task.partition("/")[2] or task


def _cell_text(cell: pd.Series) -> str:
    if pd.isna(cell["runs"]):
        return MISSING
    if cell["failed"]:
        return f"failed ({int(cell['failed'])}/{int(cell['runs'])})"
    if cell["na"]:
        return NOT_APPLICABLE
    return _mean_std_text(cell["mean"], cell["std"])


def _mean_std_text(mean: float, std: float | None) -> str:
    if std is None or pd.isna(std):
        return f"{mean:.{DECIMALS}f}"
    return f"{mean:.{DECIMALS}f} ± {std:.{DECIMALS}f}"


def _row_means(rows: pd.DataFrame, cells: pd.DataFrame, tasks: list[str], group_of: dict[str, str],
               groups: list[str]) -> dict[str, tuple[float, str]]:
    """Group means, mean over tasks and mean of group means: (value or NaN, text) each.

    A mean is a number only when all its tasks succeeded; otherwise it reads ``failed`` (a
    task failed), ``n/a`` (a task cannot run on the backbone) or ``incomplete`` (a task has no
    run), in that order. Its ± is the sample std over seeds of
    the per-seed means, given when every task in it ran the same two or more seeds.
    """
    per_seed = rows[rows["ok"]].pivot_table(index="seed", columns="task", values="score")
    per_seed = per_seed.reindex(columns=tasks)
    scopes = {_group_column(group): [t for t in tasks if group_of[t] == group] for group in groups}
    scopes[MEAN_TASKS] = tasks
    means = {column: _mean_of(cells.loc[scope], per_seed[scope], _mean_over_tasks)
             for column, scope in scopes.items()}
    if groups:
        def mean_of_group_means(frame: pd.DataFrame) -> pd.Series:
            return frame.T.groupby(group_of).mean().T.mean(axis=1)
        means[MEAN_GROUPS] = _mean_of(cells, per_seed, mean_of_group_means)
    return means


def _mean_over_tasks(frame: pd.DataFrame) -> pd.Series:
    return frame.mean(axis=1)


def _group_column(group: str) -> str:
    return f"{group.capitalize()} (mean)"


def _mean_of(cells: pd.DataFrame, per_seed: pd.DataFrame, reduce) -> tuple[float, str]:
    """``reduce`` (a frame of scores, one column per task -> one value per row) of the cell means."""
    if cells["failed"].fillna(0).any():
        return np.nan, "failed"
    if cells["na"].fillna(0).any():  # never a number: no re-run will fill it in
        return np.nan, NOT_APPLICABLE
    if cells["runs"].isna().any() or cells["missing"].fillna(0).any():
        return np.nan, "incomplete"
    value = float(reduce(cells[["mean"]].T).iloc[0])
    per_seed = per_seed.dropna(how="all")
    std = None
    if len(per_seed) > 1 and per_seed.notna().all().all():
        std = float(reduce(per_seed).std(ddof=1))
    return value, _mean_std_text(value, std)


def _costs(rows: pd.DataFrame, memory_kinds: set[str]) -> dict[str, Any]:
    """Parameters, checkpoint size, speed and memory of a row (numbers, and ``shown`` strings)."""
    ok = rows[rows["ok"]]
    params_m = rows["trainable"].dropna() / 1e6
    extra, merged = rows["extra_inference"].dropna(), rows["extra_inference_merged"].dropna()
    speed = ok["images_per_s"].dropna()
    memory = ok.dropna(subset=["peak_memory_bytes"])
    seeds = rows.groupby("task")["seed"].nunique()
    peak = memory.loc[memory["peak_memory_bytes"].idxmax()] if len(memory) else None
    shown = {
        "Seeds": _one_or_range(seeds, "{:.0f}"),
        PARAMS: _one_or_range(params_m, "{:.4g}"),
        HEAD_PARAMS: _one_or_range(rows["head"].dropna() / 1e6, "{:.4g}"),
        EXTRA: _extra_text(extra, merged),
        CKPT: _one_or_range(rows["checkpoint_bytes"].dropna() / 1024, "{:.1f}"),
        SPEED: _rate_text(speed.mean()) if len(speed) else MISSING,
        MEMORY: _memory_text(peak, len(memory_kinds) > 1),
    }
    return {"params_m": float(params_m.median()) if len(params_m) else np.nan,
            "images_per_s": float(speed.mean()) if len(speed) else np.nan,
            "peak_memory_mb": float(peak["peak_memory_bytes"]) / 2**20 if peak is not None else np.nan,
            "shown": shown}


def _one_or_range(values: pd.Series, fmt: str) -> str:
    """One value, or ``min–max`` when the row's runs disagree (e.g. per-task parameter counts)."""
    if values.empty:
        return MISSING
    low, high = fmt.format(values.min()), fmt.format(values.max())
    return low if low == high else f"{low}–{high}"


def _count_text(count: float) -> str:
    """12288 -> '12.3K', 85_800_000 -> '85.8M'."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(count) >= scale:
            return f"{count / scale:.3g}{suffix}"
    return f"{count:.0f}"


def _extra_text(extra: pd.Series, merged: pd.Series) -> str:
    if extra.empty:
        return MISSING
    text = _count_text(extra.max())
    if not merged.empty and merged.max() != extra.max():
        text += f" ({_count_text(merged.max())} merged)"
    return text


def _rate_text(rate: float) -> str:
    return f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}"


def _memory_text(peak: pd.Series | None, name_kind: bool) -> str:
    if peak is None:
        return MISSING
    text = f"{peak['peak_memory_bytes'] / 2**20:.0f}"
    if name_kind:  # a board mixing CPU and GPU runs: say which each number is
        text += " (cuda)" if str(peak["peak_memory_kind"]).startswith("cuda") else " (cpu rss)"
    return text


# -- ranks, reported rows, layout -----------------------------------------------------------
def _ranked(summary: pd.DataFrame, higher_is_better: bool) -> pd.DataFrame:
    """Rank by the mean over tasks at the shown precision (equal shown means share a rank)."""
    shown_means = summary["mean_tasks"].round(DECIMALS)
    summary["rank"] = shown_means.rank(method="min", ascending=not higher_is_better)
    return summary


def _rank_text(rank: float) -> str:
    return MISSING if pd.isna(rank) else str(int(rank))


def _reported_row(ref, tasks: list[str], groups: list[str], alphas: Sequence[str] = (),
                  differences: Sequence[str] = ()) -> tuple[dict, dict]:
    """A published number as a row: only its mean column and parameter count are filled; its
    Source says what configuration it ran and what separates it from our rows."""
    column = column_of(ref.mean_kind) or _task_column(ref.mean_kind.removeprefix("task:"))
    source = reported_source(ref) + (f"; {ref.config}" if getattr(ref, "config", "") else "")
    if differences:
        source += "; not comparable: " + ", ".join(differences)
    params = ref.trainable_params_m
    shown = {"Rank": MISSING, "Adapter": ref.adapter, "Backbone": reference_label(ref), "Head": ref.head,
             "Source": source}
    shown.update({_task_column(task): MISSING for task in tasks})
    shown.update({_group_column(group): MISSING for group in groups})
    shown.update({MEAN_TASKS: MISSING, MEAN_GROUPS: MISSING, "Seeds": MISSING, HEAD_PARAMS: MISSING, EXTRA: MISSING,
                  CKPT: MISSING, SPEED: MISSING, MEMORY: MISSING})
    shown.update({wise_column(alpha): MISSING for alpha in alphas})
    shown[column] = f"{ref.value:.{DECIMALS}f}"
    shown[PARAMS] = MISSING if pd.isna(params) else f"{params:.4g}"
    numbers = {"adapter": ref.adapter, "backbone": reference_label(ref), "head": ref.head, "row_id": "", "source": source,
               "reported": True,
               "mean_tasks": ref.value if column == MEAN_TASKS else np.nan,
               "mean_groups": ref.value if column == MEAN_GROUPS else np.nan,
               "params_m": params, "images_per_s": np.nan, "peak_memory_mb": np.nan, "rank": np.nan,
               "not_applicable": False, "na_reason": ""}
    return numbers, shown


def reported_source(ref) -> str:
    """The Source of a published row: its source, and the paper's name when ours differs."""
    return f"reported: {ref.source}" + (f" (as {ref.method})" if ref.method != ref.adapter else "")


def _row_order(summary: pd.DataFrame) -> list[int]:
    """Ours by rank (unranked last, then by name), then the reported rows by method and source."""
    keyed = summary.assign(_unranked=summary["rank"].isna())
    ordered = keyed.sort_values(["reported", "_unranked", "rank", "adapter", "backbone", "source"],
                                kind="stable")
    return list(ordered.index)


def _columns(tasks: list[str], groups: list[str], alphas: Sequence[str] = ()) -> list[str]:
    group_columns = [_group_column(group) for group in groups]
    overall = [MEAN_TASKS, MEAN_GROUPS] if groups else [MEAN_TASKS]
    return [*LEADING_COLUMNS, *map(_task_column, tasks), *group_columns, *overall, *map(wise_column, alphas),
            *STATS_COLUMNS, *COST_COLUMNS]


def _notes(board: Leaderboard, final: pd.DataFrame, show_groups: bool) -> list[str]:
    direction = "higher" if board.higher_is_better else "lower"
    groups = (f" {MEAN_GROUPS}: mean of the {len(board.groups)} group means ({', '.join(board.groups)}). "
              "Papers use either: both are shown." if show_groups else "")
    notes = [
        (f"Cells: 100 x {board.metric} on the evaluation split of final runs (test, never used to "
         "pick an epoch or a hyper-parameter), mean ± sample std (ddof=1) over seeds; one seed shows "
         "the mean alone."),
        OUTCOME_NOTE,
        f"{MEAN_TASKS}: plain mean over the {len(board.tasks)} tasks.{groups}",
        (f"Rank: by {MEAN_TASKS}, {direction} is better, at {DECIMALS} decimals (equal means share a "
         "rank); rows without a complete mean and reported rows are not ranked."),
        *cost_notes(final),
    ]
    if board.wise_columns:
        notes.append(wise_note(f"the {len(board.tasks)} tasks", MEAN_TASKS))
    if board.has_reported_rows:
        notes.append(_reported_note(board))
    return notes


OUTCOME_NOTE = ("failed (k/n): k of n seeds failed; n/a: the adapter cannot run on this backbone (the "
                "reasons are listed below); – : not run. A mean is a number only when every task in it "
                "succeeded, otherwise it reads failed, n/a or incomplete.")


def cost_notes(final: pd.DataFrame) -> list[str]:
    kinds = "; ".join(f"{kind}: {MEMORY_KINDS.get(kind, kind)}"
                      for kind in sorted(set(final["peak_memory_kind"].dropna())))
    return [
        (f"{PARAMS}: trainable parameters without the task head, in millions; {HEAD_PARAMS}: the head's "
         f"trained parameters (for methods that live in the head, CoOp's context or Tip-Adapter-F's "
         f"cache, the method itself). {EXTRA}: parameters "
         "added at inference (after merging into the backbone in brackets, when that differs). "
         f"{CKPT}: adapter checkpoint on disk, 1 KB = 1024 B. {SPEED}: training samples per second (images; "
         "clips on video boards, whose records also hold frames/s), mean over the row's runs."),
        f"{MEMORY}: max over the row's runs (1 MB = 2^20 B) of {kinds or 'no recorded memory'}.",
    ]


def wise_note(over: str, like: str) -> str:
    return ("α=a: WiSE-FT (Wortsman et al., CVPR 2022): the run's weights interpolated between the "
            "initial and the adapted model, θ_α = (1-α)·θ_0 + α·θ_1 over the trained tensors, then "
            f"evaluated; a column is the mean over {over}, ± the sample std over seeds (as {like}). "
            "α=1 is the trained model; α=0 the model at initialisation, which is zero-shot only when "
            "the head is text-initialised and the adapter is the identity at init. – : the row's "
            "runs evaluated no interpolation.")


def _na_notes(summary: pd.DataFrame) -> list[str]:
    """One note per row with n/a cells: which row, and why the adapter cannot run there."""
    rows = summary[summary["not_applicable"].fillna(False).astype(bool)]
    return [f"n/a: {row.adapter} | {row.backbone}: {row.na_reason}" for row in rows.itertuples()]


def _reported_note(board: Leaderboard) -> str:
    from ..registry import TASKS

    full = len([name for name in TASKS.names() if name.startswith(f"{board.benchmark}/")])
    coverage = (f" They average all {full} {board.benchmark} tasks; this table's means cover "
                f"{len(board.tasks)}." if full and full != len(board.tasks) else "")
    return ("reported: published numbers, for the backbone and head in their columns, copied from the "
            "named source, not re-run here, shown in the mean column they were computed as; one row "
            "per (method, source), so sources that disagree stay visible. A published row is comparable "
            "with ours only when its weights and recipe (the spec's recipe: name) match ours; its Source "
            "says what differs otherwise. ⚑ marks a row of ours further from a comparable published number "
            f"than {FLAG_SPREADS:g} sample stds of its per-seed values." + coverage)
