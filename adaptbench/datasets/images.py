"""Samples (image path, label) and reading them, with errors that name the file.

Both readers (``vtab.py``, ``fgvc.py``) and the generated micro tasks list their samples as a
:class:`SampleList`, which remembers the split file (and line) of each. Existence is checked
for a whole split at once (one ``stat`` per image), when the decode cache first decodes it
(``decoded.py``); decoding problems can only be found when an image is read, so
:func:`load_rgb` turns them into one-line :class:`AdaptbenchError` messages that name the
file and the split file that listed it. No torch here: reading split lists stays cheap.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from PIL import Image

from ..errors import AdaptbenchError

Sample = tuple[Path, int]


class SampleList(list):
    """A split's samples, with where they were listed, for errors that name the place:
    ``source`` (the split file or files) and ``where`` (per sample, e.g. ``file:line``)."""

    def __init__(self, samples=(), source: str = "", where: list[str] | None = None):
        super().__init__(samples)
        self.source = source
        self.where = where


#: What PIL raises for a damaged file: undecodable data as UnidentifiedImageError (an
#: OSError), truncated data as OSError, broken headers as ValueError, SyntaxError, EOFError,
#: struct.error, IndexError, TypeError or ZeroDivisionError, depending on the format plugin.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, TypeError,
                 ZeroDivisionError, Image.DecompressionBombError)


def load_rgb(path: Path, source: str = "") -> Image.Image:
    """Decode ``path`` completely as RGB, so a truncated file fails here, naming the path."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # convert() forces the full decode
    except FileNotFoundError:
        raise unreadable_image_error(path, source, "the file does not exist") from None
    except IsADirectoryError:
        raise unreadable_image_error(path, source, "it is a directory") from None
    except DECODE_ERRORS as err:
        raise unreadable_image_error(path, source, err) from None


def check_images_exist(samples: list[Sample], source: str | None = None, where: list[str] | None = None,
                       folders: bool = False) -> None:
    """Fail when listed images are missing or are not files (one ``stat`` each). ``where``:
    for each sample, the place that lists it (``file:line``, or a file and key), named in the
    message after ``source``; both default to a :class:`SampleList`'s own. ``folders`` (or the
    list's own ``folders``): a listed path may also be a folder (a video as a folder of frames,
    ``video.py``); such a list may check its folders further with ``check_listed(source, where)``."""
    source = source if source is not None else getattr(samples, "source", "")
    where = where if where is not None else getattr(samples, "where", None)
    folders = folders or getattr(samples, "folders", False)
    exists = os.path.exists if folders else os.path.isfile
    bad = [index for index, (path, _) in enumerate(samples) if not exists(path)]
    if bad:
        first = samples[bad[0]][0]
        at = f"{where[bad[0]]}; " if where is not None else ""
        what, state = (("path", "does not exist") if folders else
                       ("image", "is a directory, not an image file" if os.path.isdir(first) else "does not exist"))
        raise AdaptbenchError(
            f"{what} {os.path.abspath(first)} listed in {source} {state} "
            f"({at}{len(bad)} of the {len(samples)} listed {what}s are missing); "
            f"expected every listed path to exist"
        )
    check_listed = getattr(samples, "check_listed", None)
    if check_listed is not None:
        check_listed(source, where)


def read_text_file(path: Path, what: str, expected: str) -> str:
    """A data file's text (UTF-8, a byte-order mark allowed); a folder, a missing or
    unreadable file, or bytes that are not UTF-8 are one line naming the file (and line)."""
    path = Path(path)
    if path.is_dir():
        raise AdaptbenchError(f"{what} {path} is a directory; expected {expected}")
    if not path.exists():
        raise AdaptbenchError(f"{what} {path} does not exist; expected {expected}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise AdaptbenchError(f"{what} {path} cannot be read ({err.strerror or err}); expected {expected}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise AdaptbenchError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
            f"expected the {what} as UTF-8 text"
        ) from None


def shorten(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters, for quoting a bad value in one line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unreadable_image_error(path: Path, source: str, reason: str | BaseException) -> AdaptbenchError:
    """The one-line error for an image that cannot be decoded (``source``: who listed it)."""
    if isinstance(reason, BaseException):
        text = str(reason).strip()
        reason = text.splitlines()[0] if text else type(reason).__name__
    listed = f" (listed in {source})" if source else ""
    return AdaptbenchError(
        f"cannot read image {os.path.abspath(path)}{listed}: {reason}; expected a readable image file"
    )
