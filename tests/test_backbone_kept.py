"""Backbones kept between the cells of a long-lived worker (``backbones/kept.py``)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

import adaptbench.backbones as backbones
from adaptbench.backbones.kept import _key, forget_kept_backbones, load_backbone_kept
from adaptbench.config import BackboneOptions

TEST_BACKBONES = ["vit_tiny_test", "vit_tiny_test_reg", "clip_tiny_test", "sam_tiny_test"]


@pytest.fixture(autouse=True)
def nothing_kept():
    forget_kept_backbones()
    yield
    forget_kept_backbones()


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in module.state_dict().items()}


@pytest.mark.parametrize("name", TEST_BACKBONES)
def test_a_later_cell_gets_a_copy_of_the_kept_backbone_and_its_adapter_never_reaches_the_kept_one(name):
    from adaptbench.adapters import build_adapter

    first, reused_first = load_backbone_kept(name, "random:0", keep=1)
    pristine = _state(first)
    build_adapter("bitfit", first)  # the first cell adapts the backbone it built, not the kept one
    second, reused_second = load_backbone_kept(name, "random:0", keep=1)
    assert (reused_first, reused_second) == (False, True)
    assert second is not first and second.weights_id == first.weights_id
    assert second.state_dict().keys() == pristine.keys()
    assert all(torch.equal(value, pristine[key]) for key, value in second.state_dict().items())
    assert not any(param.requires_grad for param in second.parameters())  # frozen, as built
    assert {id(p) for p in second.sealed_parameters()} == {id(p) for p in second.parameters()}
    images = torch.rand(2, 3, *second.data_config.input_size[-2:])
    fresh = backbones.load_backbone(name, weights="random:0")
    torch.testing.assert_close(second.eval()(images), fresh.eval()(images), rtol=0, atol=0)
    build_adapter("bitfit", second)  # a cell adapting a kept backbone's copy leaves the kept one frozen
    third, _ = load_backbone_kept(name, "random:0", keep=1)
    assert third is not second and not any(param.requires_grad for param in third.parameters())


def test_keep_zero_builds_every_cell_its_own_backbone():
    assert not any(load_backbone_kept("vit_tiny_test", "random:0", keep=0)[1] for _ in range(2))


def test_only_the_last_keep_backbones_are_kept():
    small = BackboneOptions(img_size=16)
    assert not load_backbone_kept("vit_tiny_test", "random:0", keep=1)[1]
    assert not load_backbone_kept("vit_tiny_test", "random:0", small, keep=1)[1]  # options are part of the key
    assert not load_backbone_kept("vit_tiny_test", "random:0", keep=1)[1]  # evicted by the small one
    assert not load_backbone_kept("vit_tiny_test", "random:1", keep=2)[1]  # another weights seed
    assert load_backbone_kept("vit_tiny_test", "random:0", keep=2)[1]
    assert load_backbone_kept("vit_tiny_test", "random:1", keep=2)[1]


def test_a_factory_that_draws_from_the_runs_generators_is_built_again_for_each_cell(monkeypatch):
    """Its weights depend on the cell's seed, so a kept one would be another seed's backbone."""
    load = backbones.load_backbone

    def drawing_load(*args, **kwargs):
        backbone = load(*args, **kwargs)
        with torch.no_grad():
            next(backbone.parameters()).add_(torch.rand(1))  # a plugin's random init
        return backbone

    monkeypatch.setattr(backbones, "load_backbone", drawing_load)
    torch.manual_seed(0)
    first, _ = load_backbone_kept("vit_tiny_test", "random:0", keep=1)
    torch.manual_seed(1)
    second, reused = load_backbone_kept("vit_tiny_test", "random:0", keep=1)
    assert not reused
    assert not torch.equal(next(first.parameters()), next(second.parameters()))


def test_a_weights_file_replaced_between_cells_is_read_again(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"one")
    options = BackboneOptions()
    before = _key("vit_tiny_test", str(weights), options)
    weights.write_bytes(b"other")
    assert _key("vit_tiny_test", str(weights), options) != before
    assert _key("vit_tiny_test", "random:0", options) == _key("vit_tiny_test", "random:0", BackboneOptions())


def _run_matrix(tmp_path: Path, keep: int) -> dict[str, dict]:
    from adaptbench.api import plan_matrix
    from adaptbench.registry import load_plugin_file
    from adaptbench.runner.store import ResultStore

    load_plugin_file(Path(__file__).parent / "plugins" / "inline_executor.py")
    spec = tmp_path / f"keep{keep}.yaml"
    spec.write_text(textwrap.dedent(f"""
        backbones: [vit_tiny_test]
        tasks: [micro/texture]
        adapters: [linear, bitfit, lora]
        train: {{epochs: 1, batch_size: 250}}
        executor: {{keep_backbones: {keep}}}
    """))
    out = tmp_path / f"results{keep}"
    summary = plan_matrix(spec, out=out, executor="inline", leaderboard=False).run()
    assert summary.succeeded == summary.ran == 3
    records = [json.loads(Path(path).read_text()) for path in ResultStore.at(out).record_locations()]
    return {record["run_info"]["config"]["adapter"]: record["train_info"] for record in records}


def test_cells_on_a_kept_backbone_end_with_the_metrics_of_cells_that_built_their_own(tmp_path):
    built = _run_matrix(tmp_path, keep=0)
    kept = _run_matrix(tmp_path, keep=1)
    assert [info["timings"]["backbone_reused"] for info in built.values()] == [0.0] * 3
    assert sorted(info["timings"]["backbone_reused"] for info in kept.values()) == [0.0, 1.0, 1.0]
    for adapter, info in built.items():
        assert kept[adapter]["metrics"] == info["metrics"], adapter
