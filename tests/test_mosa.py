"""MoSA: the split (partition), the stochastic training forward, the merged eval forward,
defaults and validation (beyond the conformance suite)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import images
from torch import nn

from adaptbench.adapters import build_adapter
from adaptbench.adapters.accounting import parameter_report
from adaptbench.adapters.hooks import LossContext
from adaptbench.adapters.mosa import (
    MoSA,
    MoSAConfig,
    SparseModuleBottleneck,
    balanced_partition,
    symmetric_kl,
)
from adaptbench.backbones import load_backbone
from adaptbench.errors import AdaptbenchError

BACKBONES = ["vit_tiny_test", "vit_tiny_test_reg"]


def randomise(adapter, seed: int = 1) -> None:
    """Non-trivial adapter weights (W_up and the biases are zero at init)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in adapter.trainable_parameters().values():
            param.add_(torch.randn(param.shape, generator=generator) * 0.2)


def adapted(backbone_name: str = "vit_tiny_test", **options):
    backbone = load_backbone(backbone_name)
    adapter = build_adapter("mosa", backbone, {"dropout": 0.0, **options})
    randomise(adapter)
    return backbone, adapter


def hidden_by_hand(t: dict, block: int, x: torch.Tensor) -> torch.Tensor:
    """GELU(W_down LN_a(x) + b_down) from the declared tensors."""
    p = f"blocks.{block}.mlp."
    normed = F.layer_norm(x, x.shape[-1:], t[p + "norm.weight"], t[p + "norm.bias"], eps=1e-6)
    return F.gelu(normed @ t[p + "down.weight"].T + t[p + "down.bias"])


def module_by_hand(adapter, block: int, x: torch.Tensor, module: int) -> torch.Tensor:
    """s * ((M_k * W_up) h + b_k): the adapter's output when sparse module k is active."""
    t = adapter.trainable_parameters()
    mask = (adapter.branches[block].adapter.partition == module).float()
    up = t[f"blocks.{block}.mlp.up.weight"] * mask
    return adapter.config.scale * (hidden_by_hand(t, block, x) @ up.T + t[f"blocks.{block}.mlp.up_bias"][module])


def merged_by_hand(adapter, block: int, x: torch.Tensor) -> torch.Tensor:
    """s * ((W_up / N) h + mean_k b_k): the merged adapter of eval mode."""
    t = adapter.trainable_parameters()
    n = adapter.config.num_modules
    up = t[f"blocks.{block}.mlp.up.weight"] / n
    return adapter.config.scale * (hidden_by_hand(t, block, x) @ up.T + t[f"blocks.{block}.mlp.up_bias"].mean(0))


def with_hand_adapters(backbone_name: str, adapter_output) -> nn.Module:
    """The frozen backbone with ``adapter_output(block, x)`` added beside every MLP branch."""
    reference = load_backbone(backbone_name).eval()
    for block, frozen in enumerate(reference.blocks):
        frozen.mlp.register_forward_hook(lambda mod, args, out, b=block: out + adapter_output(b, args[0]))
    return reference


# -- the split --------------------------------------------------------------------------------

@pytest.mark.parametrize("num_modules", [1, 3, 4, 7])
def test_partition_is_non_overlapping_and_covers_every_weight(num_modules):
    _, adapter = adapted(num_modules=num_modules, bottleneck=5)
    for branch in adapter.branches.values():
        module: SparseModuleBottleneck = branch.adapter
        masks = torch.stack([module.module_mask(k) for k in range(num_modules)])
        assert masks.shape == (num_modules, 32, 5)
        assert torch.equal(masks.sum(0), torch.ones(32, 5))  # every entry owned exactly once
        sizes = masks.flatten(1).sum(1)
        assert sizes.max() - sizes.min() <= 1 and sizes.min() >= math.floor(160 / num_modules)


