"""The embedded segmentation world: micro segmentation tasks generated into the mmseg and
image/mask-folder layouts and read back by their readers, and the pretrained micro SAM."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from adaptbench.backbones import load_backbone
from adaptbench.backbones.families import micro as micro_backbone
from adaptbench.backbones.families.micro import (
    SAM_MICRO_CONFIG,
    SAM_MICRO_WEIGHTS,
    SAM_MICRO_WEIGHTS_SHA256,
    sam_micro,
)
from adaptbench.cli import main
from adaptbench.datasets import micro, micro_seg
from adaptbench.datasets.micro import (
    MICRO_SEG_TASKS,
    MICRO_TASKS,
    ensure_micro_task,
    verify_micro_task,
)
from adaptbench.datasets.micro_catalog import MICRO_SEG_TASK_INFO
from adaptbench.datasets.micro_seg import (
    IGNORE,
    NUCLEI_REGIONS,
    TILE,
    folder_checksum,
    nuclei_source,
)
from adaptbench.errors import AdaptbenchError
from adaptbench.files import sha256_of
from adaptbench.pretrain import micro_sam as sam_pretrain
from adaptbench.pretrain.micro_sam import (
    SOURCE_CLASSES,
    SamPretrainSettings,
    mean_iou,
    pretrain_micro_sam,
    read_sam_pretrain_metadata,
    source_scenes,
)

pytest.importorskip("segment_anything")
stardist_data = pytest.mark.skipif(micro_seg.importlib.util.find_spec("stardist") is None,
                                   reason="stardist (which ships the nuclei image) is not installed")

SIZES = {"nuclei": {"train": 360, "val": 42, "test": 49}, "shapes": {"train": 400, "val": 200}}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "adaptbench-cache"  # conftest's ADAPTBENCH_CACHE


@pytest.fixture(scope="module")
def shapes(cache) -> Path:
    return ensure_micro_task("shapes", cache)


@pytest.fixture(scope="module")
def nuclei(cache) -> Path:
    if micro_seg.importlib.util.find_spec("stardist") is None:
        pytest.skip("stardist (which ships the nuclei image) is not installed")
    return ensure_micro_task("nuclei", cache)


def task_spec(name: str):
    from adaptbench.registry import TASKS

    return TASKS.get(f"micro_seg/{name}")


def read_split(name: str, split: str):
    """A split as the runner reads it: ``task_samples`` (ensure_micro_task, then the format's reader)."""
    from adaptbench.tasks.samples import task_samples

    return task_samples(task_spec(name), split, None)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


# -- the catalogue -------------------------------------------------------------------------------
def test_segmentation_tasks_match_their_catalogue_rows():
    assert set(MICRO_SEG_TASKS) == set(MICRO_SEG_TASK_INFO) == {"nuclei", "shapes"}
    assert not set(MICRO_SEG_TASKS) & set(MICRO_TASKS)  # one cache folder per name
    seeds = [task.seed for task in {**MICRO_TASKS, **MICRO_SEG_TASKS}.values()]
    assert len(set(seeds)) == len(seeds)
    for name, task in MICRO_SEG_TASKS.items():
        group, num_classes, description, layout, _, class_names = MICRO_SEG_TASK_INFO[name]
        assert (task.group, task.num_classes, task.description, task.format) == (group, num_classes, description, layout)
        assert len(class_names) == num_classes and class_names[0] == "background"
        assert len(task.checksum) == 64 and "\n" not in description
        spec = task_spec(name)
        assert (spec.kind, spec.format, spec.embedded, spec.num_classes) == ("segmentation", layout, True, num_classes)
    assert MICRO_SEG_TASK_INFO["nuclei"][3:5] == ("mask_folders", {"binary": True, "image_suffix": ".png",
                                                                   "mask_suffix": ".png"})
    assert MICRO_SEG_TASK_INFO["shapes"][3:5] == ("mmseg", {"img_suffix": ".png", "seg_map_suffix": ".png"})


# -- shapes: the mmseg layout ----------------------------------------------------------------------
def test_shapes_is_written_in_the_mmseg_layout_and_verified(shapes):
    assert (shapes / micro.COMPLETE_MARKER).read_text() == MICRO_SEG_TASKS["shapes"].checksum
    assert sorted(p.name for p in shapes.iterdir() if not p.name.startswith(".")) == ["ann_dir", "img_dir"]
    for split, count in SIZES["shapes"].items():
        images = sorted((shapes / "img_dir" / split).iterdir())
        annotations = sorted((shapes / "ann_dir" / split).iterdir())
        assert len(images) == len(annotations) == count
        assert [p.name for p in images] == [p.name for p in annotations] == [f"{i:05d}.png" for i in range(count)]
    with Image.open(shapes / "img_dir" / "train" / "00000.png") as image, \
            Image.open(shapes / "ann_dir" / "train" / "00000.png") as annotation:
        assert (image.mode, image.size, annotation.mode, annotation.size) == ("RGB", (64, 64), "L", (64, 64))
    assert verify_micro_task("shapes", shapes) == folder_checksum(shapes)


def test_shapes_labels_have_ignore_regions_and_balanced_classes(shapes):
    labels = np.stack([pixels(p) for p in sorted((shapes / "ann_dir" / "train").iterdir())])
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4, IGNORE}  # no reduce_zero_label: 0 is background
    share = np.bincount(labels.ravel(), minlength=256) / labels.size
    assert 0.6 < share[0] < 0.75 and 0.07 < share[IGNORE] < 0.14  # measured 0.68 and 0.10
    assert share[1:5].min() > 0.045 and share[1:5].max() < 1.2 * share[1:5].min()  # measured 0.051-0.058
    # every scene has object outlines (ignore bands); 0-2 unlabelled blobs: whole ignore regions
    # with no labelled pixel inside, i.e. some ignore pixels 2+ pixels away from any label
    assert (labels == IGNORE).any(axis=(1, 2)).all()
    from scipy.ndimage import binary_erosion

    blob_cores = [binary_erosion(scene == IGNORE, iterations=2).any() for scene in labels]
    assert 0.4 < np.mean(blob_cores) < 0.9
    present = np.stack([(labels == c).any(axis=(1, 2)) for c in range(1, 5)])
    assert present.mean(axis=1).min() > 0.5  # every class in over half the scenes (measured 59-62%)


