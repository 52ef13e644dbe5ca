"""A video's frames decoded once into the cache: the ``frames`` field, ``(count, H, W, 3) uint8``.

A split of videos is decoded once (``decoded.decoded_split``), like images: each video keeps
``count`` frames, chosen by :func:`cached_frame_indices` so that the kind can later draw its
T-frame clips (temporal jitter, several test clips) from the cached frames alone:

* ``uniform`` (TSN segments, ST-Adapter's ``sampling_rate 0``, mmaction's ``UniformSample`` and
  ``frame_uniform``): the video is cut into T equal segments and P = count / T frames are kept
  per segment, at the centres of P equal parts of it; a clip takes one of the P from each segment.
* ``dense`` (mmaction's ``SampleFrames`` with ``frame_interval``, V-PETL's ``sampling_rate``): a
  window of ``count`` frames ``stride`` apart, centred in the video; a clip is T consecutive
  cached frames (``count - T + 1`` start positions).

Each kept frame is converted to RGB, resized with PIL to cover (H, W) keeping its aspect (the
filter names of ``ImageField``) and centre-cropped to (H, W).

A sample is a video file, decoded with PyAV (``pip install adaptbench[video]``), or a folder
of mmaction rawframes ``img_00001.jpg``, ``img_00002.jpg``, ... (``video.py``). Only the frames
kept are converted, and a video is decoded in order and left as soon as the last kept frame is
reached, so no whole video is held in memory. Its frame count is the container's (mp4) or
else the number of its video packets (webm's header has none, so the packets are counted
without decoding); when decoding yields fewer frames than that, the frames are chosen again
from the count decoding found.

Every problem is one line naming the video and the list that listed it: an unreadable file,
no video stream, too few frames, a rawframes folder with a missing or unreadable jpg.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ..errors import AdaptbenchError
from .decoded import PIL_FILTERS, ArraySpec, Field
from .images import Sample, load_rgb, shorten
from .video import FRAME_NAME, FRAME_TEMPLATE

__all__ = ["SAMPLINGS", "FramesField", "TooFewFrames", "cached_frame_indices", "cover_crop", "minimum_frames"]

SAMPLINGS = ("uniform", "dense")


class TooFewFrames(AdaptbenchError):
    """A video shorter than its sampling needs (the message lacks the file: the caller adds it)."""


# -- which frames ------------------------------------------------------------------------------
def check_sampling(count: int, sampling: str, num_frames: int, stride: int = 1) -> None:
    """The cached-frame settings make sense (one line saying which does not)."""
    for name, value in (("count", count), ("num_frames", num_frames), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AdaptbenchError(f"frames {name} is {shorten(value)}; expected a positive integer")
    if sampling not in SAMPLINGS:
        raise AdaptbenchError(f"frame sampling {shorten(sampling)} is unknown; expected one of {', '.join(SAMPLINGS)}")
    if sampling == "uniform" and count % num_frames:
        raise AdaptbenchError(f"uniform sampling caches {count} frames for clips of {num_frames}; expected a "
                              f"multiple of {num_frames} (the same number of frames from each segment)")
    if sampling == "dense" and count < num_frames:
        raise AdaptbenchError(f"dense sampling caches {count} frames for clips of {num_frames}; expected at "
                              f"least {num_frames}")


def minimum_frames(sampling: str, num_frames: int, stride: int = 1) -> int:
    """The shortest video a clip can be drawn from: T frames, whatever the sampling. A dense clip
    whose strided span runs past the end repeats the last frame (ST-Adapter pads short videos
    so; K400 keeps clips shorter than the 113 frames of 8 x 16), rather than failing a split."""
    return num_frames


def _sampling_text(sampling: str, num_frames: int, stride: int) -> str:
    at = f" at stride {stride}" if sampling == "dense" else ""
    return f"{sampling} sampling of {num_frames} frames{at}"


def cached_frame_indices(total: int, count: int, sampling: str, num_frames: int, stride: int = 1) -> np.ndarray:
    """The 0-based source frames a video of ``total`` frames caches, in order (module docstring).

    uniform: cached frame ``k = i*P + j`` (segment i, position j, P = count // T) is source frame
    ``floor(total/T * (i + (j + 0.5)/P))``, i.e. ``floor(total * (2k + 1) / (2 count))``, computed
    in integers so that no rounding moves it. dense: ``start + k*stride``, the window of span
    ``(count - 1)*stride + 1`` centred (``start = max(0, (total - span) // 2)``). Both are clamped
    to the last frame. A video shorter than :func:`minimum_frames` raises :class:`TooFewFrames`.
    """
    check_sampling(count, sampling, num_frames, stride)
    need = minimum_frames(sampling, num_frames, stride)
    if total < need:
        raise TooFewFrames(f"has {total} frames; {_sampling_text(sampling, num_frames, stride)} needs at least {need}")
    k = np.arange(count, dtype=np.int64)
    if sampling == "uniform":
        index = (total * (2 * k + 1)) // (2 * count)
    else:
        span = (count - 1) * stride + 1
        index = max(0, (total - span) // 2) + k * stride
    return np.minimum(index, total - 1)


# -- pixels ------------------------------------------------------------------------------------
def cover_crop(image: Image.Image, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """``image`` resized to cover ``size`` = (H, W) keeping its aspect, then centre-cropped to it
    (torchvision's ``Resize(short side)`` then ``CenterCrop``, offsets rounded as it rounds them)."""
    height, width = size
    scale = max(width / image.width, height / image.height)
    resized = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    if resized != image.size:
        image = image.resize(resized, resample=PIL_FILTERS[interpolation])
    left, top = round((resized[0] - width) / 2.0), round((resized[1] - height) / 2.0)
    return np.asarray(image.crop((left, top, left + width, top + height)))


# -- the field ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FramesField(Field):
    """``count`` frames of a video (file or rawframes folder), each RGB at ``size`` = (H, W):
    which frames from ``sampling``, ``num_frames`` and ``stride`` (:func:`cached_frame_indices`),
    how resized from ``interpolation`` (cover, then centre crop). The video kind builds it."""

    size: tuple[int, int]
    count: int
    sampling: str
    num_frames: int
    stride: int = 1
    interpolation: str = "bilinear"

    folders: ClassVar[bool] = True  # rawframes samples are folders

    def __post_init__(self) -> None:
        if self.interpolation not in PIL_FILTERS:
            raise AdaptbenchError(f"interpolation {self.interpolation!r} cannot be decoded with PIL; expected "
                                  f"one of {', '.join(PIL_FILTERS)}")
        if len(self.size) != 2 or not all(isinstance(side, int) and side > 0 for side in self.size):
            raise AdaptbenchError(f"frame size {shorten(self.size)}; expected (height, width), positive integers")
        object.__setattr__(self, "size", tuple(self.size))  # a JSON list is accepted too
        check_sampling(self.count, self.sampling, self.num_frames, self.stride)

    def array_spec(self) -> ArraySpec:
        return ArraySpec((self.count, *self.size, 3), "uint8")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "size": list(self.size), "count": self.count, "sampling": self.sampling,
                "num_frames": self.num_frames, "stride": self.stride, "interpolation": self.interpolation}

    def decode(self, sample: Sample, source: str) -> np.ndarray:
        path = Path(sample[0])
        if path.is_dir():
            return self._rawframes(path, source)
        return self._video(path, source)

    def _indices(self, total: int, what: str, path: Path, source: str) -> np.ndarray:
        try:
            return cached_frame_indices(total, self.count, self.sampling, self.num_frames, self.stride)
        except TooFewFrames as err:
            raise AdaptbenchError(f"{what} {os.path.abspath(path)}{_listed(source)} {err}") from None

    def _pixels(self, image: Image.Image) -> np.ndarray:
        return cover_crop(image, self.size, self.interpolation)  # RGB: load_rgb's, PyAV's to_image()

    # rawframes: img_00001.jpg, ... in a folder
    def _rawframes(self, folder: Path, source: str) -> np.ndarray:
        indices = self._indices(rawframes_count(folder, source), "rawframes folder", folder, source)
        out = np.empty((self.count, *self.size, 3), np.uint8)
        for index in np.unique(indices):
            out[indices == index] = self._pixels(load_rgb(folder / FRAME_TEMPLATE.format(int(index) + 1), source))
        return out

    # a video file, with PyAV
    def _video(self, path: Path, source: str) -> np.ndarray:
        av = _import_av(path, source)
        return self._decode_video(av, path, source, video_frame_count(av, path, source))

    def _decode_video(self, av: Any, path: Path, source: str, total: int) -> np.ndarray:
        indices = self._indices(total, "video", path, source)
        wanted: dict[int, list[int]] = {}
        for position, index in enumerate(indices.tolist()):
            wanted.setdefault(index, []).append(position)
        last, decoded = max(wanted), 0
        out = np.empty((self.count, *self.size, 3), np.uint8)
        container, stream = _open_video(av, path, source)
        with container:
            try:
                for number, frame in enumerate(container.decode(stream)):
                    decoded = number + 1
                    if number in wanted:
                        out[wanted[number]] = self._pixels(frame.to_image())
                    if number >= last:
                        return out  # the rest of the video is not needed
            except _av_errors(av) as err:
                raise unreadable_video_error(path, source, err) from None
        if decoded == 0:
            raise unreadable_video_error(path, source, "no frame could be decoded")
        # the container promised more frames than decoding found: choose again from those
        return self._decode_video(av, path, source, decoded)


def rawframes_count(folder: Path, source: str) -> int:
    """The number of frames of a rawframes folder: ``img_00001.jpg`` ... ``img_<n>.jpg``, no gap."""
    try:
        names = os.listdir(folder)
    except OSError as err:
        raise AdaptbenchError(f"rawframes folder {os.path.abspath(folder)}{_listed(source)} cannot be listed "
                              f"({err.strerror or err}); expected a readable folder of frames") from None
    numbers = sorted(int(match.group(1)) for name in names if (match := FRAME_NAME.fullmatch(name)))
    first = FRAME_TEMPLATE.format(1)
    if not numbers:
        raise AdaptbenchError(f"rawframes folder {os.path.abspath(folder)}{_listed(source)} holds no {first}; "
                              f"expected frames {first}, {FRAME_TEMPLATE.format(2)}, ...")
    if numbers != list(range(1, len(numbers) + 1)):
        present = set(numbers)
        missing = next(number for number in range(1, numbers[-1] + 1) if number not in present)
        raise AdaptbenchError(f"rawframes folder {os.path.abspath(folder)}{_listed(source)} lacks "
                              f"{FRAME_TEMPLATE.format(missing)} (it holds {len(numbers)} frames up to "
                              f"{FRAME_TEMPLATE.format(numbers[-1])}); expected frames numbered from {first} with no gap")
    return len(numbers)


# -- PyAV --------------------------------------------------------------------------------------
def _import_av(path: Path, source: str) -> Any:
    try:
        import av
    except ImportError:
        raise AdaptbenchError(f"decoding video {os.path.abspath(path)}{_listed(source)} needs PyAV, which is not "
                              f"installed; expected it installed: pip install adaptbench[video] (or pip install av)"
                              ) from None
    return av


def _av_errors(av: Any) -> tuple[type[BaseException], ...]:
    """What PyAV raises for a damaged file: its FFmpegError (InvalidDataError is also a
    ValueError), and OS errors reading it."""
    return (av.FFmpegError, OSError, ValueError, EOFError)


def _open_video(av: Any, path: Path, source: str) -> tuple[Any, Any]:
    """The open container and its first video stream."""
    try:
        container = av.open(str(path))
    except FileNotFoundError:
        raise unreadable_video_error(path, source, "the file does not exist") from None
    except _av_errors(av) as err:
        raise unreadable_video_error(path, source, err) from None
    if not container.streams.video:
        container.close()
        raise AdaptbenchError(f"video {os.path.abspath(path)}{_listed(source)} has no video stream; expected a "
                              f"video file with a video track")
    return container, container.streams.video[0]


def video_frame_count(av: Any, path: Path, source: str) -> int:
    """The container's frame count, else (webm: 0) its video packets, counted without decoding."""
    container, stream = _open_video(av, path, source)
    with container:
        if stream.frames > 0:
            return int(stream.frames)
        try:
            return sum(1 for packet in container.demux(stream) if packet.size)
        except _av_errors(av) as err:
            raise unreadable_video_error(path, source, err) from None


def unreadable_video_error(path: Path, source: str, reason: str | BaseException) -> AdaptbenchError:
    """The one-line error for a video that cannot be decoded (``source``: the list naming it)."""
    if isinstance(reason, BaseException):
        text = str(getattr(reason, "strerror", None) or reason).strip()
        reason = text.splitlines()[0] if text else type(reason).__name__
    return AdaptbenchError(f"cannot read video {os.path.abspath(path)}{_listed(source)}: {reason}; "
                           f"expected a readable video file (e.g. mp4 or webm)")


def _listed(source: str) -> str:
    return f" (listed in {source})" if source else ""
