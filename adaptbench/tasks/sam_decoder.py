"""``sam_decoder``: SAM's prompt encoder and mask decoder as a semantic segmentation head.

Kirillov et al., "Segment Anything" (ICCV'23). The modules are segment-anything's own
(``PromptEncoder``, ``MaskDecoder`` with its ``TwoWayTransformer``: depth 2, 8 heads, MLP
2048 = 8 x the width 256, as ``build_sam.py``), run on the backbone's final map (SAM's neck output, (B, 256, 64,
64) for ``sam:vit_b`` at 1024):

* **prompt-free** (``prompt: none``, SAM-Adapter's convention, ``models/sam.py``): no point
  and no box, so the sparse prompt embeddings are empty and the dense one is the learned
  ``no_mask_embed`` broadcast over the grid;
* **one mask token per class** (the multi-class convention of SAMed and autogluon's
  Conv-LoRA): the decoder is built with ``num_multimask_outputs = C - 1``, i.e. C mask tokens
  and C hypernetwork MLPs, and its C masks (B, C, 4h, 4w) are the class logits (softmax
  cross-entropy across them). A binary task has two tokens (background, foreground);
* batched: SAM's ``predict_masks`` repeats the image embedding once per prompt set (one image,
  many prompts); here each image has its own prompt set, so the decoder's layers are run
  with the batch as it is (:func:`decode_masks`; same arithmetic per image).

Pretrained decoder weights come with the backbone when its checkpoint holds them (the
official ``sam_vit_*.pth`` and the shipped micro SAM hold ``mask_decoder.*`` and
``prompt_encoder.*``; ``Backbone.companion_state``). A checkpoint with another number of
mask tokens (the official one has 4) gives class c the token, hypernetwork MLP and IoU-head
row of its token ``c mod 4``; everything else loads as is. Without such weights the head
starts from segment-anything's own initialisation.

Ground-truth prompts (``prompt: box | point``) feed SAM the box of the foreground or one
foreground pixel of the target mask (binary tasks only): they leak the label into the
evaluation, which the record and the leaderboard row say (the prompt is part of the config).

Every trained parameter here is a head parameter: the report counts it apart from the
adapter. Parts the prompt convention never runs stay frozen and uncounted (``_unused_parts``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import AdaptbenchError
from ..registry import register_head

SAM_DECODER_DEPTH = 2  # build_sam.py: TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8)
SAM_DECODER_MLP_RATIO = 8  # 2048 = 8 x 256 in build_sam.py; kept as a ratio for other widths
SAM_DECODER_HEADS = 8
SAM_MASK_IN_CHANS = 16  # build_sam.py: PromptEncoder(mask_in_chans=16)
SAM_IOU_HIDDEN = 256  # build_sam.py: MaskDecoder(iou_head_depth=3, iou_head_hidden_dim=256)
PROMPTS = ("none", "box", "point")


def _segment_anything():
    try:
        from segment_anything.modeling import (
            MaskDecoder,
            PromptEncoder,
            TwoWayTransformer,
        )
    except ImportError as err:
        raise AdaptbenchError("the sam_decoder head needs segment-anything: pip install "
                              "'adaptbench[sam]'") from err
    return MaskDecoder, PromptEncoder, TwoWayTransformer


class SamDecoderHead(nn.Module):
    """SAM's prompt encoder + mask decoder, one mask token per class (see the module docstring)."""

    def __init__(self, dim: int, grid: tuple[int, int], input_size: tuple[int, int], num_classes: int,
                 prompt: str = "none", mlp_dim: int | None = None, num_heads: int = SAM_DECODER_HEADS,
                 depth: int = SAM_DECODER_DEPTH):
        super().__init__()
        if num_classes < 2:
            raise AdaptbenchError(f"sam_decoder: expected at least 2 classes, got {num_classes}")
        if prompt not in PROMPTS:
            raise AdaptbenchError(f"sam_decoder: prompt {prompt!r}; expected one of {', '.join(PROMPTS)}")
        if dim % 8 or (dim // 2) % num_heads:
            raise AdaptbenchError(f"sam_decoder on a {dim}-wide feature map: SAM's decoder needs a width "
                                  f"divisible by 8 and by 2 x {num_heads} heads")
        MaskDecoder, PromptEncoder, TwoWayTransformer = _segment_anything()
        mlp_dim = mlp_dim or SAM_DECODER_MLP_RATIO * dim
        self.prompt = prompt
        self.num_classes = num_classes
        self.prompt_encoder = PromptEncoder(embed_dim=dim, image_embedding_size=tuple(grid),
                                            input_image_size=tuple(input_size), mask_in_chans=SAM_MASK_IN_CHANS)
        transformer = TwoWayTransformer(depth=depth, embedding_dim=dim, mlp_dim=mlp_dim, num_heads=num_heads)
        self.mask_decoder = MaskDecoder(transformer_dim=dim, transformer=transformer,
                                        num_multimask_outputs=num_classes - 1, iou_head_depth=3,
                                        iou_head_hidden_dim=SAM_IOU_HIDDEN)
        for part in self._unused_parts():
            part.requires_grad_(False)

    def _unused_parts(self) -> list[nn.Module]:
        """What this convention never runs, kept (the checkpoint's layout) but not trained or
        counted: the IoU head (no IoU target here), the mask-prompt encoder, and the point and
        box embeddings when there are no prompts."""
        encoder = self.prompt_encoder
        unused = [self.mask_decoder.iou_prediction_head, encoder.mask_downscaling]
        if self.prompt == "none":
            unused += [encoder.point_embeddings, encoder.not_a_point_embed]
        return unused

    def forward(self, features: torch.Tensor, prompts: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """(B, dim, h, w) image embedding -> (B, C, 4h, 4w) class logits."""
        prompts = prompts or {}
        points = (prompts["points"], prompts["point_labels"]) if "points" in prompts else None
        sparse, dense = self.prompt_encoder(points, prompts.get("boxes"), None)
        batch = features.shape[0]
        if sparse.shape[0] != batch:  # prompt-free: one empty prompt set, for every image
            sparse = sparse.expand(batch, -1, -1)
            dense = dense.expand(batch, -1, -1, -1)
        return decode_masks(self.mask_decoder, features, self.prompt_encoder.get_dense_pe(), sparse, dense)

    def load_pretrained(self, state: dict[str, torch.Tensor], where: str) -> None:
        """Load a SAM checkpoint's ``prompt_encoder.*`` / ``mask_decoder.*`` tensors, giving
        class c the saved token ``c mod saved tokens`` (see the module docstring)."""
        own = self.state_dict()
        saved_tokens = _saved_token_count(state)
        mapped = {}
        for key, target in own.items():
            source = _source_key(key, self.num_classes, saved_tokens)
            value = state.get(source)
            if value is None:
                raise AdaptbenchError(f"{where}: holds no {source!r} for the sam_decoder head")
            if key.endswith(("iou_prediction_head.layers.2.weight", "iou_prediction_head.layers.2.bias")) \
                    or key == "mask_decoder.mask_tokens.weight":
                value = value[[c % saved_tokens for c in range(self.num_classes)]]
            if value.shape != target.shape:
                raise AdaptbenchError(f"{where}: {source} has shape {tuple(value.shape)}, the sam_decoder head "
                                      f"on this backbone needs {tuple(target.shape)}")
            mapped[key] = value.to(target.dtype)
        self.load_state_dict(mapped, strict=True)


def _saved_token_count(state: dict[str, torch.Tensor]) -> int:
    tokens = state.get("mask_decoder.mask_tokens.weight")
    return int(tokens.shape[0]) if tokens is not None else 1


def _source_key(key: str, num_classes: int, saved_tokens: int) -> str:
    prefix = "mask_decoder.output_hypernetworks_mlps."
    if key.startswith(prefix):
        index, rest = key[len(prefix):].split(".", 1)
        return f"{prefix}{int(index) % saved_tokens}.{rest}"
    return key


def decode_masks(decoder: nn.Module, embeddings: torch.Tensor, image_pe: torch.Tensor,
                 sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """segment-anything's ``MaskDecoder.predict_masks`` for one prompt set per image: the same
    layers and arithmetic, without repeating each image embedding once per prompt set.
    Returns the masks of every token, (B, num_mask_tokens, 4h, 4w)."""
    batch = embeddings.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse), dim=1)
    src = embeddings + dense
    pos_src = image_pe.expand(batch, -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos_src, tokens)
    mask_tokens_out = hs[:, 1:1 + decoder.num_mask_tokens, :]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)],
                           dim=1)
    b, c, h, w = upscaled.shape
    return (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)