def test_shapes_read_back_by_the_mmseg_reader(shapes):
    from adaptbench.datasets.masks import MaskField

    splits = {split: read_split("shapes", split) for split in ("train", "val", "tune_train", "tune_val")}
    assert {split: len(splits[split]) for split in ("train", "val")} == SIZES["shapes"]
    assert len(splits["tune_train"]) + len(splits["tune_val"]) == 400 and len(splits["tune_val"]) == 40
    image, mask = splits["val"][0]
    assert (image, mask) == (shapes / "img_dir" / "val" / "00000.png", shapes / "ann_dir" / "val" / "00000.png")
    field = MaskField(size=(64, 64), num_classes=5)
    np.testing.assert_array_equal(field.decode(splits["val"][0], "val"), pixels(mask))


# -- nuclei: image and mask folders ----------------------------------------------------------------
@stardist_data
def test_nuclei_is_written_as_image_and_mask_folders_and_verified(nuclei):
    assert (nuclei / micro.COMPLETE_MARKER).read_text() == MICRO_SEG_TASKS["nuclei"].checksum
    lists = {split: (nuclei / f"{split}.txt").read_text().split() for split in SIZES["nuclei"]}
    assert {split: len(ids) for split, ids in lists.items()} == SIZES["nuclei"]
    assert sorted(p.stem for p in (nuclei / "images").iterdir()) == sorted(stem for ids in lists.values() for stem in ids)
    with Image.open(nuclei / "images" / f"{lists['test'][0]}.png") as image:
        assert (image.mode, image.size) == ("L", (TILE, TILE))
    masks = np.stack([pixels(p) for p in sorted((nuclei / "masks").iterdir())])
    assert set(np.unique(masks)) == {0, 255}
    assert 0.15 < (masks == 255).mean() < 0.25  # the source image: 19.9% nuclei


