"""Our LoRA equals HF PEFT's LoRA on the same timm ViT, given the same A and B.

PEFT can only target timm's fused ``qkv`` linear as a whole (one A, one B), so:

* the fused sites (``qkv``, ``attn_out``, ``mlp_in``, ``mlp_out``) are compared with PEFT
  directly: outputs, gradients of A and B, and ``merge()`` against ``merge_and_unload()``;
* the separate ``q``/``v`` targets are checked against their defining (merge) formula
  ``W[slice] += (alpha / r) B_p A_p``, and against PEFT in the one case PEFT can express
  them: our ``A_q = A_v = A`` and PEFT's ``B = [B_q; 0; B_v]``.

Every B is set non-zero (B = 0 would make every comparison trivially true), and every
comparison also checks that the adapted output is far from the base model's.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from adaptbench.adapters import build_adapter
from adaptbench.adapters.lora import LoRALinear
from adaptbench.backbones import load_backbone
from adaptbench.backbones.families.timm import _TINY
from helpers import images

peft = pytest.importorskip("peft")

R, ALPHA = 4, 8
SCALING = ALPHA / R
ATOL = RTOL = 1e-5
FAR = 1e-3  # the adapted output must differ from the base model's by more than this
DEPTH, WIDTH = _TINY["depth"], _TINY["embed_dim"]
# our site -> the timm module PEFT targets, relative to a block
SITE_TO_TIMM = {"qkv": "attn.qkv", "attn_out": "attn.proj", "mlp_in": "mlp.fc1", "mlp_out": "mlp.fc2"}
# our canonical block paths -> timm's (state-dict names)
_CANONICAL_TO_TIMM = ((".branches.attn.norm.", ".norm1."), (".branches.attn.core.", ".attn."),
                      (".branches.mlp.norm.", ".norm2."), (".branches.mlp.core.", ".mlp."))


def plain_timm() -> nn.Module:
    """The tiny ViT our factory builds, as plain timm (same seed, same weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **_TINY).eval()


def timm_name(ours: str) -> str:
    for canonical, original in _CANONICAL_TO_TIMM:
        ours = ours.replace(canonical, original)
    return ours


def randomise(adapter, seed: int) -> dict[str, torch.Tensor]:
    """Seeded, non-zero A and B for every declared tensor (and, for DoRA, magnitudes moved
    up to ~10% away from their initial norms); returns them by name."""
    generator = torch.Generator().manual_seed(seed)
    params = adapter.trainable_parameters()
    with torch.no_grad():
        for name, param in sorted(params.items()):
            noise = torch.randn(param.shape, generator=generator)
            if ".lora_magnitude." in name:
                param.mul_(1 + 0.1 * noise)
            else:
                param.copy_(noise * (0.1 if ".lora_B." in name else 0.2))
    assert all(p.abs().min() > 0 for n, p in params.items() if ".lora_B." in n)
    return params


def ours_fused(seed: int = 1):
    backbone = load_backbone("vit_tiny_test").eval()
    adapter = build_adapter("lora", backbone, {"targets": list(SITE_TO_TIMM), "r": R, "alpha": ALPHA})
    return backbone, adapter, randomise(adapter, seed)


def peft_model(lora_weights, use_dora: bool = False, dropout: float = 0.0) -> nn.Module:
    """PEFT LoRA (or DoRA) on plain timm, with ``lora_weights(block, site) -> (A, B)``
    (DoRA: ``(A, B, magnitude)``) copied in."""
    config = peft.LoraConfig(
        r=R, lora_alpha=ALPHA, lora_dropout=dropout, target_modules=["qkv", "proj", "fc1", "fc2"],
        # "proj" also matches the patch-embedding Conv2d, which PEFT would wrap too
        exclude_modules=["patch_embed.proj"], use_dora=use_dora,
    )
    model = peft.get_peft_model(plain_timm(), config).eval()
    timm_model = model.base_model.model
    wrapped = sorted(n for n, m in timm_model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer))
    assert wrapped == sorted(f"blocks.{b}.{p}" for b in range(DEPTH) for p in SITE_TO_TIMM.values())
    with torch.no_grad():
        for block in range(DEPTH):
            for site, path in SITE_TO_TIMM.items():
                layer = timm_model.blocks[block].get_submodule(path)
                assert layer.scaling["default"] == SCALING
                a, b, *magnitude = lora_weights(block, site)
                layer.lora_A["default"].weight.copy_(a)
                layer.lora_B["default"].weight.copy_(b)
                if use_dora:
                    layer.lora_magnitude_vector["default"].weight.copy_(*magnitude)
    return model


