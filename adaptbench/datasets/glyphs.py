"""Procedural glyphs: the source domain the micro ViT is pretrained on.

The micro ViT (``vit_micro``) must bring features worth adapting to the micro tasks, yet be
pretrained on something *other* than them, as ImageNet-21k is other than VTAB. This module
draws that something: ``num_classes`` pseudo-characters, each a fixed set of 2-4 strokes
(straight lines, arcs and S-curves as cubic Bezier curves, often joined end to start like
pen strokes) drawn once from the class's own seed. No class is made to be a digit, a face,
a texture, a count, a position or an orientation (a random glyph may of course look a bit
like a digit): every image is rendered under random placement, size and rotation, with one
glyph, so neither where nor how many can separate the classes.

Each image shows one glyph under a random affine map (scale, aspect, rotation, shear,
translation), with per-image jitter of the control points (handwriting-like variation),
a random stroke width, contrast and polarity, on a background with a gradient, noise and
faint clutter strokes, sometimes blurred. Images are grayscale 32x32 uint8, rendered in
float64 with numpy (vectorised over images), and seeded: the same ``(count, seed)`` gives
the same arrays. Strokes are drawn as distance fields, ink = clip(w/2 - d + 1/2, 0, 1)
with d the distance from the pixel to the stroke's polyline, a one-pixel soft edge, measured
only in a small window around each segment: 50,000 images take about 10 s on one core.
"""

from __future__ import annotations

import numpy as np

__all__ = ["GLYPH_CLASSES", "SIZE", "glyph_images", "glyph_strokes"]

SIZE = 32  # images are SIZE x SIZE grayscale, as the procedural micro tasks
GLYPH_CLASSES = 50  # what the micro ViT is pretrained on (see adaptbench/pretrain/micro.py)
CLASS_SEED = 20_240_817  # the glyph designs: fixed, so every pretraining run sees the same classes
MAX_STROKES = 4
SEGMENTS = 8  # line segments per Bezier stroke when rendering (smooth enough at 32x32)
MAX_WIDTH = 2.8  # stroke width in pixels, drawn from [1, MAX_WIDTH]
CLUTTER_STROKES = 3  # faint distractor strokes per image (each present with probability 1/2)
CHUNK = 256  # images rendered at once: bounds the (segments, window pixels) temporaries

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
_PIXELS = np.stack([_YY.ravel(), _XX.ravel()], axis=-1)  # (SIZE*SIZE, 2) as (y, x)
_T = np.linspace(0.0, 1.0, SEGMENTS + 1)
# Cubic Bernstein basis: (SEGMENTS + 1, 4) weights of the four control points.
_BEZIER = np.stack([(1 - _T) ** 3, 3 * (1 - _T) ** 2 * _T, 3 * (1 - _T) * _T**2, _T**3], axis=-1)


