"""CoOp's on-disk format (``datasets/coop.py``), on tiny datasets written here into the real
layouts: ``split_zhou_*.json`` beside an image folder, FGVC-Aircraft's variant lists and
ImageNet's class folders, read back through ``task_samples`` / ``task_class_names``.

Every bad-input case checks the promise of ``adaptbench.errors``: one line naming the file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from adaptbench.datasets.formats import COOP_DATASETS, SPLITS
from adaptbench.datasets.images import check_images_exist, load_rgb
from adaptbench.tasks.catalog import TaskSpec, builtin_task_specs
from adaptbench.tasks.samples import data_root_of, task_class_names, task_samples
from helpers import raises_one_line

EUROSAT = ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road", "Industrial Buildings",
           "Pasture Land", "Permanent Crop Land", "Residential Buildings", "River", "Sea or Lake"]


# -- helpers -------------------------------------------------------------------------------
def png(path: Path, value: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 5), (value, value, value)).save(path)
    return path


def coop(key: str, **changes) -> TaskSpec:
    spec = {spec.name: spec for spec in builtin_task_specs()}[f"coop/{key}"]
    return replace(spec, **changes)


def zhou(root: Path, key: str, split: dict, images: bool = True) -> Path:
    """A split_zhou dataset of catalogue key ``key``: its json, and a PNG for every entry."""
    folder, image_folder, split_file, *_ = COOP_DATASETS[key]
    base = root / folder
    base.mkdir(parents=True, exist_ok=True)
    if images:
        for entries in split.values():
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, list) and entry and isinstance(entry[0], str) and entry[0]:
                    png(base / image_folder / entry[0])
    (base / split_file).write_text(json.dumps(split))
    return base / split_file


def eurosat_split(per_class: int = 1) -> dict:
    """Every class in every split, CoOp's entry form ``[path, label, class name]``."""
    def entries(split: str) -> list:
        return [[f"{name.replace(' ', '')}/{split}_{i}.png", label, name]
                for label, name in enumerate(EUROSAT) for i in range(per_class)]
    return {"train": entries("train"), "val": entries("val"), "test": entries("test")}


# -- tables and catalogue ----------------------------------------------------------------------
def test_the_tables_hold_coops_eleven_datasets():
    assert SPLITS["coop"] == ("train", "val", "train", "test")
    assert list(COOP_DATASETS) == ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers",
                                   "food101", "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"]
    counts = {key: entry[3] for key, entry in COOP_DATASETS.items()}
    assert counts == {"imagenet": 1000, "caltech101": 100, "oxford_pets": 37, "stanford_cars": 196,
                      "oxford_flowers": 102, "food101": 101, "fgvc_aircraft": 100, "sun397": 397, "dtd": 47,
                      "eurosat": 10, "ucf101": 101}
    assert COOP_DATASETS["oxford_pets"][:3] == ("oxford_pets", "images", "split_zhou_OxfordPets.json")
    assert COOP_DATASETS["dtd"][:3] == ("dtd", "images", "split_zhou_DescribableTextures.json")
    assert COOP_DATASETS["caltech101"][:3] == ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json")
    assert COOP_DATASETS["stanford_cars"][1] == ""  # paths are relative to the dataset folder itself


def test_the_catalogue_has_a_coop_task_per_dataset():
    specs = {spec.name: spec for spec in builtin_task_specs() if spec.format == "coop"}
    assert sorted(specs) == sorted(f"coop/{key}" for key in COOP_DATASETS)
    for key, (folder, image_folder, split_file, classes, _, _) in COOP_DATASETS.items():
        spec = specs[f"coop/{key}"]
        assert (spec.kind, spec.dataset, spec.num_classes, spec.group) == ("classification", folder, classes, "coop")
        assert spec.splits == ("train", "val", "train", "test")
        assert spec.options["image_folder"] == image_folder and spec.options["split_file"] == split_file
        assert spec.class_names == ()  # named by the data
        assert spec.templates and all(template.count("{}") == 1 for template in spec.templates)
    assert specs["coop/oxford_pets"].templates == ("a photo of a {}, a type of pet.",)
    assert specs["coop/imagenet"].options["layout"] == "imagenet"


