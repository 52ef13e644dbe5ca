"""Pixel maths shared by the procedural micro generators (``micro.py``, ``micro_seg.py``,
``micro_video.py``): float64 throughout, so that platform differences in the last bits of
sin/cos cannot move a pixel across a rounding boundary (``micro.py`` explains why)."""

from __future__ import annotations

import numpy as np

SIZE = 32  # procedural classification and video frames are SIZE x SIZE
YY, XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
SPRITE_REACH = (1.0, 1.42, 1.3)  # how far each sprite kind (disc, square, diamond) reaches, in radii


def to_uint8(canvas: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def sprite_depth(kind: int, cy, cx, radius: float) -> np.ndarray:
    """Signed depth (pixels inside the edge) of a disc, square or diamond on the SIZE grid;
    ``cy``/``cx`` may be arrays broadcasting against it (one centre per frame)."""
    dy, dx = np.abs(YY - cy), np.abs(XX - cx)
    if kind == 0:
        return radius - np.sqrt(dy * dy + dx * dx)
    if kind == 1:
        return radius - np.maximum(dy, dx)
    return radius * 1.3 - (dy + dx)


def linear_upsampler(size: int, cells: int) -> np.ndarray:
    """(size, cells) matrix of linear-interpolation weights (numpy only: no resampler version)."""
    position = np.linspace(0.0, cells - 1.0, size)
    left = np.minimum(np.floor(position).astype(np.int64), cells - 2)
    weight = position - left
    matrix = np.zeros((size, cells))
    matrix[np.arange(size), left] = 1.0 - weight
    matrix[np.arange(size), left + 1] = weight
    return matrix