# -- the classes -----------------------------------------------------------------------------
def glyph_strokes(num_classes: int = GLYPH_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """Control points (classes, MAX_STROKES, 4, 2) in [-1, 1] and a stroke mask (classes, MAX_STROKES).

    Class ``c`` is drawn from its own stream (CLASS_SEED, c): adding classes never changes
    the existing ones.
    """
    controls = np.zeros((num_classes, MAX_STROKES, 4, 2))
    present = np.zeros((num_classes, MAX_STROKES), dtype=bool)
    for c in range(num_classes):
        rng = np.random.default_rng([CLASS_SEED, c])
        strokes = _class_strokes(rng, int(rng.integers(2, MAX_STROKES + 1)))
        controls[c, : len(strokes)] = _fit_unit_box(strokes)
        present[c, : len(strokes)] = True
    return controls, present


def _class_strokes(rng: np.random.Generator, count: int) -> np.ndarray:
    strokes = []
    for _ in range(count):
        # Pen-like: a stroke often starts where an earlier one ends, so glyphs hang together.
        if strokes and rng.random() < 0.6:
            start = strokes[int(rng.integers(len(strokes)))][3 * int(rng.integers(2))]
        else:
            start = rng.uniform(-1, 1, 2)
        end = _far_point(rng, start)
        strokes.append(_bezier_between(rng, start, end))
    return np.stack(strokes)


def _far_point(rng: np.random.Generator, start: np.ndarray, min_length: float = 0.7) -> np.ndarray:
    while True:
        end = rng.uniform(-1, 1, 2)
        if np.hypot(*(end - start)) >= min_length:
            return end


def _bezier_between(rng: np.random.Generator, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """A line, an arc (both handles bent to one side) or an S-curve (opposite sides)."""
    chord = end - start
    normal = np.array([-chord[1], chord[0]])
    kind = int(rng.integers(3))
    bend = rng.uniform(0.3, 0.8) * rng.choice([-1.0, 1.0])
    sides = {0: (0.0, 0.0), 1: (bend, bend), 2: (bend, -bend)}[kind]
    first = start + chord / 3 + sides[0] * normal
    second = start + 2 * chord / 3 + sides[1] * normal
    return np.stack([start, first, second, end])


def _fit_unit_box(strokes: np.ndarray) -> np.ndarray:
    """Centre the drawn curve and scale its larger side to span [-1, 1]."""
    drawn = (_BEZIER @ strokes).reshape(-1, 2)
    low, high = drawn.min(axis=0), drawn.max(axis=0)
    return (strokes - (low + high) / 2) * (2.0 / max(float((high - low).max()), 1e-6))


# -- the images ------------------------------------------------------------------------------
def glyph_images(count: int, seed: int, num_classes: int = GLYPH_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images (count, SIZE, SIZE) uint8 and their labels (count,) int64, class-balanced."""
    controls, present = glyph_strokes(num_classes)
    rng = np.random.default_rng([seed, num_classes])
    labels = np.arange(count, dtype=np.int64) % num_classes
    rng.shuffle(labels)
    images = np.empty((count, SIZE, SIZE), dtype=np.uint8)
    for start in range(0, count, CHUNK):
        chunk = labels[start : start + CHUNK]
        images[start : start + CHUNK] = _render(rng, controls[chunk], present[chunk])
    return images, labels


def _render(rng: np.random.Generator, controls: np.ndarray, present: np.ndarray) -> np.ndarray:
    n = len(controls)
    jittered = controls + rng.normal(0.0, 0.06, controls.shape)  # no two renders are alike
    points = _place(rng, _BEZIER @ jittered)  # (n, strokes, SEGMENTS + 1, 2) in pixels
    ink = _stroke_ink(points, present, rng.uniform(1.0, MAX_WIDTH, n))
    clutter = _stroke_ink(*_clutter(rng, n), rng.uniform(0.6, 1.5, n))
    clutter *= rng.uniform(0.15, 0.5, (n, 1))  # faint: the glyph stays the subject
    background, paper_to_ink = _background(rng, n)
    canvas = background + np.maximum(ink, clutter) * paper_to_ink[:, None]
    canvas = canvas.reshape(n, SIZE, SIZE)
    canvas = _blur_some(rng, canvas)
    canvas += rng.normal(0.0, 1.0, canvas.shape) * rng.uniform(0.0, 14.0, (n, 1, 1))
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def _place(rng: np.random.Generator, points: np.ndarray) -> np.ndarray:
    """Random affine map from the unit box to pixels: scale, aspect, rotation, shear, shift."""
    n = len(points)
    half = rng.uniform(7.0, 13.0, n)  # half the glyph's larger side, in pixels
    aspect = np.exp(rng.uniform(-0.2, 0.2, n))
    angle = rng.uniform(-0.35, 0.35, n)  # ~20 degrees: upright-ish, like writing
    shear = rng.uniform(-0.25, 0.25, n)
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    stretch = np.zeros((n, 2, 2))
    stretch[:, 0, 0], stretch[:, 1, 1], stretch[:, 0, 1] = half * aspect, half / aspect, half * shear
    matrix = rotation @ stretch  # (n, 2, 2), acting on (x, y) column vectors
    room = np.maximum(SIZE / 2 - half - 2.0, 0.0)  # keep most of the glyph inside the frame
    shift = SIZE / 2 - 0.5 + rng.uniform(-1, 1, (n, 2)) * room[:, None]
    # Points are (x, y); pixels are indexed (y, x): swap once here.
    placed = np.einsum("nij,nspj->nspi", matrix, points) + shift[:, None, None, :]
    return placed[..., ::-1]


def _clutter(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Short straight distractor strokes anywhere on the canvas, (n, CLUTTER_STROKES, 2, 2),
    about half of them present."""
    start = rng.uniform(0, SIZE - 1, (n, CLUTTER_STROKES, 1, 2))
    direction = rng.normal(0.0, 1.0, (n, CLUTTER_STROKES, 1, 2))
    direction *= rng.uniform(2.0, 6.0, (n, CLUTTER_STROKES, 1, 1)) / np.linalg.norm(direction, axis=-1, keepdims=True)
    return np.concatenate([start, start + direction], axis=2), rng.random((n, CLUTTER_STROKES)) < 0.5


def _stroke_ink(points: np.ndarray, present: np.ndarray, width: np.ndarray) -> np.ndarray:
    """(n, SIZE*SIZE) ink in [0, 1] of the polylines ``points`` (n, strokes, vertices, 2)
    where ``present`` (n, strokes) says so, drawn ``width`` (n,) pixels wide."""
    n = len(points)
    start = points[:, :, :-1]
    step = points[:, :, 1:] - start
    image = np.broadcast_to(np.arange(n)[:, None, None], start.shape[:3])
    keep = np.broadcast_to(present[:, :, None], start.shape[:3])
    start, step, image = start[keep], step[keep], image[keep]  # one row per drawn segment
    # A segment only inks pixels within MAX_WIDTH / 2 + 1/2 < 2 px of it: measure distances
    # in a window just large enough for it (grouped by window size), not over the whole canvas.
    side = np.ceil(np.abs(step).max(axis=1, initial=0.0)).astype(np.int64) + 6
    closest = np.full(n * SIZE * SIZE + 1, np.inf)  # squared distance; the last slot is off-canvas
    for size in np.unique(side):
        group = side == size
        _nearest_in_windows(closest, start[group], step[group], image[group], int(size))
    distance = np.sqrt(closest[:-1]).reshape(n, SIZE * SIZE)
    return np.clip(width[:, None] / 2 - distance + 0.5, 0.0, 1.0)


def _nearest_in_windows(closest: np.ndarray, start: np.ndarray, step: np.ndarray, image: np.ndarray,
                        side: int) -> None:
    """Lower ``closest`` (flat squared distances) by the segments' distances in side x side windows."""
    corner = np.floor(np.minimum(start, start + step)) - 2  # 2 px of margin before the segment
    window = corner[:, None, :] + _window_offsets(side)  # (segments, side*side, 2) pixels
    offset = window - start[:, None, :]
    along = offset[..., 0] * step[:, None, 0] + offset[..., 1] * step[:, None, 1]
    along /= np.maximum((step * step).sum(axis=1), 1e-9)[:, None]
    np.clip(along, 0.0, 1.0, out=along)
    nearest_y = offset[..., 0] - along * step[:, None, 0]
    nearest_x = offset[..., 1] - along * step[:, None, 1]
    y, x = window[..., 0], window[..., 1]
    flat = (y * SIZE + x).astype(np.int64) + image[:, None] * (SIZE * SIZE)
    flat[(y < 0) | (y >= SIZE) | (x < 0) | (x >= SIZE)] = len(closest) - 1
    np.minimum.at(closest, flat.ravel(), (nearest_y * nearest_y + nearest_x * nearest_x).ravel())


def _window_offsets(side: int) -> np.ndarray:
    """(side*side, 2) integer (y, x) offsets of a square window, as float64."""
    return np.stack(np.mgrid[0:side, 0:side], axis=-1).reshape(-1, 2).astype(np.float64)


def _background(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, pixels) paper with a linear gradient, and the paper-to-ink step (sign = polarity)."""
    paper = rng.uniform(0.0, 110.0, n)
    ink = rng.uniform(140.0, 255.0, n)
    dark_on_light = rng.random(n) < 0.5
    paper, ink = np.where(dark_on_light, 255 - paper, paper), np.where(dark_on_light, 255 - ink, ink)
    slope = rng.normal(0.0, 1.0, (n, 2)) * rng.uniform(0.0, 1.2, (n, 1))  # grey levels per pixel
    gradient = (_PIXELS - SIZE / 2) @ slope.T  # (pixels, n)
    return paper[:, None] + gradient.T, ink - paper


def _blur_some(rng: np.random.Generator, canvas: np.ndarray, fraction: float = 0.3) -> np.ndarray:
    """Gaussian blur (sigma 0.5-1.2 px) on a random ``fraction`` of the images: soft scans."""
    sigma = np.where(rng.random(len(canvas)) < fraction, rng.uniform(0.5, 1.2, len(canvas)), 0.0)
    offsets = np.arange(SIZE)[:, None] - np.arange(SIZE)[None, :]
    kernel = np.exp(-0.5 * offsets[None] ** 2 / np.maximum(sigma, 1e-3)[:, None, None] ** 2)
    kernel /= kernel.sum(axis=2, keepdims=True)  # rows sum to 1: edges keep their level
    return kernel @ canvas @ kernel.transpose(0, 2, 1)