def test_partition_is_random_per_element_not_structured():
    owner = balanced_partition((32, 16), 4, torch.Generator().manual_seed(0))
    # element-wise: every row and every column holds entries of several modules
    assert all(len(row.unique()) > 1 for row in owner) and all(len(col.unique()) > 1 for col in owner.T)
    assert torch.equal(torch.bincount(owner.flatten()), torch.full((4,), 128))


def test_partition_comes_from_the_config_seed_and_is_not_checkpointed():
    _, first = adapted(partition_seed=5)
    _, again = adapted(partition_seed=5)
    _, other = adapted(partition_seed=6)
    for block in (0, 1):
        assert torch.equal(first.branches[block].adapter.partition, again.branches[block].adapter.partition)
        assert not torch.equal(first.branches[block].adapter.partition, other.branches[block].adapter.partition)
    assert not torch.equal(first.branches[0].adapter.partition, first.branches[1].adapter.partition)
    assert not any("partition" in name for name in first.state_tensors())
    assert not any("partition" in name for name in first.backbone.state_dict())
    assert all(p.requires_grad for p in first.trainable_parameters().values())


# -- training: one sparse module ----------------------------------------------------------------

@pytest.mark.parametrize("backbone_name", BACKBONES)
def test_training_forward_uses_only_the_sampled_module(backbone_name):
    backbone, adapter = adapted(backbone_name)
    torch.manual_seed(0)
    trained = backbone.train()(images())
    active = {b: branch.adapter.active_module for b, branch in adapter.branches.items()}
    reference = with_hand_adapters(backbone_name, lambda b, x: module_by_hand(adapter, b, x, active[b]))
    torch.testing.assert_close(trained, reference(images()), atol=1e-6, rtol=1e-6)


def test_a_training_step_reaches_only_the_sampled_modules_entries():
    backbone, adapter = adapted()
    backbone.train()(images()).square().sum().backward()
    for block, branch in adapter.branches.items():
        k = branch.adapter.active_module
        t = adapter.trainable_parameters()
        up_grad = t[f"blocks.{block}.mlp.up.weight"].grad
        owned = branch.adapter.partition == k
        assert torch.count_nonzero(up_grad[~owned]) == 0 and torch.count_nonzero(up_grad[owned]) > 0
        bias_grad = t[f"blocks.{block}.mlp.up_bias"].grad
        others = [j for j in range(4) if j != k]
        assert torch.count_nonzero(bias_grad[others]) == 0 and torch.count_nonzero(bias_grad[k]) > 0
        assert torch.count_nonzero(t[f"blocks.{block}.mlp.down.weight"].grad) > 0  # dense, shared


def test_module_draw_is_uniform_and_follows_torchs_rng():
    _, adapter = adapted()
    module = adapter.branches[0].adapter
    torch.manual_seed(123)
    draws = torch.tensor([module.sample_module() for _ in range(4000)])
    counts = torch.bincount(draws, minlength=4).float()
    assert counts.sum() == 4000 and draws.min() >= 0 and draws.max() <= 3
    chi_square = ((counts - 1000) ** 2 / 1000).sum()
    assert chi_square < 16.27  # the 99.9 % quantile of chi-square with 3 degrees of freedom
    torch.manual_seed(123)
    assert torch.equal(torch.tensor([module.sample_module() for _ in range(4000)]), draws)


def test_every_block_draws_for_itself_on_every_call():
    backbone, adapter = adapted()
    backbone.train()
    torch.manual_seed(0)
    seen = []
    for _ in range(40):
        backbone(images())
        seen.append(tuple(branch.adapter.active_module for branch in adapter.branches.values()))
    assert len({pair[0] for pair in seen}) == 4 and len({pair[1] for pair in seen}) == 4
    assert any(a != b for a, b in seen)  # not one draw shared by all blocks


# -- eval: the merged adapter -------------------------------------------------------------------

