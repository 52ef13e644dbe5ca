"""The leaderboard as text, from records or files: what ``adaptbench.leaderboard(records,
format=...)`` and ``adaptbench leaderboard --format`` print."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import AdaptbenchError
from .render import FORMATS

if TYPE_CHECKING:
    from ..records import RunRecord

def make_leaderboard(records: RunRecord | str | os.PathLike | Iterable[RunRecord | str | os.PathLike],
                     format: str = "md", wise: bool = False) -> str:  # noqa: A002 - the CLI's --format
    """The leaderboard of ``records`` (run records, record files or folders, mixed as you like)
    as text: ``format`` is ``md``, ``csv``, ``tex`` or ``html`` (``adaptbench leaderboard
    --format``); one table per benchmark (csv: each headed ``# <benchmark>`` when several).
    ``wise``: WiSE-FT columns (``--wise``). Also callable as ``adaptbench.leaderboard(records,
    format=...)``."""
    if format not in FORMATS:
        raise AdaptbenchError(f"format {format!r}: expected one of {', '.join(FORMATS)}")
    from ..records import RunRecord
    from .aggregate import build_leaderboards
    from .records import load_records as read_records

    given = [records] if isinstance(records, (str, os.PathLike, RunRecord)) else list(records)
    loaded = [item for item in given if isinstance(item, RunRecord)]
    paths = [item for item in given if not isinstance(item, RunRecord)]
    bad = [item for item in paths if not isinstance(item, (str, os.PathLike))]
    if bad:
        raise AdaptbenchError(f"leaderboard records: expected RunRecords or paths, got {type(bad[0]).__name__}")
    if paths:
        loaded += read_records(paths)
    if not loaded:
        raise AdaptbenchError("leaderboard: no run records given")
    boards = build_leaderboards(loaded, wise=wise)
    if not boards:
        raise AdaptbenchError("leaderboard: no final run records: only tune records were given")
    return render_leaderboards(boards, format)


def render_leaderboards(boards: list, format: str) -> str:  # noqa: A002 - the CLI's --format
    """Built leaderboards as ``md``, ``csv`` (each headed ``# <benchmark>`` when several), ``tex``
    or ``html`` text."""
    from .render import render_csv, render_html, render_latex, render_markdown

    if format == "csv":
        return "\n".join(f"# {b.benchmark}\n{render_csv(b)}" if len(boards) > 1 else render_csv(b) for b in boards)
    return {"md": render_markdown, "tex": render_latex, "html": render_html}[format](boards)
