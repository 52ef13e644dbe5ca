"""Video classification's module: clips through the frame-wise backbone, temporal average
pooling, the head, scores averaged over test views (sampling in ``tasks/video.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..video import ClipSampling
from .base import TaskModule


class VideoModule(TaskModule):
    """Frame-wise backbone (temporal adapters inside it see the clip), temporal average pooling,
    the task's head, scores averaged over test views."""

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, h, w) or (B, V, T, 3, h, w) -> (B, V, C): per view, the mean over frames of the
        backbone's pooled per-frame features."""
        if clips.dim() == 5:
            clips = clips.unsqueeze(1)
        batch, views, frames = clips.shape[:3]
        features = self.backbone(clips.flatten(0, 2), pool=self.hparams.pool, frames=frames)
        return features.view(batch, views, frames, -1).mean(dim=2)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        batch, views = features.shape[:2]
        return self.head(features.flatten(0, 1)).view(batch, views, -1).mean(dim=1)

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)

    def sample_scores(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"correct": logits.argmax(dim=-1) == labels}  # top-1, one bit per sample

    def why_not_cacheable(self) -> str | None:
        sampling = self.hparams.clip_sampling
        if ClipSampling(**sampling).random_in_training(tuple(self.hparams.input_size)):
            return "training clips are drawn anew every epoch (temporal jitter, random crops or flips)"
        if sampling["test_clips"] * sampling["test_crops"] > 1:
            return "evaluation averages several views, training sees one"
        return None
