"""The `peft:<method>` bridge: HF PEFT methods on anatomy sites, held to the adapter contract.

The conformance suite runs the bridged methods like any adapter; here: what is special to
the bridge (equality with our native LoRA, PEFT's options and validation, the flags'
honesty, the sizes PEFT's defaults need), listing without importing PEFT, and the one-line
errors with PEFT missing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptbench._peft_methods import PEFT_METHODS, installed_peft_methods
from adaptbench.adapters import build_adapter
from adaptbench.adapters.checkpoint import load_adapter, read_checkpoint, save_adapter
from adaptbench.adapters.hooks import LossContext
from adaptbench.backbones import load_backbone
from adaptbench.errors import AdaptbenchError
from adaptbench.registry import ADAPTERS

peft = pytest.importorskip("peft")
from helpers import images
from peft.tuners.tuners_utils import BaseTunerLayer

from adaptbench.adapters.peft_bridge import METHOD_FACTS

INSTALL_HINT = 'pip install "adaptbench[peft]"'
# PEFT's default sizes need a wider model than the d=32 tiny ViTs (they fit ViT-B's 768):
SMALL_OPTIONS = {
    "c3a": {"block_size": 8},  # block_size 256 must divide in_features 32
    "miss": {"r": 8},  # r 64 must be <= in_features
    "road": {"group_size": 32},  # group_size 64 must divide out_features 96
    "shira": {"r": 2},  # r 32 would train more entries than the 32 x 96 weight has
    "vblora": {"vector_length": 8, "num_vectors": 16},  # vector_length 256 must divide 32
}


def adapted(name: str, options: dict | None = None, backbone: str = "vit_tiny_test"):
    torch.manual_seed(0)
    model = load_backbone(backbone).eval()
    return model, build_adapter(name, model, options)


def train_steps(model, adapter, steps: int = 3) -> None:
    head = nn.Linear(32, 5)
    optimizer = torch.optim.Adam([*adapter.trainable_parameters().values(), *head.parameters()], lr=1e-2)
    model.train()
    for step in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(head(model(images(step))), torch.tensor([0, 1])).backward()
        optimizer.step()
    model.eval()


# -- equal to our native LoRA ------------------------------------------------------------------


def test_peft_lora_equals_native_lora_on_qkv_given_the_same_weights():
    native_model, native = adapted("lora", {"targets": "qkv", "r": "4", "alpha": "8"})
    bridged_model, bridged = adapted("peft:lora", {"r": "4", "lora_alpha": "8"})
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for block in range(2):
            a, b = torch.randn(4, 32, generator=generator), torch.randn(96, 4, generator=generator) * 0.1
            [native_a] = [p for n, p in native.trainable_parameters().items() if n.startswith(f"blocks.{block}.qkv.lora_A")]
            [native_b] = [p for n, p in native.trainable_parameters().items() if n.startswith(f"blocks.{block}.qkv.lora_B")]
            native_a.copy_(a), native_b.copy_(b)
            bridged.trainable_parameters()[f"blocks.{block}.qkv.lora_A.weight"].copy_(a)
            bridged.trainable_parameters()[f"blocks.{block}.qkv.lora_B.weight"].copy_(b)
    base = load_backbone("vit_tiny_test").eval()(images())
    out = bridged_model(images())
    torch.testing.assert_close(out, native_model(images()), atol=1e-5, rtol=1e-5)
    assert (out - base).abs().max() > 1e-2  # B != 0: the comparison is not trivially true
    native.merge(), bridged.merge()
    torch.testing.assert_close(bridged_model(images()), out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bridged_model.site("qkv", 0).weight, native_model.site("qkv", 0).weight)


# -- placement, names, options ---------------------------------------------------------------


def test_cli_strings_become_peft_types_and_pick_sites_and_blocks():
    model, adapter = adapted("peft:loha", {"r": "4", "alpha": "16", "targets": "qkv,mlp_in", "blocks": "1"})
    assert adapter.config.r == 4 and adapter.config.alpha == 16 and adapter.name == "peft:loha"
    assert sorted(adapter.trainable_parameters()) == sorted(
        f"blocks.1.{site}.hada_w{i}_{ab}" for site in ("qkv", "mlp_in") for i in (1, 2) for ab in "ab")
    assert isinstance(model.site("qkv", 1), BaseTunerLayer) and isinstance(model.site("qkv", 0), nn.Linear)
    assert not hasattr(model, "peft_config")  # the tuner's leftover is removed from our backbone


def test_options_that_would_touch_the_backbone_are_not_exposed():
    fields = set(ADAPTERS.get("peft:lora").config_class.help())
    assert {"r", "lora_alpha", "lora_dropout", "use_dora", "init_lora_weights", "targets", "blocks"} <= fields
    assert not {"bias", "fan_in_fan_out", "target_modules", "modules_to_save"} & fields


@pytest.mark.parametrize("options,fragments", [
    ({"rank": "4"}, ["'rank'", "expected one of"]),
    ({"targets": "attn"}, ["peft:loha target 'attn'", "qkv"]),
    ({"r": "four"}, ["r='four'", "int"]),
])
def test_bad_options_are_one_line_naming_the_value(options, fragments):
    with pytest.raises(AdaptbenchError) as err:
        adapted("peft:loha", options)
    assert all(f in err.value.message for f in fragments) and "\n" not in err.value.message


def test_peft_own_validation_runs_and_is_one_line():
    with pytest.raises(AdaptbenchError) as err:
        adapted("peft:oft", {"r": "0", "oft_block_size": "0"})
    message = err.value.message
    assert message.startswith("peft:oft options") and "oft_block_size" in message and "\n" not in message


def test_bool_or_named_init_fields_take_both():
    _, named = adapted("peft:lokr", {"init_weights": "lycoris"})
    assert named.config.init_weights == "lycoris"
    model, random_init = adapted("peft:lokr", {"init_weights": "false"})
    assert random_init.config.init_weights is False
    assert (model(images()) - load_backbone("vit_tiny_test").eval()(images())).abs().max() > 1e-4


def test_an_init_that_rewrites_the_frozen_weights_is_refused():
    with pytest.raises(AdaptbenchError, match=r"rewrites the frozen backbone weight qkv\.weight"):
        adapted("peft:lora", {"init_lora_weights": "pissa"})


def test_ia3_scales_qkv_outputs_and_the_mlp_hidden_input():
    model, adapter = adapted("peft:ia3")
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in adapter.trainable_parameters().values():
            param.copy_(1 + torch.randn(param.shape, generator=generator) * 0.3)
    params = adapter.trainable_parameters()
    x, hidden = torch.randn(2, 5, 32), torch.randn(2, 5, 64)
    qkv, fc2 = model.site("qkv", 0), model.site("mlp_out", 0)
    torch.testing.assert_close(qkv(x), qkv.get_base_layer()(x) * params["blocks.0.qkv.ia3_l"].flatten())
    torch.testing.assert_close(fc2(hidden), fc2.get_base_layer()(hidden * params["blocks.0.mlp_out.ia3_l"].flatten()))


def test_state_shared_across_sites_is_declared_once_as_shared():
    model, adapter = adapted("peft:vblora", SMALL_OPTIONS["vblora"])
    shared = [n for n in adapter.trainable_parameters() if n.startswith("shared.")]
    assert shared == ["shared.vblora_vector_bank"]
    assert adapter.trainable_count() == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_merge_puts_the_plain_linears_back():
    model, adapter = adapted("peft:boft")
    train_steps(model, adapter)
    before = model(images(4))
    adapter.merge()
    assert not [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    assert type(model.site("qkv", 1)) is nn.Linear
    torch.testing.assert_close(model(images(4)), before, atol=1e-5, rtol=1e-5)


def test_checkpoint_names_the_family_member_and_its_peft_options(tmp_path):
    _, adapter = adapted("peft:loha", {"r": "4"})
    metadata, tensors = read_checkpoint(save_adapter(adapter, tmp_path / "loha.safetensors"))
    assert metadata["adapter"] == "peft:loha"
    assert json.loads(metadata["adapter_config"])["r"] == 4
    assert "adapter.blocks.0.qkv.hada_w2_b" in tensors


# -- the flags are honest --------------------------------------------------------------------


def test_every_checked_method_has_its_flags():
    assert set(METHOD_FACTS) == set(PEFT_METHODS)
    offered, _ = installed_peft_methods()
    assert set(offered) == set(PEFT_METHODS), "a PEFT method adaptbench has not checked: add its facts"


@pytest.mark.parametrize("method", [m for m, facts in METHOD_FACTS.items() if not facts.identity_at_init])
def test_methods_declared_non_identity_really_are_not(method):
    model, _ = adapted(f"peft:{method}", SMALL_OPTIONS.get(method))
    assert (model(images()) - load_backbone("vit_tiny_test").eval()(images())).abs().max() > 1e-5


@pytest.mark.parametrize("method", sorted(SMALL_OPTIONS))
def test_methods_whose_defaults_need_a_wider_model(method):
    """PEFT's own check fails in one line on d=32; with smaller sizes the contract holds."""
    with pytest.raises(AdaptbenchError, match=rf"peft:{method} cannot adapt 'vit_tiny_test' at \['qkv'\]"):
        adapted(f"peft:{method}")
    base = load_backbone("vit_tiny_test").eval()(images())
    model, adapter = adapted(f"peft:{method}", SMALL_OPTIONS[method])
    if adapter.identity_at_init:
        torch.testing.assert_close(model(images()), base, atol=1e-6, rtol=0)
    train_steps(model, adapter)
    assert (model(images(4)) - base).abs().max() > 1e-4
    before = model(images(4))
    adapter.merge()
    torch.testing.assert_close(model(images(4)), before, atol=1e-5, rtol=1e-5)


