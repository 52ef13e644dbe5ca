"""Readers of the real on-disk formats, on small folders built here in those layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaptbench.datasets.fgvc import fgvc_samples
from adaptbench.datasets.images import ImageListDataset
from adaptbench.datasets.vtab import read_split_file, vtab_samples
from adaptbench.errors import AdaptbenchError


def write_image(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), value, dtype=np.uint8)).save(path)


def vtab_task(root: Path, task: str = "dtd") -> Path:
    folder = root / task
    for split, labels in {"train800": [0, 1, 2], "val200": [3], "train800val200": [0, 1, 2, 3], "test": [4, 5]}.items():
        lines = []
        for index, label in enumerate(labels):
            relative = f"images/{split}/{index:06d}.jpg"
            write_image(folder / relative, value=label)
            lines.append(f"{relative} {label}")
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n\n")
    return folder


def test_vtab_reads_every_split(tmp_path):
    folder = vtab_task(tmp_path)
    samples = vtab_samples(tmp_path, "dtd", "train800val200", 47)
    assert [label for _, label in samples] == [0, 1, 2, 3]
    assert samples[0][0] == folder / "images/train800val200/000000.jpg"
    dataset = ImageListDataset(vtab_samples(tmp_path, "dtd", "test", 47))
    image, label = dataset[1]
    assert image.mode == "RGB" and image.size == (6, 6) and label == 5


@pytest.mark.parametrize("line,fragment", [
    ("images/train800/000000.jpg", "expected '<image path> <int label>'"),
    ("images/train800/000000.jpg x", "'x' is not an integer"),
    ("images/train800/000000.jpg 47", "label 47 out of range; expected 0..46"),
    ("images/train800/000000.jpg -1", "label -1 out of range"),
])
def test_vtab_bad_lines_name_file_and_line(tmp_path, line, fragment):
    folder = vtab_task(tmp_path)
    split_file = folder / "train800.txt"
    split_file.write_text("images/train800/000001.jpg 1\n" + line + "\n")
    with pytest.raises(AdaptbenchError, match=fragment) as err:
        read_split_file(split_file, 47)
    assert f"{split_file}:2" in str(err.value)


def test_vtab_missing_things_are_named(tmp_path):
    with pytest.raises(AdaptbenchError, match="task folder .*dtd does not exist"):
        vtab_samples(tmp_path, "dtd", "test", 47)
    folder = vtab_task(tmp_path)
    (folder / "val200.txt").unlink()
    with pytest.raises(AdaptbenchError, match=r"val200.txt does not exist; expected the VTAB-1k layout"):
        vtab_samples(tmp_path, "dtd", "val200", 47)
    (folder / "images/test/000001.jpg").unlink()
    with pytest.raises(AdaptbenchError, match=r"images/test/000001.jpg listed in .*test.txt does not exist"):
        vtab_samples(tmp_path, "dtd", "test", 47)
    with pytest.raises(AdaptbenchError, match="unknown VTAB-1k split"):
        vtab_samples(tmp_path, "dtd", "train", 47)


@pytest.mark.parametrize("content", [b"garbage", None])
def test_unreadable_image_is_named_when_loaded(tmp_path, content):
    folder = vtab_task(tmp_path)
    bad = folder / "images/test/000000.jpg"
    if content is None:  # truncated: a valid header, half the data
        bad.write_bytes(bad.read_bytes()[:40])
    else:
        bad.write_bytes(content)
    dataset = ImageListDataset(vtab_samples(tmp_path, "dtd", "test", 47), source="dtd:test")
    with pytest.raises(AdaptbenchError, match=f"cannot read image {bad} \\(listed in dtd:test\\)"):
        dataset[0]


def fgvc_dataset(root: Path) -> Path:
    folder = root / "CUB_200_2011"
    splits = {"train": {"a/1.jpg": 3, "a/2.jpg": 7, "b/3.jpg": 12}, "val": {"b/4.jpg": 7}, "test": {"c/5.jpg": 12}}
    for split, annotations in splits.items():
        for image, class_id in annotations.items():
            write_image(folder / "images" / image, class_id)
        (folder / f"{split}.json").write_text(json.dumps(annotations))
    return folder


def test_fgvc_remaps_ids_with_gaps_to_contiguous(tmp_path):
    folder = fgvc_dataset(tmp_path)
    train = fgvc_samples(tmp_path, "cub", "train")
    assert [label for _, label in train] == [0, 1, 2]  # ids 3, 7, 12
    assert train[0][0] == folder / "images" / "a/1.jpg"
    assert [label for _, label in fgvc_samples(tmp_path, "cub", "trainval")] == [0, 1, 2, 1]
    assert [label for _, label in fgvc_samples(tmp_path, "cub", "test")] == [2]


def test_fgvc_errors_name_the_file(tmp_path):
    folder = fgvc_dataset(tmp_path)
    (folder / "test.json").write_text('{"c/5.jpg": 99}')
    with pytest.raises(AdaptbenchError, match=r"test.json: class id 99 .* does not occur in .*train.json"):
        fgvc_samples(tmp_path, "cub", "test")
    (folder / "val.json").write_text('{\n"b/4.jpg": 7,\n}')
    with pytest.raises(AdaptbenchError, match=r"val.json:3: invalid JSON"):
        fgvc_samples(tmp_path, "cub", "val")
    (folder / "train.json").unlink()
    with pytest.raises(AdaptbenchError, match=r"train.json does not exist; expected the FGVC layout"):
        fgvc_samples(tmp_path, "cub", "train")
    with pytest.raises(AdaptbenchError, match="did you mean 'cub'"):
        fgvc_samples(tmp_path, "cubb", "train")
