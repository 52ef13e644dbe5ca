"""The on-disk formats' fixed facts: VTAB-1k / FGVC folder names, class counts and split names.

These are facts about the data as the community dumps ship it (see DESIGN.md, "Data
formats"), so they belong to the readers (``vtab.py``, ``fgvc.py``); the task catalogue
(``adaptbench.tasks.catalog``) builds its task specifications from them. Tasks depend on
datasets, never the reverse. This module is plain data, with no torch and no numpy, so
``adaptbench ls`` and spec parsing stay light.
"""

from __future__ import annotations

__all__ = ["FGVC_DATASETS", "FGVC_SPLITS", "SPLITS", "VTAB1K_TASKS", "VTAB_SPLITS"]

#: VTAB-1k folder -> (group, number of classes), NOAH's layout.
VTAB1K_TASKS: dict[str, tuple[str, int]] = {
    "cifar": ("natural", 100),
    "caltech101": ("natural", 102),
    "dtd": ("natural", 47),
    "oxford_flowers102": ("natural", 102),
    "oxford_iiit_pet": ("natural", 37),
    "svhn": ("natural", 10),
    "sun397": ("natural", 397),
    "patch_camelyon": ("specialized", 2),
    "eurosat": ("specialized", 10),
    "resisc45": ("specialized", 45),
    "diabetic_retinopathy": ("specialized", 5),
    "clevr_count": ("structured", 8),
    "clevr_dist": ("structured", 6),
    "dmlab": ("structured", 6),
    "kitti": ("structured", 4),
    "dsprites_loc": ("structured", 16),
    "dsprites_ori": ("structured", 16),
    "smallnorb_azi": ("structured", 18),
    "smallnorb_ele": ("structured", 9),
}

#: FGVC key -> (folder, image sub-folder, number of classes), VPT's json layout.
FGVC_DATASETS: dict[str, tuple[str, str, int]] = {
    "cub": ("CUB_200_2011", "images", 200),
    "nabirds": ("nabirds", "images", 555),
    "stanford_dogs": ("Stanford-dogs", "Images", 120),
    "stanford_cars": ("Stanford-cars", "", 196),
    "oxford_flowers": ("OxfordFlower", "", 102),
}

#: The protocol's split pairs, per format: (tune-train, tune-eval, final-train, final-eval).
SPLITS: dict[str, tuple[str, str, str, str]] = {
    "vtab1k": ("train800", "val200", "train800val200", "test"),
    "fgvc": ("train", "val", "trainval", "test"),
}

VTAB_SPLITS: tuple[str, ...] = SPLITS["vtab1k"]
FGVC_SPLITS: tuple[str, ...] = SPLITS["fgvc"]