def peft_with(params) -> nn.Module:
    return peft_model(lambda block, site: (params[f"blocks.{block}.{site}.lora_A.{site}"],
                                           params[f"blocks.{block}.{site}.lora_B.{site}"]))


def assert_far(a: torch.Tensor, b: torch.Tensor) -> None:
    assert (a - b).abs().max() > FAR, "the adapter does not change the output: the test would be vacuous"


def test_plain_timm_has_our_backbone_weights():
    """The PEFT reference model starts from exactly our backbone's weights."""
    ours = load_backbone("vit_tiny_test").eval()
    plain = plain_timm()
    our_state = {timm_name(k): v for k, v in ours.model.state_dict().items()}
    plain_state = plain.state_dict()
    assert sorted(our_state) == sorted(plain_state)
    for name, tensor in plain_state.items():
        assert torch.equal(our_state[name], tensor), name
    x = images(0)
    torch.testing.assert_close(ours.forward_features(x), plain.forward_features(x), atol=0, rtol=0)


def test_fused_lora_equals_peft_lora():
    """qkv/attn_out/mlp_in/mlp_out LoRA == PEFT LoRA on qkv/proj/fc1/fc2, same A and B."""
    backbone, _, params = ours_fused()
    reference = peft_with(params)
    x = images(2)
    with torch.no_grad():
        ours, theirs = backbone.forward_features(x), reference.forward_features(x)
        base = plain_timm().forward_features(x)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=RTOL)
    assert_far(ours, base)
    assert_far(theirs, base)


def test_fused_lora_gradients_equal_peft():
    """Training is the same too: d(loss)/dA and d(loss)/dB match PEFT's for every site."""
    backbone, _, params = ours_fused()
    reference = peft_with(params)
    x = images(3)
    weights = torch.randn(2, 17, WIDTH, generator=torch.Generator().manual_seed(4))
    (backbone.forward_features(x) * weights).sum().backward()
    (reference.forward_features(x) * weights).sum().backward()
    timm_model = reference.base_model.model
    for block in range(DEPTH):
        for site, path in SITE_TO_TIMM.items():
            layer = timm_model.blocks[block].get_submodule(path)
            for kind, theirs in (("A", layer.lora_A["default"].weight), ("B", layer.lora_B["default"].weight)):
                ours = params[f"blocks.{block}.{site}.lora_{kind}.{site}"]
                assert ours.grad is not None and theirs.grad is not None
                assert ours.grad.abs().max() > 0
                torch.testing.assert_close(ours.grad, theirs.grad, atol=ATOL, rtol=RTOL,
                                           msg=lambda m: f"block {block} {site} grad {kind}: {m}")


def test_merge_equals_peft_merge_and_unload():
    """adapter.merge() gives PEFT's merge_and_unload() weights and outputs."""
    backbone, adapter, params = ours_fused()
    merged_peft = peft_with(params).merge_and_unload().eval()
    x = images(5)
    with torch.no_grad():
        unmerged = backbone.forward_features(x)
        adapter.merge()
        ours, theirs = backbone.forward_features(x), merged_peft.forward_features(x)
        base = plain_timm().forward_features(x)
    for block in range(DEPTH):
        for site, path in SITE_TO_TIMM.items():
            our_layer, their_layer = backbone.site(site, block), merged_peft.blocks[block].get_submodule(path)
            assert type(our_layer) is nn.Linear and type(their_layer) is nn.Linear
            torch.testing.assert_close(our_layer.weight, their_layer.weight, atol=ATOL, rtol=RTOL)
            torch.testing.assert_close(our_layer.bias, their_layer.bias, atol=0, rtol=0)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(ours, unmerged, atol=ATOL, rtol=RTOL)
    assert_far(ours, base)


