"""Readers of the real on-disk formats, on small folders built here in those layouts.

Every error path is checked for the promise of ``adaptbench.errors``: one line that names
the file (and line, or key) at fault and says what was expected.
"""

from __future__ import annotations

import json
import os
import pickle
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaptbench.datasets import (
    FGVC_DATASETS,
    VTAB1K_TASKS,
    VTAB_SPLITS,
    check_images_exist,
    fgvc_samples,
    read_split_file,
    vtab_samples,
)
from adaptbench.datasets.decoded import ImageField, LabelField, decoded_split
from adaptbench.datasets.images import load_rgb
from adaptbench.errors import AdaptbenchError

# -- helpers -------------------------------------------------------------------------------


def write_image(path: Path, value: int = 0, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (6, 6, 3) if mode == "RGB" else (6, 6)
    Image.fromarray(np.full(shape, value, dtype=np.uint8)).save(path)


VTAB_LABELS = {"train800": [0, 1, 2], "val200": [3], "train800val200": [0, 1, 2, 3], "test": [4, 5]}


def vtab_task(root: Path, task: str = "dtd") -> Path:
    """A tiny task in NOAH's layout: one image folder per split, a blank line at the end."""
    folder = root / task
    for split, labels in VTAB_LABELS.items():
        lines = []
        for index, label in enumerate(labels):
            relative = f"images/{split}/{index:06d}.jpg"
            write_image(folder / relative, value=40 * label)
            lines.append(f"{relative} {label}")
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n\n")
    return folder


@contextmanager
def raises_one_line(match: str):
    """pytest.raises for an AdaptbenchError whose message is a single line."""
    with pytest.raises(AdaptbenchError, match=match) as info:
        yield info
    assert "\n" not in str(info.value), f"message is not one line: {info.value}"


# -- VTAB-1k -------------------------------------------------------------------------------


def test_vtab_table_matches_the_design():
    groups = {"natural": 7, "specialized": 4, "structured": 8}
    assert len(VTAB1K_TASKS) == 19
    assert {g: sum(1 for grp, _ in VTAB1K_TASKS.values() if grp == g) for g in groups} == groups
    assert VTAB1K_TASKS["sun397"] == ("natural", 397)
    assert VTAB1K_TASKS["diabetic_retinopathy"] == ("specialized", 5)
    assert VTAB1K_TASKS["dsprites_ori"] == ("structured", 16)
    assert VTAB_SPLITS == ("train800", "val200", "train800val200", "test")


def test_vtab_reads_every_split_relative_to_the_split_file(tmp_path):
    folder = vtab_task(tmp_path)
    for split, labels in VTAB_LABELS.items():
        samples = vtab_samples(tmp_path, "dtd", split, 47)
        assert [label for _, label in samples] == labels  # the trailing blank line is skipped
        assert samples[0][0] == folder / f"images/{split}/000000.jpg"


def test_an_image_decodes_as_rgb_at_the_size_asked(tmp_path):
    write_image(tmp_path / "gray.png", value=200, mode="L")
    pixels = ImageField((6, 6), "bicubic").decode((tmp_path / "gray.png", 3), "here.txt")
    assert pixels.shape == (6, 6, 3) and pixels.dtype == np.uint8 and (pixels == 200).all()
    assert LabelField().decode((tmp_path / "gray.png", 3), "") == 3


def test_a_sample_list_pickles_with_where_it_was_listed(tmp_path):
    folder = vtab_task(tmp_path)
    samples = vtab_samples(tmp_path, "dtd", "test", 47)
    clone = pickle.loads(pickle.dumps(samples))
    assert clone == samples and clone.source == str(folder / "test.txt") and clone.where == samples.where
    assert clone.where[1] == f"{folder / 'test.txt'}:2"


@pytest.mark.parametrize("line,fragment", [
    ("images/train800/000000.jpg", r"got 'images/train800/000000.jpg'; expected '<image path> <int label>'"),
    ("images/train800/000000.jpg 1 2", r"got 'images/train800/000000.jpg 1 2'; expected"),
    ("images/train800/000000.jpg x", r"label 'x' is not an integer; expected"),
    ("images/train800/000000.jpg 1.0", r"label '1.0' is not an integer"),
    ("images/train800/000000.jpg 47", r"label 47 out of range; expected 0..46 \(47 classes\)"),
    ("images/train800/000000.jpg -1", r"label -1 out of range; expected 0..46"),
])
def test_vtab_bad_lines_name_file_line_and_value(tmp_path, line, fragment):
    split_file = vtab_task(tmp_path) / "train800.txt"
    split_file.write_text("images/train800/000001.jpg 1\nimages/train800/000002.jpg 2\n" + line + "\n")
    with raises_one_line(fragment) as err:
        read_split_file(split_file, 47)
    assert str(err.value).startswith(f"{split_file}:3: ")  # 1-based


def test_vtab_without_a_class_count_accepts_any_label(tmp_path):
    split_file = vtab_task(tmp_path) / "test.txt"
    split_file.write_text("images/test/000000.jpg 999\n")
    assert read_split_file(split_file) == [(split_file.parent / "images/test/000000.jpg", 999)]


def test_vtab_missing_split_file_names_path_and_layout(tmp_path):
    folder = vtab_task(tmp_path)
    (folder / "val200.txt").unlink()
    layout = (r"expected the VTAB-1k layout <root>/<task>/\{train800,val200,train800val200,test\}.txt "
              r'with lines "images/<split>/<name>.jpg <label>"')
    with raises_one_line(f"split file {folder / 'val200.txt'} does not exist; {layout}"):
        vtab_samples(tmp_path, "dtd", "val200", 47)


def test_vtab_missing_task_folder_and_unknown_split(tmp_path):
    with raises_one_line(f"VTAB-1k task folder {tmp_path / 'dtd'} does not exist; expected the layout"):
        vtab_samples(tmp_path, "dtd", "test", 47)
    vtab_task(tmp_path)
    with raises_one_line("unknown VTAB-1k split 'train'; expected one of train800, val200, train800val200, test"):
        vtab_samples(tmp_path, "dtd", "train", 47)


def test_vtab_missing_images_are_named_with_their_count_and_split_file(tmp_path):
    folder = vtab_task(tmp_path)
    for name in ("000000.jpg", "000001.jpg"):
        (folder / "images/train800" / name).unlink()
    expected = (f"image {folder / 'images/train800/000000.jpg'} listed in {folder / 'train800.txt'} "
                rf"does not exist \({folder / 'train800.txt'}:1; 2 of the 3 listed images are missing\)")
    with raises_one_line(expected):
        vtab_samples(tmp_path, "dtd", "train800", 47)


def test_missing_image_paths_are_reported_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with raises_one_line(f"image {tmp_path / 'gone.png'} listed in here.txt does not exist"):
        check_images_exist([(Path("gone.png"), 0)], "here.txt")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "deleted"])
