"""Decode once: each split as uint8 arrays in ``ADAPTBENCH_CACHE``, memory-mapped by every run.

A run used to decode, resize and normalise every image with PIL on every epoch (VTAB-1k's
100 epochs decode each training image 100 times). Here a split is decoded once per
(task, split, decoded fields, sample list) into ``.npy`` files, one per *field*, whose first
axis is the sample: ``images`` is ``(N, H, W, 3) uint8`` exactly as PIL's resize returns it
(so the float tensors a run computes from it are bit-identical to torchvision's
``Resize -> ToTensor -> Normalize`` on the PIL image), ``labels`` is ``(N,) int64``. Runs open
the files with ``numpy.load(mmap_mode="r")``: nothing is read until a batch asks for it, and
every process on the machine shares one copy in the page cache. Normalisation (and any
augmentation) happens later, on the training device, on whole batches
(``adaptbench.tasks.batches``).

The same mechanism holds whatever a kind decodes, because a :class:`Field` is just "one
fixed-shape array per sample, with a description that enters the key":

* segmentation masks are a ``masks`` field of ``(H, W) uint8`` label maps, resized with
  nearest-neighbour resampling beside the ``images`` field (255 stays the ignore index);
* video clips are a ``frames`` field of ``(T, H, W, 3) uint8``: T frames decoded once at a
  fixed short side, from which temporal jitter and crops are taken on the device.

``cached_arrays`` is the generic part (also used for cached backbone features): the arrays
are built in a hidden staging folder under a lock (``files.build_folder_once``) and renamed
into place with their ``manifest.json`` written last, so a build killed with ``kill -9``
loses nothing else, and a half-written or stale folder (another key in its manifest, missing
or mis-shaped arrays) is detected and rebuilt. Never pickle: ``.npy`` holds raw arrays and a
header, read with ``allow_pickle=False``.

The existence of every listed image is checked here, once, when a split is first decoded;
an image that cannot be decoded is one line naming the file and the split file listing it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ..errors import AdaptbenchError
from ..files import atomic_write, build_folder_once
from .images import Sample, check_images_exist, load_rgb

CACHE_ENV = "ADAPTBENCH_CACHE"
FORMAT = 1  # bump when the layout of a cached folder changes
MANIFEST = "manifest.json"

#: torchvision's interpolation names -> PIL's filters (what ``transforms.Resize`` passes to
#: ``PIL.Image.resize`` for a PIL image).
PIL_FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
               "box": Image.BOX, "hamming": Image.HAMMING, "lanczos": Image.LANCZOS}


def cache_root() -> Path:
    """``$ADAPTBENCH_CACHE``, else ``~/.cache/adaptbench``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "adaptbench").expanduser()


# -- fields ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArraySpec:
    """The per-sample shape and dtype of one cached array."""

    shape: tuple[int, ...]
    dtype: str


class Field:
    """One fixed-shape array per sample, decoded from the sample (see the module docstring)."""

    version: ClassVar[int] = 1
    #: a listed path may be a folder (a video's frames), not only a file (the existence check)
    folders: ClassVar[bool] = False

    def array_spec(self) -> ArraySpec:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What the decoded values depend on (enters the cache key)."""
        return {"field": type(self).__name__, "version": self.version}

    def decode(self, sample: Sample, source: str) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class ImageField(Field):
    """The image as RGB, resized (no crop) to ``size`` = (height, width) with PIL's ``interpolation``."""

    size: tuple[int, int]
    interpolation: str

    def __post_init__(self) -> None:
        if self.interpolation not in PIL_FILTERS:
            raise AdaptbenchError(f"interpolation {self.interpolation!r} cannot be decoded with PIL; expected "
                                  f"one of {', '.join(PIL_FILTERS)}")

    def array_spec(self) -> ArraySpec:
        return ArraySpec((*self.size, 3), "uint8")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "size": list(self.size), "interpolation": self.interpolation}

    def decode(self, sample: Sample, source: str) -> np.ndarray:
        image = load_rgb(sample[0], source)
        height, width = self.size
        # torchvision's Resize on a PIL image is exactly this call (it takes (w, h)).
        return np.asarray(image.resize((width, height), resample=PIL_FILTERS[self.interpolation]))


@dataclass(frozen=True)
class LabelField(Field):
    """The sample's integer label."""

    def array_spec(self) -> ArraySpec:
        return ArraySpec((), "int64")

    def decode(self, sample: Sample, source: str) -> np.ndarray:
        return np.asarray(sample[1], dtype=np.int64)


