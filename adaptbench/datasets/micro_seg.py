"""The embedded segmentation tasks: real nuclei tiles and procedural shape scenes, written in
the layouts the community ships (``mask_folders``, ``mmseg``) and read back by their readers.

**nuclei** (binary: background, nucleus) cuts real data: the 512x512 16-bit fluorescence
image ``img2d.tif`` and its instance labels ``mask2d.tif`` that stardist ships in its wheel
(``stardist/data/images/``; 125 nuclei of Kaggle's Data Science Bowl 2018, 19.9% of the
pixels). The files are located with ``importlib.util.find_spec`` and read with tifffile
(else Pillow, which decodes these uncompressed TIFFs to the same array): stardist itself is
never imported. Pixels go to 8 bits by the percentile normalisation of StarDist's notebooks
(csbdeep's ``normalize(img, 1, 99.8)``), clipped: ``clip((x - p1) / (p99.8 - p1), 0, 1) * 255``,
rounded, with p1 = 7 and p99.8 = 201 taken over the training region only (NumPy's linear
percentiles; the whole image gives 8 and 206). The mask is ``label > 0``. Tiles are 64x64,
cut with stride 32 from three regions that share no pixel and no nucleus (the widest nucleus
spans 39 pixels; a 32-pixel gap separates the training rows from the rest, and val from test)::

    train: rows   0-223, columns   0-511   90 positions x 4 dihedral views = 360 tiles
    val:   rows 256-511, columns   0-223   42 tiles
    test:  rows 256-511, columns 256-511   49 tiles

Each training position gives its tile as is plus 3 of its 7 other dihedral views (rotations
by 90 degrees and mirror images: a microscope has no up), drawn from the task's seed. Layout
``mask_folders``: ``images/<id>.png`` (grayscale), ``masks/<id>.png`` (0 / 255) and
``{train,val,test}.txt`` listing the ids, ``y<row>_x<column>[_<view>]`` of the tile's corner.

**shapes** (5 classes: background, disc, square, triangle, cross) is procedural, in the mmseg
layout (``img_dir/{train,val}/<stem>.png`` RGB, ``ann_dir/{train,val}/<stem>.png`` label maps,
255 = ignore, no reduce_zero_label; 400 train, 200 val; the protocol takes its tune split
from train). A scene is 64x64: a background of two colours along a random gradient with
smooth blotches and noise, 2-5 objects of random class (equal odds), area (150-600 pixels),
rotation, position, colour and fill (flat, stripes or speckle: fill never tells the class),
painted in random order so that later objects occlude earlier ones, and 0-2 unlabelled
blobs. As mmseg's VOC annotations do, a band around every object outline is ignore (here
the pixels within 0.75 of the edge, about 1.5 pixels wide), and the unlabelled blobs are
ignore throughout; what a later layer covers takes that layer's label. Measured over the 400
training scenes: background 68% of the pixels, each shape 5.1-5.8% (and present in 59-62% of
the scenes), ignore 10%.

Both are deterministic (shapes draws each split from its own stream (seed, split index);
pixels in float64, as ``micro.py`` explains) and checksummed by :func:`folder_checksum`: the
sha256 over every file's relative path and content, PNGs by their decoded pixels (mode,
size and bytes), so that a different zlib does not change it. ``micro.py`` writes, verifies
and caches them as it does the classification tasks.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..errors import AdaptbenchError
from .procedural import linear_upsampler
from .images import DECODE_ERRORS, unreadable_image_error

if TYPE_CHECKING:
    from .micro import MicroTask

__all__ = ["IGNORE", "SEG_RECIPES", "SEG_WRITERS", "SegSplit", "folder_checksum", "nuclei_source",
           "nuclei_task", "shapes_scene", "shapes_task", "write_mask_folders", "write_mmseg"]

IGNORE = 255  # mmseg's ignore_index
TILE = 64


@dataclass(frozen=True)
class SegSplit:
    """One split: file stems, images (N, H, W) or (N, H, W, 3) and label maps (N, H, W), uint8."""

    stems: tuple[str, ...]
    images: np.ndarray
    masks: np.ndarray  # class ids, IGNORE = not labelled; binary tasks 0 / 1


SegData = dict[str, SegSplit]


# -- nuclei: stardist's DSB2018 image ---------------------------------------------------------
NUCLEI_FILES = ("img2d.tif", "mask2d.tif")
NUCLEI_PERCENTILES = (1.0, 99.8)  # StarDist's normalize(img, 1, 99.8)
STRIDE = 32
# (rows, columns) of each split's region, half-open; 32-pixel gaps keep the nuclei apart
NUCLEI_REGIONS = {
    "train": ((0, 224), (0, 512)),
    "val": ((256, 512), (0, 224)),
    "test": ((256, 512), (256, 512)),
}
TRAIN_VIEWS = 4  # each training position: as is + 3 of the 7 other dihedral views
VIEW_NAMES = ("rot0", "rot90", "rot180", "rot270", "flip_rot0", "flip_rot90", "flip_rot180", "flip_rot270")


def nuclei_source() -> tuple[np.ndarray, np.ndarray]:
    """stardist's ``img2d.tif`` (512x512 uint16) and ``mask2d.tif`` (instance labels), as arrays."""
    folder = _stardist_images()
    image, labels = (_read_tiff(folder / name) for name in NUCLEI_FILES)
    for path, array in zip(NUCLEI_FILES, (image, labels)):
        if array.shape != (512, 512) or array.dtype != np.uint16:
            raise AdaptbenchError(f"{folder / path}: a {array.dtype} array of shape {array.shape}; expected "
                                  f"512x512 uint16, as stardist 0.9 ships it")
    return image, labels


