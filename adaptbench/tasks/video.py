"""Video classification: clips of T frames through any image backbone, temporal pooling, top-1 / top-5.

A clip's frames are folded into the batch, clip-major (image ``c * T + t`` is frame t of clip c),
and the backbone runs them with ``frames = T`` published in its token geometry, so temporal
adapters (ST-Adapter, AIM, ZeroI2V) can unfold them while every image adapter runs frame-wise.
Per-frame pooled features are averaged over time (temporal average pooling, the frame-wise
baseline of TSN and the head of ST-Adapter / AIM: mean of the class tokens over frames), and
the head classifies the average. Test views (temporal clips x spatial crops) are classified one
by one and their scores averaged (mmaction's ``average_clips='score'``).

Data. A clip is decoded once into the cache as ``C`` frames at a fixed size (``FramesField``,
``datasets/video_decode.py``): TSN-style uniform sampling caches ``P`` positions in each of the
``T`` segments (``C = T * P``), strided dense sampling a window of ``T + positions - 1`` frames at
the task's stride. The batch transform then takes the T frames of a clip from the cached ones on
the device: in training a random position per segment (uniform) or a random start (dense),
a random crop and, where the task allows it, a horizontal flip (never for Something-Something,
whose labels say left and right); in evaluation ``test_clips`` evenly spaced temporal views x
``test_crops`` crops (1: centre; 3: both ends and the centre of the long side, mmaction's
``ThreeCrop``). The task's options hold these facts (``ClipSampling``), so a record says how it
was sampled. Departure from decoding on the fly: temporal jitter is quantised to the ``P``
cached positions per segment (the official loaders draw any frame of the segment), and a dense
clip starts within the cached window around the video's centre.

Throughput: a record's ``train_images_per_s`` counts clips; ``data.throughput`` gives clips/s
and frames/s (evaluation frames count every view).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..errors import AdaptbenchError
from ..registry import register_task_kind
from .kinds import TaskKind

SAMPLINGS = ("uniform", "dense")


@dataclass(frozen=True)
class ClipSampling:
    """How a task's clips are sampled (its options; defaults: TSN-uniform 8 frames, one view)."""

    num_frames: int = 8
    sampling: str = "uniform"
    stride: int = 1  # dense: source frames between two sampled ones
    positions: int = 1  # uniform: cached positions per segment; dense: possible clip starts
    test_clips: int = 1  # temporal views at test time
    test_crops: int = 1  # spatial views at test time: 1 (centre) or 3 (three crops on the long side)
    aspect: float = 1.0  # cached frame width / height (>= 1: the long side is the width)
    flip: bool = False  # horizontal flip in training

    @classmethod
    def of(cls, spec) -> ClipSampling:
        """The task's sampling, each option checked (one line naming the task and the option)."""
        known = set(cls.__dataclass_fields__)
        values = {key: value for key, value in spec.options.items() if key in known}
        sampling = cls(**values)
        sampling.check(spec.name)
        return sampling

    def check(self, task: str) -> None:
        def expect(ok: bool, option: str, what: str) -> None:
            if not ok:
                raise AdaptbenchError(f"task {task!r} option {option}={getattr(self, option)!r}: expected {what}")

        expect(self.sampling in SAMPLINGS, "sampling", f"one of {', '.join(SAMPLINGS)}")
        for option in ("num_frames", "stride", "positions", "test_clips"):
            value = getattr(self, option)
            expect(isinstance(value, int) and not isinstance(value, bool) and value >= 1, option, "an integer >= 1")
        expect(self.test_crops in (1, 3), "test_crops", "1 or 3")
        expect(isinstance(self.aspect, (int, float)) and self.aspect >= 1.0, "aspect", "a number >= 1")
        expect(isinstance(self.flip, bool), "flip", "true or false")

    @property
    def cached_frames(self) -> int:
        """Frames cached per clip."""
        if self.sampling == "uniform":
            return self.num_frames * self.positions
        return self.num_frames + self.positions - 1

    def cached_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of a cached frame: the input height, and the width widened to ``aspect``."""
        height, width = input_size
        return height, max(width, round(height * self.aspect))

    @property
    def views(self) -> int:
        return self.test_clips * self.test_crops

    def random_in_training(self, input_size: tuple[int, int]) -> bool:
        return self.positions > 1 or self.flip or self.cached_size(input_size) != tuple(input_size)

    # -- which cached frames a clip takes --------------------------------------------------------
    def train_indices(self, clips: int) -> torch.Tensor:
        """(clips, T) cached-frame indices, drawn from torch's global generator (seeded by the run)."""
        steps = torch.arange(self.num_frames)
        if self.sampling == "uniform":
            return steps * self.positions + torch.randint(self.positions, (clips, self.num_frames))
        return torch.randint(self.positions, (clips, 1)) + steps

    def view_indices(self) -> torch.Tensor:
        """(test_clips, T) cached-frame indices of the evenly spaced temporal views."""
        steps = torch.arange(self.num_frames)
        views = torch.arange(self.test_clips)
        if self.sampling == "uniform":  # view v takes position (v + 1/2) P / V of every segment
            offsets = ((2 * views + 1) * self.positions) // (2 * self.test_clips)
            return steps * self.positions + offsets[:, None]
        if self.test_clips == 1:
            starts = torch.tensor([(self.positions - 1) // 2])
        else:
            starts = torch.round(views * (self.positions - 1) / (self.test_clips - 1)).long()
        return starts[:, None] + steps


def crop_offsets(cached: tuple[int, int], crop: tuple[int, int], crops: int) -> list[tuple[int, int]]:
    """Top-left corners of the evaluation crops: the centre, or (3) both ends and the centre of
    the long side (mmaction's ``ThreeCrop``)."""
    (height, width), (crop_h, crop_w) = cached, crop
    centre = ((height - crop_h) // 2, (width - crop_w) // 2)
    if crops == 1:
        return [centre]
    if width - crop_w >= height - crop_h:
        return [(centre[0], 0), centre, (centre[0], width - crop_w)]
    return [(0, centre[1]), centre, (height - crop_h, centre[1])]


class ClipTransform(nn.Module):
    """Cached uint8 frames ``(B, C, H, W, 3)`` -> normalised clips on the device: ``(B, T, 3, h, w)``
    in training mode (jitter, random crop, flip), ``(B, V, T, 3, h, w)`` in evaluation mode (the
    test views). It follows the module's train/eval mode (it is a submodule of the task module)."""

    def __init__(self, sampling: ClipSampling, crop: tuple[int, int], mean, std):
        super().__init__()
        self.sampling = sampling
        self.crop = tuple(crop)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, 1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, 1, -1, 1, 1), persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self._normalise(self._train_clips(frames))
        return torch.stack([self._normalise(view) for view in self._views(frames)], dim=1)

    def _train_clips(self, frames: torch.Tensor) -> torch.Tensor:
        clips = frames.shape[0]
        indices = self.sampling.train_indices(clips).to(frames.device)
        chosen = frames[torch.arange(clips, device=frames.device)[:, None], indices]  # (B, T, H, W, 3)
        height, width = chosen.shape[2:4]
        crop_h, crop_w = self.crop
        tops = torch.randint(height - crop_h + 1, (clips,)).tolist()
        lefts = torch.randint(width - crop_w + 1, (clips,)).tolist()
        flips = (torch.rand(clips) < 0.5).tolist() if self.sampling.flip else [False] * clips
        out = []
        for clip, top, left, flip in zip(chosen, tops, lefts, flips):
            clip = clip[:, top:top + crop_h, left:left + crop_w]
            out.append(clip.flip(2) if flip else clip)
        return torch.stack(out)

    def _views(self, frames: torch.Tensor):
        crop_h, crop_w = self.crop
        corners = crop_offsets(tuple(frames.shape[2:4]), self.crop, self.sampling.test_crops)
        for indices in self.sampling.view_indices().to(frames.device):
            clip = frames[:, indices]
            for top, left in corners:
                yield clip[:, :, top:top + crop_h, left:left + crop_w]

    def _normalise(self, clips: torch.Tensor) -> torch.Tensor:
        # (B, T, h, w, 3) uint8 -> (B, T, 3, h, w): ToTensor then Normalize, frame by frame
        clips = clips.permute(0, 1, 4, 2, 3).contiguous().to(torch.float32).div(255)
        return clips.sub_(self.mean).div_(self.std)


class VideoClassificationKind(TaskKind):
    """Video classification: cross-entropy on clips, top-1 and top-5 accuracy over clips."""

    name = "video_classification"
    version = 1
    primary_metric = "top1"
    higher_is_better = True
    augmentation = "temporal jitter, random crop (flip where the task allows it)"
    default_head = "linear"
    sample_unit = "clips"

    def metrics(self, spec):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy

        metrics = {"top1": MulticlassAccuracy(spec.num_classes, average="micro", validate_args=False)}
        if spec.num_classes > 5:  # top-5 of 5 classes or fewer is always 1
            metrics["top5"] = MulticlassAccuracy(spec.num_classes, top_k=5, average="micro", validate_args=False)
        return MetricCollection(metrics)

    def sample_reduction(self, spec) -> str:
        return "accuracy"  # one bit per test clip (views averaged): correct or not

    def build_module(self, backbone, adapter, head, spec, settings: dict[str, Any]):
        from .modules.video import VideoModule

        return VideoModule(backbone, adapter, head, self.metrics(spec), lr=settings["lr"],
                           weight_decay=settings["weight_decay"], warmup_epochs=settings["warmup_epochs"],
                           label_smoothing=settings.get("label_smoothing", 0.0), pool=settings.get("pool"),
                           clip_sampling=asdict(ClipSampling.of(spec)),
                           input_size=tuple(backbone.data_config.input_size))

    def fields(self, data_config, spec) -> dict:
        from ..datasets.decoded import LabelField
        from ..datasets.video_decode import FramesField

        sampling = ClipSampling.of(spec)
        size = sampling.cached_size(tuple(data_config.input_size))
        frames = FramesField(size=size, count=sampling.cached_frames, sampling=sampling.sampling,
                             num_frames=sampling.num_frames, stride=sampling.stride,
                             interpolation=data_config.interpolation)
        return {"frames": frames, "labels": LabelField()}

    def batch_transform(self, data_config, train: bool, spec=None) -> nn.Module:
        if spec is None:
            raise AdaptbenchError("the video batch transform needs the task (its sampling options)")
        return ClipTransform(ClipSampling.of(spec), tuple(data_config.input_size), data_config.mean, data_config.std)

    def data_description(self, data_config, spec=None) -> dict[str, Any]:
        description = {**super().data_description(data_config, spec), "resize": "cover, then crop",
                       "metrics": {"top1": "top-1 accuracy over clips, test views' scores averaged",
                                   "top5": "top-5 accuracy over clips (tasks with more than 5 classes)"}}
        if spec is not None:
            sampling = ClipSampling.of(spec)
            description["clip_sampling"] = asdict(sampling)
            description["cached_frame_size"] = list(sampling.cached_size(tuple(data_config.input_size)))
        return description

    def frames_per_sample(self, spec, evaluation: bool = False) -> int:
        sampling = ClipSampling.of(spec)
        return sampling.num_frames * (sampling.views if evaluation else 1)

    def head_info(self, spec, settings: dict[str, Any], backbone) -> dict[str, Any]:
        return {**super().head_info(spec, settings, backbone), "pool": settings.get("pool") or backbone.default_pool}


register_task_kind("video_classification", VideoClassificationKind)
