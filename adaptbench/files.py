"""Writing files so that no reader, and no killed process, ever sees half of one.

Everything adaptbench writes for others to read (run records, adapter checkpoints,
leaderboards, shipped weights) goes through :func:`atomic_path`: the content is written to a
hidden temporary file in the same folder and renamed over the target, which POSIX makes
atomic. A process killed mid-write leaves at most a hidden ``.<name>.<random>.tmp`` file.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; when the block succeeds it replaces ``path``.

    The temporary file is created by the writer with the usual permissions (umask), unlike
    ``tempfile.mkstemp``'s 0600, so records and checkpoints stay readable by others.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def atomic_write(path: str | os.PathLike, content: str | bytes) -> Path:
    """Write ``content`` (text as UTF-8) to ``path`` atomically, flushed to disk first."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def sha256_of(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