def _stardist_images() -> Path:
    # find_spec locates the package without running it (stardist's __init__ needs TensorFlow-era deps)
    spec = importlib.util.find_spec("stardist")
    install = "install it with `pip install stardist` (its files suffice: `pip install --no-deps stardist`)"
    if spec is None:
        raise AdaptbenchError(f"micro task 'nuclei' is cut from the nuclei image that stardist ships "
                              f"(stardist/data/images/img2d.tif), and stardist is not installed; {install}")
    for location in spec.submodule_search_locations or ():
        folder = Path(location) / "data" / "images"
        if all((folder / name).is_file() for name in NUCLEI_FILES):
            return folder
    raise AdaptbenchError(f"micro task 'nuclei': the installed stardist has no data/images/"
                          f"{{{','.join(NUCLEI_FILES)}}}; reinstall it (`pip install --force-reinstall stardist`)")


def _read_tiff(path: Path) -> np.ndarray:
    try:
        import tifffile
    except ImportError:
        tifffile = None
    try:
        if tifffile is not None:
            return np.asarray(tifffile.imread(path))
        with Image.open(path) as image:  # uncompressed 16-bit TIFF: Pillow reads the same array
            return np.asarray(image)
    except DECODE_ERRORS as err:
        raise AdaptbenchError(f"{path}: not a readable TIFF ({err}); reinstall stardist") from None


