"""Regularized Mask Tuning: the masked forward, the straight-through estimator, gradient
dropout (the rule and its hooks), the masked fraction, the exact merge, the packed-bit
checkpoint, defaults and config errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import images
from torch import nn

from adaptbench.adapters import build_adapter
from adaptbench.adapters.accounting import parameter_report
from adaptbench.adapters.bits import pack_bits, unpack_bits
from adaptbench.adapters.checkpoint import load_adapter, save_adapter
from adaptbench.adapters.hooks import LossContext
from adaptbench.adapters.mask_tuning import (
    MaskedLinear,
    MaskTuning,
    MaskTuningConfig,
    general_knowledge_loss,
    gradient_dropout,
)
from adaptbench.backbones import load_backbone
from adaptbench.errors import AdaptbenchError

THRESHOLD = 5e-3


def adapted(backbone_name: str = "vit_tiny_test", **options):
    backbone = load_backbone(backbone_name)
    return backbone, build_adapter("mask_tuning", backbone, options)


def randomise_scores(adapter: MaskTuning, seed: int = 1) -> None:
    """Scores uniform in [0, 0.02): about a quarter of the weights masked (tau = 5e-3)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for wrapper in adapter._masks.values():
            wrapper.scores.copy_(torch.rand(wrapper.scores.shape, generator=generator) * 0.02)


def site_key(name: str) -> tuple[int, str]:
    """'blocks.1.qkv.scores' -> (1, 'qkv')."""
    _, block, site, _ = name.split(".")
    return int(block), site


@pytest.mark.parametrize("backbone_name", ["vit_tiny_test", "vit_tiny_test_reg"])
def test_masked_forward_equals_hand_masked_weights(backbone_name):
    backbone, adapter = adapted(backbone_name)
    randomise_scores(adapter)
    reference = load_backbone(backbone_name)
    with torch.no_grad():
        for name, wrapper in adapter._masks.items():
            linear = reference.site(*reversed(site_key(name)))
            linear.weight.mul_((wrapper.scores > THRESHOLD).float())
    assert 0.1 < adapter.masked_fraction() < 0.4  # the example really masks weights
    expected = reference.eval()(images())
    torch.testing.assert_close(backbone.eval()(images()), expected, atol=0, rtol=0)
    with torch.no_grad():  # the training-mode forward is the same function
        torch.testing.assert_close(backbone.train()(images()), expected, atol=0, rtol=0)


