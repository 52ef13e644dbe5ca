"""One conformance suite, parametrized over every registered adapter x a tiny backbone of
every family (timm with a class token, timm with register tokens, open_clip with GELU and
with QuickGELU + LayerScale, segment-anything with windowed and global blocks and a neck).

Registering an adapter (or a backbone family) is enough to have it tested here (STYLE.md
item 3). Training steps call the adapter's hooks as every task kind does (``extra_loss``
terms must be finite scalars). A pair the adapter declares impossible (``Adapter.unsupported``) must be refused at
attach with :class:`NotApplicable` and its reason, and the pair is listed in ``EXPECTED_NA``
so that no pair becomes n/a silently.
"""

from __future__ import annotations

import importlib.util
import json
import struct

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptbench.adapters import SiteWrapper, adapter_class, build_adapter
from adaptbench.adapters.accounting import parameter_report
from adaptbench.adapters.base import NotApplicable
from adaptbench.adapters.checkpoint import load_adapter, save_adapter
from adaptbench.adapters.hooks import LossContext
from adaptbench.backbones import load_backbone
from adaptbench.errors import AdaptbenchError
from adaptbench.registry import ADAPTERS

TIMM_TINY = ("vit_tiny_test", "vit_tiny_test_reg")
OTHER_FAMILIES = {"clip_tiny_test": "open_clip", "clip_tiny_test_quickgelu": "open_clip", "sam_tiny_test": "segment_anything"}
TINY_BACKBONES = TIMM_TINY + tuple(name for name, library in OTHER_FAMILIES.items()
                                   if importlib.util.find_spec(library))
# (adapter, backbone) pairs that are n/a, and why: SAM's blocks hold (B, H, W, C) grids with no
# token sequence for prompts to join, nor for AIM's attention over the frames of each token; and
# ZeroI2V's STDHA runs inside SAM's windowed attention, whose per-window geometry has no frame count
EXPECTED_NA = {("vpt_shallow", "sam_tiny_test"), ("vpt_deep", "sam_tiny_test"), ("aim", "sam_tiny_test"),
               ("zeroi2v", "sam_tiny_test")}
# HF PEFT methods through the `peft:` bridge, when PEFT is installed. Left out here (see
# tests/test_peft_bridge.py): c3a, miss, road, shira, vblora, whose PEFT default sizes do not
# fit the d=32 tiny ViTs, and glora, whose D scales the base bias (zero in the tiny ViTs: dead).
PEFT_METHODS = ("lora", "loha", "lokr", "oft", "boft", "vera", "fourierft", "hra", "ia3", "adalora",
                "adamss", "beft", "deft", "delora", "frod", "gralora", "hira", "lily", "osf",
                "peanut", "psoft", "pvera", "randlora", "supertuning", "tinylora", "unilora", "waveft")
PEFT_NAMES = [f"peft:{m}" for m in PEFT_METHODS] if importlib.util.find_spec("peft") else []
ADAPTER_NAMES = ADAPTERS.names() + PEFT_NAMES
CASES = [(a, b) for a in ADAPTER_NAMES for b in TINY_BACKBONES]
STEPS = 3