def test_the_reader_imports_neither_torch_nor_numpy():
    code = ("import sys; import adaptbench.tasks.samples, adaptbench.datasets.coop, adaptbench.datasets.prompts; "
            "from adaptbench.tasks.catalog import builtin_task_specs; builtin_task_specs(); "
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- split_zhou ------------------------------------------------------------------------------
def test_a_split_zhou_dataset_reads_back_through_the_task(tmp_path):
    zhou(tmp_path, "eurosat", eurosat_split(per_class=2))
    spec = coop("eurosat")
    base = tmp_path / "eurosat" / "2750"
    train = task_samples(spec, "train", tmp_path)
    assert len(train) == 20
    assert train[0] == (base / "AnnualCropLand/train_0.png", 0)
    assert train[-1] == (base / "SeaorLake/train_1.png", 9)
    assert train.where[3] == f"{tmp_path / 'eurosat/split_zhou_EuroSAT.json'}: train[3]"
    for split in spec.splits:
        samples = task_samples(spec, split, tmp_path)
        check_images_exist(samples)  # the paths point at the written images
        assert sorted({label for _, label in samples}) == list(range(10))
    assert load_rgb(task_samples(spec, "test", tmp_path)[4][0]).size == (6, 5)
    assert task_class_names(spec, tmp_path) == tuple(EUROSAT)


def test_class_names_follow_the_labels_not_the_file_order(tmp_path):
    split = {"train": [["b/1.png", 1, "bee"], ["a/1.png", 0, "ant"], ["c/1.png", 2, "cat"]],
             "val": [["a/2.png", 0, "ant"]], "test": [["c/3.png", 2, "cat"]]}
    zhou(tmp_path, "dtd", split)
    spec = coop("dtd", num_classes=3)
    assert task_class_names(spec, tmp_path) == ("ant", "bee", "cat")
    assert [label for _, label in task_samples(spec, "train", tmp_path)] == [1, 0, 2]  # the file's order


def test_stanford_cars_paths_are_relative_to_the_dataset_folder(tmp_path):
    split = {key: [[f"cars_{key}/0001.jpg", 0, "AM General Hummer SUV 2000"]] for key in ("train", "val", "test")}
    zhou(tmp_path, "stanford_cars", split)
    spec = coop("stanford_cars", num_classes=1)
    assert task_samples(spec, "test", tmp_path)[0] == (tmp_path / "stanford_cars/cars_test/0001.jpg", 0)


def test_a_missing_image_is_named_with_its_entry(tmp_path):
    path = zhou(tmp_path, "eurosat", eurosat_split(), images=False)
    (tmp_path / "eurosat/2750").mkdir()
    with raises_one_line("does not exist", path) as info:
        check_images_exist(task_samples(coop("eurosat"), "val", tmp_path))
    assert "val[0]" in str(info.value)


BAD_SPLITS = {
    "one label, two names": (
        {"train": [["a/1.png", 0, "ant"], ["a/2.png", 0, "anthill"]]},
        r"train\[1\] names label 0 'anthill', but train\[0\] names it 'ant'; expected one class name per label"),
    "one name, two labels": (
        {"train": [["a/1.png", 0, "ant"]], "val": [["a/2.png", 1, "ant"]]},
        r"val\[0\] gives class 'ant' label 1, but train\[0\] gives it label 0; expected one label per class name"),
    "label too large": ({"test": [["a/1.png", 3, "ant"]]}, r"test\[0\]: label 3 is outside 0\.\.2"),
    "negative label": ({"val": [["a/1.png", -1, "ant"]]}, r"val\[0\]: label -1 is outside 0\.\.2"),
    "label as text": ({"train": [["a/1.png", "0", "ant"]]}, r"train\[0\] is \['a/1.png', '0', 'ant'\]; expected"),
    "label as bool": ({"train": [["a/1.png", True, "ant"]]}, r"train\[0\] is .*; expected \[\"<image path>\""),
    "two fields": ({"train": [["a/1.png", 0]]}, r"train\[0\] is \['a/1.png', 0\]; expected"),
    "not a list": ({"val": ["a/1.png 0 ant"]}, r"val\[0\] is 'a/1.png 0 ant'; expected"),
    "empty path": ({"train": [["", 0, "ant"]]}, r"train\[0\] is \['', 0, 'ant'\]; expected"),
    "empty name": ({"train": [["a/1.png", 0, " "]]}, r"train\[0\] is .*non-empty class name"),
    "empty split": ({"val": []}, r"split 'val' is empty; expected at least one entry"),
    "split not a list": ({"test": {"a/1.png": 0}}, r"'test' holds \{'a/1.png': 0\}; expected a list of"),
    "test image in train": ({"test": [["a/train.png", 0, "ant"]]},
                            r"test\[0\] lists 'a/train.png', which train\[0\] lists too; expected train, val and "
                            r"test to share no image"),
}


@pytest.mark.parametrize("case", list(BAD_SPLITS))
def test_bad_split_files_are_one_line_naming_the_file(tmp_path, case):
    change, match = BAD_SPLITS[case]
    split = {key: [[f"a/{key}.png", 0, "ant"]] for key in ("train", "val", "test")}
    split.update(change)
    path = zhou(tmp_path, "dtd", split)
    with raises_one_line(match, path):
        task_samples(coop("dtd", num_classes=3), "train", tmp_path)


def test_a_missing_split_key_is_named(tmp_path):
    path = zhou(tmp_path, "dtd", {"train": [["a/1.png", 0, "ant"]], "val": [["a/2.png", 0, "ant"]]})
    with raises_one_line(r"no 'test' key \(keys: \['train', 'val'\]\); expected the keys 'train', 'val' and 'test'",
                         path):
        task_samples(coop("dtd", num_classes=1), "train", tmp_path)


@pytest.mark.parametrize("text, match", [("", "is empty"), ("[1, 2]", "holds a JSON list; expected an object"),
                                         ('{"train": [}', r":1: invalid JSON")])
def test_a_split_file_that_is_not_a_json_object_is_named(tmp_path, text, match):
    path = zhou(tmp_path, "dtd", {})
    path.write_text(text)
    (path.parent / "images").mkdir()
    with raises_one_line(match, path):
        task_samples(coop("dtd"), "val", tmp_path)


def test_a_label_without_a_name_is_an_error_of_class_names(tmp_path):
    path = zhou(tmp_path, "dtd", {key: [[f"a/{key}.png", 0, "ant"]] for key in ("train", "val", "test")})
    with raises_one_line(r"label\(s\) \[1, 2\] occur in no split.*expected every label of 0\.\.2", path):
        task_class_names(coop("dtd", num_classes=3), tmp_path)


def test_missing_folders_and_files_name_the_expected_layout(tmp_path):
    spec = coop("oxford_pets")
    layout = "split_zhou_OxfordPets.json = {\"train\": [[\"<image path>\", <label>, \"<class name>\"]"
    with raises_one_line("CoOp dataset folder .* does not exist; expected", tmp_path / "oxford_pets") as info:
        task_samples(spec, "train", tmp_path)
    assert layout in str(info.value)
    (tmp_path / "oxford_pets").mkdir()
    with raises_one_line("image folder .* does not exist; expected", tmp_path / "oxford_pets/images") as info:
        task_samples(spec, "train", tmp_path)
    assert layout in str(info.value) and "relative to <root>/oxford_pets/images/" in str(info.value)
    (tmp_path / "oxford_pets/images").mkdir()
    with raises_one_line("split file .* does not exist; expected the CoOp layout",
                         tmp_path / "oxford_pets/split_zhou_OxfordPets.json"):
        task_samples(spec, "train", tmp_path)
    with raises_one_line("pass --data-root", "oxford_pets/split_zhou_OxfordPets.json"):
        data_root_of(spec, None)


def test_an_unknown_split_or_layout_is_named(tmp_path):
    with raises_one_line(r"unknown CoOp split 'trainval'.*expected one of train, val, test", "trainval"):
        task_samples(coop("dtd"), "trainval", tmp_path)
    with raises_one_line(r"unknown CoOp layout 'imagent'.*did you mean 'imagenet'", "imagent"):
        task_samples(coop("dtd", options={"layout": "imagent"}), "train", tmp_path)


# -- FGVC-Aircraft: variants.txt and images_variant_*.txt ---------------------------------------
VARIANTS = ["707-320", "A300B4", "Cessna 172"]


def aircraft(root: Path, lists: dict[str, list[str]], variants: list[str] = VARIANTS) -> Path:
    base = root / "fgvc_aircraft"
    base.mkdir(parents=True)
    (base / "variants.txt").write_text("\n".join(variants) + "\n")
    for split, lines in lists.items():
        (base / f"images_variant_{split}.txt").write_text("".join(f"{line}\n" for line in lines))
        for line in lines:
            png(base / "images" / f"{line.split(' ')[0]}.jpg")
    return base


def aircraft_lists() -> dict[str, list[str]]:
    return {"train": ["1025794 707-320", "1340192 Cessna 172", "0056978 A300B4"],
            "val": ["1500001 A300B4"], "test": ["2000002 Cessna 172", "2000003 707-320"]}


def test_fgvc_aircraft_reads_its_variant_lists(tmp_path):
    base = aircraft(tmp_path, aircraft_lists())
    spec = coop("fgvc_aircraft", num_classes=3)
    train = task_samples(spec, "train", tmp_path)
    assert list(train) == [(base / "images/1025794.jpg", 0), (base / "images/1340192.jpg", 2),
                           (base / "images/0056978.jpg", 1)]
    assert train.where[1] == f"{base / 'images_variant_train.txt'}:2"
    assert [label for _, label in task_samples(spec, "test", tmp_path)] == [2, 0]
    check_images_exist(task_samples(spec, "val", tmp_path))
    assert task_class_names(spec, tmp_path) == tuple(VARIANTS)


def test_fgvc_aircraft_bad_lists_are_one_line(tmp_path):
    lists = aircraft_lists()
    lists["val"] = ["1500001 A300B4", "1500002 Cessna 17"]
    lists["test"] = ["2000002"]
    base = aircraft(tmp_path, lists)
    spec = coop("fgvc_aircraft", num_classes=3)
    with raises_one_line(r":2: variant 'Cessna 17' is not in .*variants.txt \(did you mean 'Cessna 172'",
                         base / "images_variant_val.txt"):
        task_samples(spec, "val", tmp_path)
    with raises_one_line(r":1: got '2000002'; expected '<image id> <variant>'", base / "images_variant_test.txt"):
        task_samples(spec, "test", tmp_path)
    with raises_one_line("lists 3 variants; expected 100", base / "variants.txt"):
        task_class_names(coop("fgvc_aircraft"), tmp_path)
    (base / "variants.txt").write_text("707-320\nA300B4\n707-320\n")
    with raises_one_line(r":3: variant '707-320' is listed again \(first at line 1\)", base / "variants.txt"):
        task_class_names(spec, tmp_path)
    (base / "images_variant_train.txt").unlink()
    (base / "variants.txt").write_text("\n".join(VARIANTS))
    with raises_one_line("split list .* does not exist; expected .*images_variant_",
                         base / "images_variant_train.txt"):
        task_samples(spec, "train", tmp_path)


# -- ImageNet: class folders and classnames.txt ----------------------------------------------------
WNIDS = {"n01443537": "goldfish", "n01440764": "tench", "n01484850": "great white shark"}


def imagenet(root: Path, train_per_class: int = 4, val_per_class: int = 2) -> Path:
    base = root / "imagenet"
    for wnid in WNIDS:
        for i in range(train_per_class):
            png(base / "images/train" / wnid / f"{wnid}_{i}.JPEG")
        for i in range(val_per_class):
            png(base / "images/val" / wnid / f"ILSVRC2012_val_{wnid}_{i}.JPEG")
    base.joinpath("classnames.txt").write_text("".join(f"{wnid} {name}\n" for wnid, name in WNIDS.items()))
    return base


def imagenet_spec(per_class: int = 1) -> TaskSpec:
    spec = coop("imagenet", num_classes=3)
    return replace(spec, options={**spec.options, "tune_val_per_class": per_class})


def test_imagenet_labels_follow_sorted_wnids_and_val_is_held_out_of_train(tmp_path):
    base = imagenet(tmp_path)
    spec = imagenet_spec()
    assert task_class_names(spec, tmp_path) == ("tench", "goldfish", "great white shark")  # sorted wnids
    train, val, test = (task_samples(spec, split, tmp_path) for split in ("train", "val", "test"))
    assert sorted(label for _, label in val) == [0, 1, 2]  # one per class
    assert len(train) == 9 and not set(train) & set(val)
    everything = sorted(str(path) for path in (base / "images/train").rglob("*.JPEG"))
    assert sorted(str(path) for path, _ in list(train) + list(val)) == everything
    assert all(path.parent.name == sorted(WNIDS)[label] for path, label in list(train) + list(val) + list(test))
    assert {path.parent.parent for path, _ in test} == {base / "images/val"} and len(test) == 6
    assert list(task_samples(spec, "val", tmp_path)) == list(val)  # seeded: the same every time
    assert coop("imagenet").options["tune_val_per_class"] == 10


def test_imagenet_bad_layouts_are_one_line(tmp_path):
    base = imagenet(tmp_path, train_per_class=2)
    spec = imagenet_spec(per_class=2)
    with raises_one_line("holds 2 image.*too few to hold out 2 for the tune split 'val'",
                         base / "images/train/n01440764"):
        task_samples(spec, "train", tmp_path)
    for folder in (base / "images/val").iterdir():  # ImageNet's val as shipped: flat
        for image in folder.iterdir():
            image.rename(base / "images/val" / image.name)
        folder.rmdir()
    with raises_one_line("holds images directly .* and no class folder; expected", base / "images/val"):
        task_samples(spec, "test", tmp_path)
    (base / "images/train/n01440765").mkdir()
    with raises_one_line(r"is not listed in .*classnames.txt \(did you mean 'n01440764'",
                         base / "images/train/n01440765"):
        task_samples(spec, "train", tmp_path)
    (base / "images/train/n01440765").rmdir()
    (base / "images/train/n01484850/n01484850_0.JPEG").unlink()
    (base / "images/train/n01484850/n01484850_1.JPEG").unlink()
    with raises_one_line("holds no image; expected at least one", base / "images/train/n01484850"):
        task_samples(spec, "train", tmp_path)
    (base / "images/train/n01484850").rmdir()
    with raises_one_line("does not exist; expected a folder for each of the 3 classes",
                         base / "images/train/n01484850"):
        task_samples(spec, "train", tmp_path)


@pytest.mark.parametrize("text, match", [
    ("n01440764 tench\nn01443537\n", r":2: got 'n01443537'; expected '<wnid> <class name>'"),
    ("n01440764 tench\nn01440764 tinca\nn01443537 goldfish\n", r":2: wnid 'n01440764' is listed again"),
    ("n01440764 tench\n", "lists 1 classes; expected 3"),
    ("n01440764 tench\n\nn01443537 goldfish\nn01484850 shark\n", r":2: blank line"),
])
def test_imagenet_bad_class_lists_are_one_line(tmp_path, text, match):
    base = imagenet(tmp_path)
    (base / "classnames.txt").write_text(text)
    with raises_one_line(match, base / "classnames.txt"):
        task_class_names(imagenet_spec(), tmp_path)
