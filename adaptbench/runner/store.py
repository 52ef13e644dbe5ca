"""The result store: one absolute location that holds a matrix's run records, adapter
checkpoints, resume checkpoints and leases, used alike by the driver and by every worker.

A location is a local folder (made absolute once, where the driver runs, so a Ray worker in
its runtime folder or a Slurm job in whatever folder it starts in writes where the driver
reads) or an fsspec URL (``s3://bucket/results/vtab1k``, ``gs://...``, ``file:///...``) for
storage that the driver and remote workers share. Local writes are atomic (temp file +
rename, ``files.atomic_write``); a URL write is one ``put`` of the whole file, which object
stores make visible all at once.

Layout (hidden folders are skipped by the leaderboard's record reader)::

    <location>/<cell id>.json                   the record
    <location>/<cell id>.adapter.safetensors    its adapter checkpoint
    <location>/.resume/<cell id>/               its resume checkpoint while it trains
    <location>/.leases/<cell id>.json           who is running it, with a heartbeat

**Leases.** Before a cell is submitted the driver takes its lease; the worker that runs it
takes the lease over and renews it every ``heartbeat_s`` until its record is written. A
re-run (after the driver was killed, or a second driver on the same store) never launches a
cell whose lease is fresh: it waits for its record. A lease is stale, and taken over, when
its heartbeat is older than ``lease_timeout_s`` or, on the same host, when its holder process
is gone (so a local re-run after ``kill -9`` does not wait out the timeout).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import AdaptbenchError

LEASES = ".leases"
RESUME = ".resume"


def is_url(location: str) -> bool:
    return "://" in location


@dataclass(frozen=True)
class Lease:
    """Who runs a cell: host, process, and when it last said it was alive."""

    cell_id: str
    host: str
    pid: int
    heartbeat: float  # time.time() of the last renewal
    holder: str = "worker"  # "driver" (submitted, not started) or "worker"

    def is_stale(self, timeout_s: float, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if now - self.heartbeat > timeout_s:
            return True
        return self.host == socket.gethostname() and not _process_alive(self.pid)



@dataclass(frozen=True)
class ResultStore:
    """A matrix's results at one absolute ``location`` (see the module docstring)."""

    location: str

    @classmethod
    def at(cls, where: str | os.PathLike | ResultStore) -> ResultStore:
        """The store at ``where``: a URL as given, a path made absolute (here, not on a worker)."""
        if isinstance(where, ResultStore):
            return where
        text = os.fspath(where)
        if is_url(text):
            return cls(text.rstrip("/"))
        return cls(str(Path(text).expanduser().absolute()))

    @property
    def is_local(self) -> bool:
        return not is_url(self.location)

    def __str__(self) -> str:
        return self.location

    # -- names --------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """The location of ``parts`` under the store (a path or a URL)."""
        return "/".join([self.location, *parts]) if not self.is_local else str(Path(self.location, *parts))

    def record_location(self, run_id: str) -> str:
        return self.path(f"{run_id}.json")

    def adapter_location(self, run_id: str) -> str:
        return self.path(f"{run_id}.adapter.safetensors")

    # -- bytes ----------------------------------------------------------------------------------
    def read_bytes(self, location: str) -> bytes | None:
        """The file's content, or None when it does not exist."""
        if self.is_local:
            try:
                return Path(location).read_bytes()
            except FileNotFoundError:
                return None
        fs, path = self._fs(location)
        try:
            return fs.cat_file(path)
        except FileNotFoundError:
            return None

    def write_bytes(self, location: str, data: bytes) -> str:
        """Write atomically (local: temp file + rename; URL: one put)."""
        if self.is_local:
            from ..files import atomic_write

            atomic_write(location, data)
            return location
        fs, path = self._fs(location)
        fs.makedirs(fs._parent(path), exist_ok=True)
        fs.pipe_file(path, data)
        return location

    def exists(self, location: str) -> bool:
        if self.is_local:
            return Path(location).exists()
        fs, path = self._fs(location)
        return fs.exists(path)

    def remove(self, location: str, recursive: bool = False) -> None:
        """Delete a file (or a folder, ``recursive``); absent is fine."""
        if self.is_local:
            import shutil

            target = Path(location)
            if recursive and target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
            return
        fs, path = self._fs(location)
        try:
            fs.rm(path, recursive=recursive)
        except FileNotFoundError:
            pass

    @contextmanager
    def local_copy_to(self, location: str) -> Iterator[Path]:
        """A local path to write; on success it is put at ``location`` (atomically)."""
        if self.is_local:
            from ..files import atomic_path

            with atomic_path(location) as temporary:
                yield temporary
            return
        with tempfile.TemporaryDirectory() as folder:
            temporary = Path(folder) / Path(location).name
            yield temporary
            self.write_bytes(location, temporary.read_bytes())

    def _fs(self, location: str):
        try:
            from fsspec.core import url_to_fs
        except ImportError:  # pragma: no cover - fsspec comes with lightning
            raise AdaptbenchError(f"result store {self.location}: a URL needs fsspec (pip install fsspec)") from None
        try:
            return url_to_fs(location)
        except (ImportError, ValueError) as err:
            raise AdaptbenchError(f"result store {self.location}: {err}") from None

    # -- records --------------------------------------------------------------------------------
    def read_record(self, run_id: str):
        """The record of ``run_id``, or None when it has none (or one this version cannot read:
        the cell then runs again)."""
        from ..records import RunRecord

        location = self.record_location(run_id)
        data = self.read_bytes(location)
        if data is None:
            return None  # never written (records are written atomically, so never half-written)
        try:
            return RunRecord.from_data(json.loads(data), location)
        except (AdaptbenchError, ValueError):
            return None

    def write_record(self, record) -> str:
        text = json.dumps(record.model_dump(mode="json"), indent=2, sort_keys=True, default=str)
        return self.write_bytes(self.record_location(record.run_id), text.encode("utf-8"))

    def has_record(self, run_id: str) -> bool:
        return self.exists(self.record_location(run_id))

    def record_locations(self) -> list[str]:
        """Every record file directly in the store (not the hidden folders)."""
        if self.is_local:
            folder = Path(self.location)
            return sorted(str(p) for p in folder.glob("*.json") if not p.name.startswith(".")) \
                if folder.is_dir() else []
        fs, path = self._fs(self.location)
        protocol = self.location.split("://", 1)[0]
        return sorted(f"{protocol}://{found}" if not found.startswith(f"{protocol}://") else found
                      for found in fs.glob(f"{path}/*.json") if not Path(found).name.startswith("."))

    # -- leases ----------------------------------------------------------------------------------
    def lease_location(self, cell_id: str) -> str:
        return self.path(LEASES, f"{cell_id}.json")

    def lease(self, cell_id: str) -> Lease | None:
        data = self.read_bytes(self.lease_location(cell_id))
        if data is None:
            return None
        try:
            return Lease(**json.loads(data))
        except (ValueError, TypeError):
            return None  # a foreign or damaged file: treated as no lease

    def take_lease(self, cell_id: str, timeout_s: float, holder: str = "driver") -> Lease | None:
        """Take the cell's lease unless a fresh one is held by someone else; returns the fresh
        lease that stops us, or None when the lease is now ours."""
        current = self.lease(cell_id)
        if current is not None and not current.is_stale(timeout_s) and not _is_ours(current):
            return current
        self.hold_lease(cell_id, holder)
        return None

    def hold_lease(self, cell_id: str, holder: str = "worker") -> Lease:
        """Write (or renew) the lease as this process's."""
        lease = Lease(cell_id, socket.gethostname(), os.getpid(), time.time(), holder)
        self.write_bytes(self.lease_location(cell_id), json.dumps(asdict(lease)).encode("utf-8"))
        return lease

    def release_lease(self, cell_id: str) -> None:
        self.remove(self.lease_location(cell_id))

    @contextmanager
    def keep_lease(self, cell_id: str, heartbeat_s: float) -> Iterator[None]:
        """Hold the cell's lease, renewed every ``heartbeat_s`` by a thread, until the block ends."""
        self.hold_lease(cell_id)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(heartbeat_s):
                try:
                    self.hold_lease(cell_id)
                except OSError:
                    pass  # shared storage hiccup: the next beat tries again

        thread = threading.Thread(target=beat, name=f"lease-{cell_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.release_lease(cell_id)

    # -- resume checkpoints --------------------------------------------------------------------
    def resume_location(self, cell_id: str) -> str:
        return self.path(RESUME, cell_id)


def _is_ours(lease: Lease) -> bool:
    return lease.host == socket.gethostname() and lease.pid == os.getpid()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    """A killed child not yet reaped still answers kill(0): read its state (Linux)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True

