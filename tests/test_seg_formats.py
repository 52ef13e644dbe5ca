"""Segmentation formats (mmseg's layouts, image/mask folders) and the mask field, on tiny
datasets written here into the real layouts (12x10 px images, 'L' / 'P' / JPEG masks).

Every bad-data case checks the promise of ``adaptbench.errors``: one line naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaptbench.datasets.decoded import ImageField, decoded_split
from adaptbench.datasets.formats import SEG_CLASS_NAMES, SEG_DATASETS, SPLITS
from adaptbench.datasets.mask_folders import mask_folder_samples
from adaptbench.datasets.masks import MaskField
from adaptbench.datasets.mmseg import held_out, mmseg_samples
from adaptbench.registry import READERS
from adaptbench.tasks.catalog import TaskSpec
from helpers import raises_one_line

WIDTH, HEIGHT = 12, 10
ADE = SEG_DATASETS["ade20k"][5]
KVASIR = SEG_DATASETS["kvasir_seg"][5]


# -- helpers -------------------------------------------------------------------------------
def write(path: Path, pixels: np.ndarray, mode: str | None = None, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path, **save)
    return path


def image(path: Path, value: int = 90, size: tuple[int, int] = (WIDTH, HEIGHT)) -> Path:
    return write(path, np.full((size[1], size[0], 3), value, np.uint8))


def label_map(path: Path, values=(0, 1, 2)) -> Path:
    return write(path, np.resize(np.asarray(values, np.uint8), (HEIGHT, WIDTH)))


def mmseg_dataset(root: Path, stems: dict[str, list[str]], images: str = "img_dir/{}", masks: str = "ann_dir/{}",
                  image_suffix: str = ".jpg", mask_suffix: str = ".png") -> Path:
    """An mmseg-layout folder; stems are written in the order given (the reader must sort)."""
    for split, names in stems.items():
        for name in names:
            image(root / images.format(split) / f"{name}{image_suffix}")
            label_map(root / masks.format(split) / f"{name}{mask_suffix}")
    return root


def kvasir(root: Path, splits: dict[str, list[str]], mask_suffix: str = ".jpg", image_suffix: str = ".jpg") -> Path:
    for ids in splits.values():
        for image_id in ids:
            image(root / "images" / f"{image_id}{image_suffix}")
            write(root / "masks" / f"{image_id}{mask_suffix}", binary_pixels(), "L", quality=90)
    for split, ids in splits.items():
        (root / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def binary_pixels() -> np.ndarray:
    pixels = np.zeros((HEIGHT, WIDTH), np.uint8)
    pixels[:, 6:] = 255
    return pixels


def stems(samples) -> list[str]:
    return [path.stem for path, _ in samples]


def spec(fmt: str, folder: str, options: dict, classes: int = 3) -> TaskSpec:
    return TaskSpec(f"seg/{folder}", "segmentation", fmt, folder, classes, "seg", "test", options=options)


# -- tables --------------------------------------------------------------------------------
def test_the_tables_hold_the_datasets_facts():
    assert SPLITS["mmseg"] == ("tune_train", "tune_val", "train", "val")
    assert SPLITS["mask_folders"] == ("train", "val", "trainval", "test")
    assert SEG_DATASETS["ade20k"][:5] == ("seg", "mmseg", "ADEChallengeData2016", 150, "ade20k")
    assert ADE["reduce_zero_label"] is True and ADE["img_suffix"] == ".jpg" and ADE["seg_map_suffix"] == ".png"
    assert SEG_DATASETS["kvasir_seg"][:5] == ("medseg", "mask_folders", "Kvasir-SEG", 2, "medical")
    ade = SEG_CLASS_NAMES["ade20k"]
    assert len(ade) == 150 and ade[:5] == ("wall", "building", "sky", "floor", "tree") and ade[-1] == "flag"
    assert SEG_CLASS_NAMES["kvasir_seg"] == ("background", "polyp")
    for key, (_, _, _, classes, _, _) in SEG_DATASETS.items():
        assert len(SEG_CLASS_NAMES[key]) == classes


def test_both_formats_are_registered_readers(tmp_path):
    mmseg_dataset(tmp_path / "ds", {"train": ["a", "b"]})
    task = spec("mmseg", "ds", {})
    reader = READERS.get("mmseg")()
    assert stems(reader.samples(tmp_path, task, "train")) == ["a", "b"]
    assert "img_dir/{train,val}/<stem>.jpg" in reader.layout(task)
    assert "{train,val,test}.txt" in READERS.get("mask_folders")().layout(spec("mask_folders", "k", KVASIR, 2))


# -- mmseg ---------------------------------------------------------------------------------
def test_mmseg_pairs_each_image_with_its_mask_sorted_by_stem(tmp_path):
    mmseg_dataset(tmp_path / "ds", {"train": ["c", "a", "b"], "val": ["z", "y"]})
    train = mmseg_samples(tmp_path, "ds", "train", {})
    assert stems(train) == ["a", "b", "c"]
    assert train[0] == (tmp_path / "ds/img_dir/train/a.jpg", tmp_path / "ds/ann_dir/train/a.png")
    assert train.source == str(tmp_path / "ds/img_dir/train")
    assert stems(mmseg_samples(tmp_path, "ds", "val", {})) == ["y", "z"]


def test_mmseg_lists_sub_folders_and_uses_the_suffixes(tmp_path):
    options = {"img_suffix": "_leftImg8bit.png", "seg_map_suffix": "_labelTrainIds.png"}
    mmseg_dataset(tmp_path / "cs", {"train": ["zurich/z_1", "aachen/a_1"]}, image_suffix=options["img_suffix"],
                  mask_suffix=options["seg_map_suffix"])
    pairs = mmseg_samples(tmp_path, "cs", "train", options)
    assert [path.relative_to(tmp_path / "cs") for pair in pairs for path in pair] == [
        Path("img_dir/train/aachen/a_1_leftImg8bit.png"), Path("ann_dir/train/aachen/a_1_labelTrainIds.png"),
        Path("img_dir/train/zurich/z_1_leftImg8bit.png"), Path("ann_dir/train/zurich/z_1_labelTrainIds.png")]


def test_the_ade20k_variant_reads_ades_own_folders(tmp_path):
    folder = tmp_path / "ADEChallengeData2016"
    mmseg_dataset(folder, {"training": ["ADE_train_2", "ADE_train_1"], "validation": ["ADE_val_1"]},
                  images="images/{}", masks="annotations/{}")
    train = mmseg_samples(tmp_path, folder.name, "train", ADE)
    assert train[0] == (folder / "images/training/ADE_train_1.jpg", folder / "annotations/training/ADE_train_1.png")
    assert stems(mmseg_samples(tmp_path, folder.name, "val", ADE)) == ["ADE_val_1"]


def test_a_split_list_picks_the_stems_and_remembers_its_lines(tmp_path):
    mmseg_dataset(tmp_path / "ds", {"train": ["a", "b", "c", "d"]})
    split_list = tmp_path / "ds/splits/train.txt"
    split_list.parent.mkdir()
    split_list.write_text("d\nb\n\n")
    train = mmseg_samples(tmp_path, "ds", "train", {})
    assert stems(train) == ["b", "d"] and train.source == str(split_list)
    assert train.where == [f"{split_list}:2", f"{split_list}:1"]


def test_the_voc_variant_reads_the_segmentation_lists(tmp_path):
    voc = tmp_path / "VOCdevkit/VOC2012"
    for stem in ["2007_000033", "2007_000032", "2008_000001"]:  # JPEGImages holds more than the lists
        image(voc / f"JPEGImages/{stem}.jpg")
    for stem in ["2007_000032", "2007_000033"]:
        label_map(voc / f"SegmentationClass/{stem}.png")
    lists = voc / "ImageSets/Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_000033\n2007_000032\n")
    options = SEG_DATASETS["voc2012"][5]
    assert stems(mmseg_samples(tmp_path, "VOCdevkit/VOC2012", "train", options)) == ["2007_000032", "2007_000033"]
    with raises_one_line("val list .* does not exist; expected the mmseg layout", lists / "val.txt"):
        mmseg_samples(tmp_path, "VOCdevkit/VOC2012", "val", options)


def test_tune_splits_are_a_seeded_disjoint_cover_of_train(tmp_path):
    names = [f"img_{index:02d}" for index in range(20)]
    mmseg_dataset(tmp_path / "first", {"train": names})
    mmseg_dataset(tmp_path / "second", {"train": names[::-1]})  # created in another order
    train = stems(mmseg_samples(tmp_path, "first", "train", {}))
    tune_train = stems(mmseg_samples(tmp_path, "first", "tune_train", {}))
    tune_val = stems(mmseg_samples(tmp_path, "first", "tune_val", {}))
    assert len(tune_val) == 2 and not set(tune_val) & set(tune_train)  # 0.1 of 20
    assert sorted(tune_val + tune_train) == train and tune_val == sorted(tune_val)
    order = np.random.default_rng(0).permutation(20)
    assert tune_val == sorted(names[index] for index in order[:len(tune_val)])
    assert stems(mmseg_samples(tmp_path, "second", "tune_val", {})) == tune_val
    assert stems(mmseg_samples(tmp_path, "first", "tune_val", {"tune_val_fraction": 0.4})) != tune_val


def test_tune_val_holds_at_least_one_image_and_leaves_one(tmp_path):
    assert len(held_out(3, 0.1)) == 1 and held_out(3, 0.1) == held_out(3, 0.1)
    mmseg_dataset(tmp_path / "ds", {"train": ["only"]})
    with raises_one_line("has 1 image.*too few to hold out", tmp_path / "ds/img_dir/train"):
        mmseg_samples(tmp_path, "ds", "tune_val", {})
    with raises_one_line("tune_val_fraction is 1.5; expected a number between 0 and 1", "tune_val_fraction"):
        mmseg_samples(tmp_path, "ds", "tune_train", {"tune_val_fraction": 1.5})


# -- image and mask folders ---------------------------------------------------------------
def test_kvasir_pairs_same_names_in_list_order(tmp_path):
    root = kvasir(tmp_path / "Kvasir-SEG", {"train": ["cju2", "cju1"], "val": ["cju3"], "test": ["cju4"]})
    train = mask_folder_samples(tmp_path, "Kvasir-SEG", "train", KVASIR)
    assert train == [(root / "images/cju2.jpg", root / "masks/cju2.jpg"), (root / "images/cju1.jpg",
                                                                            root / "masks/cju1.jpg")]
    assert train.where == [f"{root / 'train.txt'}:1", f"{root / 'train.txt'}:2"]
    assert stems(mask_folder_samples(tmp_path, "Kvasir-SEG", "trainval", KVASIR)) == ["cju2", "cju1", "cju3"]
    assert stems(mask_folder_samples(tmp_path, "Kvasir-SEG", "test", KVASIR)) == ["cju4"]


def test_a_list_line_may_hold_the_file_name_and_masks_may_have_their_own_suffix(tmp_path):
    root = kvasir(tmp_path / "salt", {"train": ["a", "b"]}, mask_suffix="_mask.png", image_suffix=".png")
    (root / "train.txt").write_text("a.png\nb\n")
    options = {"binary": True, "image_suffix": ".png", "mask_suffix": "_mask.png"}
    assert mask_folder_samples(tmp_path, "salt", "train", options)[0] == (root / "images/a.png",
                                                                          root / "masks/a_mask.png")


# -- the mask field ------------------------------------------------------------------------
def decode(field: MaskField, mask: Path, image_path: Path | None = None) -> np.ndarray:
    image_path = image_path or image(mask.parent / f"{mask.stem}-image.jpg", size=Image.open(mask).size)
    return field.decode((image_path, mask), "split.txt")


def test_reduce_zero_label_maps_exactly_as_mmseg(tmp_path):
    values = np.arange(256, dtype=np.uint8)
    values = values[(values <= 150) | (values == 255)].reshape(8, 19)  # every value ADE's files may hold
    mask = write(tmp_path / "m.png", values)
    # mmseg's LoadAnnotations on uint8: 0 -> 255, then minus 1, then the 254 that 255 became -> 255
    expected = values.copy()
    expected[expected == 0] = 255
    expected = expected - 1
    expected[expected == 254] = 255
    got = decode(MaskField((8, 19), 150, reduce_zero_label=True), mask)
    assert got.dtype == np.uint8 and got.shape == (8, 19)
    np.testing.assert_array_equal(got, expected)
    assert got.flat[0] == 255 and got.flat[1] == 0 and got.flat[150] == 149 and got.flat[151] == 255
    np.testing.assert_array_equal(decode(MaskField((8, 19), 151), mask), values)  # no reduction: as stored


def test_a_palette_mask_is_read_by_index_not_colour(tmp_path):
    indices = np.resize(np.array([0, 1, 20, 255], np.uint8), (HEIGHT, WIDTH))
    palette = Image.fromarray(indices, "P")
    palette.putpalette([channel for index in range(256) for channel in (index * 7 % 256, 128, 255 - index)])
    palette.save(tmp_path / "voc.png")
    assert Image.open(tmp_path / "voc.png").mode == "P"
    np.testing.assert_array_equal(decode(MaskField((HEIGHT, WIDTH), 21), tmp_path / "voc.png"), indices)


def test_a_binary_jpeg_mask_is_thresholded(tmp_path):
    mask = write(tmp_path / "m.jpg", binary_pixels(), "L", quality=90)
    got = decode(MaskField((HEIGHT, WIDTH), 2, binary=True), mask)
    np.testing.assert_array_equal(got, binary_pixels() // 255)
    high = decode(MaskField((HEIGHT, WIDTH), 2, binary=True, threshold=254), write(tmp_path / "g.png", binary_pixels() // 2))
    assert not high.any()  # 127 is background under threshold 254


def test_resizing_is_nearest_so_no_label_is_invented(tmp_path):
    labels = np.random.default_rng(0).choice(np.array([0, 3, 7, 255], np.uint8), size=(HEIGHT, WIDTH))
    mask = write(tmp_path / "m.png", labels)
    for size in [(23, 17), (5, 6), (HEIGHT, WIDTH)]:
        got = decode(MaskField(size, 8), mask)
        assert got.shape == size and got.dtype == np.uint8 and set(np.unique(got)) <= {0, 3, 7, 255}
    np.testing.assert_array_equal(decode(MaskField((2 * HEIGHT, 2 * WIDTH), 8), mask),
                                  labels.repeat(2, axis=0).repeat(2, axis=1))


def test_every_option_enters_the_cache_key():
    base = MaskField((8, 8), 3)
    variants = [MaskField((8, 9), 3), MaskField((8, 8), 4), MaskField((8, 8), 2, binary=True),
                MaskField((8, 8), 3, reduce_zero_label=True), MaskField((8, 8), 3, threshold=100)]
    described = [base.describe()] + [field.describe() for field in variants]
    assert len({str(sorted(item.items())) for item in described}) == len(described)
    assert base.array_spec().shape == (8, 8) and base.array_spec().dtype == "uint8"


def test_a_split_decodes_into_images_and_masks(tmp_path):
    mmseg_dataset(tmp_path / "ds", {"val": ["b", "a"]})
    samples = mmseg_samples(tmp_path, "ds", "val", {})
    arrays = decoded_split(samples, {"images": ImageField((5, 6), "bilinear"), "masks": MaskField((5, 6), 3)},
                           task="seg/ds", split="val", source=samples.source, workers=0).arrays
    assert arrays["images"].shape == (2, 5, 6, 3) and arrays["masks"].shape == (2, 5, 6)
    assert set(np.unique(arrays["masks"])) <= {0, 1, 2}


# -- bad data: one line naming the file ------------------------------------------------------
def test_a_mask_of_another_size_names_both_files(tmp_path):
    mask = write(tmp_path / "m.png", np.zeros((HEIGHT, WIDTH + 1), np.uint8))
    photo = image(tmp_path / "photo.jpg")
    with raises_one_line(r"is 13x10 but its image .*photo.jpg is 12x10 \(listed in split.txt\); expected the same",
                         mask):
        decode(MaskField((HEIGHT, WIDTH), 3), mask, photo)


@pytest.mark.parametrize("reduce,bad,allowed", [(False, 3, r"0\.\.2 \(3 classes\) or 255"),
                                                 (True, 4, r"0\.\.3 \(reduce_zero_label.*\) or 255")])
def test_a_label_out_of_range_names_value_count_and_range(tmp_path, reduce, bad, allowed):
    pixels = np.zeros((HEIGHT, WIDTH), np.uint8)
    pixels[0, :5] = bad
    pixels[1, 0] = 255  # ignore is always allowed
    mask = write(tmp_path / "m.png", pixels)
    with raises_one_line(rf"holds label value {bad} in 5 pixel\(s\) \(listed in split.txt\); expected values {allowed}",
                         mask):
        decode(MaskField((HEIGHT, WIDTH), 3, reduce_zero_label=reduce), mask)


def test_a_16_bit_label_beyond_uint8_is_refused_not_wrapped(tmp_path):
    mask = write(tmp_path / "m.png", np.full((HEIGHT, WIDTH), 257, np.uint16))
    assert Image.open(mask).mode.startswith("I")
    with raises_one_line("holds label value 257", mask):
        decode(MaskField((HEIGHT, WIDTH), 3), mask)


def test_an_rgb_mask_where_a_label_map_is_expected(tmp_path):
    mask = image(tmp_path / "m.png")
    with raises_one_line(r"is an RGB image \(listed in split.txt\); expected a single-channel label map", mask):
        decode(MaskField((HEIGHT, WIDTH), 3), mask)
    assert decode(MaskField((HEIGHT, WIDTH), 2, binary=True), mask).shape == (HEIGHT, WIDTH)  # binary: any mode


def test_a_missing_or_broken_mask_file(tmp_path):
    with raises_one_line(r"does not exist \(listed in split.txt\)", tmp_path / "gone.png"):
        decode(MaskField((HEIGHT, WIDTH), 3), tmp_path / "gone.png", image(tmp_path / "i.jpg"))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with raises_one_line("cannot be read", tmp_path / "bad.png"):
        decode(MaskField((HEIGHT, WIDTH), 3), tmp_path / "bad.png", image(tmp_path / "i.jpg"))


def test_an_image_without_its_mask(tmp_path):
    mmseg_dataset(tmp_path / "ds", {"train": ["a", "b"]})
    (tmp_path / "ds/ann_dir/train/b.png").unlink()
    with raises_one_line(r"image .*b.jpg has no mask: expected .*ann_dir/train/b.png", tmp_path / "ds/img_dir/train/b.jpg"):
        mmseg_samples(tmp_path, "ds", "train", {})
    root = kvasir(tmp_path / "k", {"train": ["x"]})
    (root / "masks/x.jpg").unlink()
    with raises_one_line("has no mask: expected .*masks/x.jpg", root / "images/x.jpg"):
        mask_folder_samples(tmp_path, "k", "train", KVASIR)


def test_missing_folders_and_split_lists_say_the_layout(tmp_path):
    with raises_one_line("image folder .* does not exist; expected the mmseg layout .*img_dir", tmp_path / "ds"):
        mmseg_samples(tmp_path, "ds", "train", {})
    root = kvasir(tmp_path / "k", {"train": ["x"]})
    with raises_one_line(r"split list .*test.txt does not exist; expected the image/mask folder layout",
                         root / "test.txt"):
        mask_folder_samples(tmp_path, "k", "test", KVASIR)


def test_a_split_list_naming_a_missing_image(tmp_path):
    mmseg_dataset(tmp_path / "ds", {"train": ["a"]})
    split_list = tmp_path / "ds/splits/train.txt"
    split_list.parent.mkdir()
    split_list.write_text("a\nghost\n")
    with raises_one_line(f"{split_list}:2: image 'ghost' is not in", split_list):
        mmseg_samples(tmp_path, "ds", "train", {})
    root = kvasir(tmp_path / "k", {"train": ["x"]})
    (root / "train.txt").write_text("x\nghost\n")
    with raises_one_line(r"train.txt:2: id 'ghost' has no image; expected .*images/ghost.jpg", root / "train.txt"):
        mask_folder_samples(tmp_path, "k", "train", KVASIR)


def test_a_duplicated_id(tmp_path):
    root = kvasir(tmp_path / "k", {"train": ["x", "y"], "val": ["z", "x"]})
    (root / "train.txt").write_text("x\ny\nx.jpg\n")
    with raises_one_line(r"train.txt:3: id 'x' is listed again \(first at line 1\)", root / "train.txt"):
        mask_folder_samples(tmp_path, "k", "train", KVASIR)
    (root / "train.txt").write_text("x\ny\n")
    with raises_one_line(r"val.txt:2: id 'x' is also listed at .*train.txt:1", root / "val.txt"):
        mask_folder_samples(tmp_path, "k", "trainval", KVASIR)


def test_an_empty_split(tmp_path):
    root = kvasir(tmp_path / "k", {"train": ["x"]})
    (root / "train.txt").write_text("\n")
    with raises_one_line("split list .* is empty; expected one image id per line", root / "train.txt"):
        mask_folder_samples(tmp_path, "k", "train", KVASIR)
    (tmp_path / "ds/img_dir/train").mkdir(parents=True)
    (tmp_path / "ds/ann_dir/train").mkdir(parents=True)
    with raises_one_line(r"holds no '\*.jpg' image", tmp_path / "ds/img_dir/train"):
        mmseg_samples(tmp_path, "ds", "train", {})


def test_unknown_names_are_refused(tmp_path):
    with raises_one_line("unknown mmseg split 'test'", "test"):
        mmseg_samples(tmp_path, "ds", "test", {})
    with raises_one_line("unknown mmseg variant 'ade'.*did you mean 'ade20k'", "ade"):
        mmseg_samples(tmp_path, "ds", "train", {"variant": "ade"})