def images(seed: int = 0, batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def adapted(adapter_name: str, backbone_name: str, seed: int = 0):
    """The backbone with the adapter attached; an n/a pair is checked to be refused, then skipped."""
    torch.manual_seed(seed)
    backbone = load_backbone(backbone_name)
    reason = adapter_class(adapter_name).unsupported(backbone.anatomy, adapter_class(adapter_name).config_class())
    if reason is not None:
        with pytest.raises(NotApplicable, match="n/a"):
            build_adapter(adapter_name, backbone)
        pytest.skip(f"n/a: {reason}")
    return backbone, build_adapter(adapter_name, backbone)


@pytest.mark.parametrize("adapter_name,backbone_name", CASES)
def test_not_applicable_pairs_are_exactly_the_declared_ones(adapter_name, backbone_name):
    """Built-in adapters: n/a exactly on EXPECTED_NA. A plugin's n/a pairs are its own to
    declare; they are still checked to be refused at attach (``adapted``)."""
    anatomy = load_backbone(backbone_name).anatomy
    cls = adapter_class(adapter_name)
    reason = cls.unsupported(anatomy, cls.config_class())
    if reason is not None:
        assert reason.strip() and "\n" not in reason
    if ADAPTERS.require(adapter_name).source == "builtin" or adapter_name.startswith("peft:"):
        assert (reason is not None) == ((adapter_name, backbone_name) in EXPECTED_NA), reason


def train_steps(backbone, adapter, steps: int = STEPS) -> nn.Linear:
    """A few Adam steps on random labels through a fresh head, calling the adapter's training
    hooks as every task kind does (``tasks/kinds.py``); each extra term must be a finite scalar."""
    head = nn.Linear(backbone.anatomy.feature_dim, 5)
    params = list(adapter.trainable_parameters().values()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    labels = torch.tensor([0, 1, 2, 3])

    def model(x):
        return head(backbone(x))

    backbone.train()
    adapter.on_train_start(steps)
    for step in range(steps):
        optimizer.zero_grad()
        inputs = images(step)
        logits = model(inputs)
        loss = F.cross_entropy(logits, labels)
        extras = adapter.extra_loss(LossContext(inputs, logits, labels, loss, model, step))
        for name, term in extras.items():
            assert term.ndim == 0 and torch.isfinite(term), f"extra loss {name!r}: {term}"
        (loss + sum(extras.values())).backward()
        optimizer.step()
        adapter.on_train_batch_end(step)
    backbone.eval()
    return head


@pytest.mark.parametrize("adapter_name,backbone_name", CASES)
def test_outputs_are_finite(adapter_name, backbone_name):
    backbone, _ = adapted(adapter_name, backbone_name)
    out = backbone(images())
    assert out.shape == (4, backbone.anatomy.feature_dim)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("adapter_name,backbone_name", CASES)
def test_identity_at_init_when_declared(adapter_name, backbone_name):
    if not adapter_class(adapter_name).identity_at_init:
        pytest.skip(f"{adapter_name} declares it is not the identity at init (its paper's init)")
    reference = load_backbone(backbone_name).eval()(images())
    backbone, _ = adapted(adapter_name, backbone_name)
    torch.testing.assert_close(backbone.eval()(images()), reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("adapter_name,backbone_name", CASES)
def test_only_declared_parameters_train(adapter_name, backbone_name):
    backbone, adapter = adapted(adapter_name, backbone_name)
    declared = {id(p) for p in adapter.trainable_parameters().values()}
    before = {name: p.detach().clone() for name, p in backbone.named_parameters()}
    assert {id(p) for p in backbone.parameters() if p.requires_grad} == declared
    # a randomly drawn sub-network (MoSA, 4 modules) reaches a tensor once some module is
    # drawn twice: certain within 5 draws, so a stochastic adapter trains a little longer
    train_steps(backbone, adapter, steps=8 if adapter.stochastic_training else STEPS)
    for name, param in backbone.named_parameters():
        changed = not torch.equal(param.detach(), before[name])
        if id(param) in declared:
            assert changed, f"declared tensor {name} did not change after {STEPS} steps (dead branch?)"
            assert param.grad is not None and torch.isfinite(param.grad).all()
        else:
            assert not changed, f"undeclared tensor {name} changed"
            assert param.grad is None, f"undeclared tensor {name} received a gradient"


@pytest.mark.parametrize("adapter_name,backbone_name", CASES)
def test_no_declared_tensor_is_dead_after_one_step(adapter_name, backbone_name):
    """V-PETL's LoRA bug (A = B = 0 can never learn) would fail here: after one optimizer
    step, every declared tensor receives a non-zero gradient somewhere."""
    backbone, adapter = adapted(adapter_name, backbone_name)
    params = adapter.trainable_parameters()
    head = train_steps(backbone, adapter, steps=1)
    # "dead" is a property of the deterministic graph: an adapter that draws a random
    # sub-network in training is checked on its whole (evaluation) network
    backbone.train(not adapter.stochastic_training)
    for param in params.values():
        param.grad = None
    inputs, labels = images(11), torch.tensor([0, 1, 2, 3])
    logits = head(backbone(inputs))
    loss = F.cross_entropy(logits, labels)
    # the training objective includes the adapter's own terms (Conv-LoRA's gate learns from its
    # load-balancing term alone, as in noisy top-k gating)
    extras = adapter.extra_loss(LossContext(inputs, logits, labels, loss, lambda x: head(backbone(x)), 1))
    (loss + sum(extras.values())).backward()
    dead = [name for name, p in params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"declared tensors with an all-zero gradient after one step: {dead[:5]}"


@pytest.mark.parametrize("adapter_name,backbone_name", CASES)
def test_parameter_count_equals_declared_tensors(adapter_name, backbone_name):
    backbone, adapter = adapted(adapter_name, backbone_name)
    head = nn.Linear(backbone.anatomy.feature_dim, 5)
    report = parameter_report(adapter, head)
    requires_grad = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    assert report.trainable == requires_grad == sum(p.numel() for p in adapter.trainable_parameters().values())
    assert report.head == backbone.anatomy.feature_dim * 5 + 5
    assert report.trainable_with_head == report.trainable + report.head
    assert report.extra_inference == (adapter.inference_params() if adapter.adds_parameters else 0)
    assert 0 <= adapter.inference_params() <= report.trainable
    assert report.backbone == sum(p.numel() for p in load_backbone(backbone_name).parameters())
    stored = sum(t.numel() * t.element_size() for t in adapter.state_tensors().values())
    assert report.checkpoint_bytes > stored  # the stored tensors plus a header


@pytest.mark.parametrize("adapter_name,backbone_name", CASES)
def test_merged_equals_unmerged(adapter_name, backbone_name):
    backbone, adapter = adapted(adapter_name, backbone_name)
    if not adapter.mergeable:
        with pytest.raises(AdaptbenchError):
            adapter.merge()
        return
    train_steps(backbone, adapter)  # merge trained, non-trivial values
    unmerged = backbone(images(7))
    promised = parameter_report(adapter).extra_inference_merged
    adapter.merge()
    # float32: the merged matmul sums in another order than base + delta (FourierFT's delta is an
    # inverse FFT scaled by 150), which moved one output by 1.9e-5 on this CPU (~0.7 in size)
    torch.testing.assert_close(backbone(images(7)), unmerged, atol=5e-5, rtol=1e-4)
    assert adapter.extra_inference_params() == 0 == promised
    # merging leaves no wrapper behind (the count may still grow: a shift merged into a
    # bias-free linear gives it a bias)
    assert not [m for m in backbone.modules() if isinstance(m, SiteWrapper)]


@pytest.mark.parametrize("adapter_name,backbone_name", CASES)
def test_save_load_round_trip(adapter_name, backbone_name, tmp_path):
    backbone, adapter = adapted(adapter_name, backbone_name)
    head = train_steps(backbone, adapter)
    bare = save_adapter(adapter, tmp_path / "bare.safetensors")
    assert parameter_report(adapter).checkpoint_bytes == bare.stat().st_size  # from the layout, exactly
    path = save_adapter(adapter, tmp_path / "adapter.safetensors", head=head)
    raw = path.read_bytes()  # a safetensors file: 8-byte little-endian header length, then JSON
    (header_length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_length])
    assert header["__metadata__"]["format"] == "adaptbench.adapter"
    assert header["__metadata__"]["backbone"] == backbone.name
    fresh = load_backbone(backbone_name)
    loaded, head_state = load_adapter(fresh, path)
    new_head = nn.Linear(backbone.anatomy.feature_dim, 5)
    new_head.load_state_dict(head_state)
    torch.testing.assert_close(new_head(fresh.eval()(images(3))), head(backbone(images(3))), atol=0, rtol=0)
    assert loaded.config == adapter.config


@pytest.mark.parametrize("adapter_name,backbone_name", CASES)
def test_loading_onto_another_backbone_is_refused(adapter_name, backbone_name, tmp_path):
    backbone, adapter = adapted(adapter_name, backbone_name)
    path = save_adapter(adapter, tmp_path / "adapter.safetensors")
    other_weights = load_backbone(backbone_name, weights="random:1")
    with pytest.raises(AdaptbenchError, match=r"made for backbone .* not for") as err:
        load_adapter(other_weights, path)
    assert backbone.weights_id in str(err.value) and other_weights.weights_id in str(err.value)
    other_name = [b for b in TINY_BACKBONES if b != backbone_name and (adapter_name, b) not in EXPECTED_NA][0]
    with pytest.raises(AdaptbenchError, match=other_name):
        load_adapter(load_backbone(other_name), path)
