"""Writing files so that no reader, and no killed process, ever sees half of one; and
recognising, before a library chokes on it, a file that is not what its name says.

Everything adaptbench writes for others to read (run records, adapter checkpoints,
leaderboards, shipped weights) goes through :func:`atomic_path`: the content is written to a
hidden temporary file in the same folder and renamed over the target, which POSIX makes
atomic. A process killed mid-write leaves at most a hidden ``.<name>.<random>.tmp`` file.
The file then has the permissions a plain ``open(path, "w")`` would give it (see
:func:`plain_file_mode`), whatever the writer (safetensors creates its files 0600).

:func:`safetensors_header` reads and checks a ``.safetensors`` file's header without
loading a tensor; its :class:`NotSafetensors` carries a reason fit for a one-line message
(a git-lfs pointer, an empty or truncated file, a pickle with the wrong name ...).

Cached folders (generated micro tasks, decoded splits, cached features) go through
:func:`build_folder_once`: built in a hidden staging folder beside the target, under a lock
file, and renamed into place whole, so a reader sees a complete folder or none, and a build
killed with ``kill -9`` leaves only a staging folder that the next build removes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import tempfile
import os
import stat
import struct
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; when the block succeeds it replaces ``path``.

    Whoever writes the temporary file, the result has the mode a plain ``open(path, "w")``
    gives: that of the file it replaces, else ``0666 & ~umask`` (not ``tempfile.mkstemp``'s
    or safetensors' 0600), so records and checkpoints stay readable by others.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield temporary
        os.chmod(temporary, plain_file_mode(path))
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


def build_folder_once(final: str | os.PathLike, is_current: Callable[[Path], bool],
                      build: Callable[[Path], None]) -> Path:
    """The folder ``final``: kept when ``is_current(final)``, else made by ``build(staging)``
    in a hidden staging folder beside it and renamed into place.

    Builders in the same parent folder take turns on a lock of that folder (``flock``: the
    kernel releases it when a holder dies, and it leaves no file behind), so the second finds
    the first's folder and builds nothing, and any staging folder met while holding the lock
    was left by a killed build: it is removed. A
    stale ``final`` (``is_current`` false: made by older code, or half-made by a non-atomic
    writer) is moved aside in one rename, then replaced, so readers never see a mixture.
    """
    final = Path(final)
    if is_current(final):
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        from .errors import AdaptbenchError

        raise AdaptbenchError(f"cannot create the cache folder {final.parent} ({err.strerror or err}); expected "
                              f"a writable folder (the cache root is ADAPTBENCH_CACHE)") from None
    with _folder_lock(final.parent):
        if is_current(final):  # built by whoever held the lock before us
            return final
        for abandoned in final.parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(abandoned, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
        os.chmod(staging, plain_dir_mode())  # mkdtemp's 0700 would make a shared cache private
        try:
            build(staging)
            _publish_folder(staging, final, is_current)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already when the rename succeeded
    return final


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _publish_folder(staging: Path, final: Path, is_current: Callable[[Path], bool]) -> None:
    """Rename ``staging`` to ``final``; if a writer that takes no lock got there first with a
    current folder, keep theirs."""
    if _try_rename(staging, final) or is_current(final):
        return
    aside = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    _try_rename(final, aside)
    if not _try_rename(staging, final) and not is_current(final):
        from .errors import AdaptbenchError

        raise AdaptbenchError(f"cannot move the built folder {staging} to {final}; "
                              f"expected {final.parent} to be writable")
    shutil.rmtree(aside, ignore_errors=True)


def _try_rename(source: Path, target: Path) -> bool:
    try:
        os.rename(source, target)  # atomic; fails when target is a non-empty folder
        return True
    except OSError:
        return False


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (else set and reset)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_file_mode(path: str | os.PathLike | None = None) -> int:
    """The permission bits ``open(path, "w")`` leaves ``path`` with: an existing regular
    file keeps its own, a new one gets ``0666 & ~umask``."""
    if path is not None:
        try:
            found = os.stat(path)
            if stat.S_ISREG(found.st_mode):
                return stat.S_IMODE(found.st_mode)
        except OSError:
            pass
    return 0o666 & ~current_umask()


def plain_dir_mode() -> int:
    """The permission bits ``os.mkdir`` gives a new folder: ``0777 & ~umask``."""
    return 0o777 & ~current_umask()


def sha256_of(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- recognising what a file holds ----------------------------------------------------------
GIT_LFS_POINTER = b"version https://git-lfs.github.com/spec/"
#: safetensors' own limit on the header (``safetensors/src/tensor.rs``: MAX_HEADER_SIZE)
SAFETENSORS_MAX_HEADER = 100_000_000


class NotSafetensors(ValueError):
    """A file that is not a (whole) safetensors file; ``reason`` fits in parentheses,
    ``lfs_pointer`` says the file is a git-lfs pointer in place of the data."""

    def __init__(self, reason: str, lfs_pointer: bool = False, hint: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.lfs_pointer = lfs_pointer
        self.hint = hint

    def describe(self) -> str:
        """``not a safetensors file (<reason>); <what to do>``, for one-line messages."""
        if self.hint:
            return f"not a safetensors file ({self.reason}); {self.hint}"
        if self.lfs_pointer:
            return f"not a safetensors file ({self.reason}); fetch the real file (`git lfs pull`)"
        return f"not a safetensors file ({self.reason}); a git-lfs pointer? fetch the real file"


def describe_start(head: bytes) -> str | None:
    """What the first bytes of a file say it is, when they say something clear."""
    if head.startswith(GIT_LFS_POINTER):
        return "a git-lfs pointer, not the data"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive, as torch.save and numpy.savez write"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle, as torch.save writes"
    if head.lstrip()[:1] in (b"{", b"[") or head.startswith(b"<"):
        return "a text file (JSON or HTML?)"
    return None


def _hint_for(what: str) -> str:
    if "torch.save" in what:
        return "a PyTorch checkpoint under the wrong name? name it .pth, or convert it to safetensors"
    return "a git-lfs pointer or an error page? fetch the real file"


def lfs_pointer_reason(head: bytes, size: int) -> str:
    """``it is a git-lfs pointer ...`` for a file whose first bytes (``head``) are one."""
    stored = ""
    for line in head.decode("utf-8", "replace").splitlines():
        if line.startswith("size ") and line[5:].strip().isdigit():
            stored = f" in place of the {int(line[5:]):,}-byte file"
    return f"it is a git-lfs pointer, {size} bytes of text{stored}"


def safetensors_header(path: str | os.PathLike) -> dict:
    """The JSON header of a safetensors file, checked against the file's size; raises
    :class:`NotSafetensors` naming what is wrong, before any tensor is read.

    ``OSError`` (a folder, no permission, a missing file) passes through for the caller.
    """
    path = Path(path)
    found = path.stat()
    if stat.S_ISDIR(found.st_mode):
        raise IsADirectoryError(21, "Is a directory", str(path))
    size = found.st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if size == 0:
            raise NotSafetensors("the file is empty", hint="an interrupted download? fetch the real file")
        start = head + handle.read(504)
        if start.startswith(GIT_LFS_POINTER):
            raise NotSafetensors(lfs_pointer_reason(start, size), lfs_pointer=True)
        if size < 8:
            raise NotSafetensors(f"{size} bytes, shorter than the 8-byte header length")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, SAFETENSORS_MAX_HEADER):
            what = describe_start(start)
            if what:
                raise NotSafetensors(f"it is {what}", hint=_hint_for(what))
            raise NotSafetensors(f"its header length field says {length} bytes, but the file holds {size}")
        handle.seek(8)
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        what = describe_start(start)
        if what:
            raise NotSafetensors(f"it is {what}", hint=_hint_for(what)) from None
        raise NotSafetensors(f"its header is not JSON: {err}") from None
    if not isinstance(header, dict):
        raise NotSafetensors(f"its header is a JSON {type(header).__name__}, not an object")
    data_bytes = size - 8 - length
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            if entry is not None and not (isinstance(entry, dict) and all(
                    isinstance(v, str) for v in entry.values())):
                raise NotSafetensors("its __metadata__ is not a mapping of strings")
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not isinstance(entry.get("shape"), list) or not isinstance(entry.get("dtype"), str)):
            raise NotSafetensors(f"its header entry {name!r} lacks dtype, shape or data_offsets")
        end = max(end, offsets[1])
    if end > data_bytes:
        raise NotSafetensors(f"truncated: its header lists {end} bytes of tensor data, the file holds {data_bytes}")
    if end < data_bytes:
        raise NotSafetensors(f"{data_bytes - end} bytes follow the tensor data its header lists")
    return header


def safetensors_metadata(header: dict) -> dict[str, str]:
    """The ``__metadata__`` of a header from :func:`safetensors_header` (``{}`` when none)."""
    return dict(header.get("__metadata__") or {})
