"""User-facing errors.

An :class:`AdaptbenchError` is bad input the user can fix (a wrong name, a missing file,
a malformed line).  The CLI prints its message as one line on stderr and exits non-zero,
with no traceback unless ``--debug``.  Messages must name the file, line, name or value
at fault and say what was expected.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AdaptbenchError(Exception):
    """Bad input, reported to the user as one line (see the module docstring)."""

    def __init__(self, message: str):
        # Keep a single positional argument so the exception survives pickling
        # (DataLoader workers re-raise it in the main process).
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


def closest_names(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The registered names that look most like ``name`` (for "did you mean" hints)."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A " (did you mean 'x' or 'y'?)" suffix, or "" when nothing is close."""
    close = closest_names(name, candidates)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def one_line(err: BaseException) -> str:
    """A single line for the user: the message, without any traceback text.

    DataLoader workers re-raise an exception with the worker's traceback folded into its
    message; the user's line is the last one of it.
    """
    text = err.message if isinstance(err, AdaptbenchError) else f"{type(err).__name__}: {err}"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) > 1 and "Traceback" in text:
        last = lines[-1]
        _, sep, rest = last.partition("AdaptbenchError: ")
        return rest if sep else last
    return " ".join(line.strip() for line in lines) or type(err).__name__
