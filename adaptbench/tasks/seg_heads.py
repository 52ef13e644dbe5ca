"""Segmentation heads on the backbone's final feature map (``Backbone.forward_dense(x).final``).

Each head takes the map (B, C, h, w) and returns class logits (B, K, h', w') at its own
resolution; the segmentation module resizes them bilinearly to the mask size. Registered
here (``adaptbench ls heads``); ``sam_decoder`` lives in ``sam_decoder.py``.

* ``seg_linear``: a per-token linear classifier (a 1x1 convolution on the map), upsampled
  bilinearly: the plain-ViT baseline (Segmenter's linear decoder, Strudel et al. ICCV'21).
* ``seg_pup``: SETR's progressive upsampling head (Zheng et al. CVPR'21, mmseg's
  ``SETRUPHead``): a LayerNorm on the tokens, then ``n`` stages of (3x3 conv, batch norm, ReLU,
  bilinear x2 upsampling), then a 1x1 classifier; ``n`` = log2(patch size), 4 for a /16
  backbone as in SETR-PUP, so the logits come out at the input resolution. SETR uses 256
  channels on ViT-L; "light" here: min(256, width) channels, so a micro backbone's head stays
  micro.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..registry import register_head

PUP_CHANNELS = 256  # configs/_base_/models/setr_pup.py: SETRUPHead(channels=256, num_convs=4, up_scale=2)
PUP_NORM_EPS = 1e-6  # SETRUPHead's norm_layer: LN with eps 1e-6


class LinearSegHead(nn.Module):
    """Per-token linear classifier: (B, C, h, w) -> (B, K, h, w)."""

    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Conv2d(width, num_classes, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)


class ProgressiveUpsamplingHead(nn.Module):
    """SETR-PUP: token LayerNorm, ``stages`` x (conv3x3-BN-ReLU, bilinear x2), 1x1 classifier."""

    def __init__(self, width: int, num_classes: int, stages: int, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=PUP_NORM_EPS)
        layers: list[nn.Module] = []
        for index in range(stages):
            layers += [nn.Conv2d(width if index == 0 else channels, channels, 3, padding=1, bias=False),
                       nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                       nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)]
        self.up = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(channels if stages else width, num_classes, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.norm(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.classifier(self.up(x))


def seg_linear_head(backbone, spec) -> LinearSegHead:
    """Per-token linear classifier on the final feature map, upsampled bilinearly (the plain-ViT baseline)."""
    return LinearSegHead(backbone.anatomy.feature_dim, spec.num_classes)


def seg_pup_head(backbone, spec) -> ProgressiveUpsamplingHead:
    """SETR-PUP progressive upsampling head (LN, conv3x3-BN-ReLU + x2 bilinear per stage, 1x1 classifier)."""
    anatomy = backbone.anatomy
    stride = backbone.data_config.input_size[0] / anatomy.grid[0]
    stages = max(1, round(math.log2(stride)))
    width = anatomy.feature_dim
    return ProgressiveUpsamplingHead(width, spec.num_classes, stages, min(PUP_CHANNELS, width))


for _factory in (seg_linear_head, seg_pup_head):
    _factory.reads = "feature_map"

register_head("seg_linear", seg_linear_head)
register_head("seg_pup", seg_pup_head)