def test_glora_bias_scale_is_dead_exactly_where_the_base_bias_is_zero():
    """Reported, not hidden: GLoRA's D multiplies the base bias, which the random tiny ViT
    initialises to 0 (timm's init), so D gets no gradient there; a pretrained bias is not 0."""
    def d_gradient(model, adapter):
        model.train()
        F.cross_entropy(nn.Linear(32, 5)(model(images())), torch.tensor([0, 1])).backward()
        return adapter.trainable_parameters()["blocks.0.qkv.glora_D.X"].grad

    model, adapter = adapted("peft:glora")
    assert torch.count_nonzero(d_gradient(model, adapter)) == 0
    model, adapter = adapted("peft:glora")
    with torch.no_grad():
        model.site("qkv", 0).get_base_layer().bias.normal_()
    assert torch.count_nonzero(d_gradient(model, adapter)) > 0


# -- names, listing and PEFT missing ------------------------------------------------------------


def test_family_names_resolve_and_unknown_ones_say_so():
    assert "peft:loha" in ADAPTERS and "peft:nonexistent" not in ADAPTERS
    assert ADAPTERS.get("peft:loha") is ADAPTERS.get("peft:loha")  # made once
    with pytest.raises(AdaptbenchError) as err:
        ADAPTERS.require("peft:nonexistent")
    message = err.value.message
    assert message.startswith("unknown adapter 'peft:nonexistent'") and "adaptbench ls adapters" in message
    assert "did you mean" not in message  # the shared "peft:" prefix must not make every name look close
    with pytest.raises(AdaptbenchError, match=r"did you mean 'peft:lora'"):
        ADAPTERS.require("peft:lorra")
    with pytest.raises(AdaptbenchError, match=r"'peft:prefix_tuning' cannot be used here: prompt learning"):
        ADAPTERS.require("peft:prefix_tuning")