@stardist_data
def test_nuclei_read_back_by_the_mask_folder_reader(nuclei):
    from adaptbench.datasets.masks import MaskField

    splits = {split: read_split("nuclei", split) for split in ("train", "val", "trainval", "test")}
    assert {split: len(splits[split]) for split in SIZES["nuclei"]} == SIZES["nuclei"]
    assert splits["trainval"] == splits["train"] + splits["val"]
    image, mask = splits["test"][0]
    assert (image.parent.name, mask.parent.name, image.name) == ("images", "masks", "y256_x256.png")
    decoded = MaskField(size=(64, 64), num_classes=2, binary=True).decode(splits["test"][0], "test")
    np.testing.assert_array_equal(decoded, pixels(mask) // 255)


@stardist_data
def test_nuclei_tiles_are_the_source_cut_by_regions_that_share_no_nucleus(nuclei):
    image, labels = nuclei_source()
    assert image.dtype == np.uint16 and int(labels.max()) == 183 and len(np.unique(labels)) == 126
    seen = {}
    for split, ((y0, y1), (x0, x1)) in NUCLEI_REGIONS.items():
        seen[split] = set(np.unique(labels[y0:y1, x0:x1])) - {0}
    assert not seen["train"] & seen["test"] and not seen["train"] & seen["val"] and not seen["val"] & seen["test"]
    # A test tile is the source's mask at its corner; a training view is a dihedral view of one.
    np.testing.assert_array_equal(pixels(nuclei / "masks" / "y256_x288.png") > 0, labels[256:320, 288:352] > 0)
    rotated = pixels(nuclei / "masks" / "y000_x000_rot90.png") > 0
    np.testing.assert_array_equal(rotated, np.rot90(labels[0:64, 0:64] > 0))
    # the stardist 16-bit pixels go to 8 bits by the documented percentile normalisation (p1 7, p99.8 201)
    np.testing.assert_array_equal(pixels(nuclei / "images" / "y256_x288.png"),
                                  micro_seg.to_uint8(image[256:320, 288:352], 7.0, 201.0))


def test_reading_the_tiff_without_tifffile_gives_the_same_arrays(monkeypatch):
    if micro_seg.importlib.util.find_spec("stardist") is None:
        pytest.skip("stardist is not installed")
    image, labels = nuclei_source()
    monkeypatch.setitem(__import__("sys").modules, "tifffile", None)  # import fails: Pillow reads them
    again, again_labels = nuclei_source()
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(labels, again_labels)


def test_without_stardist_the_nuclei_task_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(micro_seg.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AdaptbenchError, match=r"stardist is not installed; install it with `pip install stardist`"):
        ensure_micro_task("nuclei", tmp_path)


# -- determinism and checksums ---------------------------------------------------------------------
def test_generation_is_deterministic_and_a_changed_pixel_is_caught(shapes, tmp_path):
    task = MICRO_SEG_TASKS["shapes"]
    small = replace(task, sizes=(6, 3, 0))
    first, second = micro_seg.shapes_task(small), micro_seg.shapes_task(small)
    for split in ("train", "val"):
        np.testing.assert_array_equal(first[split].images, second[split].images)
        np.testing.assert_array_equal(first[split].masks, second[split].masks)
    full = micro_seg.shapes_task(task)  # the prefix of a split does not depend on its size
    np.testing.assert_array_equal(first["train"].images, full["train"].images[:6])
    np.testing.assert_array_equal(pixels(shapes / "ann_dir" / "val" / "00002.png"), full["val"].masks[2])

    copy = tmp_path / "shapes"
    shutil.copytree(shapes, copy)
    annotation = copy / "ann_dir" / "val" / "00002.png"
    labels = pixels(annotation).copy()
    labels[0, 0] = 1 if labels[0, 0] != 1 else 2
    Image.fromarray(labels).save(annotation)
    with pytest.raises(AdaptbenchError, match="micro task 'shapes': the data in .* differs from the expected checksum"):
        verify_micro_task("shapes", copy)
    assert not list(copy.rglob("*.tmp"))


def test_the_checksum_sees_decoded_pixels_and_names_not_png_bytes(tmp_path):
    folder = tmp_path / "f"
    (folder / "a").mkdir(parents=True)
    array = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(array).save(folder / "a" / "x.png", compress_level=1)
    (folder / "list.txt").write_text("x\n")
    (folder / ".complete").write_text("anything")  # hidden files are not data
    first = folder_checksum(folder)
    Image.fromarray(array).save(folder / "a" / "x.png", compress_level=9)
    assert folder_checksum(folder) == first
    (folder / "a" / "x.png").rename(folder / "a" / "y.png")
    assert folder_checksum(folder) != first


# -- the source domain and the micro SAM -----------------------------------------------------------
def test_source_scenes_are_seeded_and_show_every_hue_family():
    images, labels = source_scenes(24, seed=5)
    again, again_labels = source_scenes(24, seed=5)
    assert images.shape == (24, 64, 64, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, again_labels)
    assert not np.array_equal(source_scenes(24, seed=6)[0], images)
    share = np.bincount(labels.ravel(), minlength=len(SOURCE_CLASSES)) / labels.size
    assert len(share) == len(SOURCE_CLASSES) and share.min() > 0.05
    assert np.mean([len(np.unique(scene)) >= 2 for scene in labels]) > 0.8


def test_mean_iou_counts_classes_seen():
    confusion = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    assert mean_iou(confusion) == pytest.approx((3 / 4 + 2 / 3) / 2)


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory):
    path = tmp_path_factory.mktemp("pretrain") / "sam.safetensors"
    lines = []
    pretrain_micro_sam(path, seed=3, images=8, epochs=1, batch_size=4, held_out=4, threads=1, log=lines.append)
    return path, lines


