"""The micro ViT's source domain (procedural glyphs), its pretraining script, and the shipped weights."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from adaptbench import _catalogue
from adaptbench.backbones import load_backbone
from adaptbench.backbones.families import micro as micro_backbone
from adaptbench.backbones.families.micro import (
    MICRO_CONFIG,
    MICRO_TIMM_MODEL,
    MICRO_WEIGHTS,
    MICRO_WEIGHTS_SHA256,
    vit_micro,
)
from adaptbench.cli import main
from adaptbench.datasets import glyphs
from adaptbench.datasets.glyphs import SIZE, glyph_images, glyph_strokes
from adaptbench.errors import AdaptbenchError
from adaptbench.files import sha256_of
from adaptbench.pretrain import micro as micro_pretrain
from adaptbench.pretrain.micro import PretrainSettings, pretrain_micro, read_pretrain_metadata

TINY_RUN = {"images": 192, "epochs": 1, "batch_size": 64, "num_classes": 10, "held_out": 64, "threads": 1}


# -- the glyph source domain ---------------------------------------------------------------------
def test_glyphs_are_deterministic_per_seed():
    images, labels = glyph_images(48, seed=3)
    again, again_labels = glyph_images(48, seed=3)
    other, _ = glyph_images(48, seed=4)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, again_labels)
    assert not np.array_equal(images, other)


def test_glyph_arrays_have_the_documented_shapes_and_balanced_labels():
    images, labels = glyph_images(95, seed=0, num_classes=10)
    assert images.shape == (95, SIZE, SIZE) and images.dtype == np.uint8
    assert labels.shape == (95,) and labels.dtype == np.int64
    counts = np.bincount(labels, minlength=10)
    assert len(counts) == 10 and counts.max() - counts.min() <= 1
    assert images.std(axis=(1, 2)).min() > 5  # every image shows something, none is blank


def test_class_designs_do_not_depend_on_the_number_of_classes():
    few, few_present = glyph_strokes(5)
    many, many_present = glyph_strokes(50)
    np.testing.assert_array_equal(few, many[:5])
    np.testing.assert_array_equal(few_present, many_present[:5])
    assert few_present.sum(axis=1).min() >= 2  # every glyph has 2-4 strokes


def test_windowed_stroke_rendering_equals_measuring_every_segment_to_every_pixel():
    # The renderer only measures pixels near each segment; a brute-force distance field agrees.
    rng = np.random.default_rng(0)
    points = rng.uniform(-4, SIZE + 4, (6, 3, 4, 2))  # segments of all lengths, some off-canvas
    present = rng.random((6, 3)) < 0.7
    width = rng.uniform(1.0, glyphs.MAX_WIDTH, 6)
    pixels = np.stack(np.mgrid[0:SIZE, 0:SIZE], axis=-1).reshape(-1, 2).astype(np.float64)
    expected = np.zeros((6, SIZE * SIZE))
    for image, stroke in zip(*np.nonzero(present)):
        for a, b in zip(points[image, stroke, :-1], points[image, stroke, 1:]):
            t = np.clip((pixels - a) @ (b - a) / ((b - a) @ (b - a)), 0.0, 1.0)
            distance = np.linalg.norm(pixels - (a + t[:, None] * (b - a)), axis=1)
            expected[image] = np.maximum(expected[image], np.clip(width[image] / 2 - distance + 0.5, 0, 1))
    np.testing.assert_allclose(glyphs._stroke_ink(points, present, width), expected, atol=1e-12)


def ink_maps(images: np.ndarray) -> np.ndarray:
    """Polarity-free, standardised ink: |pixel - the image's median|, flattened."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    ink = np.abs(flat - np.median(flat, axis=1, keepdims=True))
    ink -= ink.mean(axis=1, keepdims=True)
    return ink / (ink.std(axis=1, keepdims=True) + 1e-9)


def test_renders_of_one_class_look_more_alike_than_renders_of_different_classes():
    images, labels = glyph_images(400, seed=1, num_classes=8)
    ink = ink_maps(images)
    correlation = ink @ ink.T / ink.shape[1]
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    within, between = correlation[same & off_diagonal].mean(), correlation[~same].mean()
    assert within > between + 0.03, (within, between)  # measured: 0.18 vs 0.12; shuffled labels: equal


# -- the pretraining script ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("pretrain") / "micro.safetensors"
    lines = []
    pretrain_micro(path, seed=7, log=lines.append, **TINY_RUN)
    return path, lines


def test_pretraining_writes_backbone_keys_that_load_strictly(tiny_weights):
    path, lines = tiny_weights
    state = load_file(path)
    reference = timm.create_model(MICRO_TIMM_MODEL, num_classes=0, **MICRO_CONFIG)
    assert set(state) == set(reference.state_dict())  # the backbone, no classifier head
    reference.load_state_dict(state, strict=True)
    backbone = vit_micro(weights=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), reference.eval()(x), atol=1e-6, rtol=1e-6)
    assert backbone.weights_source == f"file:{path}"
    assert any(line.startswith("epoch 1/1: loss") for line in lines)


