"""The video adapters beyond the conformance suite: ZeroI2V (STDHA + merged linear adapters) and
DeRA (ToonComposer's per-frame low-rank RoPE attention), each against a by-hand reference
written with plain tensor ops, on clips folded into the batch (frames=4)."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    clips,
    divided_space_time_backbone,
    images,
    raises_one_line,
    randomise,
)
from torch import nn

from adaptbench.adapters import SiteWrapper, build_adapter
from adaptbench.adapters.accounting import parameter_report
from adaptbench.adapters.base import NotApplicable
from adaptbench.adapters.dera import DeRAConfig
from adaptbench.adapters.zeroi2v import STDHA, ZeroI2VConfig
from adaptbench.backbones import load_backbone
from adaptbench.backbones.geometry import TokenGeometry

D = 32  # width of the tiny backbones
FRAMES = 4
ATOL = RTOL = 1e-5


def adapted(adapter: str, options: dict | None = None, backbone_name: str = "vit_tiny_test", seed: int = 3,
            dtype: torch.dtype = torch.float32):
    """(frozen copy, adapted backbone, adapter), every declared tensor randomised, eval mode."""
    torch.manual_seed(0)
    backbone = load_backbone(backbone_name).eval()
    frozen = copy.deepcopy(backbone)
    adapter_obj = build_adapter(adapter, backbone, options or {})
    randomise(adapter_obj, seed)
    return frozen.eval().to(dtype), backbone.eval().to(dtype), adapter_obj


def layer_norm(x: torch.Tensor, norm: nn.LayerNorm, weight=None, bias=None) -> torch.Tensor:
    weight = norm.weight if weight is None else weight
    bias = norm.bias if bias is None else bias
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * weight + bias


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    return x @ layer.weight.T + (layer.bias if layer.bias is not None else 0)


def attention_by_hand(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_h)) v per head; (B, N, heads * d_h) in and out."""
    batch, tokens, width = q.shape
    q, k, v = (t.reshape(batch, tokens, heads, width // heads) for t in (q, k, v))
    scores = torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(width // heads)
    return torch.einsum("bhnm,bmhd->bnhd", scores.softmax(-1), v).reshape(batch, tokens, width)


# ================================================================================================
# ZeroI2V
# ================================================================================================

def layer_scale(branch, x: torch.Tensor) -> torch.Tensor:
    """x * gamma where the branch's post holds a LayerScale (the register-token tiny ViT), else x."""
    for module in branch.post.modules():
        if hasattr(module, "gamma"):
            return x * module.gamma
    return x


def shift_by_hand(qkv: torch.Tensor, frames: int, groups) -> torch.Tensor:
    """Image i = clip * frames + t: for each (start, stop, dt), channels [start, stop) of its k and
    v thirds are those of image clip * frames + (t - dt) when that frame exists, else its own."""
    out = qkv.clone()
    width = qkv.shape[-1] // 3
    for image in range(qkv.shape[0]):
        clip, t = divmod(image, frames)
        for third in (1, 2):
            for start, stop, dt in groups:
                if 0 <= t - dt < frames:
                    cols = slice(third * width + start, third * width + stop)
                    out[image, ..., cols] = qkv[clip * frames + t - dt, ..., cols]
    return out


def linear_adapter(p: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    """A(x) = W2 (W1 x + b1) + b2 (eval: dropout off)."""
    hidden = x @ p[f"{prefix}.down.weight"].T + p[f"{prefix}.down.bias"]
    return hidden @ p[f"{prefix}.up.weight"].T + p[f"{prefix}.up.bias"]


def zeroi2v_by_hand(frozen, p: dict, x: torch.Tensor, frames: int, groups, scale: float,
                    temporal: torch.Tensor | None = None) -> torch.Tensor:
    """The whole timm tiny ViT with ZeroI2V, block by block, from the frozen copy's weights."""
    tokens, _ = frozen.embed(x)
    if temporal is not None:  # E[t] on every token of frame t, at the first block's input
        tokens = (tokens.unflatten(0, (-1, frames)) + temporal[None, :, None, :]).flatten(0, 1)
    for index, block in enumerate(frozen.blocks):
        attn, mlp = block.branches["attn"], block.branches["mlp"]
        name = f"blocks.{index}"
        h = layer_norm(tokens, attn.norm)
        h = h + scale * linear_adapter(p, f"{name}.qkv.zeroi2v", h)
        qkv = shift_by_hand(linear(h, attn.core.qkv), frames, groups)
        q, k, v = qkv.split(D, dim=-1)
        out = linear(attention_by_hand(q, k, v, attn.core.num_heads), attn.core.proj)
        tokens = tokens + layer_scale(attn, out + scale * linear_adapter(p, f"{name}.attn_out.zeroi2v", out))
        h = layer_norm(tokens, mlp.norm)
        h = h + scale * linear_adapter(p, f"{name}.mlp_in.zeroi2v", h)
        out = linear(F.gelu(linear(h, mlp.core.fc1)), mlp.core.fc2)
        tokens = tokens + layer_scale(mlp, out + scale * linear_adapter(p, f"{name}.mlp_out.zeroi2v", out))
    return pooled_by_hand(frozen, tokens, p)


def pooled_by_hand(frozen, tokens: torch.Tensor, p: dict) -> torch.Tensor:
    """timm's class-token models: norm, then the class token; its mean-pooling models (the
    register-token one): the mean of the patch tokens, then fc_norm (the final norm, tuned)."""
    if frozen.default_pool == "cls":
        return layer_norm(tokens, frozen.model.norm, p["final_norm.weight"], p["final_norm.bias"])[:, 0]
    patches = tokens[:, frozen.anatomy.num_prefix_tokens:].mean(1)
    return layer_norm(patches, frozen.model.fc_norm, p["final_norm.weight"], p["final_norm.bias"])


@pytest.mark.parametrize("backbone_name", ["vit_tiny_test", "vit_tiny_test_reg"])
def test_zeroi2v_is_the_by_hand_model_on_clips(backbone_name):
    """Default options (shift_div 12: 2 of the 32 channels of k and v from t-1, the next 2 from
    t+1; four adapters at scale 0.5; the final norm tuned), the whole forward on 2 clips of 4."""
    frozen, backbone, adapter = adapted("zeroi2v", backbone_name=backbone_name)
    params = {n: p.detach() for n, p in adapter.trainable_parameters().items()}
    x = clips(5, batch=2, frames=FRAMES)
    with torch.no_grad():
        ours = backbone(x, frames=FRAMES)
        expected = zeroi2v_by_hand(frozen, params, x, FRAMES, [(0, 2, 1), (2, 4, -1)], 0.5)
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=RTOL)


def test_stdha_head_0_reads_frame_t_minus_1_and_head_1_frame_t_plus_1():
    """shift_div = 2 on the 2-head tiny ViT (head width 16 = D // 2): head 0's keys and values
    come from frame t-1, head 1's from t+1, the first and last frames keep their own; queries
    are never shifted; class tokens are shifted with the patches (official: all HW+1 tokens)."""
    _, backbone, _ = adapted("zeroi2v", {"shift_div": 2, "sites": ()})
    stdha = backbone.site("qkv", 0)
    assert isinstance(stdha, STDHA) and stdha.shifts == ((0, 16, 1), (16, 32, -1))
    tokens = torch.randn(2 * FRAMES, 17, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), backbone.geometry.publish(TokenGeometry(batch=8, grid=(4, 4), prefix=1, frames=FRAMES)):
        plain, shifted = stdha.base_layer(tokens), stdha(tokens)
    q, k, v = shifted.split(D, dim=-1)
    q0, k0, v0 = plain.split(D, dim=-1)
    assert torch.equal(q, q0)
    for image in range(2 * FRAMES):
        t = image % FRAMES
        previous = image - 1 if t > 0 else image  # the first frame keeps its own
        following = image + 1 if t < FRAMES - 1 else image  # and so does the last
        for ours, theirs in ((k, k0), (v, v0)):
            assert torch.equal(ours[image, :, :16], theirs[previous, :, :16])  # head 0: t-1
            assert torch.equal(ours[image, :, 16:], theirs[following, :, 16:])  # head 1: t+1
    torch.testing.assert_close(shifted, shift_by_hand(plain, FRAMES, [(0, 16, 1), (16, 32, -1)]), atol=0, rtol=0)


def test_stdha_long_shift_and_stride_follow_the_official_channel_groups():
    """shift_stride 2, long_shift_div 8 with long_shift_right: channels [0,4) from t-2, [4,8)
    from t+2, then [8,12) from t-2 and [12,16) from t+2 (stdha_ablation.py l.51-58)."""
    _, backbone, _ = adapted("zeroi2v", {"shift_div": 8, "shift_stride": 2, "long_shift_div": 8,
                                         "long_shift_right": True, "sites": ()})
    stdha = backbone.site("qkv", 1)
    groups = [(0, 4, 2), (4, 8, -2), (8, 12, 2), (12, 16, -2)]
    assert stdha.shifts == tuple(groups)
    tokens = torch.randn(3 * FRAMES, 17, D, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), backbone.geometry.publish(TokenGeometry(batch=12, grid=(4, 4), prefix=1, frames=FRAMES)):
        torch.testing.assert_close(stdha(tokens), shift_by_hand(stdha.base_layer(tokens), FRAMES, groups),
                                   atol=0, rtol=0)


def test_zeroi2v_never_mixes_two_clips():
    """Perturbing every frame of clip 1 leaves clip 0's features exactly as they were, while
    perturbing frame 0 of a clip changes its frame 1 (STDHA reads the neighbouring frame)."""
    _, backbone, _ = adapted("zeroi2v")
    x = clips(6, batch=2, frames=FRAMES)
    other_clip, other_frame = x.clone(), x.clone()
    other_clip[FRAMES:] += torch.randn(other_clip[FRAMES:].shape, generator=torch.Generator().manual_seed(7))
    other_frame[0] += 1.0
    with torch.no_grad():
        base = backbone.forward_features(x, frames=FRAMES)
        moved = backbone.forward_features(other_clip, frames=FRAMES)
        neighbour = backbone.forward_features(other_frame, frames=FRAMES)
    assert torch.equal(moved[:FRAMES], base[:FRAMES])
    assert not torch.allclose(moved[FRAMES:], base[FRAMES:])
    assert not torch.allclose(neighbour[1], base[1], atol=1e-4)
    assert torch.equal(neighbour[FRAMES:], base[FRAMES:])


def test_stdha_is_the_identity_on_images():
    """frames = 1: the trained adapters act, STDHA does nothing (the same model as adapters
    without STDHA); freshly attached, the whole model is the frozen one, bit for bit."""
    _, with_stdha, adapter = adapted("zeroi2v", seed=4)
    _, without, other = adapted("zeroi2v", {"stdha": False}, seed=4)
    assert sorted(adapter.trainable_parameters()) == sorted(other.trainable_parameters())
    x = images(3, batch=4)
    with torch.no_grad():
        assert torch.equal(with_stdha(x), without(x))
    torch.manual_seed(0)
    frozen = load_backbone("vit_tiny_test").eval()
    fresh = copy.deepcopy(frozen)
    build_adapter("zeroi2v", fresh)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), frozen(x))
        # on clips STDHA acts from the start: it has no parameter to start at zero
        assert not torch.allclose(fresh(clips(1), frames=FRAMES), frozen(clips(1), frames=FRAMES), atol=1e-4)


def test_zeroi2v_merge_is_exact_and_restores_the_parameter_count():
    """After randomising, merge() folds each adapter into its linear (W(I + sM) before qkv and
    fc1, (I + sM)W after proj and fc2): the same clip features to 1e-5, plain nn.Linear at every
    site under STDHA, no wrapper left, and exactly the frozen model's parameter count."""
    frozen, backbone, adapter = adapted("zeroi2v")
    frozen_count = sum(p.numel() for p in frozen.parameters())
    report = parameter_report(adapter)
    assert report.extra_inference == adapter.trainable_count() - 2 * D  # the final norm is the backbone's
    x = clips(8, batch=2, frames=FRAMES)
    with torch.no_grad():
        before = backbone.forward_features(x, frames=FRAMES)
        adapter.merge()
        after = backbone.forward_features(x, frames=FRAMES)
    torch.testing.assert_close(after, before, atol=ATOL, rtol=RTOL)
    assert sum(p.numel() for p in backbone.parameters()) == frozen_count
    assert adapter.extra_inference_params() == 0
    assert not [m for m in backbone.modules() if isinstance(m, SiteWrapper)]
    for block in range(backbone.anatomy.num_blocks):
        stdha = backbone.site("qkv", block)
        assert isinstance(stdha, STDHA) and type(stdha.base_layer) is nn.Linear
        for site in ("attn_out", "mlp_in", "mlp_out"):
            assert type(backbone.site(site, block)) is nn.Linear


def test_zeroi2v_merge_formula_before_and_after_the_linear():
    """The merged weights by hand: qkv (adapter before) and attn_out (adapter after)."""
    _, backbone, adapter = adapted("zeroi2v", {"scale": 0.7})
    p = {n: t.detach().clone() for n, t in adapter.trainable_parameters().items()}
    qkv, proj = backbone.site("qkv", 0).base_layer.base_layer, backbone.site("attn_out", 0).base_layer
    w_qkv, b_qkv, w_proj, b_proj = (t.detach().clone() for t in (qkv.weight, qkv.bias, proj.weight, proj.bias))

    def affine(prefix):
        w1, b1, w2, b2 = (p[f"{prefix}.{n}"] for n in ("down.weight", "down.bias", "up.weight", "up.bias"))
        return w2 @ w1, w2 @ b1 + b2

    m_in, c_in = affine("blocks.0.qkv.zeroi2v")
    m_out, c_out = affine("blocks.0.attn_out.zeroi2v")
    adapter.merge()
    eye = torch.eye(D)
    torch.testing.assert_close(qkv.weight, w_qkv @ (eye + 0.7 * m_in), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(qkv.bias, b_qkv + 0.7 * w_qkv @ c_in, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(proj.weight, (eye + 0.7 * m_out) @ w_proj, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(proj.bias, (eye + 0.7 * m_out) @ b_proj + 0.7 * c_out, atol=ATOL, rtol=RTOL)


def test_zeroi2v_init_and_declared_tensors():
    """W1 truncated normal (std 0.02), b1, W2, b2 zero; h = int(D * 0.25) = 8; the final norm's
    own tensors are declared (trained in place, as the official ln_post)."""
    torch.manual_seed(0)
    backbone = load_backbone("vit_tiny_test")
    adapter = build_adapter("zeroi2v", backbone)
    params = adapter.trainable_parameters()
    down = params["blocks.0.qkv.zeroi2v.down.weight"]
    assert down.shape == (8, D) and 0.01 < down.std() < 0.03  # truncated at +-2 (absolute), as mmengine's
    for name in ("down.bias", "up.weight", "up.bias"):
        assert torch.count_nonzero(params[f"blocks.1.mlp_out.zeroi2v.{name}"]) == 0
    assert params["final_norm.weight"] is backbone.model.norm.weight
    per_adapter = 2 * D * 8 + 8 + D
    assert adapter.trainable_count() == 2 * 4 * per_adapter + 2 * D
    assert dict(vars(ZeroI2VConfig())) == {
        "shift_div": 12, "shift_stride": 1, "long_shift_div": 0, "long_shift_right": False, "stdha": True,
        "mlp_ratio": 0.25, "scale": 0.5, "dropout": 0.1, "sites": ("qkv", "attn_out", "mlp_in", "mlp_out"),
        "final_norm": True, "frames": 0, "blocks": None}


def test_zeroi2v_temporal_embedding_is_by_hand_and_kept_after_merging():
    """frames = 4: a zero-initialised 4 x D embedding added to every token of frame t before the
    first block; the merged model keeps exactly those 4 x D parameters; other clip lengths are
    refused in one line."""
    frozen, backbone, adapter = adapted("zeroi2v", {"frames": FRAMES})
    params = {n: p.detach().clone() for n, p in adapter.trainable_parameters().items()}
    assert params["temporal_embedding"].shape == (FRAMES, D)
    x = clips(9, batch=2, frames=FRAMES)
    with torch.no_grad():
        ours = backbone(x, frames=FRAMES)
        expected = zeroi2v_by_hand(frozen, params, x, FRAMES, [(0, 2, 1), (2, 4, -1)], 0.5,
                                   temporal=params["temporal_embedding"])
        torch.testing.assert_close(ours, expected, atol=ATOL, rtol=RTOL)
        adapter.merge()
        torch.testing.assert_close(backbone(x, frames=FRAMES), ours, atol=ATOL, rtol=RTOL)
    assert adapter.extra_inference_params() == FRAMES * D
    assert sum(p.numel() for p in backbone.parameters()) == sum(p.numel() for p in frozen.parameters()) + FRAMES * D
    with raises_one_line("clips of 4 frames, this forward has 1", "frames=4"):
        backbone(images(1, batch=2))
    torch.manual_seed(0)
    fresh = load_backbone("vit_tiny_test")
    build_adapter("zeroi2v", fresh, {"frames": 2})
    assert torch.count_nonzero(fresh.site("block", 0).embedding) == 0


def test_zeroi2v_is_not_applicable_on_sam_and_on_too_narrow_widths():
    with pytest.raises(NotApplicable, match="per-window geometry without the frame count"):
        build_adapter("zeroi2v", load_backbone("sam_tiny_test"))
    with pytest.raises(NotApplicable, match="shift_div=40 leaves no channel to shift at width 32"):
        build_adapter("zeroi2v", load_backbone("vit_tiny_test"), {"shift_div": 40})
    with pytest.raises(NotApplicable, match="need more than the 32 channels"):
        build_adapter("zeroi2v", load_backbone("vit_tiny_test"),
                      {"shift_div": 2, "long_shift_div": 4})


@pytest.mark.parametrize("option,value,named", [
    ("shift_div", "1", "zeroi2v option shift_div=1: expected an integer >= 2"),
    ("shift_stride", "0", "zeroi2v option shift_stride=0: expected an integer >= 1"),
    ("long_shift_div", "1", "zeroi2v option long_shift_div=1: expected 0 (off) or an integer >= 2"),
    ("long_shift_right", "true", "zeroi2v option long_shift_right=true: expected long_shift_div > 0"),
    ("mlp_ratio", "0", "zeroi2v option mlp_ratio=0.0: expected a number > 0"),
    ("dropout", "1", "zeroi2v option dropout=1.0: expected 0 <= dropout < 1"),
    ("sites", "qkv,proj", ("zeroi2v option sites: 'proj' is not a linear site; expected some of ('qkv', "
                           "'attn_out', 'mlp_in', 'mlp_out')")),
    ("sites", "qkv,qkv", "zeroi2v option sites=('qkv', 'qkv'): expected each site once"),
    ("frames", "-2", "zeroi2v option frames=-2: expected 0"),
    ("shift_div", "twelve", "adapter 'zeroi2v' option shift_div='twelve': expected an integer"),
])
def test_zeroi2v_option_errors_are_one_line(option, value, named):
    with raises_one_line(re.escape(named), option):
        ZeroI2VConfig.from_dict({option: value}, adapter="zeroi2v")


# ================================================================================================
# DeRA
# ================================================================================================

def rope_by_hand(x: torch.Tensor, prefix: int, grid: tuple[int, int], start: int, theta: float = 1e4):
    """Complex rotation of the adjacent pairs of x (B, N, heads, d_h), pair by pair: the first
    c - 2a pairs not at all, the next a by row * theta^(-j/a), the last a by col * theta^(-j/a)
    (c = d_h / 2, a = c // 3); rows and columns numbered from ``start``; prefix tokens untouched."""
    batch, tokens, heads, head_dim = x.shape
    pairs = head_dim // 2
    axis = pairs // 3
    still = pairs - 2 * axis
    angles = torch.zeros(tokens, pairs, dtype=torch.float64)
    for index in range(grid[0] * grid[1]):
        row, col = divmod(index, grid[1])
        for pair in range(still, pairs):
            j = (pair - still) % axis
            position = row + start if pair < still + axis else col + start
            angles[prefix + index, pair] = position * theta ** (-j / axis)
    z = torch.view_as_complex(x.double().reshape(batch, tokens, heads, pairs, 2).contiguous())
    z = z * torch.polar(torch.ones_like(angles), angles)[None, :, None, :]
    return torch.view_as_real(z).reshape(x.shape).to(x.dtype)


def dera_by_hand(p: dict, name: str, n: torch.Tensor, prefix: int, grid, start: int = 1, heads: int = 4):
    """up(o(softmax(RoPE(q) RoPE(k)^T / sqrt(d_h)) v)) with q, k, v = Linear(down(n)), per image."""
    z = n @ p[f"{name}.down.weight"].T
    q, k, v = (z @ p[f"{name}.attn_r.{t}.weight"].T + p[f"{name}.attn_r.{t}.bias"] for t in "qkv")
    batch, tokens, rank = z.shape
    q, k = (rope_by_hand(t.reshape(batch, tokens, heads, rank // heads), prefix, grid, start).reshape(z.shape)
            for t in (q, k))
    out = attention_by_hand(q, k, v, heads) @ p[f"{name}.attn_r.o.weight"].T + p[f"{name}.attn_r.o.bias"]
    return out @ p[f"{name}.up.weight"].T


def frozen_features(backbone_name: str, x: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)
    return load_backbone(backbone_name).eval().forward_features(x)


def with_dera_by_hand(frozen, p: dict, start: int = 1, heads: int = 4):
    """The frozen copy with every attention branch's output plus post(DeRA_by_hand(norm(x)))."""
    def hook(index):
        def add(branch, args, output):
            x = args[0]
            n = branch.norm(x)
            if n.dim() == 4:  # SAM's (B, H, W, C)
                flat = dera_by_hand(p, f"blocks.{index}.attn.dera", n.flatten(1, 2), 0, n.shape[1:3], start, heads)
                update = flat.reshape(n.shape)
            else:
                geometry = frozen.geometry.current
                update = dera_by_hand(p, f"blocks.{index}.attn.dera", n, geometry.prefix, geometry.grid, start,
                                      heads)
            return output + branch.post(update)
        return add
    for index, block in enumerate(frozen.blocks):
        block.branches["attn"].register_forward_hook(hook(index))
    return frozen


F64 = {"dtype": torch.float64}
TIGHT = {"atol": 1e-9, "rtol": 1e-9}


@pytest.mark.parametrize("backbone_name", ["vit_tiny_test", "vit_tiny_test_reg", "clip_tiny_test_quickgelu"])
def test_dera_is_the_by_hand_branch(backbone_name):
    """Rank 72: 4 heads of 18, RoPE pairs 3 unrotated + 3 by row + 3 by column (the official
    layout); class and register tokens unrotated; LayerScale (the QuickGELU CLIP) applied to the
    branch too, as the official gate e[2] is. In float64, so that the comparison is tight."""
    frozen, backbone, adapter = adapted("dera", backbone_name=backbone_name, **F64)
    params = {n: p.detach() for n, p in adapter.trainable_parameters().items()}
    x = images(4, batch=3).double()
    with torch.no_grad():
        ours = backbone.forward_features(x)
        assert not torch.allclose(ours, frozen.forward_features(x), atol=1e-3)
        torch.testing.assert_close(ours, with_dera_by_hand(frozen, params).forward_features(x), **TIGHT)


def test_dera_in_float32_is_the_float64_branch():
    _, backbone, _ = adapted("dera", backbone_name="vit_tiny_test_reg")
    wide = copy.deepcopy(backbone).double()
    x = images(4, batch=3)
    with torch.no_grad():
        torch.testing.assert_close(backbone.forward_features(x), wide.forward_features(x.double()).float(),
                                   atol=1e-4, rtol=1e-4)


def test_dera_on_sam_equals_the_official_numbering_from_zero():
    """No prefix tokens: the rotation with rows and columns numbered from 0 (the official
    ``freqs[1][:h]``) gives the same branch, since RoPE scores see only position differences;
    on SAM the branch runs over the whole 8x8 grid of each image (not SAM's windows)."""
    pytest.importorskip("segment_anything")
    frozen, backbone, adapter = adapted("dera", backbone_name="sam_tiny_test", **F64)
    params = {n: p.detach() for n, p in adapter.trainable_parameters().items()}
    x = images(5, batch=2).double()
    with torch.no_grad():
        official = with_dera_by_hand(frozen, params, start=0).forward_features(x)
        torch.testing.assert_close(backbone.forward_features(x), official, **TIGHT)


def test_dera_for_frame_t_never_depends_on_another_frame():
    """On 2 clips of 4 frames, perturbing frame t' changes DeRA's contribution for that image only."""
    _, backbone, _ = adapted("dera")
    wrapper = backbone.site("attn", 1)
    tokens = torch.randn(2 * FRAMES, 17, D, generator=torch.Generator().manual_seed(3))
    moved = tokens.clone()
    moved[5] += torch.randn(17, D, generator=torch.Generator().manual_seed(4))  # clip 1, frame 1
    geometry = TokenGeometry(batch=8, grid=(4, 4), prefix=1, frames=FRAMES)
    with torch.no_grad(), backbone.geometry.publish(geometry):
        before = wrapper(tokens) - wrapper.base_layer(tokens)
        after = wrapper(moved) - wrapper.base_layer(moved)
        alone = wrapper(tokens[4:8]) - wrapper.base_layer(tokens[4:8])  # one clip alone: the same
    others = [i for i in range(2 * FRAMES) if i != 5]
    assert torch.equal(after[others], before[others])
    assert not torch.allclose(after[5], before[5], atol=1e-4)
    torch.testing.assert_close(alone, before[4:8], atol=1e-6, rtol=0)


def test_dera_leaves_the_temporal_branch_untouched():
    """On a divided space-time backbone, only the ``attn`` branches are wrapped; the ``temporal``
    branches are neither wrapped nor declared, receive no gradient and stay bit-identical through
    a few optimiser steps on clips, while DeRA trains."""
    torch.manual_seed(0)
    backbone = divided_space_time_backbone()
    temporal = {index: block.branches["temporal"] for index, block in enumerate(backbone.blocks)}
    before = {n: p.detach().clone() for n, p in backbone.named_parameters() if ".temporal." in n}
    assert before
    adapter = build_adapter("dera", backbone)
    declared = adapter.trainable_parameters()
    assert all(".attn.dera." in name for name in declared)
    temporal_ids = {id(p) for branch in temporal.values() for p in branch.parameters()}
    assert not temporal_ids & {id(p) for p in declared.values()}
    for index, branch in temporal.items():
        assert backbone.site("temporal", index) is branch
        assert not any(isinstance(m, SiteWrapper) for m in branch.modules())
    initial = {n: p.detach().clone() for n, p in declared.items()}
    head = nn.Linear(D, 3)
    optimizer = torch.optim.Adam([*declared.values(), *head.parameters()], lr=1e-2)
    backbone.train()
    for step in range(3):
        optimizer.zero_grad()
        loss = F.cross_entropy(head(backbone(clips(step), frames=FRAMES)), torch.arange(8) % 3)
        loss.backward()
        optimizer.step()
    for name, param in backbone.named_parameters():
        if ".temporal." in name:
            assert torch.equal(param, before[name]) and param.grad is None, name
    assert all(not torch.equal(declared[n], initial[n]) for n in declared)


def test_dera_is_the_identity_at_init_on_clips():
    torch.manual_seed(0)
    frozen = divided_space_time_backbone()
    backbone = copy.deepcopy(frozen)
    adapter = build_adapter("dera", backbone)
    assert not adapter.mergeable
    x = clips(2)
    with torch.no_grad():
        assert torch.equal(backbone.eval()(x, frames=FRAMES), frozen.eval()(x, frames=FRAMES))
    params = adapter.trainable_parameters()
    assert torch.count_nonzero(params["blocks.0.attn.dera.up.weight"]) == 0
    assert torch.count_nonzero(params["blocks.0.attn.dera.attn_r.q.bias"]) == 0
    bound = math.sqrt(6 / (D + 72))  # Xavier-uniform of the 72 x 32 down projection
    down = params["blocks.0.attn.dera.down.weight"]
    assert down.shape == (72, D) and 0.5 * bound < down.abs().max() <= bound
    assert "blocks.0.attn.dera.down.bias" not in params and "blocks.0.attn.dera.up.bias" not in params


def test_dera_reads_the_grid_at_every_forward():
    """A 48x48 input (6x6 grid) after 32x32 ones: the rotation follows the new grid."""
    _, backbone, adapter = adapted("dera", backbone_name="vit_tiny_test", **F64)
    params = {n: p.detach() for n, p in adapter.trainable_parameters().items()}
    wrapper = backbone.site("attn", 0)
    for grid in ((4, 4), (6, 6), (3, 5)):
        tokens = torch.randn(2, 1 + grid[0] * grid[1], D, generator=torch.Generator().manual_seed(grid[1]),
                             dtype=torch.float64)
        with torch.no_grad(), backbone.geometry.publish(TokenGeometry(batch=2, grid=grid, prefix=1)):
            ours = wrapper(tokens) - wrapper.base_layer(tokens)
        n = wrapper.base_layer.norm(tokens)
        torch.testing.assert_close(ours, dera_by_hand(params, "blocks.0.attn.dera", n, 1, grid), **TIGHT)


@pytest.mark.parametrize("options,named", [
    ({"rank": "0"}, "dera option rank=0: expected an integer >= 1"),
    ({"rank": "30"}, "dera option rank=30: expected a multiple of heads=4"),
    ({"rank": "16"}, "dera option rank=16: expected rank / heads (now 4) even and >= 6"),
    ({"rank": "36"}, "dera option rank=36: expected rank / heads (now 9) even and >= 6"),
    ({"heads": "0"}, "dera option heads=0: expected an integer >= 1"),
    ({"theta": "0"}, "dera option theta=0.0: expected a number > 0"),
    ({"rank": "many"}, "adapter 'dera' option rank='many': expected an integer"),
])
def test_dera_option_errors_are_one_line(options, named):
    with raises_one_line(re.escape(named), next(iter(options))):
        DeRAConfig.from_dict(options, adapter="dera")


def test_dera_rank_24_and_other_heads_run():
    """The smallest rank the official RoPE runs with (24: heads of 6, one pair per slot), and
    8 heads of 12 (not the official 4; allowed)."""
    for options in ({"rank": 24}, {"rank": 96, "heads": 8}):
        frozen, backbone, adapter = adapted("dera", options, **F64)
        params = {n: p.detach() for n, p in adapter.trainable_parameters().items()}
        reference = with_dera_by_hand(frozen, params, heads=options.get("heads", 4))
        x = images(2).double()
        with torch.no_grad():
            torch.testing.assert_close(backbone.forward_features(x), reference.forward_features(x), **TIGHT)


# ================================================================================================
# parameter counts on a ViT-B/16 anatomy (meta device: shapes only, nothing allocated)
# ================================================================================================

@pytest.mark.parametrize("name", ["timm:vit_base_patch16_224", "clip:ViT-B-16"])
def test_parameter_counts_on_vit_b16(name):
    if name.startswith("clip:"):
        pytest.importorskip("open_clip")
    with torch.device("meta"):
        backbone = load_backbone(name, weights="random")
        frozen_count = sum(p.numel() for p in backbone.parameters())
        zero = build_adapter("zeroi2v", backbone)
        adapters = 4 * 12 * (2 * 768 * 192 + 192 + 768)
        assert adapters == 14_201_856
        assert zero.trainable_count() == adapters + 2 * 768  # + the final norm, trained in place
        assert parameter_report(zero).extra_inference == adapters
        assert backbone.site("qkv", 0).shifts == ((0, 64, 1), (64, 128, -1))  # head 0: t-1, head 1: t+1
        zero.merge()
        assert zero.extra_inference_params() == 0
        assert sum(p.numel() for p in backbone.parameters()) == frozen_count

        kept = build_adapter("zeroi2v", load_backbone(name, weights="random"), {"frames": 16})
        assert kept.trainable_count() == adapters + 2 * 768 + 16 * 768
        kept.merge()
        assert kept.extra_inference_params() == 12_288  # the K400 config's 16 x 768 temporal embedding

        dera = build_adapter("dera", load_backbone(name, weights="random"))
        assert dera.trainable_count() == 12 * (2 * 768 * 72 + 4 * (72 * 72 + 72)) == 1_579_392
        assert parameter_report(dera).extra_inference == parameter_report(dera).extra_inference_merged == 1_579_392