def test_unreadable_image_is_named_when_decoded(tmp_path, damage):
    folder = vtab_task(tmp_path)
    samples = vtab_samples(tmp_path, "dtd", "test", 47)
    bad = folder / "images/test/000000.jpg"
    if damage == "garbage":
        bad.write_bytes(b"this is not a jpeg")
    elif damage == "truncated":  # a valid header, then nothing
        bad.write_bytes(bad.read_bytes()[:200])
    else:  # vanished after the split was listed: the decode's existence check names its line
        bad.unlink()
    split_file = folder / "test.txt"
    expected = (rf"image {bad} listed in {split_file} does not exist \({split_file}:1; " if damage == "deleted"
                else rf"cannot read image {bad} \(listed in {split_file}\): .+; expected a readable image file")
    with raises_one_line(expected):
        decode_split(samples)
    assert load_rgb(samples[1][0]).mode == "RGB"  # the other images still load


def test_an_unreadable_image_error_crosses_the_decoding_threads(tmp_path):
    folder = vtab_task(tmp_path)
    (folder / "images/test/000001.jpg").write_bytes(b"garbage")
    with pytest.raises(AdaptbenchError, match="cannot read image .*000001.jpg"):
        decode_split(vtab_samples(tmp_path, "dtd", "test", 47), workers=2)


def decode_split(samples, workers=None):
    return decoded_split(samples, {"images": ImageField((8, 8), "bicubic"), "labels": LabelField()},
                         task="t", split="test", source=samples.source, where=samples.where, workers=workers)


# -- FGVC ------------------------------------------------------------------------------------


def test_fgvc_table_matches_vpt_folder_names():
    assert FGVC_DATASETS == {
        "cub": ("CUB_200_2011", "images", 200),
        "nabirds": ("nabirds", "images", 555),
        "stanford_dogs": ("Stanford-dogs", "Images", 120),
        "stanford_cars": ("Stanford-cars", "", 196),
        "oxford_flowers": ("OxfordFlower", "", 102),
    }


FGVC_SPLITS = {
    "train": {"a/1.jpg": 3, "a/2.jpg": 7, "b/3.jpg": 12, "b/6.jpg": 1},
    "val": {"b/4.jpg": 7},
    "test": {"c/5.jpg": 12, "c/7.jpg": 1},
}


def fgvc_dataset(root: Path, dataset: str = "cub") -> Path:
    """A tiny dataset in VPT's json layout: ids start at 1 and have gaps."""
    folder_name, image_folder, _ = FGVC_DATASETS[dataset]
    folder = root / folder_name
    for split, labels in FGVC_SPLITS.items():
        for image, class_id in labels.items():
            write_image(folder / image_folder / image, class_id)
        (folder / f"{split}.json").write_text(json.dumps(labels, indent=1))
    return folder


