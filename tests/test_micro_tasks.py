"""The embedded micro tasks: generated into the VTAB-1k layout, deterministic, checksummed."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from adaptbench.datasets.images import ImageListDataset
from adaptbench.datasets.micro import MICRO_TASKS, ensure_micro_task, task_checksum, verify_micro_task
from adaptbench.datasets.vtab import VTAB_SPLITS, vtab_samples
from adaptbench.errors import AdaptbenchError
from adaptbench.registry import TASKS


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "adaptbench-cache"  # shared with the other tests


@pytest.mark.parametrize("name", sorted(MICRO_TASKS))
def test_task_is_whole_and_read_back_by_the_vtab_reader(name, cache):
    task = MICRO_TASKS[name]
    folder = ensure_micro_task(name, cache)
    splits = {split: vtab_samples(folder.parent, name, split, task.num_classes) for split in VTAB_SPLITS}
    train, val, test = task.sizes
    assert [len(splits[s]) for s in VTAB_SPLITS] == [train, val, train + val, test]
    train_labels = {label for _, label in splits["train800"]}
    assert train_labels == set(range(task.num_classes)), "every class must be in train800"
    # train800val200 is a second copy of train800 followed by val200, as in the real dumps.
    combined = [np.asarray(Image.open(p)) for p, _ in splits["train800val200"][train - 2 : train + 2]]
    originals = [np.asarray(Image.open(p)) for p, _ in splits["train800"][-2:] + splits["val200"][:2]]
    assert all(np.array_equal(a, b) for a, b in zip(combined, originals))
    image, label = ImageListDataset(splits["test"])[0]
    assert image.mode == "RGB" and 0 <= label < task.num_classes
    assert TASKS.get(f"micro/{name}").num_classes == task.num_classes


@pytest.mark.parametrize("name", ["count", "orientation"])
def test_test_split_is_disjoint_from_training(name, cache):
    folder = ensure_micro_task(name, cache)
    pixels = lambda split: {np.asarray(Image.open(p)).tobytes() for p, _ in vtab_samples(folder.parent, name, split, 8)}
    assert not pixels("test") & pixels("train800val200")


def test_generation_is_deterministic_and_matches_the_recorded_checksum(tmp_path):
    first = ensure_micro_task("faces", tmp_path / "a")
    second = ensure_micro_task("faces", tmp_path / "b")
    assert task_checksum(first, 2) == task_checksum(second, 2) == MICRO_TASKS["faces"].checksum
    assert not [p for p in os.listdir(first.parent) if p.startswith(".")], "no staging folder left"


def test_a_tampered_task_fails_verification(tmp_path):
    folder = ensure_micro_task("faces", tmp_path)
    image = folder / "images" / "test" / "000000.png"
    pixels = np.asarray(Image.open(image)).copy()
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(image)
    with pytest.raises(AdaptbenchError, match="differs from its recorded checksum"):
        verify_micro_task("faces", folder)


def test_a_half_written_task_is_regenerated(tmp_path):
    folder = ensure_micro_task("faces", tmp_path)
    (folder / ".complete").unlink()  # as if a run was killed before publishing
    (folder / "test.txt").unlink()
    again = ensure_micro_task("faces", tmp_path)
    assert (again / "test.txt").is_file() and (again / ".complete").is_file()


def test_unknown_micro_task_suggests_a_name(tmp_path):
    with pytest.raises(AdaptbenchError, match="did you mean 'digits'"):
        ensure_micro_task("digit", tmp_path)
