"""Class names and prompt templates: the package data (``datasets/_prompts/*.json``), their
checks (``datasets/prompts.py``), their wiring into the catalogue, and the FGVC reader's class
names from the datasets' own files (CUB's and Stanford Dogs' folders, NABirds' classes.txt).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from adaptbench.datasets.formats import COOP_DATASETS, FGVC_DATASETS, VTAB1K_TASKS
from adaptbench.datasets.prompts import BENCHMARKS, class_names_for, prompts_of, read_prompts, templates_for
from adaptbench.tasks.catalog import TaskSpec, builtin_task_specs
from adaptbench.tasks.samples import task_class_names, task_samples
from helpers import raises_one_line

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None

PROMPTS = Path(__file__).parents[1] / "adaptbench" / "datasets" / "_prompts"


def specs() -> dict[str, TaskSpec]:
    return {spec.name: spec for spec in builtin_task_specs()}


# -- the data files ------------------------------------------------------------------------------
def test_every_benchmark_dataset_has_templates_and_the_right_class_count():
    assert set(BENCHMARKS) == {"vtab1k", "fgvc", "coop"}
    counts = {"vtab1k": {key: classes for key, (_, classes) in VTAB1K_TASKS.items()},
              "fgvc": {key: entry[2] for key, entry in FGVC_DATASETS.items()},
              "coop": {key: entry[3] for key, entry in COOP_DATASETS.items()}}
    for benchmark, classes in counts.items():
        table = prompts_of(benchmark)
        assert list(table) == list(classes), benchmark
        for key, prompts in table.items():
            assert prompts.templates, (benchmark, key)
            for template in prompts.templates:
                assert template.count("{}") == 1 and template.count("{") == 1, (benchmark, key, template)
                assert "ant" in template.format("ant")
            assert prompts.source
            if prompts.classes:
                assert len(prompts.classes) == classes[key] == len(set(prompts.classes)), (benchmark, key)
    # every VTAB-1k task is named; on FGVC only Oxford Flowers (the others: from the data, or nowhere)
    assert all(class_names_for("vtab1k", key) for key in VTAB1K_TASKS)
    assert [key for key in FGVC_DATASETS if class_names_for("fgvc", key)] == ["oxford_flowers"]
    assert not any(class_names_for("coop", key) for key in COOP_DATASETS)


def test_known_names_in_tfds_label_order():
    names = {key: class_names_for("vtab1k", key) for key in VTAB1K_TASKS}
    assert names["svhn"][:3] == ("zero", "one", "two") and names["svhn"][9] == "nine"
    assert names["eurosat"][:2] == ("annual crop land", "forest") and names["eurosat"][9] == "lake or sea"
    assert names["dtd"][:3] == ("banded", "blotchy", "braided") and names["dtd"][-1] == "zigzagged"
    assert names["cifar"][:3] == ("apple", "aquarium fish", "baby") and names["cifar"][-1] == "worm"
    assert names["caltech101"][:5] == ("accordion", "airplane", "anchor", "ant", "background")
    assert names["oxford_iiit_pet"][:2] == ("Abyssinian", "American Bulldog")
    assert names["oxford_flowers102"][:2] == ("pink primrose", "hard-leaved pocket orchid")
    assert names["sun397"][:3] == ("abbey", "airplane cabin", "airport terminal")
    assert "apartment building outdoor" in names["sun397"]
    assert names["resisc45"][2] == "baseball diamond"
    assert names["patch_camelyon"] == ("lymph node", "lymph node containing metastatic tumor tissue")
    assert names["clevr_count"][0] == "three" and names["clevr_count"][-1] == "ten"  # label = count - 3
    assert names["smallnorb_azi"][:2] == ("0 degrees", "20 degrees") and names["smallnorb_azi"][-1] == "340 degrees"
    assert names["smallnorb_ele"][0] == "30 degrees" and names["smallnorb_ele"][-1] == "70 degrees"
    assert names["dsprites_loc"][0] == "2" and names["dsprites_loc"][-1] == "98"
    assert class_names_for("fgvc", "oxford_flowers") == names["oxford_flowers102"]


def test_known_templates():
    assert templates_for("vtab1k", "svhn")[0] == "a photo of the number {} written on a sign"
    assert templates_for("vtab1k", "eurosat")[0] == "a centered satellite photo of {}."
    assert len(templates_for("vtab1k", "caltech101")) == 34
    assert templates_for("coop", "dtd") == ("{} texture.",)
    assert templates_for("coop", "eurosat") == ("a centered satellite photo of {}.",)
    assert templates_for("coop", "imagenet") == ("a photo of a {}.",)
    assert templates_for("fgvc", "cub") == ("a photo of a {}, a type of bird.",)


def test_the_catalogue_carries_the_names_and_templates():
    tasks = specs()
    for folder, (_, classes) in VTAB1K_TASKS.items():
        spec = tasks[f"vtab1k/{folder}"]
        assert len(spec.class_names) == classes and spec.templates == templates_for("vtab1k", folder)
        assert task_class_names(spec, None) == spec.class_names  # no data root needed
    for key in FGVC_DATASETS:
        assert tasks[f"fgvc/{key}"].templates == templates_for("fgvc", key)
    assert len(tasks["fgvc/oxford_flowers"].class_names) == 102
    assert tasks["vtab1k/dtd"].class_names[0] == "banded"


def test_the_package_data_ships_the_json_files():
    for benchmark in BENCHMARKS:
        assert (PROMPTS / f"{benchmark}.json").is_file()
    if tomllib is not None:
        project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
        assert "_prompts/*.json" in project["tool"]["setuptools"]["package-data"]["adaptbench.datasets"]


# -- checks of a prompt file -----------------------------------------------------------------------
COUNTS = {"svhn": 3, "dtd": 2}


def prompt_file(tmp_path: Path, table: object) -> Path:
    path = tmp_path / "vtab1k.json"
    path.write_text(json.dumps(table))
    return path


@pytest.mark.parametrize("entry, match", [
    ({"templates": ["a photo of a {c}."]}, r"dataset 'svhn': template 'a photo of a \{c\}.' does not hold exactly one"),
    ({"templates": ["a photo."]}, r"dataset 'svhn': template 'a photo.' does not hold exactly one '\{\}'"),
    ({"templates": ["{} and {}"]}, r"template '\{\} and \{\}' does not hold exactly one"),
    ({"templates": []}, r"dataset 'svhn': templates is \[\]; expected a non-empty list"),
    ({"classes": ["zero", "one"], "templates": ["{}"]}, r"dataset 'svhn': 2 class names; expected 3"),
    ({"classes": ["zero", "one", "one"], "templates": ["{}"]}, r"class name 'one' is listed 2 times"),
    ({"classes": ["zero", 1, "two"], "templates": ["{}"]}, r"classes is .*; expected a list of strings"),
    ({"templates": ["{}"], "names": []}, r"dataset 'svhn': got \['names'\]; expected an object with the fields"),
])
def test_bad_entries_are_one_line_naming_the_file_and_key(tmp_path, entry, match):
    path = prompt_file(tmp_path, {"svhn": entry})
    with raises_one_line(match, path):
        read_prompts(path, COUNTS)


def test_unknown_keys_and_bad_json_are_one_line(tmp_path):
    path = prompt_file(tmp_path, {"svhm": {"templates": ["{}"]}})
    with raises_one_line(r"dataset 'svhm' is not a dataset of the benchmark \(did you mean 'svhn'", path):
        read_prompts(path, COUNTS)
    path.write_text('{"svhn": ')
    with raises_one_line(r":1: invalid JSON", path):
        read_prompts(path, COUNTS)
    assert read_prompts(prompt_file(tmp_path, {"dtd": {"templates": ["{} texture."]}}), COUNTS)["dtd"].classes == ()


def test_unknown_benchmarks_and_keys_are_named():
    with raises_one_line(r"no prompt data for benchmark 'vtab'.*did you mean 'vtab1k'", "vtab"):
        templates_for("vtab", "svhn")
    with raises_one_line(r"no prompts for vtab1k dataset 'cifar100'.*did you mean 'cifar'", "vtab1k.json"):
        class_names_for("vtab1k", "cifar100")


# -- FGVC class names from the datasets' own files ---------------------------------------------------
def fgvc(name: str, classes: int) -> TaskSpec:
    return replace(specs()[f"fgvc/{name}"], num_classes=classes)


def annotations(root: Path, folder: str, train: dict, split_files=("train", "val", "test")) -> Path:
    (root / folder).mkdir(parents=True, exist_ok=True)
    for split in split_files:
        (root / folder / f"{split}.json").write_text(json.dumps(train))
    return root / folder / "train.json"


def test_cub_and_dogs_are_named_by_their_class_folders(tmp_path):
    annotations(tmp_path, "CUB_200_2011", {"002.Laysan_Albatross/Laysan_Albatross_0002.jpg": 2,
                                           "001.Black_footed_Albatross/Black_Footed_Albatross_0001.jpg": 1,
                                           "001.Black_footed_Albatross/Black_Footed_Albatross_0046.jpg": 1})
    assert task_class_names(fgvc("cub", 2), tmp_path) == ("Black footed Albatross", "Laysan Albatross")
    annotations(tmp_path, "Stanford-dogs", {"n02085620-Chihuahua/n02085620_1.jpg": 0,
                                            "n02085782-Japanese_spaniel/n02085782_2.jpg": 1})
    assert task_class_names(fgvc("stanford_dogs", 2), tmp_path) == ("Chihuahua", "Japanese spaniel")
    assert task_samples(fgvc("stanford_dogs", 2), "train", tmp_path)[1][1] == 1


def test_nabirds_is_named_by_classes_txt(tmp_path):
    annotations(tmp_path, "nabirds", {"0817/a.jpg": 817, "0295/b.jpg": 295})
    (tmp_path / "nabirds/classes.txt").write_text("0 Birds\n295 Common Loon\n817 Oak Titmouse\n")
    assert task_class_names(fgvc("nabirds", 2), tmp_path) == ("Common Loon", "Oak Titmouse")
    (tmp_path / "nabirds/classes.txt").write_text("0 Birds\n295 Common Loon\n")
    with raises_one_line(r"class id 817 \(folder '0817' of .*train.json\) is not in", tmp_path / "nabirds/classes.txt"):
        task_class_names(fgvc("nabirds", 2), tmp_path)
    (tmp_path / "nabirds/classes.txt").write_text("0 Birds\nLoon\n")
    with raises_one_line(r":2: got 'Loon'; expected lines '<class id> <class name>'", tmp_path / "nabirds/classes.txt"):
        task_class_names(fgvc("nabirds", 2), tmp_path)


def test_fgvc_sets_whose_files_hold_no_names_have_none(tmp_path):
    assert task_class_names(specs()["fgvc/stanford_cars"], tmp_path) == ()
    assert len(task_class_names(specs()["fgvc/oxford_flowers"], tmp_path)) == 102  # the package data's


@pytest.mark.parametrize("train, match", [
    ({"001.Black_footed_Albatross/a.jpg": 1, "002.Laysan_Albatross/b.jpg": 1, "003.Sooty_Albatross/c.jpg": 3},
     r"class id 1 has image '002.Laysan_Albatross/b.jpg' in folder '002.Laysan_Albatross' and "
     r"'001.Black_footed_Albatross/a.jpg' in '001.Black_footed_Albatross'; expected the images of a class in one"),
    ({"001.Black_footed_Albatross/a.jpg": 1, "001.Black_footed_Albatross/b.jpg": 2},
     r"folder '001.Black_footed_Albatross' holds '001.Black_footed_Albatross/b.jpg' of class id 2 and .* of "
     r"class id 1; expected one class per folder"),
    ({"a.jpg": 1, "b.jpg": 2}, r"image 'a.jpg' is not in a class folder like '001.Black_footed_Albatross'"),
    ({"001.Black_footed_Albatross/a.jpg": 1}, r"1 distinct class ids; expected 2, to name every class"),
])
def test_inconsistent_class_folders_are_one_line(tmp_path, train, match):
    path = annotations(tmp_path, "CUB_200_2011", train)
    with raises_one_line(match, path):
        task_class_names(fgvc("cub", 2), tmp_path)