def ground_truth_prompts(masks: torch.Tensor, mode: str, generator: torch.Generator | None = None,
                         scale: tuple[float, float] = (1.0, 1.0)) -> dict[str, torch.Tensor]:
    """Prompts taken from binary target masks (B, H, W) (1 = foreground, 255 ignored), in the
    coordinates of the image SAM sees (``scale`` = its size over the mask's):

    * ``box``: the tight box (x0, y0, x1, y1) of the foreground (SAM-PARSER / MedSAM use it);
    * ``point``: one foreground pixel, drawn with ``generator`` (Medical-SAM-Adapter's
      ``random_click``); an image with no foreground gets one background point (label 0).
    """
    foreground = masks == 1
    height, width = masks.shape[-2:]
    if mode == "box":
        rows, cols = foreground.any(dim=2), foreground.any(dim=1)
        boxes = torch.stack([_first(cols), _first(rows), _last(cols), _last(rows)], dim=1).float()
        empty = ~foreground.flatten(1).any(dim=1)
        whole = torch.tensor([0.0, 0.0, width - 1.0, height - 1.0], device=masks.device)
        boxes = torch.where(empty[:, None], whole, boxes)
        return {"boxes": boxes * torch.tensor([scale[1], scale[0]] * 2, device=masks.device)}
    if mode == "point":
        weights = foreground.flatten(1).float()
        has = weights.sum(dim=1) > 0
        weights = torch.where(has[:, None], weights, torch.ones_like(weights))
        index = torch.multinomial(weights.cpu(), 1, generator=generator).to(masks.device).squeeze(1)
        ys, xs = (index // width).float() * scale[0], (index % width).float() * scale[1]
        return {"points": torch.stack([xs, ys], dim=1)[:, None, :], "point_labels": has.long()[:, None]}
    raise AdaptbenchError(f"ground-truth prompt {mode!r}; expected box or point")


def _first(flags: torch.Tensor) -> torch.Tensor:
    return flags.float().argmax(dim=1)


def _last(flags: torch.Tensor) -> torch.Tensor:
    return flags.shape[1] - 1 - flags.flip(1).float().argmax(dim=1)


def sam_decoder_head(backbone, spec, prompt: str = "none") -> SamDecoderHead:
    """SAM's prompt encoder + mask decoder, prompt-free, one mask token per class (pretrained when the backbone's checkpoint holds them)."""
    anatomy = backbone.anatomy
    head = SamDecoderHead(anatomy.feature_dim, tuple(anatomy.grid), tuple(backbone.data_config.input_size),
                          spec.num_classes, prompt=prompt)
    state = backbone.companion_state(("mask_decoder.", "prompt_encoder."))
    if state:
        head.load_pretrained(state, f"backbone {backbone.name!r} weights")
    return head


sam_decoder_head.version = 1
sam_decoder_head.reads = "feature_map"
sam_decoder_head.prompts = PROMPTS
register_head("sam_decoder", sam_decoder_head)