@pytest.mark.parametrize("backbone_name", BACKBONES)
def test_eval_forward_is_the_merged_full_adapter(backbone_name):
    backbone, adapter = adapted(backbone_name)
    reference = with_hand_adapters(backbone_name, lambda b, x: merged_by_hand(adapter, b, x))
    rng = torch.get_rng_state()
    torch.testing.assert_close(backbone.eval()(images()), reference(images()), atol=1e-6, rtol=1e-6)
    assert torch.equal(torch.get_rng_state(), rng)  # eval draws nothing


def test_merged_adapter_is_the_average_of_the_sparse_modules():
    """MERGE = "add": the eval output is the mean of the N modules' training outputs."""
    _, adapter = adapted()
    module = adapter.branches[0].adapter
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(4))
    outputs = []
    for k in range(4):
        module.sample_module = lambda k=k: k  # force module k
        outputs.append(module.train()(x))
        torch.testing.assert_close(outputs[-1], module_by_hand(adapter, 0, x, k) / adapter.config.scale)
    torch.testing.assert_close(module.eval()(x), torch.stack(outputs).mean(0), atol=1e-6, rtol=1e-6)


def test_dropout_acts_on_the_hidden_activations_in_training_only():
    backbone = load_backbone("vit_tiny_test")
    adapter = build_adapter("mosa", backbone, {"dropout": 0.5})
    randomise(adapter)
    module = adapter.branches[0].adapter
    x = torch.randn(2, 5, 32)
    torch.manual_seed(3)
    trained = module.train()(x)
    torch.manual_seed(3)  # the same dropout mask, then the same module draw
    hidden = F.dropout(hidden_by_hand(adapter.trainable_parameters(), 0, x), 0.5)
    k = module.sample_module()
    t = adapter.trainable_parameters()
    up = t["blocks.0.mlp.up.weight"] * (module.partition == k).float()
    torch.testing.assert_close(trained, hidden @ up.T + t["blocks.0.mlp.up_bias"][k])
    assert module.eval()(x).shape == x.shape


# -- init, defaults, accounting, validation -----------------------------------------------------

def test_init_is_the_official_one_and_the_identity():
    torch.manual_seed(0)
    backbone = load_backbone("vit_tiny_test")
    adapter = build_adapter("mosa", backbone)
    tensors = adapter.trainable_parameters()
    names = ("norm.weight", "norm.bias", "down.weight", "down.bias", "up.weight", "up_bias")
    assert sorted(tensors) == sorted(f"blocks.{b}.mlp.{n}" for b in (0, 1) for n in names)
    assert tensors["blocks.0.mlp.up.weight"].shape == (32, 16)
    assert tensors["blocks.0.mlp.up_bias"].shape == (4, 32)
    down = tensors["blocks.0.mlp.down.weight"]
    bound = 1 / math.sqrt(32)  # kaiming_uniform(a=sqrt(5))
    assert down.shape == (16, 32) and bound >= down.abs().max() > 0.8 * bound
    for name in ("down.bias", "up.weight", "up_bias", "norm.bias"):
        assert torch.count_nonzero(tensors[f"blocks.0.mlp.{name}"]) == 0
    assert torch.equal(tensors["blocks.0.mlp.norm.weight"], torch.ones(32))
    module = adapter.branches[0].adapter
    assert isinstance(module.act, nn.GELU) and module.norm.eps == 1e-6 and module.dropout.p == 0.1
    assert adapter.branches[0].scale == 0.1 and adapter.branches[0].input == "residual"
    x = torch.randn(2, 5, 32)
    assert torch.count_nonzero(module.train()(x)) == 0 and torch.count_nonzero(module.eval()(x)) == 0


def test_defaults_are_the_official_vtab_setting():
    config = MoSAConfig()
    assert (config.bottleneck, config.num_modules, config.scale) == (16, 4, 0.1)
    assert (config.dropout, config.act) == (0.1, "gelu")
    assert (config.partition_seed, config.blocks) == (0, None)
    assert config.consistency_weight == 1.0  # ADAPTER.ADDITIONAL True, REG_WEIGHT 1.0
    assert MoSA.mergeable is False and MoSA.identity_at_init is True
    assert MoSA.version == 2  # the consistency loss joined the method