def test_one_site_is_x_times_masked_weight_transposed_plus_bias():
    backbone, adapter = adapted()
    randomise_scores(adapter, seed=4)
    wrapper = adapter._masks["blocks.1.qkv.scores"]
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
    weight, bias = wrapper.base_layer.weight, wrapper.base_layer.bias
    mask = (wrapper.scores > THRESHOLD).float()
    expected = x @ (weight * mask).T + bias
    torch.testing.assert_close(wrapper(x), expected, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(wrapper(x), wrapper.base_layer(x), atol=1e-3)


def test_straight_through_estimator_passes_gradients_to_scores():
    torch.manual_seed(0)
    linear = nn.Linear(6, 4)
    wrapper = MaskedLinear(linear.requires_grad_(False), threshold=THRESHOLD, init_scale=1e-2)
    with torch.no_grad():
        wrapper.scores[0, :3] = 0.0  # masked
        wrapper.scores[2, 1] = THRESHOLD  # masked: a weight is kept only where score > tau
    x, upstream = torch.randn(3, 6), torch.randn(3, 4)
    mask = torch.ones(4, 6)
    mask[0, :3] = mask[2, 1] = 0.0
    output = wrapper(x)
    torch.testing.assert_close(output, x @ (linear.weight * mask).T + linear.bias, atol=1e-6, rtol=1e-6)
    (output * upstream).sum().backward()
    # dL/dS = dL/dB (straight through) = dL/dW_eff * W0, with dL/dW_eff = upstream^T x.
    expected = (upstream.T @ x) * linear.weight
    torch.testing.assert_close(wrapper.scores.grad, expected, atol=1e-6, rtol=1e-6)
    assert (wrapper.scores.grad[0, :3] != 0).all()  # masked weights can come back


def test_gradient_dropout_drops_exactly_what_the_rule_says():
    a = torch.tensor([1.0, -2.0, 3.0, 0.5, -1.0])
    b = torch.tensor([2.0, -1.0, -3.0, -1.5, 1.0])
    keep_probability = torch.tensor([1.0, 1.0, 0.5, 0.25, 0.5])  # 1 where signs agree, |a|/(|a|+|b|) else
    for seed in range(20):
        torch.manual_seed(seed)
        uniform = torch.rand(5)
        kept = (keep_probability > uniform).float()
        torch.manual_seed(seed)
        torch.testing.assert_close(gradient_dropout(a, b, 1.0), a * kept, atol=1e-7, rtol=0)
        torch.manual_seed(seed)
        torch.testing.assert_close(gradient_dropout(a, b, 0.3), (0.7 + 0.3 * kept) * a, atol=1e-7, rtol=0)


def test_gradient_dropout_keeps_agreeing_and_keeps_conflicting_with_probability_ratio():
    torch.manual_seed(0)
    a = torch.randn(100_000)
    assert torch.equal(gradient_dropout(a, 0.5 * a, 1.0), a)  # same signs: always kept
    kept = gradient_dropout(a, -3.0 * a, 1.0) != 0  # conflict: kept with |a| / (|a| + |b|) = 1/4
    assert abs(kept.float().mean().item() - 0.25) < 0.01


def test_general_knowledge_loss_is_the_kl_of_cosine_instance_predictions():
    generator = torch.Generator().manual_seed(0)
    features, frozen = torch.randn(3, 8, generator=generator), torch.randn(3, 8, generator=generator)
    scale, temperature = 100.0, 2.0
    cos = lambda u, v: (u @ v.T) / (u.norm(dim=1, keepdim=True) * v.norm(dim=1)[None])
    student = torch.softmax(scale * cos(features, frozen) / temperature, dim=1)
    teacher = torch.softmax(scale * cos(frozen, frozen) / temperature, dim=1)
    expected = temperature**2 * (teacher * (teacher.log() - student.log())).sum(1).mean()
    got = general_knowledge_loss(features, frozen, scale, temperature)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert general_knowledge_loss(frozen, frozen, scale, 1.0).abs() < 1e-6


def context_for(x: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor) -> LossContext:
    """The loss context a task hands ``extra_loss`` (mask tuning reads none of its forward)."""
    def no_second_forward(inputs):
        raise AssertionError("mask tuning must not run the task's forward again")
    return LossContext(inputs=x, outputs=logits, targets=labels, loss=loss, forward=no_second_forward, step=0)


def test_mask_norm_penalty_and_its_gradient_by_hand():
    """extra_loss()["mask_norm"] = w * sum_sites sqrt(sum S^2), gradient w * S / ||S|| per site."""
    backbone, adapter = adapted(norm_weight=0.3, gdr=False)
    randomise_scores(adapter)
    scores = [w.scores for w in adapter._masks.values()]
    x, labels = images(), torch.tensor([0, 1])
    logits = nn.Linear(32, 5)(backbone.train()(x))
    term = adapter.extra_loss(context_for(x, logits, labels, F.cross_entropy(logits, labels)))
    assert list(term) == ["mask_norm"]
    expected = 0.3 * sum(math.sqrt(float((s.detach().double() ** 2).sum())) for s in scores)
    assert term["mask_norm"].item() == pytest.approx(expected, rel=1e-6)
    term["mask_norm"].backward()
    for s in scores:
        norm = math.sqrt(float((s.detach().double() ** 2).sum()))
        torch.testing.assert_close(s.grad, (0.3 * s.detach().double() / norm).float(), atol=1e-9, rtol=1e-6)
    _, off = adapted(norm_weight=0.0, gdr=False)
    assert off.extra_loss(context_for(x, logits, labels, term["mask_norm"])) == {}


def test_gradient_dropout_acts_on_the_task_plus_penalty_gradient():
    """One training step as a task runs it: forward, extra_loss, backward of loss + mask_norm.
    ``a`` = dCE/dS + 1e-4 S/||S|| (the official loss_a includes the penalty), ``b`` = dL_gk/dS."""
    backbone, adapter = adapted()
    randomise_scores(adapter)
    names = list(adapter._masks)
    scores = [adapter._masks[n].scores for n in names]
    x, labels = images(batch=4), torch.tensor([0, 1, 2, 3])
    head = nn.Linear(32, 5)
    frozen = load_backbone("vit_tiny_test").eval()(x)

    # By hand, in eval mode (nothing recorded, no dropout): a and b from their definitions.
    features = backbone.eval()(x)
    task_loss = F.cross_entropy(head(features), labels)
    raw = torch.autograd.grad(task_loss, scores, retain_graph=True)
    general = torch.autograd.grad(general_knowledge_loss(features, frozen, 100.0, 1.0), scores, retain_graph=True)
    task = [r + 1e-4 * s.detach() / s.detach().norm() for r, s in zip(raw, scores)]
    task_loss.backward()
    for s, r in zip(scores, raw):
        torch.testing.assert_close(s.grad, r, atol=0, rtol=0)  # eval: the plain STE gradient
        s.grad = None

    logits = head(backbone.train()(x))
    loss = F.cross_entropy(logits, labels)
    extra = adapter.extra_loss(context_for(x, logits, labels, loss))
    assert set(adapter._general_grads) == set(names)  # b is ready before the backward
    torch.manual_seed(3)
    (loss + extra["mask_norm"]).backward()
    # The score hooks run in backward order (last block first), each drawing its U once.
    torch.manual_seed(3)
    expected = {}
    for name, a, b in reversed(list(zip(names, task, general))):
        keep_probability = (torch.sign(a) * (a + b) / (a.abs() + b.abs() + 1e-8) + 1) / 2
        expected[name] = a * (keep_probability > torch.rand_like(a)).float()
    for name, s in zip(names, scores):
        torch.testing.assert_close(s.grad, expected[name], atol=1e-9, rtol=1e-5)
        assert 0.05 < (s.grad == 0).float().mean() < 0.6, name  # some, not all, dropped
    assert not adapter._general_grads  # consumed by this backward


def test_forward_hook_only_records_and_extra_loss_runs_the_teacher():
    """The training forward runs the backbone once and computes nothing; extra_loss runs the
    frozen teacher once (eval mode, masks off, no grad) on the recorded inputs."""
    backbone, adapter = adapted()
    randomise_scores(adapter)
    calls = []
    backbone.register_forward_pre_hook(lambda module, args: calls.append(
        (module.training, torch.is_grad_enabled(), [w.masking for w in adapter._masks.values()])))
    x, labels = images(batch=4), torch.tensor([0, 1, 2, 3])
    logits = nn.Linear(32, 5)(backbone.train()(x))
    assert len(calls) == 1 and not adapter._general_grads
    recorded_args, _, features = adapter._recorded
    assert recorded_args[0] is x and features.requires_grad
    adapter.extra_loss(context_for(x, logits, labels, F.cross_entropy(logits, labels)))
    assert calls[1] == (False, False, [False] * len(adapter._masks))
    assert backbone.training and all(w.masking for w in adapter._masks.values())  # restored
    adapter.on_train_batch_end(0)
    assert adapter._recorded is None and not adapter._general_grads


def test_without_extra_loss_the_gradient_is_the_plain_straight_through_one():
    """A loop that never calls the hooks trains with dL/dS only: no hidden penalty, no dropout."""
    backbone, adapter = adapted(norm_weight=1e-2)
    randomise_scores(adapter)
    scores = list(adapter.trainable_parameters().values())
    x, head = images(batch=4), nn.Linear(32, 5)
    loss = lambda: F.cross_entropy(head(backbone(x)), torch.tensor([0, 1, 2, 3]))
    backbone.eval()
    raw = torch.autograd.grad(loss(), scores)
    backbone.train()
    loss().backward()
    for s, r in zip(scores, raw):
        torch.testing.assert_close(s.grad, r, atol=0, rtol=0)


def test_without_gdr_training_gradient_is_task_plus_penalty():
    backbone, adapter = adapted(gdr=False, norm_weight=1e-2)
    randomise_scores(adapter)
    scores = list(adapter.trainable_parameters().values())
    x, labels, head = images(batch=4), torch.tensor([0, 1, 2, 3]), nn.Linear(32, 5)
    backbone.eval()
    raw = torch.autograd.grad(F.cross_entropy(head(backbone(x)), labels), scores)
    backbone.train()
    logits = head(backbone(x))
    loss = F.cross_entropy(logits, labels)
    (loss + adapter.extra_loss(context_for(x, logits, labels, loss))["mask_norm"]).backward()
    for s, r in zip(scores, raw):
        torch.testing.assert_close(s.grad, r + 1e-2 * s.detach() / s.detach().norm(), atol=1e-9, rtol=1e-6)
    assert not backbone._forward_hooks and not adapter._handles


def test_masked_fraction():
    backbone, adapter = adapted()
    assert adapter.masked_fraction() == 0.0
    wrappers = list(adapter._masks.values())
    total = sum(w.scores.numel() for w in wrappers)
    with torch.no_grad():
        wrappers[0].scores.view(-1)[:10] = 0.0
        wrappers[0].scores.view(-1)[10:13] = THRESHOLD  # at tau: masked
        wrappers[0].scores.view(-1)[13:20] = THRESHOLD * 1.01  # above: kept
        wrappers[-1].scores.view(-1)[-7:] = -1.0
    assert adapter.masked_fraction() == pytest.approx(20 / total)
    adapter.merge()
    assert adapter.masked_fraction() == pytest.approx(20 / total)


def test_merge_writes_masked_weights_exactly_and_removes_wrappers_and_hooks():
    backbone, adapter = adapted()
    randomise_scores(adapter)
    masked_weights = {n: (w.base_layer.weight * (w.scores > THRESHOLD)).detach().clone()
                      for n, w in adapter._masks.items()}
    before = backbone.eval()(images())
    adapter.merge()
    torch.testing.assert_close(backbone(images()), before, atol=0, rtol=0)
    for name, weight in masked_weights.items():
        site = backbone.site(*reversed(site_key(name)))
        assert type(site) is nn.Linear
        assert torch.equal(site.weight, weight)
    assert not backbone._forward_hooks
    assert adapter.extra_inference_params() == 0
    assert parameter_report(adapter).extra_inference == 0


def test_checkpoint_stores_one_bit_per_weight(tmp_path):
    backbone, adapter = adapted()
    randomise_scores(adapter)
    stored = adapter.state_tensors()
    assert set(stored) == {n.replace(".scores", ".mask_bits") for n in adapter._masks}
    for name, wrapper in adapter._masks.items():
        packed = stored[name.replace(".scores", ".mask_bits")]
        assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(wrapper.scores.numel() / 8)
    path = save_adapter(adapter, tmp_path / "mask.safetensors")
    fresh = load_backbone("vit_tiny_test")
    loaded, _ = load_adapter(fresh, path)
    for name, wrapper in loaded._masks.items():
        original = adapter._masks[name].scores
        assert torch.equal(wrapper.scores > THRESHOLD, original > THRESHOLD)
        kept_value = torch.tensor(loaded.config.init_scale)  # float32, as the scores
        assert torch.equal(wrapper.scores, torch.where(original > THRESHOLD, kept_value, 0.0))
    torch.testing.assert_close(fresh.eval()(images()), backbone.eval()(images()), atol=0, rtol=0)
    floats = sum(p.numel() * 4 for p in adapter.trainable_parameters().values())
    assert parameter_report(adapter).checkpoint_bytes < floats / 16


def test_pack_and_unpack_bits_round_trip_odd_sizes():
    bits = torch.rand(7, 13, generator=torch.Generator().manual_seed(0)) > 0.5
    packed = pack_bits(bits)
    assert packed.numel() == math.ceil(91 / 8)
    assert torch.equal(unpack_bits(packed, bits.shape), bits)
    nine = torch.tensor([True, True, False, False, False, False, False, False, True])
    assert pack_bits(nine).tolist() == [0b00000011, 0b00000001]  # the first in the lowest bit


def test_loading_wrong_bits_is_refused():
    _, adapter = adapted()
    tensors = adapter.state_tensors()
    name = next(iter(tensors))
    tensors[name] = tensors[name][:-1]
    with pytest.raises(AdaptbenchError, match="expected uint8 packed bits"):
        adapter.load_state_tensors(tensors, source="x.safetensors")


def test_defaults_are_the_papers():
    config = MaskTuningConfig()
    assert config.sites == ("qkv", "attn_out")  # MHSA: official MASK_MLP False
    assert config.blocks is None
    assert config.threshold == 5e-3 and config.init_scale == 1e-2  # MASK.THRESHOLD, MASK.SCALE ('1s')
    assert config.norm_weight == 1e-4  # MASK_LOSS True, LOSS_WEIGHT 1e-4
    assert config.gdr is True and config.gdr_lambda == 1.0 and config.gdr_temperature == 1.0
    assert config.gdr_logit_scale == 100.0
    backbone, adapter = adapted()
    assert sorted(adapter.trainable_parameters()) == sorted(
        f"blocks.{b}.{s}.scores" for b in range(2) for s in ("qkv", "attn_out"))
    assert all(torch.all(w.scores == 1e-2) for w in adapter._masks.values())
    assert MaskTuning.identity_at_init and MaskTuning.mergeable and MaskTuning.adds_parameters
    assert MaskTuning.version == 3  # 2: the penalty became a loss term; 3: L_gk against a text head
    # Sites are configurable: the MLP linears too, only in the chosen blocks.
    _, mlp = adapted(sites=("mlp_in", "mlp_out"), blocks=(-1,))
    assert sorted(mlp.trainable_parameters()) == ["blocks.1.mlp_in.scores", "blocks.1.mlp_out.scores"]


@pytest.mark.parametrize("options, fragment", [
    ({"sites": ("norm1",)}, "'norm1'"),
    ({"sites": ()}, "at least one site"),
    ({"sites": ("qkv", "qkv")}, "repeated"),
    ({"threshold": -1.0}, "threshold=-1.0"),
    ({"init_scale": 0.004}, "init_scale=0.004"),
    ({"norm_weight": -0.1}, "norm_weight=-0.1"),
    ({"gdr_lambda": 1.5}, "gdr_lambda=1.5"),
    ({"gdr_temperature": 0.0}, "gdr_temperature=0.0"),
    ({"gdr_logit_scale": -2.0}, "gdr_logit_scale=-2.0"),
])
def test_config_errors_name_the_value(options, fragment):
    with pytest.raises(AdaptbenchError, match=fragment.replace("(", r"\(")):
        MaskTuningConfig(**options)


def test_cli_strings_are_coerced():
    config = MaskTuningConfig.from_dict({"sites": "qkv,mlp_in", "gdr": "false", "gdr_lambda": "0.3"})
    assert config.sites == ("qkv", "mlp_in") and config.gdr is False and config.gdr_lambda == 0.3


def test_run_record_carries_the_masked_fraction(tmp_path):
    """The issue's "reports the fraction of weights masked": through Adapter.stats() into
    train_info["adapter_stats"] of the run record."""
    from adaptbench.runner.train import RunConfig, RunPlace, run

    result = run(RunConfig(task="micro/digits", backbone="vit_tiny_test", adapter="mask_tuning",
                           epochs=1, batch_size=64, lr=1e-2),
                 RunPlace(out_dir=tmp_path, num_workers=0, save_adapter=False))
    info = json.loads(result.record_path.read_text())["train_info"]  # the record as written
    assert info["status"] == "success", info["error"]
    fraction = info["adapter_stats"]["masked_fraction"]
    assert 0.0 < fraction < 1.0  # lr 1e-2 flips some masks within one epoch, not all