def test_pretraining_writes_a_sam_checkpoint_that_loads(tiny_sam):
    path, lines = tiny_sam
    state = load_file(path)
    assert {key.split(".")[0] for key in state} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    assert state["mask_decoder.mask_tokens.weight"].shape == (len(SOURCE_CLASSES), SAM_MICRO_CONFIG["out_chans"])
    backbone = sam_micro(weights=str(path))
    assert backbone.weights_source == f"file:{path}"
    torch.testing.assert_close(backbone.model.pos_embed, state["image_encoder.pos_embed"], atol=0, rtol=0)
    recipe = read_sam_pretrain_metadata(path)
    assert (recipe["seed"], recipe["images"], recipe["source_classes"]) == (3, 8, list(SOURCE_CLASSES))
    assert "pretrain_micro_sam('sam.safetensors', images=8, epochs=1, seed=3, batch_size=4" in recipe["command"]
    assert all(isinstance(recipe[key], float) for key in ("held_out_miou", "held_out_pixel_accuracy", "trivial_miou"))
    shipped = read_sam_pretrain_metadata(SAM_MICRO_WEIGHTS)  # the figures the docstring and the README state
    assert (shipped["held_out_miou"], shipped["trivial_miou"]) == (0.9686, 0.0332)
    assert any(line.startswith("epoch 1/1: loss") for line in lines)


def test_pretraining_is_deterministic_given_the_seed(tiny_sam, tmp_path):
    path, _ = tiny_sam
    again = pretrain_micro_sam(tmp_path / path.name, seed=3, images=8, epochs=1, batch_size=4, held_out=4,
                               threads=1, log=lambda line: None)
    assert sha256_of(again) == sha256_of(path)