def test_parameter_count_is_one_adapter_plus_a_bias_per_module():
    _, adapter = adapted(bottleneck=8, num_modules=3)
    d, r, n = 32, 8, 3
    per_block = 2 * d + (d * r + r) + d * r + n * d
    assert parameter_report(adapter).trainable == 2 * per_block


def test_inference_costs_exactly_one_standard_adapter():
    """The paper's claim: after the split modules are merged, inference runs one adapter."""
    _, adapter = adapted(bottleneck=8, num_modules=3)
    d, r = 32, 8
    one_adapter = 2 * d + (d * r + r) + (d * r + d)  # its norm, down and up with one bias
    report = parameter_report(adapter)
    assert report.extra_inference == report.extra_inference_merged == 2 * one_adapter


def test_merge_into_the_backbone_is_refused():
    _, adapter = adapted()
    with pytest.raises(AdaptbenchError, match="cannot be merged"):
        adapter.merge()


def test_blocks_option_adapts_only_those_blocks():
    _, adapter = adapted(blocks=(-1,))
    assert list(adapter.branches) == [1]
    assert all(name.startswith("blocks.1.") for name in adapter.trainable_parameters())


def test_options_from_the_command_line():
    config = MoSAConfig.from_dict({"num_modules": "8", "blocks": "0,1", "partition_seed": "3"}, adapter="mosa")
    assert (config.num_modules, config.blocks, config.partition_seed) == (8, (0, 1), 3)


@pytest.mark.parametrize("options,needle", [
    ({"bottleneck": 0}, "bottleneck=0"),
    ({"num_modules": 0}, "num_modules=0"),
    ({"scale": float("inf")}, "scale=inf"),
    ({"dropout": 1.0}, "dropout=1.0"),
    ({"act": "tanh"}, "act='tanh'"),
    ({"partition_seed": -1}, "partition_seed=-1"),
    ({"consistency_weight": -0.5}, "consistency_weight=-0.5"),
    ({"consistency_weight": float("inf")}, "consistency_weight=inf"),
])
def test_invalid_options_are_refused_with_the_value(options, needle):
    with pytest.raises(AdaptbenchError, match="mosa option " + needle.replace("(", r"\(")):
        MoSAConfig(**options)


def test_more_modules_than_up_projection_entries_is_refused_at_attach():
    with pytest.raises(AdaptbenchError, match=r"num_modules=33: expected at most 32"):
        build_adapter("mosa", load_backbone("vit_tiny_test"), {"bottleneck": 1, "num_modules": 33})


# -- the zero-initialised up-projection and the conformance suite's one-step check ---------------

