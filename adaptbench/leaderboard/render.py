"""Leaderboards -> Markdown, CSV, LaTeX, one self-contained HTML page, PNG plots, terminal.

Every format shows the same strings (``Leaderboard.table``), so a failed cell reads
``failed`` everywhere and never turns into a number, and a cell whose adapter cannot run on
the row's backbone reads ``n/a``. Why it is n/a is a note under the table (Markdown and HTML
lists, LaTeX comments, lines under the terminal table) and, in CSV, the extra last column
``n/a reason`` (present only when some cell is n/a, empty on the other rows).

Files (:func:`write_leaderboards`): Markdown, LaTeX and HTML hold every benchmark in one
file, ``<out>/<name>.md|.tex|.html``. CSV and PNG hold one benchmark each: ``<name>.csv`` and
``<name>.png`` when there is one benchmark, ``<name>-<benchmark>.csv|.png`` when there are
several. The PNG (the Pareto plot; accuracy against k on few-shot boards) is always written;
the HTML page embeds it as a base64 data URI so the page is one file. A few-shot board's
per-task cells (task x k, per row) are Markdown tables under its main one and, with ``csv``,
the long ``<name>-tasks.csv`` (``<name>-<benchmark>-tasks.csv`` when several boards). Each
file is written to a temporary file beside it and renamed into place, so a reader never sees
half a table.

Markdown is written by :func:`_markdown_table` (a dozen lines) rather than through
``DataFrame.to_markdown``, which needs ``tabulate`` and does not escape ``|`` in cells.
LaTeX and HTML go through pandas' Styler (jinja2).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import os
import re
from collections.abc import Sequence
from pathlib import Path

from ..files import atomic_write
from .aggregate import MISSING, NOT_APPLICABLE, Leaderboard
from .stats import RANK_COLUMN, TIE_COLUMN

FORMATS = ("md", "csv", "tex", "html")
FAILED_CSS = "color:#b00020;font-weight:600"
NA_CSS = "color:#777;font-style:italic"
NA_REASON_COLUMN = "n/a reason"
REPORTED_CSS = "color:#555;font-style:italic;background:#f6f6f6"
PROTOCOL = (
    "Hyper-parameters are chosen on train800 -> val200 (tune records, not shown); the final model "
    "trains on train800val200 and is evaluated once on test, which never picks an epoch, a "
    "checkpoint or a hyper-parameter. Seeds are repeated final runs; cells show their mean and "
    "sample standard deviation."
)
REPORTED = (
    'Rows marked "reported" are published numbers (ViT-B/16 ImageNet-21k on VTAB-1k and FGVC, with '
    "the weights and recipe each started from; CLIP on the few-shot CoOp datasets) copied from the "
    "named source, not re-run here, beside our rows of the same architecture and head only; their "
    "Source says when their weights or recipe differ from ours, and only a row in our exact setting "
    "can flag one of ours (listed first). Each sits in the mean column it was "
    "computed as (mean over tasks, or mean of the group means; on few-shot boards the k column of "
    "its shots); one row per method and source, so when sources disagree (full fine-tuning 65.57 "
    "vs 68.9, BitFit) both stay visible."
)


# -- text formats -----------------------------------------------------------------------------
def render_markdown(boards: Sequence[Leaderboard]) -> str:
    parts = ["# adaptbench leaderboard", ""]
    for board in boards:
        parts += [f"## {board.benchmark}", "", _caption(board), ""]
        if board.flags:  # disagreements with comparable published numbers come before the table
            parts += [f"**{FLAGS_TITLE}:**", "", *(f"- {_markdown_escape(flag)}" for flag in board.flags), ""]
        parts += [_markdown_table(board), ""]
        parts += [f"- {_markdown_escape(note)}" for note in board.notes]
        parts += [f"- **warning:** {_markdown_escape(warning)}" for warning in board.warnings]
        parts.append("")
        parts += _markdown_per_task(board)
    return "\n".join(parts)


def _markdown_per_task(board: Leaderboard) -> list[str]:
    """A few-shot board's per-task cells: a task x k table per row of ours."""
    if board.per_task is None or board.per_task.empty:
        return []
    parts = [f"### {board.benchmark}: per task", ""]
    for (adapter, backbone, head), cells in board.per_task.groupby(["Adapter", "Backbone", "Head"], sort=False):
        table = cells.pivot(index="Task", columns="k", values="Cell").reindex(
            index=list(dict.fromkeys(cells["Task"])), columns=list(dict.fromkeys(cells["k"])))
        table = table.rename(columns=lambda k: f"k={k}").reset_index()
        parts += [f"#### {_markdown_escape(adapter)} | {_markdown_escape(backbone)} | {_markdown_escape(head)}",
                  "", _markdown_frame(table, left=1), ""]
    return parts