def test_pretraining_metadata_records_the_recipe(tiny_weights, tmp_path):
    path, lines = tiny_weights
    recipe = read_pretrain_metadata(path)
    assert (recipe["seed"], recipe["images"], recipe["epochs"], recipe["num_classes"]) == (7, 192, 1, 10)
    # Settings the CLI has no flag for are spelled as the Python call that reproduces them.
    assert "pretrain_micro('micro.safetensors', images=192, epochs=1, seed=7, " in recipe["command"]
    assert "num_classes=10" in recipe["command"]
    assert recipe["versions"]["torch"] == torch.__version__ and recipe["versions"]["timm"] == timm.__version__
    # The recorded accuracy is the last epoch's, a count out of the 64 held-out glyphs. No
    # above-chance bound holds for TINY_RUN's 3 steps: seeds 0-11 measured 0.05-0.17 held-out
    # (chance 0.10), and even 2 epochs of 2048 images stayed at 0.09-0.12, so that the recipe
    # learns is checked on the shipped file's record (test_shipped_weights_learnt_the_glyphs).
    accuracy = recipe["held_out_accuracy"]
    assert f"held-out acc {accuracy:.4f}" in next(line for line in lines if line.startswith("epoch 1/1:"))
    assert abs(accuracy * TINY_RUN["held_out"] - round(accuracy * TINY_RUN["held_out"])) < 0.01
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(1)}, plain)
    with pytest.raises(AdaptbenchError, match="plain.safetensors: no 'adaptbench.pretrain_micro' metadata"):
        read_pretrain_metadata(plain)


def test_pretraining_is_deterministic_given_the_seed(tiny_weights, tmp_path):
    path, _ = tiny_weights
    again = pretrain_micro(tmp_path / path.name, seed=7, log=lambda line: None, **TINY_RUN)
    assert sha256_of(again) == sha256_of(path)  # the same bytes, metadata included
    other = pretrain_micro(tmp_path / "other.safetensors", seed=8, log=lambda line: None, **TINY_RUN)
    assert not torch.equal(load_file(other)["pos_embed"], load_file(path)["pos_embed"])
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed into place


def test_bad_settings_are_refused_by_name():
    with pytest.raises(AdaptbenchError, match="epochs=0"):
        PretrainSettings(epochs=0)


# -- the shipped weights -----------------------------------------------------------------------
def test_shipped_weights_match_the_recorded_sha256():
    assert MICRO_WEIGHTS.is_file()
    assert sha256_of(MICRO_WEIGHTS) == MICRO_WEIGHTS_SHA256


def test_shipped_weights_learnt_the_glyphs():
    recipe = read_pretrain_metadata(MICRO_WEIGHTS)
    assert recipe["command"] == "adaptbench pretrain-micro --out vit_micro.safetensors --images 50000 --epochs 6 --seed 0"
    # Recorded: 0.9045 on 2000 held-out glyphs of 50 classes (chance 0.02); a file that
    # learnt less than 0.8 would not be the recipe the module docstring documents.
    assert recipe["held_out_accuracy"] > max(0.8, 5 / recipe["num_classes"])


def test_vit_micro_loads_the_shipped_pretrained_weights_by_default():
    pretrained, random = load_backbone("vit_micro"), vit_micro(weights="random")
    assert pretrained.weights_source == f"file:{MICRO_WEIGHTS}"
    assert pretrained.weights_id != random.weights_id
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(pretrained.eval()(x), random.eval()(x))
    shipped = load_file(MICRO_WEIGHTS)
    torch.testing.assert_close(pretrained.model.pos_embed, shipped["pos_embed"], atol=0, rtol=0)


def test_a_corrupt_weights_file_is_refused_with_how_to_regenerate_it(tmp_path, monkeypatch):
    corrupt = tmp_path / "vit_micro.safetensors"
    shutil.copyfile(MICRO_WEIGHTS, corrupt)
    with open(corrupt, "r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"\x00" * 8)
    monkeypatch.setattr(micro_backbone, "MICRO_WEIGHTS", corrupt)
    with pytest.raises(AdaptbenchError, match=r"corrupt .*adaptbench pretrain-micro"):
        vit_micro()
    corrupt.unlink()
    with pytest.raises(AdaptbenchError, match=r"missing.*adaptbench pretrain-micro"):
        vit_micro()


def test_catalogue_description_is_the_docstring_first_line():
    assert vit_micro.__doc__.splitlines()[0].rstrip(".") == _catalogue.builtins("backbone")["vit_micro"][1]


# -- the command line ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SmallSettings(PretrainSettings):
    """Smaller defaults for what the CLI has no flag for (2000 held-out images take seconds)."""

    num_classes: int = 10
    held_out: int = 32
    threads: int = 1


def test_cli_pretrain_micro_writes_weights_and_prints_the_sha256(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(micro_pretrain, "PretrainSettings", SmallSettings)
    out = tmp_path / "cli.safetensors"
    assert main(["pretrain-micro", "--out", str(out), "--images", "64", "--epochs", "1", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert f"sha256 {sha256_of(out)}" in printed and "MICRO_WEIGHTS_SHA256" in printed
    command = read_pretrain_metadata(out)["command"]
    assert command == "adaptbench pretrain-micro --out cli.safetensors --images 64 --epochs 1 --seed 3"
    assert main(["pretrain-micro", "--out", str(out), "--epochs", "0"]) == 2
    assert "epochs=0" in capsys.readouterr().err