def test_no_tensor_stays_dead_once_modules_repeat():
    """After step 1 only the drawn module's share of W_up is non-zero, so a step that draws another
    module gives W_down and LN_a no gradient (the official method does the same; the conformance
    check after one training step can fail for that reason). The branch is not dead: the merged
    eval adapter already passes gradient to every tensor, and in training every tensor moves once
    a module is drawn a second time."""
    backbone, adapter = adapted()
    with torch.no_grad():
        for name, param in adapter.trainable_parameters().items():
            if "up" in name:
                param.zero_()  # back to the official init for W_up and the module biases
    head = nn.Linear(32, 4)
    params = list(adapter.trainable_parameters().values()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    before = {n: p.detach().clone() for n, p in adapter.trainable_parameters().items()}
    labels = torch.tensor([0, 1])
    torch.manual_seed(0)
    for step in range(12):
        backbone.train()
        optimizer.zero_grad()
        F.cross_entropy(head(backbone(images(step))), labels).backward()
        optimizer.step()
        if step == 0:  # eval-mode gradient after one step reaches every declared tensor
            optimizer.zero_grad()
            F.cross_entropy(head(backbone.eval()(images(99))), labels).backward()
            assert all(p.grad.abs().sum() > 0 for p in adapter.trainable_parameters().values())
    unchanged = [n for n, p in adapter.trainable_parameters().items() if torch.equal(p, before[n])]
    assert not unchanged


# -- the two-draw consistency loss (official ADDITIONAL / REG_WEIGHT) ---------------------------

class CountingForward:
    """A stand-in for the task's second forward: returns fixed logits and counts its calls."""

    def __init__(self, logits: torch.Tensor):
        self.logits, self.inputs = logits, []

    def __call__(self, inputs):
        self.inputs.append(inputs)
        return self.logits


def context(outputs: torch.Tensor, forward, inputs=None) -> LossContext:
    return LossContext(inputs=images() if inputs is None else inputs, outputs=outputs,
                       targets=torch.tensor([0, 1, 2, 3]), loss=torch.tensor(0.0), forward=forward, step=0)


def official_symmetric_kl(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """MoSA src/solver/losses.py symmetric_KL_loss, written with torch.nn.functional."""
    first = F.kl_div(F.log_softmax(z1, dim=-1), F.softmax(z2.detach(), dim=-1), reduction="batchmean")
    second = F.kl_div(F.log_softmax(z2, dim=-1), F.softmax(z1.detach(), dim=-1), reduction="batchmean")
    return 0.5 * (first + second)


def test_consistency_term_is_the_official_symmetric_kl_by_hand():
    backbone, adapter = adapted(consistency_weight=0.7)
    backbone.train()
    generator = torch.Generator().manual_seed(2)
    z1 = torch.randn(4, 6, generator=generator).requires_grad_()
    z2 = torch.randn(4, 6, generator=generator).requires_grad_()
    second = CountingForward(z2)
    ctx = context(z1, second)
    term = adapter.extra_loss(ctx)
    assert list(term) == ["consistency"] and len(second.inputs) == 1 and second.inputs[0] is ctx.inputs
    p, q = z1.detach().softmax(-1), z2.detach().softmax(-1)
    by_hand = 0.5 * ((q * (q.log() - p.log())).sum() + (p * (p.log() - q.log())).sum()) / 4
    torch.testing.assert_close(term["consistency"], 0.7 * by_hand, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(term["consistency"], 0.7 * official_symmetric_kl(z1, z2), atol=1e-6, rtol=1e-6)
    # the detach pattern: each half moves only its own prediction, d/dz1 = w/2 (p - q) / B
    term["consistency"].backward()
    torch.testing.assert_close(z1.grad, 0.7 * 0.5 * (p - q) / 4, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(z2.grad, 0.7 * 0.5 * (q - p) / 4, atol=1e-7, rtol=1e-5)


def test_consistency_is_zero_for_equal_outputs_and_symmetric():
    z1, z2 = torch.randn(3, 5), torch.randn(3, 5)
    assert symmetric_kl(z1, z1.clone()).abs() < 1e-7
    torch.testing.assert_close(symmetric_kl(z1, z2), symmetric_kl(z2, z1))


def test_dense_logits_are_compared_per_position():
    """Class dimension 1: (B, C, H, W) logits count every position as a sample of the batch mean."""
    z1, z2 = torch.randn(2, 5, 3, 3), torch.randn(2, 5, 3, 3)
    rows = lambda z: z.movedim(1, -1).reshape(-1, 5)
    torch.testing.assert_close(symmetric_kl(z1, z2), official_symmetric_kl(rows(z1), rows(z2)))


def test_weight_zero_or_eval_mode_runs_no_second_forward():
    z1 = torch.randn(4, 6)
    backbone, off = adapted(consistency_weight=0.0)
    second = CountingForward(torch.randn(4, 6))
    assert off.extra_loss(context(z1, second)) == {} and second.inputs == []
    backbone, on = adapted()
    backbone.eval()  # eval runs the merged adapter twice: the term is 0, so it is skipped
    assert on.extra_loss(context(z1, second)) == {} and second.inputs == []
    backbone.train()
    assert set(on.extra_loss(context(z1, second))) == {"consistency"} and len(second.inputs) == 1