NAME_COLUMNS = ("Adapter", "Backbone", "Head", "Source")  # after Rank: text, left-aligned
#: How a primary metric is named in captions (others as recorded).
METRIC_NAMES = {"top1": "top-1 accuracy", "miou": "mIoU", "dice": "Dice", "macc": "mean accuracy"}


def _caption(board: Leaderboard) -> str:
    arrow = "higher is better" if board.higher_is_better else "lower is better"
    metric = METRIC_NAMES.get(board.metric, board.metric)
    return (f"{board.benchmark}: 100 x {metric} (%), {arrow}; "
            f"{board.records_used} final run record(s).")


def _markdown_table(board: Leaderboard) -> str:
    return _markdown_frame(board.table, left=len(NAME_COLUMNS) + 1, right={"Rank"})


def _markdown_frame(frame, left: int, right: set[str] = frozenset()) -> str:
    """``frame`` as a Markdown table: its first ``left`` columns (but ``right``) are names,
    left-aligned; the others numbers, right-aligned."""
    numeric_looking = {*right, *frame.columns[left:]}
    header = "| " + " | ".join(_markdown_escape(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---:" if c in numeric_looking else ":---" for c in frame.columns) + "|"
    rows = ["| " + " | ".join(_markdown_escape(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _markdown_escape(text: str) -> str:
    """A cell of GitHub-flavoured Markdown: no column break, no raw HTML, one line."""
    text = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
    return text.replace("<", "&lt;").replace(">", "&gt;")


def render_csv(board: Leaderboard) -> str:
    """The table; with an ``n/a reason`` column when some cell is n/a (a CSV has no notes)."""
    table = board.table
    if board.summary["not_applicable"].any():
        table = table.assign(**{NA_REASON_COLUMN: board.summary["na_reason"].fillna("").to_numpy()})
    return table.to_csv(index=False, lineterminator="\n")


def render_tasks_csv(board: Leaderboard) -> str:
    """A few-shot board's per-task cells, long: one line per (row of ours, task, k); empty for
    other boards."""
    if board.per_task is None:
        return ""
    return board.per_task.to_csv(index=False, lineterminator="\n")


def render_latex(boards: Sequence[Leaderboard]) -> str:
    parts = ["% adaptbench leaderboard (needs no package beyond LaTeX's own tabular)"]
    for board in boards:
        parts += [f"% {line}" for line in (*board.flags, *board.notes, *(f"warning: {w}" for w in board.warnings))]
        styler = board.table.style.hide(axis="index")
        styler = styler.format(escape="latex").format_index(escape="latex", axis=1)
        latex = styler.to_latex(
            caption=_latex_escape(_caption(board)), label=f"tab:adaptbench-{_file_safe(board.benchmark)}",
            column_format="r" + "l" * 3 + "r" * (len(board.table.columns) - 4), hrules=True,
            position="htbp",
        )
        parts.append(_latex_symbols(latex))
    return "\n".join(parts) + "\n"


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                   "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    """For the caption (the table itself is escaped by the Styler)."""
    return "".join(_LATEX_SPECIALS.get(char, char) for char in text)


def _latex_symbols(latex: str) -> str:
    """Unicode symbols the tables use, as plain LaTeX (works under pdflatex)."""
    return latex.replace("±", r"$\pm$").replace(MISSING, "--").replace("\\toprule", "\\hline").replace(
        "\\midrule", "\\hline").replace("\\bottomrule", "\\hline")


# -- HTML ---------------------------------------------------------------------------------
FLAGS_TITLE = "Where we disagree with a comparable published number"
PAGE_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem; color: #222; }
h1 { margin-bottom: 0.2rem; } .meta { color: #666; margin-top: 0; }
.table-wrap { overflow-x: auto; margin: 1rem 0; }
table.leaderboard { border-collapse: collapse; font-size: 0.85rem; white-space: nowrap; }
table.leaderboard th, table.leaderboard td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: right; }
table.leaderboard th { background: #f0f3f7; position: sticky; top: 0; }
table.leaderboard :is(td, th):is(:nth-child(2), :nth-child(3), :nth-child(4)) { text-align: left; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
.warnings li { color: #8a5300; } .notes li, .warnings li { margin: 0.2rem 0; }
.flags { border-left: 4px solid #b0006a; padding-left: 1rem; } .flags li { color: #7a0049; }
"""


def render_html(boards: Sequence[Leaderboard], plots: dict[str, bytes] | None = None,
                generated_at: str | None = None) -> str:
    """One self-contained page: the tables, the plots as data URIs, the notes and the protocol."""
    from .plot import plot_board

    plots = plots if plots is not None else {board.benchmark: plot_board(board) for board in boards}
    generated_at = generated_at or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    records = sum(board.records_used for board in boards)
    sections = "\n".join(_html_section(board, plots[board.benchmark]) for board in boards)
    flags = "".join(f"<li>{html.escape(board.benchmark)}: {html.escape(flag)}</li>" for board in boards
                    for flag in board.flags)
    flags = f'<section class="flags"><h2>{FLAGS_TITLE}</h2><ul>{flags}</ul></section>' if flags else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>adaptbench leaderboard</title>
<style>{PAGE_CSS}</style>
</head>
<body>
<h1>adaptbench leaderboard</h1>
<p class="meta">Generated {html.escape(generated_at)} from {records} final run record(s);
benchmarks: {html.escape(", ".join(board.benchmark for board in boards))}.</p>
{flags}
{sections}
<section>
<h2>Protocol</h2>
<p>{html.escape(PROTOCOL)}</p>
<h2>What "reported" means</h2>
<p>{html.escape(REPORTED)}</p>
</section>
</body>
</html>
"""


def _html_section(board: Leaderboard, png: bytes) -> str:
    from .plot import plot_caption

    alt, caption = plot_caption(board)
    anchor = _file_safe(board.benchmark)
    styler = board.table.style.hide(axis="index")
    styler = styler.format(escape="html").format_index(escape="html", axis=1)
    styler = styler.map(_html_cell_css)
    styler = styler.apply(lambda row: [REPORTED_CSS if row["Source"].startswith("reported") else ""] * len(row),
                          axis=1)
    styler = styler.set_table_attributes(f'class="leaderboard" id="table-{anchor}"').set_uuid(anchor)
    image = base64.b64encode(png).decode("ascii")
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in board.notes)
    warnings = "".join(f"<li>{html.escape(warning)}</li>" for warning in board.warnings)
    return f"""<section class="board" id="{anchor}">
<h2>{html.escape(board.benchmark)}</h2>
<p>{html.escape(_caption(board))}</p>
<div class="table-wrap">{styler.to_html()}</div>
<figure>
<img id="plot-{anchor}" alt="{html.escape(alt)}"
 src="data:image/png;base64,{image}">
<figcaption>{html.escape(caption)}</figcaption>
</figure>
<ul class="notes">{notes}</ul>
{f'<ul class="warnings">{warnings}</ul>' if warnings else ""}
</section>"""


def _html_cell_css(value) -> str:
    text = str(value)
    if text.startswith("failed"):
        return FAILED_CSS
    return NA_CSS if text == NOT_APPLICABLE else ""


# -- terminal ---------------------------------------------------------------------------------
def render_terminal(boards: Sequence[Leaderboard]):
    """A rich renderable: one table per board, then its notes and warnings."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts = []
    for board in boards:
        # A terminal is narrow: columns holding one value for every row move into the title.
        constant = [c for c in ("Backbone", "Head", "Source", "Seeds") if board.table[c].nunique() == 1]
        shown = board.table.drop(columns=constant)
        if RANK_COLUMN in shown.columns:  # narrow: "1 (1–2) a" says the rank, its range and tie group
            shown = shown.assign(Rank=[f"{rank} {group}".strip() if group != MISSING else rank for rank, group
                                       in zip(shown[RANK_COLUMN], shown[TIE_COLUMN])])
            shown = shown.drop(columns=[RANK_COLUMN, TIE_COLUMN])
        title = "; ".join([_caption(board).rstrip("."), *(f"{c}: {board.table[c].iloc[0]}" for c in constant)])
        table = Table(title=title, show_lines=False, header_style="bold")
        for column in shown.columns:
            table.add_column(column, justify="left" if column in NAME_COLUMNS else "right")
        for (_, row), source in zip(shown.iterrows(), board.table["Source"]):
            reported = str(source).startswith("reported")
            table.add_row(*(Text(str(value), style=_terminal_style(str(value), reported)) for value in row))
        parts.extend(Text(flag, style="bold magenta") for flag in board.flags)
        parts.append(table)
        parts.extend(Text(note, style="dim") for note in board.na_notes)
        parts.extend(Text(f"warning: {warning}", style="yellow") for warning in board.warnings)
    return Group(*parts)


def _terminal_style(value: str, reported: bool) -> str:
    if value.startswith("failed"):
        return "bold red"
    return "dim italic" if reported or value == NOT_APPLICABLE else ""


# -- files ------------------------------------------------------------------------------------
def write_leaderboards(boards: Sequence[Leaderboard], out_dir: str | os.PathLike, name: str = "leaderboard",
                       formats: Sequence[str] = FORMATS, generated_at: str | None = None) -> list[Path]:
    """Write the chosen formats (and the PNG plots) under ``out_dir``; the paths written.

    File names are in the module docstring.
    """
    from .plot import plot_board

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = {board.benchmark: plot_board(board) for board in boards}
    written = []
    for board in boards:
        written.append(atomic_write(out / _per_board_name(name, board, boards, "png"), plots[board.benchmark]))
    if "md" in formats:
        written.append(atomic_write(out / f"{name}.md", render_markdown(boards)))
    if "csv" in formats:
        for board in boards:
            written.append(atomic_write(out / _per_board_name(name, board, boards, "csv"), render_csv(board)))
            if board.per_task is not None:
                written.append(atomic_write(out / _per_board_name(name, board, boards, "csv", "-tasks"),
                                            render_tasks_csv(board)))
    if "tex" in formats:
        written.append(atomic_write(out / f"{name}.tex", render_latex(boards)))
    if "html" in formats:
        written.append(atomic_write(out / f"{name}.html", render_html(boards, plots, generated_at)))
    return written


def _per_board_name(name: str, board: Leaderboard, boards: Sequence[Leaderboard], extension: str,
                    suffix: str = "") -> str:
    if len(boards) == 1:
        return f"{name}{suffix}.{extension}"
    return f"{name}-{_file_safe(board.benchmark)}{suffix}.{extension}"


def _file_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text) or "benchmark"