def ours_q_v(seed: int = 6):
    backbone = load_backbone("vit_tiny_test").eval()
    original = copy.deepcopy(backbone)  # the base model, before any wrapping
    adapter = build_adapter("lora", backbone, {"targets": ["q", "v"], "r": R, "alpha": ALPHA})
    return backbone, original, adapter, randomise(adapter, seed)


THIRDS = {"q": slice(0, WIDTH), "k": slice(WIDTH, 2 * WIDTH), "v": slice(2 * WIDTH, 3 * WIDTH)}


def test_separate_q_v_follow_the_merge_formula():
    """targets q, v == base model with qkv.weight[q or v third] += (alpha/r) B_p A_p."""
    backbone, original, adapter, params = ours_q_v()
    assert all(isinstance(backbone.site("qkv", b), LoRALinear) for b in range(DEPTH))
    reference = copy.deepcopy(original)
    with torch.no_grad():
        for block in range(DEPTH):
            weight = reference.site("qkv", block).weight
            for part in ("q", "v"):
                a, b = params[f"blocks.{block}.qkv.lora_A.{part}"], params[f"blocks.{block}.qkv.lora_B.{part}"]
                weight[THIRDS[part]] += SCALING * (b @ a)
        x = images(7)
        ours, expected, base = backbone.forward_features(x), reference.forward_features(x), original.forward_features(x)
        torch.testing.assert_close(ours, expected, atol=ATOL, rtol=RTOL)
        assert_far(ours, base)
        # our merge() folds exactly that, and leaves the k rows bit-for-bit alone
        adapter.merge()
        torch.testing.assert_close(backbone.forward_features(x), expected, atol=ATOL, rtol=RTOL)
        for block in range(DEPTH):
            merged, before = backbone.site("qkv", block).weight, original.site("qkv", block).weight
            assert torch.equal(merged[THIRDS["k"]], before[THIRDS["k"]])
            torch.testing.assert_close(merged, reference.site("qkv", block).weight, atol=ATOL, rtol=RTOL)


def test_separate_q_v_leave_k_untouched():
    """The k third of the qkv output is exactly the base layer's; q and v thirds move."""
    backbone, original, _, _ = ours_q_v()
    tokens = torch.randn(2, 17, WIDTH, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        for block in range(DEPTH):
            after, before = backbone.site("qkv", block)(tokens), original.site("qkv", block)(tokens)
            torch.testing.assert_close(after[..., THIRDS["k"]], before[..., THIRDS["k"]], atol=0, rtol=0)
            assert_far(after[..., THIRDS["q"]], before[..., THIRDS["q"]])
            assert_far(after[..., THIRDS["v"]], before[..., THIRDS["v"]])


def test_separate_q_v_with_shared_a_equal_peft_fused_qkv():
    """The one case PEFT can express: our A_q = A_v = A equals PEFT's qkv with A and
    B = [B_q; 0; B_v]; this checks our slice placement against PEFT itself."""
    backbone, original, _, params = ours_q_v()
    with torch.no_grad():
        for block in range(DEPTH):
            params[f"blocks.{block}.qkv.lora_A.v"].copy_(params[f"blocks.{block}.qkv.lora_A.q"])

    def weights(block, site):
        if site != "qkv":  # PEFT also wraps proj/fc1/fc2: keep those the identity
            layer = original.site(site, block)
            return torch.zeros(R, layer.in_features), torch.zeros(layer.out_features, R)
        b = torch.zeros(3 * WIDTH, R)
        b[THIRDS["q"]] = params[f"blocks.{block}.qkv.lora_B.q"]
        b[THIRDS["v"]] = params[f"blocks.{block}.qkv.lora_B.v"]
        return params[f"blocks.{block}.qkv.lora_A.q"], b

    reference = peft_model(weights)
    x = images(9)
    with torch.no_grad():
        ours, theirs, base = backbone.forward_features(x), reference.forward_features(x), original.forward_features(x)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=RTOL)
    assert_far(ours, base)