def to_uint8(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """``clip((x - low) / (high - low), 0, 1) * 255``, rounded (float64: exact per platform)."""
    scaled = (image.astype(np.float64) - low) / (high - low)
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def dihedral(tile: np.ndarray, view: int) -> np.ndarray:
    """View 0-3: rotated by 90 degrees ``view`` times; 4-7: mirrored left-right, then rotated."""
    return np.rot90(tile[:, ::-1] if view >= 4 else tile, view % 4)


def nuclei_task(task: MicroTask) -> SegData:
    image, labels = nuclei_source()
    (top, bottom), _ = NUCLEI_REGIONS["train"]
    low, high = np.percentile(image[top:bottom], NUCLEI_PERCENTILES)
    pixels, foreground = to_uint8(image, low, high), (labels > 0).astype(np.uint8)
    rng = np.random.default_rng(task.seed)
    data = {}
    for split, ((y0, y1), (x0, x1)) in NUCLEI_REGIONS.items():
        stems, tiles, masks = [], [], []
        for y in range(y0, y1 - TILE + 1, STRIDE):
            for x in range(x0, x1 - TILE + 1, STRIDE):
                window = (slice(y, y + TILE), slice(x, x + TILE))
                views = [0] if split != "train" else [0, *sorted(1 + rng.permutation(7)[: TRAIN_VIEWS - 1])]
                for view in views:
                    suffix = f"_{VIEW_NAMES[view]}" if split == "train" else ""
                    stems.append(f"y{y:03d}_x{x:03d}{suffix}")
                    tiles.append(dihedral(pixels[window], view))
                    masks.append(dihedral(foreground[window], view))
        data[split] = SegSplit(tuple(stems), np.stack(tiles), np.stack(masks))
    _check_sizes(task, data)
    return data


def _check_sizes(task: MicroTask, data: SegData) -> None:
    got = tuple(len(data[split].stems) if split in data else 0 for split in ("train", "val", "test"))
    if got != tuple(task.sizes):
        raise AdaptbenchError(f"micro task {task.name!r}: generated {got} (train, val, test) samples; "
                              f"expected {tuple(task.sizes)}, the sizes recorded in SEG_RECIPES")


# -- shapes: procedural scenes ----------------------------------------------------------------
SHAPES_SIZE = 64
SHAPE_CLASSES = ("disc", "square", "triangle", "cross")  # labels 1-4; 0 is background
BAND = 0.75  # pixels within this distance of an object's outline are ignore
_YY, _XX = np.mgrid[0:SHAPES_SIZE, 0:SHAPES_SIZE].astype(np.float64)


def shapes_task(task: MicroTask) -> SegData:
    data = {}
    for index, (split, size) in enumerate(zip(("train", "val", "test"), task.sizes)):
        if not size:
            continue
        rng = np.random.default_rng([task.seed, index])  # a stream per split, as micro.py's
        scenes = [shapes_scene(rng) for _ in range(size)]
        data[split] = SegSplit(tuple(f"{i:05d}" for i in range(size)),
                               np.stack([s[0] for s in scenes]), np.stack([s[1] for s in scenes]))
    _check_sizes(task, data)
    return data


def shapes_scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One scene: an RGB image (64, 64, 3) and its label map (64, 64), both uint8."""
    canvas, background = _shapes_background(rng)
    labels = np.zeros((SHAPES_SIZE, SHAPES_SIZE), dtype=np.uint8)
    layers = [int(c) for c in rng.integers(1, len(SHAPE_CLASSES) + 1, size=int(rng.integers(2, 6)))]
    layers += [IGNORE] * int(rng.choice(3, p=(0.4, 0.4, 0.2)))  # unlabelled blobs
    for label in rng.permutation(layers):
        depth = _blob_depth(rng) if label == IGNORE else _shape_depth(rng, int(label))
        _paint_rgb(canvas, depth, _fill(rng, background))
        if label == IGNORE:
            labels[depth > -BAND] = IGNORE
        else:
            labels[depth > BAND] = label
            labels[np.abs(depth) <= BAND] = IGNORE
    canvas += rng.normal(0.0, rng.uniform(1.0, 6.0), canvas.shape)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), labels


def _shapes_background(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two colours along a random direction, smooth blotches; also its mean colour."""
    first, second = rng.uniform(0, 255, (2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (_XX * np.cos(angle) + _YY * np.sin(angle)) / SHAPES_SIZE
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    canvas = first + (second - first) * ramp[..., None]
    blend = linear_upsampler(SHAPES_SIZE, 5)
    blotches = blend @ rng.normal(0.0, 1.0, (5, 5)) @ blend.T
    canvas += rng.uniform(5, 25) * blotches[..., None]
    return canvas, (first + second) / 2


def _shape_depth(rng: np.random.Generator, label: int) -> np.ndarray:
    """Signed depth inside the shape, in pixels (> 0 inside); every shape has area ``area``."""
    area = rng.uniform(150, 600)
    cy, cx = rng.uniform(8, SHAPES_SIZE - 8, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    dy, dx = _YY - cy, _XX - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = dy * np.cos(angle) - dx * np.sin(angle)
    name = SHAPE_CLASSES[label - 1]
    if name == "disc":
        return np.sqrt(area / np.pi) - np.sqrt(u * u + v * v)
    if name == "square":
        return np.sqrt(area) / 2 - np.maximum(np.abs(u), np.abs(v))
    if name == "triangle":  # equilateral: inradius minus the largest projection on an edge normal
        inradius = np.sqrt(4 * area / np.sqrt(3)) / (2 * np.sqrt(3))
        normals = [(np.cos(a), np.sin(a)) for a in (0.0, 2 * np.pi / 3, 4 * np.pi / 3)]
        return inradius - np.max([u * cu + v * su for cu, su in normals], axis=0)
    width = np.sqrt(area / 5)  # a plus sign: arms 3 widths long, area 5 width^2
    half, reach = width / 2, 1.5 * width
    return np.maximum(np.minimum(half - np.abs(v), reach - np.abs(u)), np.minimum(half - np.abs(u), reach - np.abs(v)))


def _blob_depth(rng: np.random.Generator) -> np.ndarray:
    """An irregular blob: a radius that wanders with the angle (two random harmonics)."""
    radius = np.sqrt(rng.uniform(30, 150) / np.pi)
    cy, cx = rng.uniform(6, SHAPES_SIZE - 6, size=2)
    dy, dx = _YY - cy, _XX - cx
    theta = np.arctan2(dy, dx)
    wobble = 1.0 + sum(rng.uniform(0, 0.25) * np.sin(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3))
    return radius * wobble - np.sqrt(dx * dx + dy * dy)


def _fill(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """An object's colours (64, 64, 3): flat, stripes or speckle, away from the background."""
    for _ in range(20):
        colour = rng.uniform(0, 255, 3)
        if np.linalg.norm(colour - background) > 80:
            break
    kind = rng.choice(3, p=(0.5, 0.25, 0.25))
    if kind == 0:
        pattern = np.zeros((SHAPES_SIZE, SHAPES_SIZE))
    elif kind == 1:
        angle, period = rng.uniform(0, np.pi), rng.uniform(3, 7)
        along = _XX * np.cos(angle) + _YY * np.sin(angle)
        pattern = rng.uniform(20, 50) * np.sin(2 * np.pi * along / period + rng.uniform(0, 2 * np.pi))
    else:
        pattern = rng.normal(0.0, rng.uniform(10, 30), (SHAPES_SIZE, SHAPES_SIZE))
    return colour + pattern[..., None]


def _paint_rgb(canvas: np.ndarray, depth: np.ndarray, colours: np.ndarray) -> None:
    alpha = np.clip(depth + 0.5, 0.0, 1.0)[..., None]  # a one-pixel soft edge
    canvas *= 1.0 - alpha
    canvas += alpha * colours


# -- the layouts ------------------------------------------------------------------------------
def write_mask_folders(data: SegData, folder: Path) -> None:
    """``images/<id>.png``, ``masks/<id>.png`` (0 / 255) and ``<split>.txt`` (one id a line)."""
    folder = Path(folder)
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for split, part in data.items():
        for stem, image, mask in zip(part.stems, part.images, part.masks):
            _write_png(folder / "images" / f"{stem}.png", image)
            _write_png(folder / "masks" / f"{stem}.png", np.where(mask > 0, 255, 0).astype(np.uint8))
        (folder / f"{split}.txt").write_text("".join(f"{stem}\n" for stem in part.stems), encoding="utf-8")


def write_mmseg(data: SegData, folder: Path) -> None:
    """``img_dir/<split>/<stem>.png`` and ``ann_dir/<split>/<stem>.png`` (label maps, 255 ignore)."""
    folder = Path(folder)
    for split, part in data.items():
        images, annotations = folder / "img_dir" / split, folder / "ann_dir" / split
        images.mkdir(parents=True, exist_ok=True)
        annotations.mkdir(parents=True, exist_ok=True)
        for stem, image, mask in zip(part.stems, part.images, part.masks):
            _write_png(images / f"{stem}.png", image)
            _write_png(annotations / f"{stem}.png", mask)


def _write_png(path: Path, array: np.ndarray) -> None:
    # Fast zlib level: the PNG bytes are not what the checksum sees.
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG", compress_level=1)


SEG_WRITERS: dict[str, Callable[[SegData, Path], None]] = {
    "mask_folders": write_mask_folders,
    "mmseg": write_mmseg,
}


def folder_checksum(folder: Path) -> str:
    """sha256 over every file under ``folder`` (hidden ones aside), in sorted order: its
    relative path, then its bytes, or for a PNG its decoded mode, size and pixels."""
    folder = Path(folder)
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(folder).parts))
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode("utf-8") + b"\0")
        if path.suffix == ".png":
            try:
                with Image.open(path) as image:
                    image.load()
                    digest.update(f"{image.mode} {image.size}\0".encode("ascii"))
                    digest.update(np.asarray(image).tobytes())
            except DECODE_ERRORS as err:
                raise unreadable_image_error(path, str(folder), err) from None
        else:
            digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


# name: (generator, sizes (train, val, test), seed, expected checksum). Groups, class counts,
# formats and descriptions are in micro_catalog.MICRO_SEG_TASK_INFO.
SEG_RECIPES: dict[str, tuple[Callable[[Any], SegData], tuple[int, int, int], int, str]] = {
    "nuclei": (nuclei_task, (360, 42, 49), 21,
        "2c7c5e39c1353f23f0553b12327efd8cc25236b152babbbce976fd731ae4c6fd"),
    "shapes": (shapes_task, (400, 200, 0), 22,
        "23324f5ef7d42bcc4c18847cd4bf67e0462247226857a6ad0ed83943c9f60804"),
}