# -- cached arrays -----------------------------------------------------------------------------
@dataclass
class CachedArrays:
    """Read-only arrays with a common first axis (the samples), memory-mapped from ``folder``."""

    folder: Path
    arrays: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def cache_folder(kind: str, task: str, split: str, key: dict[str, Any]) -> Path:
    """``<cache>/<kind>/v<FORMAT>/<task>/<split>-<key hash>``."""
    return cache_root() / kind / f"v{FORMAT}" / task.replace("/", "__") / f"{split}-{key_hash(key)[:16]}"


def cached_arrays(folder: Path, key: dict[str, Any], count: int, specs: dict[str, ArraySpec],
                  fill: Callable[[dict[str, np.ndarray]], None]) -> CachedArrays:
    """The arrays ``specs`` (``count`` rows each) cached in ``folder`` for ``key``: opened if
    current, else built once by ``fill(writable arrays)`` (see the module docstring)."""
    key = {"format": FORMAT, **key}

    def build(staging: Path) -> None:
        arrays = {name: _new_array(staging / f"{name}.npy", (count, *spec.shape), spec.dtype)
                  for name, spec in specs.items()}
        fill(arrays)
        for array in arrays.values():
            if isinstance(array, np.memmap):
                array.flush()
        del arrays
        manifest = {"key": key, "count": count,
                    "arrays": {name: {"shape": list(spec.shape), "dtype": spec.dtype} for name, spec in specs.items()}}
        atomic_write(staging / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))  # last: marks it whole

    build_folder_once(folder, lambda found: _open(found, key, count, specs) is not None, build)
    arrays = _open(folder, key, count, specs)
    if arrays is None:  # replaced under us between the build and the open: extremely unlikely
        raise AdaptbenchError(f"cached arrays {folder} changed while being opened; run again")
    return CachedArrays(folder, arrays)


def _new_array(path: Path, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if 0 in shape:  # numpy cannot memory-map an empty file
        np.save(path, np.zeros(shape, dtype=dtype))
        return np.zeros(shape, dtype=dtype)
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def _open(folder: Path, key: dict[str, Any], count: int, specs: dict[str, ArraySpec]) -> dict[str, np.ndarray] | None:
    """The folder's arrays, or None when it is missing, half-made or made for another key."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("key") != key or manifest.get("count") != count:
            return None
        arrays = {}
        for name, spec in specs.items():
            path = folder / f"{name}.npy"
            array = np.load(path, mmap_mode="r" if count else None, allow_pickle=False)
            if array.shape != (count, *spec.shape) or array.dtype != np.dtype(spec.dtype):
                return None
            arrays[name] = array
        return arrays
    except (OSError, ValueError, json.JSONDecodeError, AttributeError):
        return None


# -- decoded splits ----------------------------------------------------------------------------
def decoded_split(samples: Sequence[Sample], fields: dict[str, Field], *, task: str, split: str,
                  source: str, where: list[str] | None = None, workers: int | None = None) -> CachedArrays:
    """``samples`` decoded into ``fields``, once per (task, split, fields, sample list).

    ``source`` names the split file in errors and ``where`` (one entry per sample) the line
    that lists each sample. ``workers``: decoding threads (PIL releases the GIL while it
    decodes and resizes); 0 decodes in this thread; default the usable CPUs.
    """
    key = {"task": task, "split": split, "fields": {name: field.describe() for name, field in fields.items()},
           "samples": samples_hash(samples)}

    def fill(arrays: dict[str, np.ndarray]) -> None:
        # once: a cached split is not checked again; the list itself, when it is one, may check
        # more (a rawframes list: each folder's listed frame count)
        folders = any(field.folders for field in fields.values())
        check_images_exist(samples if isinstance(samples, list) else list(samples), source, where, folders)

        def decode(index: int) -> None:
            for name, field in fields.items():
                arrays[name][index] = field.decode(samples[index], source)

        if workers == 0:
            for index in range(len(samples)):
                decode(index)
            return
        with ThreadPoolExecutor(max_workers=workers or usable_cpus()) as pool:
            for _ in pool.map(decode, range(len(samples))):
                pass  # map re-raises the first error (an unreadable image, named) here

    specs = {name: field.array_spec() for name, field in fields.items()}
    return cached_arrays(cache_folder("decoded", task, split, key), key, len(samples), specs, fill)


def samples_hash(samples: Sequence[Sample]) -> str:
    """sha256 of the sample list (absolute paths and labels, in order): the file-list part of the key."""
    digest = hashlib.sha256()
    for path, label in samples:
        digest.update(f"{os.path.abspath(path)}\t{label}\n".encode())
    return digest.hexdigest()


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may use (cgroups, Slurm)
    except AttributeError:
        return os.cpu_count() or 2