def labels_of(samples) -> list[int]:
    return [label for _, label in samples]


def test_fgvc_remaps_ids_with_gaps_to_contiguous(tmp_path):
    folder = fgvc_dataset(tmp_path)
    train = fgvc_samples(tmp_path, "cub", "train")
    assert labels_of(train) == [1, 2, 3, 0]  # ids 1, 3, 7, 12 -> 0, 1, 2, 3
    assert train[0][0] == folder / "images" / "a/1.jpg"
    assert labels_of(fgvc_samples(tmp_path, "cub", "val")) == [2]
    assert labels_of(fgvc_samples(tmp_path, "cub", "trainval")) == [1, 2, 3, 0, 2]  # train then val
    assert labels_of(fgvc_samples(tmp_path, "cub", "test")) == [3, 0]


@pytest.mark.parametrize("dataset,image_root", [("stanford_cars", ""), ("stanford_dogs", "Images")])
def test_fgvc_image_sub_folders(tmp_path, dataset, image_root):
    folder = fgvc_dataset(tmp_path, dataset)
    samples = fgvc_samples(tmp_path, dataset, "test")
    assert samples[0][0] == folder / image_root / "c/5.jpg"
    assert load_rgb(samples[0][0]).mode == "RGB" and samples[0][1] == 3


def test_fgvc_id_unknown_to_train_names_file_and_key(tmp_path):
    folder = fgvc_dataset(tmp_path)
    (folder / "val.json").write_text('{"b/4.jpg": 7, "b/9.jpg": 99}')
    with raises_one_line(rf"{folder / 'val.json'}: class id 99 of 'b/9.jpg' does not occur in {folder / 'train.json'}"):
        fgvc_samples(tmp_path, "cub", "trainval")


def test_fgvc_bad_json_names_file_and_line(tmp_path):
    folder = fgvc_dataset(tmp_path)
    (folder / "val.json").write_text('{\n"b/4.jpg": 7,\n}')
    with raises_one_line(rf"{folder / 'val.json'}:3: invalid JSON \(.*\); expected a JSON object"):
        fgvc_samples(tmp_path, "cub", "val")


@pytest.mark.parametrize("content,fragment", [
    ('["b/4.jpg", 7]', "holds a JSON list; expected an object"),
    ('{"b/4.jpg": "7"}', "class id of 'b/4.jpg' is '7'; expected an integer"),
    ('{"b/4.jpg": true}', "class id of 'b/4.jpg' is True; expected an integer"),
])
def test_fgvc_wrong_json_shapes_are_named(tmp_path, content, fragment):
    folder = fgvc_dataset(tmp_path)
    (folder / "val.json").write_text(content)
    with raises_one_line(f"{folder / 'val.json'}: {fragment}"):
        fgvc_samples(tmp_path, "cub", "val")


def test_fgvc_missing_json_names_path_and_layout(tmp_path):
    folder = fgvc_dataset(tmp_path)
    (folder / "train.json").unlink()
    with raises_one_line(rf"annotation file {folder / 'train.json'} does not exist; expected the FGVC layout "
                         r"<root>/<dataset folder>/\{train,val,test\}.json"):
        fgvc_samples(tmp_path, "cub", "test")  # every split needs train.json for the id map


def test_fgvc_missing_image_and_bad_names(tmp_path):
    folder = fgvc_dataset(tmp_path)
    os.remove(folder / "images/b/4.jpg")
    listed_in = rf"{folder / 'train.json'} \+ {folder / 'val.json'}"
    with raises_one_line(rf"image {folder / 'images/b/4.jpg'} listed in {listed_in} does not exist "
                         rf"\({folder / 'val.json'}, key 'b/4.jpg'; 1 of the 5"):
        fgvc_samples(tmp_path, "cub", "trainval")
    with raises_one_line("unknown FGVC dataset 'cubb' \\(did you mean 'cub'\\?\\)"):
        fgvc_samples(tmp_path, "cubb", "train")
    with raises_one_line("unknown FGVC split 'train800'; expected one of train, val, trainval, test"):
        fgvc_samples(tmp_path, "cub", "train800")


def test_fgvc_more_classes_than_the_head_is_refused(tmp_path, monkeypatch):
    from adaptbench.datasets import fgvc

    fgvc_dataset(tmp_path)
    monkeypatch.setitem(fgvc.FGVC_DATASETS, "cub", ("CUB_200_2011", "images", 3))
    with raises_one_line("train.json: 4 distinct class ids; expected at most 3"):
        fgvc_samples(tmp_path, "cub", "train")
