"""The training hooks (``extra_loss``, ``on_train_start``, ``on_train_batch_end``) of the adapters
that use them, run the way a task kind runs them: a hand-written loop, not Lightning.

Each step: forward, task loss, ``extra_loss`` (with a ``forward`` that reruns backbone + head),
backward of the sum, optimiser step, ``on_train_batch_end`` before the next ``zero_grad``.
"""

from __future__ import annotations

import importlib.util
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import images, randomise
from torch import nn

from adaptbench.adapters import build_adapter
from adaptbench.adapters.hooks import LossContext
from adaptbench.backbones import load_backbone

LABELS = torch.tensor([0, 1, 2, 3])
needs_peft = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="HF PEFT is not installed")


def train(adapter_name: str, options: dict, steps: int = 4, seed: int = 0):
    """(adapter, its declared tensors at init, the extra terms of every step) after ``steps``
    hand-looped steps."""
    torch.manual_seed(seed)
    backbone = load_backbone("vit_tiny_test", weights="random")
    adapter = build_adapter(adapter_name, backbone, options)
    initial = {name: param.detach().clone() for name, param in adapter.trainable_parameters().items()}
    head = nn.Linear(backbone.anatomy.feature_dim, 5)
    optimizer = torch.optim.Adam([*adapter.trainable_parameters().values(), *head.parameters()], lr=1e-2)

    def forward(inputs):
        return head(backbone(inputs))

    adapter.on_train_start(steps)
    backbone.train()
    logged = []
    for step in range(steps):
        optimizer.zero_grad()
        inputs = images(step, batch=4)
        logits = forward(inputs)
        loss = F.cross_entropy(logits, LABELS)
        extra = adapter.extra_loss(LossContext(inputs, logits, LABELS, loss, forward, step))
        (loss + sum(extra.values())).backward()
        optimizer.step()
        adapter.on_train_batch_end(step)
        logged.append({name: term.item() for name, term in extra.items()})
    backbone.eval()
    return adapter, initial, logged


@pytest.mark.parametrize("adapter_name,options,terms", [
    ("mosa", {}, {"consistency"}),
    ("repadapter", {"b_norm_weight": 0.1}, {"b_norm"}),
    ("repadapter", {}, set()),
    ("mask_tuning", {}, {"mask_norm"}),
    ("lora", {}, set()),  # no hooks: the defaults do nothing
    pytest.param("peft:adalora", {"init_r": 4, "target_r": 2, "tinit": 1}, {"orth_reg"}, marks=needs_peft),
])
def test_a_hand_loop_trains_with_the_named_terms(adapter_name, options, terms):
    adapter, before, logged = train(adapter_name, options)
    assert all(set(step) == terms for step in logged)
    assert all(math.isfinite(value) and value >= 0 for step in logged for value in step.values())
    unchanged = [n for n, p in adapter.trainable_parameters().items() if torch.equal(p.detach(), before[n])]
    assert not unchanged


def test_mosa_second_forward_trains_the_module_it_draws():
    """The cross-entropy reaches only the first forward's module; the consistency term also
    reaches the second forward's (through its own half of the symmetric KL)."""
    def up_grad_on_module(weight: float, drawn: tuple[int, int]) -> tuple[float, float]:
        torch.manual_seed(0)
        backbone = load_backbone("vit_tiny_test", weights="random")
        adapter = build_adapter("mosa", backbone, {"dropout": 0.0, "consistency_weight": weight})
        randomise(adapter)
        for branch in adapter.branches.values():
            draws = itertools.cycle(drawn)
            branch.adapter.sample_module = lambda draws=draws: next(draws)
        head = nn.Linear(32, 5)
        forward = lambda inputs: head(backbone(inputs))
        backbone.train()
        inputs = images(batch=4)
        logits = forward(inputs)
        loss = F.cross_entropy(logits, LABELS)
        extra = adapter.extra_loss(LossContext(inputs, logits, LABELS, loss, forward, 0))
        (loss + sum(extra.values())).backward()
        grad = adapter.trainable_parameters()["blocks.0.mlp.up.weight"].grad
        partition = adapter.branches[0].adapter.partition
        return tuple(float(grad[partition == k].abs().sum()) for k in drawn)

    first, second = up_grad_on_module(1.0, (0, 2))
    assert first > 0 and second > 0
    first, second = up_grad_on_module(0.0, (0, 2))
    assert first > 0 and second == 0  # no consistency term: no second forward, nothing on module 2


def test_mask_tuning_recorded_forward_does_not_outlive_its_step():
    adapter, _, _ = train("mask_tuning", {}, steps=2)
    assert adapter._recorded is None and not adapter._general_grads


@needs_peft
def test_adalora_reaches_its_target_budget_in_a_hand_loop():
    adapter, _, _ = train("peft:adalora", {"init_r": 4, "target_r": 2, "tinit": 1, "tfinal": 1}, steps=6)
    kept = sum(int(torch.count_nonzero(p)) for n, p in adapter.trainable_parameters().items() if n.endswith("lora_E"))
    assert kept == 2 * 2  # target_r x 2 layers
