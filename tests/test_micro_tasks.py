"""The embedded micro tasks: generated into the VTAB-1k layout, deterministic, checksummed,
published atomically, and read back by the same readers as the real data."""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaptbench.datasets import micro
from adaptbench.datasets.images import load_rgb
from adaptbench.datasets.micro import (
    MICRO_TASKS,
    ensure_micro_task,
    micro_cache_root,
    task_checksum,
    verify_micro_task,
)
from adaptbench.datasets.micro_catalog import MICRO_TASK_INFO
from adaptbench.datasets.vtab import VTAB_SPLITS, vtab_samples
from adaptbench.errors import AdaptbenchError

EXPECTED_SIZES = {  # train800, val200, train800val200, test
    "digits": (800, 200, 1000, 797),
    "mnist": (800, 200, 1000, 500),
    "faces": (120, 30, 150, 50),
    "texture": (800, 200, 1000, 500),
    "count": (800, 200, 1000, 500),
    "location": (800, 200, 1000, 500),
    "orientation": (800, 200, 1000, 500),
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    # The folder conftest points ADAPTBENCH_CACHE at: tasks made here serve the CLI tests too.
    return tmp_path_factory.getbasetemp() / "adaptbench-cache"


def read_splits(folder: Path, num_classes: int) -> dict[str, list]:
    return {split: vtab_samples(folder.parent, folder.name, split, num_classes) for split in VTAB_SPLITS}


def file_bytes(samples) -> list[bytes]:
    return [path.read_bytes() for path, _ in samples]


def pixels(samples) -> list[bytes]:
    return [np.asarray(Image.open(path)).tobytes() for path, _ in samples]


# -- the registry ----------------------------------------------------------------------------


def test_registry_matches_the_catalogue():
    assert set(MICRO_TASKS) == set(MICRO_TASK_INFO) == set(EXPECTED_SIZES)
    assert {"digits", "mnist", "faces", "count", "location", "orientation", "texture"} <= set(MICRO_TASKS)
    for name, task in MICRO_TASKS.items():
        assert (task.group, task.num_classes, task.description) == MICRO_TASK_INFO[name]
        assert task.group in {"natural", "specialized", "structured"}
        assert "\n" not in task.description and len(task.checksum) == 64
    assert len({task.seed for task in MICRO_TASKS.values()}) == len(MICRO_TASKS)


def test_every_micro_task_is_a_registered_task():
    from adaptbench.registry import TASKS

    for name, task in MICRO_TASKS.items():
        assert TASKS.get(f"micro/{name}").num_classes == task.num_classes


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ADAPTBENCH_CACHE", str(tmp_path))
    assert micro_cache_root() == tmp_path
    assert micro.micro_task_folder("count") == tmp_path / "micro" / "v1" / "count"
    monkeypatch.delenv("ADAPTBENCH_CACHE")
    assert micro_cache_root() == Path.home() / ".cache" / "adaptbench"


def test_unknown_micro_task_suggests_a_name(tmp_path):
    with pytest.raises(AdaptbenchError, match="unknown micro task 'digit' \\(did you mean 'digits'"):
        ensure_micro_task("digit", tmp_path)
    assert not (tmp_path / "micro").exists()


# -- every task, generated and read back -------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MICRO_TASKS))
def test_task_is_whole_and_read_back_by_the_vtab_reader(name, cache):
    task = MICRO_TASKS[name]
    folder = ensure_micro_task(name, cache)
    assert folder == cache / "micro" / "v1" / name
    assert (folder / micro.COMPLETE_MARKER).read_text() == task.checksum  # verified on the way in
    splits = read_splits(folder, task.num_classes)  # labels in range, every image present
    assert tuple(len(splits[split]) for split in VTAB_SPLITS) == EXPECTED_SIZES[name]

    train_counts = np.bincount([label for _, label in splits["train800"]], minlength=task.num_classes)
    assert train_counts.min() > 0 and train_counts.max() - train_counts.min() <= 1, "balanced, every class"

    # train800val200 is a second copy of train800 then val200, as in the real dumps.
    union = splits["train800val200"]
    assert [label for _, label in union] == [label for _, label in splits["train800"] + splits["val200"]]
    assert all(path.parent.name == "train800val200" for path, _ in union)
    assert file_bytes(union) == file_bytes(splits["train800"] + splits["val200"])

    # The test split shares no image with the training data.
    assert not set(pixels(splits["test"])) & set(pixels(splits["train800"] + splits["val200"]))

    path, label = splits["test"][0]
    assert load_rgb(path).mode == "RGB" and 0 <= label < task.num_classes


def test_generating_twice_reproduces_the_recorded_checksum(tmp_path):
    # Every task's first generation above was verified against its recorded checksum
    # (recorded by another process); here one task is generated twice more.
    first = ensure_micro_task("faces", tmp_path / "a")
    second = ensure_micro_task("faces", tmp_path / "b")
    assert task_checksum(first) == task_checksum(second) == MICRO_TASKS["faces"].checksum
    assert verify_micro_task("faces", first) == MICRO_TASKS["faces"].checksum


def test_digits_read_directly_equal_scikit_learns_loader(monkeypatch):
    from sklearn.datasets import load_digits

    images, labels = micro._digits_arrays()
    reference = load_digits()
    assert np.array_equal(images, reference.images) and np.array_equal(labels, reference.target)
    monkeypatch.setattr(micro.importlib.util, "find_spec", lambda name: None)  # the fallback
    images, labels = micro._digits_arrays()
    assert np.array_equal(images, reference.images)


# -- checksums catch changes -----------------------------------------------------------------


@pytest.fixture
def faces(tmp_path) -> Path:
    return ensure_micro_task("faces", tmp_path)


def test_a_changed_pixel_fails_verification(faces):
    image = faces / "images" / "test" / "000000.png"
    changed = np.asarray(Image.open(image)).copy()
    changed[0, 0] ^= 1
    Image.fromarray(changed).save(image)
    expected = MICRO_TASKS["faces"].checksum
    with pytest.raises(AdaptbenchError, match=rf"micro task 'faces': the data in {faces} differs from the "
                                              rf"expected checksum \(expected {expected}, got [0-9a-f]{{64}}\); "
                                              r"a changed version of .* may be the cause"):
        verify_micro_task("faces", faces)


def test_a_re_encoded_png_still_verifies(faces):
    # The checksum sees decoded pixels, not PNG bytes: another zlib level changes nothing.
    image = faces / "images" / "val200" / "000000.png"
    Image.open(image).copy().save(image, compress_level=9)
    verify_micro_task("faces", faces)


def test_a_changed_label_fails_verification(faces):
    split_file = faces / "val200.txt"
    lines = split_file.read_text().splitlines()
    path, label = lines[0].split()
    lines[0] = f"{path} {1 - int(label)}"
    split_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(AdaptbenchError, match="differs from the expected checksum"):
        verify_micro_task("faces", faces)


def test_missing_or_corrupt_files_are_named(faces):
    image = faces / "images" / "test" / "000003.png"
    image.write_bytes(b"not a png")
    with pytest.raises(AdaptbenchError, match=rf"cannot read image {image} \(listed in .*test.txt\)"):
        verify_micro_task("faces", faces)
    image.unlink()
    with pytest.raises(AdaptbenchError, match=rf"image {image} listed in .*test.txt does not exist"):
        verify_micro_task("faces", faces)
    (faces / "val200.txt").unlink()
    with pytest.raises(AdaptbenchError, match="val200.txt does not exist; expected the VTAB-1k layout"):
        verify_micro_task("faces", faces)


def test_a_generator_that_drifts_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(MICRO_TASKS, "faces", replace(MICRO_TASKS["faces"], checksum="0" * 64))
    with pytest.raises(AdaptbenchError, match="expected 0{64}, got"):
        ensure_micro_task("faces", tmp_path)
    assert list((tmp_path / "micro" / "v1").iterdir()) == []


# -- atomic publication ----------------------------------------------------------------------


def test_no_staging_folder_is_left_behind(faces):
    assert sorted(p.name for p in faces.parent.iterdir()) == ["faces"]


def test_staging_folders_of_killed_runs_are_removed(tmp_path):
    # A running build holds the parent folder's lock, so the next builder, once it has the
    # lock, knows every staging folder it meets was left by a killed one, however recent.
    parent = micro.micro_task_folder("faces", tmp_path).parent
    killed, just_killed = parent / ".faces.tmp-killed", parent / ".faces.tmp-just-killed"
    for staging in (killed, just_killed):
        (staging / "images").mkdir(parents=True)
    os.utime(killed, (time.time() - 2 * 3600,) * 2)
    ensure_micro_task("faces", tmp_path)
    assert not killed.exists() and not just_killed.exists()


def test_a_half_written_task_is_replaced(faces):
    (faces / micro.COMPLETE_MARKER).unlink()  # as if an older, non-atomic writer was killed
    (faces / "test.txt").unlink()
    again = ensure_micro_task("faces", faces.parent.parent.parent)
    assert again == faces and (faces / "test.txt").is_file()
    verify_micro_task("faces", faces)
    assert sorted(p.name for p in faces.parent.iterdir()) == ["faces"]


def test_a_task_from_older_generators_is_replaced(faces):
    (faces / micro.COMPLETE_MARKER).write_text("f" * 64)  # made by code with another checksum
    (faces / "stale").write_text("from an older version")
    ensure_micro_task("faces", faces.parent.parent.parent)
    assert not (faces / "stale").exists()
    assert (faces / micro.COMPLETE_MARKER).read_text() == MICRO_TASKS["faces"].checksum


def test_when_another_process_wins_the_race_its_folder_is_kept(tmp_path, monkeypatch):
    real_write = micro.write_task
    final = micro.micro_task_folder("faces", tmp_path)

    def write_while_another_process_publishes(task, staging):
        real_write(task, staging)
        # Meanwhile another process publishes its whole folder at the final path.
        shutil.copytree(staging, final)
        (final / micro.COMPLETE_MARKER).write_text(task.checksum)
        (final / "winner").write_text("")

    monkeypatch.setattr(micro, "write_task", write_while_another_process_publishes)
    assert ensure_micro_task("faces", tmp_path) == final
    assert (final / "winner").is_file(), "the folder that was there first must stay"
    assert sorted(p.name for p in final.parent.iterdir()) == ["faces"]


def test_concurrent_generation_gives_one_whole_task(tmp_path):
    results, errors = [], []

    def generate():
        try:
            results.append(ensure_micro_task("faces", tmp_path))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=generate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(results)) == 1
    verify_micro_task("faces", results[0])
    assert sorted(p.name for p in results[0].parent.iterdir()) == ["faces"]
