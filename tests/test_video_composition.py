"""Spatial adapters on AIM's shared-attention case.

AIM runs the block's own (frozen) attention a second time, over the frames of each token
position. A spatial adapter composed with it must say what that pass sees: DeRA is a branch
beside the attention, computed per frame, so AIM's pass over time never goes through it (its
attention only ever sees one frame's tokens); spatial LoRA lives inside the attention's qkv
projection, which AIM's pass shares, so its update reaches the pass over time as well."""

from __future__ import annotations

import pytest
import torch

from adaptbench.adapters import build_adapter
from adaptbench.backbones import load_backbone

from helpers import clips, randomise

FRAMES, BATCH = 4, 2


def token_counts(module: torch.nn.Module, backbone) -> list[tuple[int, int]]:
    """(batch, sequence length) of every call of ``module`` during one forward on clips."""
    seen = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[:2])))
    with torch.no_grad():
        backbone(clips(batch=BATCH, frames=FRAMES), frames=FRAMES)
    handle.remove()
    return seen


@pytest.mark.parametrize("order", [("aim", "dera"), ("dera", "aim")])
def test_dera_never_runs_over_time_beside_aim(order):
    backbone = load_backbone("vit_tiny_test").eval()
    adapters = {name: build_adapter(name, backbone, {"num_frames": FRAMES} if name == "aim" else {})
                for name in order}
    for seed, adapter in enumerate(adapters.values()):
        randomise(adapter, seed)
    tokens = backbone.anatomy.num_prefix_tokens + backbone.anatomy.grid[0] * backbone.anatomy.grid[1]
    dera_attention = [m for m in backbone.modules() if type(m).__name__ == "DeRAAttention"]
    assert len(dera_attention) == backbone.anatomy.num_blocks
    for module in dera_attention:
        assert token_counts(module, backbone) == [(BATCH * FRAMES, tokens)]  # one pass, per frame
    # while the shared attention runs both per frame and over the frames
    core = backbone.site("qkv", 0)
    assert sorted(token_counts(core, backbone)) == sorted([(BATCH * FRAMES, tokens), (BATCH * tokens, FRAMES)])


def test_spatial_lora_reaches_aims_pass_over_time_through_the_shared_qkv():
    backbone = load_backbone("vit_tiny_test").eval()
    build_adapter("aim", backbone, {"num_frames": FRAMES})
    lora = build_adapter("spatial_lora", backbone, {})
    randomise(lora, 1)
    tokens = backbone.anatomy.num_prefix_tokens + backbone.anatomy.grid[0] * backbone.anatomy.grid[1]
    wrapped = backbone.site("qkv", 0)
    assert type(wrapped).__name__ == "LoRALinear"
    assert sorted(token_counts(wrapped, backbone)) == sorted([(BATCH * FRAMES, tokens), (BATCH * tokens, FRAMES)])