def cli(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADAPTBENCH_NO_PLUGINS": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], check=False, capture_output=True, text=True, env=env, timeout=300)


LIST_AND_REPORT_IMPORTS = """
import contextlib, io, sys
from adaptbench.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    main(["ls", "adapters"])
print([name for name in ("peft", "torch", "transformers") if name in sys.modules])
print(out.getvalue())
"""


def test_ls_lists_the_installed_peft_methods_without_importing_peft():
    result = cli(LIST_AND_REPORT_IMPORTS)
    assert result.returncode == 0, result.stderr
    imported, listing = result.stdout.split("\n", 1)
    assert imported == "[]"
    rows = {line.split("│")[1].strip(): line for line in listing.splitlines() if line.count("│") > 2}
    assert {f"peft:{m}" for m in PEFT_METHODS} <= set(rows)
    assert "peft:prefix_tuning" not in rows and f"HF PEFT {peft.__version__}" in rows["peft:loha"]


HIDE_PEFT = """
import sys
class HidePeft:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "peft":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, HidePeft())
from adaptbench.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_peft_a_peft_name_fails_in_one_line_saying_how_to_install(tmp_path):
    result = cli(HIDE_PEFT, "train", "--task", "micro/digits", "--backbone", "vit_tiny_test",
                 "--adapter", "peft:loha", "--epochs", "1", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("adaptbench: error: adapter 'peft:loha' is unavailable") and INSTALL_HINT in line
    assert not (tmp_path / "out").exists()
    listing = cli(HIDE_PEFT, "ls", "adapters")
    assert listing.returncode == 0, listing.stderr
    [row] = [line for line in listing.stdout.splitlines() if "peft:" in line]
    assert "peft:<method>" in row and INSTALL_HINT in row
    assert "│ lora " in listing.stdout  # the native adapters are all still listed


def test_train_run_with_a_bridged_method_writes_a_success_record(tmp_path):
    from adaptbench.runner.train import RunConfig, RunPlace, run

    result = run(RunConfig(task="micro/digits", backbone="vit_tiny_test", adapter="peft:loha",
                           adapter_options={"r": "4"}, epochs=1, batch_size=64),
                 RunPlace(out_dir=tmp_path, num_workers=0))
    info = json.loads(result.record_path.read_text())["train_info"]  # the record as written
    assert info["status"] == "success", info["error"]
    _, adapter = adapted("peft:loha", {"r": "4"})
    assert info["params"]["trainable"] == adapter.trainable_count()
    assert info["params"]["extra_inference_merged"] == 0  # LoHa merges
    metadata, _ = read_checkpoint(result.checkpoint_path)
    assert metadata["adapter"] == "peft:loha"


# -- AdaLoRA: the rank allocator and the orthogonal regulariser through the training hooks -------

def loss_context(model, head, x, labels) -> LossContext:
    logits = head(model(x))
    return LossContext(inputs=x, outputs=logits, targets=labels, loss=F.cross_entropy(logits, labels),
                       forward=lambda inputs: head(model(inputs)), step=0)


def test_adalora_orth_reg_equals_peft_own_computation(monkeypatch):
    model, adapter = adapted("peft:adalora", {"orth_reg_weight": "0.3"})
    head, x, labels = nn.Linear(32, 5), images(), torch.tensor([0, 1])
    ours = adapter.extra_loss(loss_context(model, head, x, labels))
    assert list(ours) == ["orth_reg"]
    # PEFT adds the term in AdaLoraModel.forward to an output's .loss: give it one of 0
    monkeypatch.setattr(model, "forward", lambda *args, **kwargs: SimpleNamespace(loss=torch.zeros(())))
    peft_term = adapter._tuner(x).loss
    torch.testing.assert_close(ours["orth_reg"], peft_term, atol=1e-6, rtol=1e-6)
    # and by hand: 0.3 * mean over the 2 x 2 factors of sqrt(sum((Gram - I)^2))
    params = adapter.trainable_parameters()
    norms = []
    for block in range(2):
        a, b = params[f"blocks.{block}.qkv.lora_A"].detach(), params[f"blocks.{block}.qkv.lora_B"].detach()
        for gram in (a @ a.T, b.T @ b):
            norms.append(math.sqrt(float(((gram - torch.eye(12)) ** 2).sum())))
    assert ours["orth_reg"].item() == pytest.approx(0.3 * sum(norms) / 4, rel=1e-5)
    # the gradients agree too (the term trains A and B, not E)
    grads = torch.autograd.grad(ours["orth_reg"], list(params.values()), allow_unused=True)
    peft_grads = torch.autograd.grad(peft_term, list(params.values()), allow_unused=True)
    for name, g, h in zip(params, grads, peft_grads):
        if name.endswith("lora_E"):
            assert g is None and h is None
        else:
            torch.testing.assert_close(g, h, atol=1e-7, rtol=1e-5)
    off_model, off = adapted("peft:adalora", {"orth_reg_weight": "0"})
    assert off.extra_loss(loss_context(off_model, head, x, labels)) == {}


def adalora_loop(model, adapter, total_steps: int, after_step=None) -> nn.Linear:
    """A task's loop by hand: loss + extra terms, backward, step, then on_train_batch_end
    before the next zero_grad (PEFT's update_and_allocate reads .grad)."""
    head = nn.Linear(32, 5)
    optimizer = torch.optim.Adam([*adapter.trainable_parameters().values(), *head.parameters()], lr=1e-2)
    labels = torch.tensor([0, 1, 2, 3])
    adapter.on_train_start(total_steps)
    model.train()
    for step in range(total_steps):
        optimizer.zero_grad()
        context = loss_context(model, head, images(step, batch=4), labels)
        (context.loss + sum(adapter.extra_loss(context).values())).backward()
        optimizer.step()
        adapter.on_train_batch_end(step)
        if after_step:
            after_step(step)
    model.eval()
    return head


def kept_triplets(adapter) -> list[int]:
    """Per layer, the singular values E the allocator has not zeroed."""
    params = adapter.trainable_parameters()
    return [int(torch.count_nonzero(params[f"blocks.{b}.qkv.lora_E"])) for b in range(2)]


def test_adalora_rank_budget_is_reallocated_after_tinit():
    """init_r 4 on 2 layers: a budget of 8 triplets, cut towards target_r 2 (4 in all) on the
    cubic schedule between tinit = 2 and total - tfinal = 8, then fixed."""
    model, adapter = adapted("peft:adalora", {"init_r": "4", "target_r": "2", "tinit": "2", "tfinal": "2"})
    assert adapter._tuner.peft_config["default"].total_step == 5  # the placeholder, before the run
    kept = []
    adalora_loop(model, adapter, 10, after_step=lambda step: kept.append(sum(kept_triplets(adapter))))
    assert adapter._tuner.rankallocator.peft_config.total_step == 10
    assert kept[:3] == [8, 8, 8]  # steps 0..tinit: the whole budget
    budget = lambda step: int(4 * (1 - (step - 2) / 6) ** 3 + 4)
    assert kept[3:8] == [budget(step) for step in range(3, 8)]
    assert kept[3] < 8 and kept[8:] == [4, 4]  # the final budget, kept in the last phase
    pattern = adapter._tuner.peft_config["default"].rank_pattern
    assert sorted(sum(mask) for mask in pattern.values()) == sorted(kept_triplets(adapter))


def test_adalora_checkpoint_and_merge_after_reallocation(tmp_path):
    model, adapter = adapted("peft:adalora", {"init_r": "4", "target_r": "2", "tinit": "1", "tfinal": "1"})
    assert sorted(adapter.trainable_parameters()) == sorted(
        f"blocks.{b}.qkv.lora_{f}" for b in range(2) for f in "ABE")  # ranknum is not trained
    head = adalora_loop(model, adapter, 6)
    assert sum(kept_triplets(adapter)) == 4
    path = save_adapter(adapter, tmp_path / "adalora.safetensors", head=head)
    fresh = load_backbone("vit_tiny_test")
    loaded, _ = load_adapter(fresh, path)
    assert kept_triplets(loaded) == kept_triplets(adapter)
    torch.testing.assert_close(fresh.eval()(images(9)), model(images(9)), atol=0, rtol=0)
    before = model(images(9))
    adapter.merge()
    torch.testing.assert_close(model(images(9)), before, atol=1e-5, rtol=1e-5)
    adapter.on_train_batch_end(6)  # merged: nothing left to allocate


def test_adalora_hooks_called_out_of_order_say_how_to_call_them():
    model, adapter = adapted("peft:adalora")
    with pytest.raises(AdaptbenchError, match=r"on_train_start\(total_steps\) must run before"):
        adapter.on_train_batch_end(0)
    adapter.on_train_start(4)
    head = nn.Linear(32, 5)
    F.cross_entropy(head(model.train()(images())), torch.tensor([0, 1])).backward()
    for param in adapter.trainable_parameters().values():
        param.grad = None  # what optimizer.zero_grad() leaves
    with pytest.raises(AdaptbenchError, match=r"before optimizer\.zero_grad\(\)"):
        adapter.on_train_batch_end(0)


@pytest.mark.parametrize("options,total,fragment", [
    ({"tinit": "5", "tfinal": "5"}, 10, "tinit=5, tfinal=5: expected tinit < total_steps - tfinal for this run's 10"),
    ({}, 0, "a run of 0 optimiser steps"),
])
def test_adalora_schedule_that_does_not_fit_the_run_is_refused(options, total, fragment):
    _, adapter = adapted("peft:adalora", options)
    with pytest.raises(AdaptbenchError) as err:
        adapter.on_train_start(total)
    assert fragment in err.value.message and "\n" not in err.value.message


@pytest.mark.parametrize("options,fragment", [
    ({"target_r": "16"}, "target_r=16: expected 0 <= target_r <= init_r=12"),
    ({"deltaT": "0"}, "deltaT=0"),
    ({"tinit": "-1"}, "tinit=-1"),
    ({"init_r": "0"}, "init_r=0"),
])
def test_adalora_options_that_would_fail_mid_training_are_refused(options, fragment):
    with pytest.raises(AdaptbenchError, match=fragment):
        adapted("peft:adalora", options)


def test_adalora_options_leave_out_what_the_run_sets():
    fields = set(ADAPTERS.get("peft:adalora").config_class.help())
    assert {"init_r", "target_r", "tinit", "tfinal", "deltaT", "orth_reg_weight", "lora_alpha"} <= fields
    assert not {"r", "total_step", "rank_pattern"} & fields