def test_sam_decoder_head_starts_from_the_checkpoints_decoder(tiny_sam):
    from types import SimpleNamespace

    from adaptbench.tasks.sam_decoder import sam_decoder_head

    path, _ = tiny_sam
    state = load_file(path)
    backbone = sam_micro(weights=str(path))
    companion = backbone.companion_state(("mask_decoder.", "prompt_encoder."))
    assert companion and all(key.startswith(("mask_decoder.", "prompt_encoder.")) for key in companion)
    head = sam_decoder_head(backbone, SimpleNamespace(num_classes=2))
    torch.testing.assert_close(head.mask_decoder.mask_tokens.weight, state["mask_decoder.mask_tokens.weight"][:2])
    torch.testing.assert_close(head.mask_decoder.iou_token.weight, state["mask_decoder.iou_token.weight"])
    features = backbone.forward_dense(torch.randn(1, 3, 64, 64)).final
    assert head(features).shape == (1, 2, 64, 64)


def test_bad_settings_are_refused_by_name():
    with pytest.raises(AdaptbenchError, match="sam_micro: epochs=0"):
        SamPretrainSettings(epochs=0)


def test_cli_pretrains_the_micro_sam(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sam_pretrain, "SamPretrainSettings",
                        lambda: SamPretrainSettings(batch_size=4, held_out=4, threads=1))
    out = tmp_path / "cli.safetensors"
    assert main(["pretrain-micro", "--model", "sam_micro", "--out", str(out), "--images", "4", "--epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"sha256 {sha256_of(out)}" in printed and "SAM_MICRO_WEIGHTS_SHA256" in printed
    assert read_sam_pretrain_metadata(out)["images"] == 4


# -- the shipped micro SAM -------------------------------------------------------------------------
def test_shipped_sam_weights_match_their_sha256_and_learnt_the_source_domain():
    assert SAM_MICRO_WEIGHTS.is_file() and sha256_of(SAM_MICRO_WEIGHTS) == SAM_MICRO_WEIGHTS_SHA256
    recipe = read_sam_pretrain_metadata(SAM_MICRO_WEIGHTS)
    defaults = SamPretrainSettings()
    assert recipe["command"] == (f"adaptbench pretrain-micro --model sam_micro --out sam_micro.safetensors "
                                 f"--images {defaults.images} --epochs {defaults.epochs} --seed {defaults.seed}")
    assert recipe["held_out_miou"] > 2 * recipe["trivial_miou"] + 0.2


def test_sam_micro_loads_the_shipped_weights_by_default():
    backbone = load_backbone("sam_micro")
    assert backbone.weights_source == f"file:{SAM_MICRO_WEIGHTS}"
    assert backbone.weights_id != sam_micro(weights="random").weights_id
    assert (backbone.anatomy.grid, backbone.anatomy.feature_dim, backbone.data_config.input_size) == \
        ((16, 16), 64, (64, 64))
    assert set(backbone.companion_state(("mask_decoder.", "prompt_encoder."))) == {
        key for key in load_file(SAM_MICRO_WEIGHTS) if not key.startswith("image_encoder.")}


def test_a_corrupt_sam_weights_file_is_refused_in_one_line(tmp_path, monkeypatch):
    corrupt = tmp_path / "sam_micro.safetensors"
    shutil.copyfile(SAM_MICRO_WEIGHTS, corrupt)
    with open(corrupt, "r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"\x00" * 8)
    monkeypatch.setattr(micro_backbone, "SAM_MICRO_WEIGHTS", corrupt)
    with pytest.raises(AdaptbenchError, match=r"corrupt .*adaptbench pretrain-micro --model sam_micro") as err:
        sam_micro()
    assert "\n" not in str(err.value)
    corrupt.unlink()
    with pytest.raises(AdaptbenchError, match=r"missing.*adaptbench pretrain-micro --model sam_micro"):
        sam_micro()
