"""The on-disk formats' fixed facts: folder names, class counts (and names) and split names.

These are facts about the data as the community dumps ship it (see DESIGN.md, "Data
formats"), so they belong to the readers (``vtab.py``, ``fgvc.py``, ``coop.py``, ``mmseg.py``,
``mask_folders.py``); the task catalogue
(``adaptbench.tasks.catalog``) builds its task specifications from them. Tasks depend on
datasets, never the reverse. This module is plain data, with no torch and no numpy, so
``adaptbench ls`` and spec parsing stay light.
"""

from __future__ import annotations

__all__ = ["COOP_DATASETS", "FGVC_DATASETS", "FGVC_SPLITS", "SEG_CLASS_NAMES", "SEG_DATASETS", "SPLITS",
           "VIDEO_DATASETS", "VTAB1K_TASKS", "VTAB_SPLITS"]

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
    # CoOp's split files ship disjoint train / val / test: tune on val, then train on train again
    # (few-shot runs draw their K per class from it) and test once
    "coop": ("train", "val", "train", "test"),
    # mmseg layouts ship train and val only: the tune pair is a seeded held-out part of
    # train (``mmseg.py``), so val is read once, by the final run
    "mmseg": ("tune_train", "tune_val", "train", "val"),
    "mask_folders": ("train", "val", "trainval", "test"),
    # the video lists ship train and val only (val is the reported split): tuned as mmseg is,
    # on a seeded held-out part of train (``video.py``); the micro video tasks ship all four
    "mmaction_video": ("tune_train", "tune_val", "train", "val"),
    "mmaction_rawframes": ("tune_train", "tune_val", "train", "val"),
    "ssv2": ("tune_train", "tune_val", "train", "val"),
    "vpetl_csv": ("tune_train", "tune_val", "train", "val"),
    "micro_video": ("train", "val", "trainval", "test"),
}

#: CoOp key -> (folder, image sub-folder, split file, number of classes, group, options), as
#: KaiyangZhou/CoOp's DATASETS.md and ``datasets/*.py`` lay them out. Image paths in a split
#: file are relative to the image sub-folder ("": the dataset folder itself). ``options``:
#: ``layout`` where the data ship no ``split_zhou_*.json`` (``coop.py``): FGVC-Aircraft's
#: ``images_variant_*.txt`` lists, ImageNet's class folders (its ``tune_val_per_class``).
#: Caltech101 has 100 classes: CoOp drops BACKGROUND_Google and Faces_easy.
COOP_DATASETS: dict[str, tuple[str, str, str, int, str, dict]] = {
    "imagenet": ("imagenet", "images", "classnames.txt", 1000, "coop",
                 {"layout": "imagenet", "tune_val_per_class": 10}),
    "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", 100, "coop", {}),
    "oxford_pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json", 37, "coop", {}),
    "stanford_cars": ("stanford_cars", "", "split_zhou_StanfordCars.json", 196, "coop", {}),
    "oxford_flowers": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", 102, "coop", {}),
    "food101": ("food-101", "images", "split_zhou_Food101.json", 101, "coop", {}),
    "fgvc_aircraft": ("fgvc_aircraft", "images", "variants.txt", 100, "coop", {"layout": "fgvc_aircraft"}),
    "sun397": ("sun397", "SUN397", "split_zhou_SUN397.json", 397, "coop", {}),
    "dtd": ("dtd", "images", "split_zhou_DescribableTextures.json", 47, "coop", {}),
    "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json", 10, "coop", {}),
    "ucf101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", 101, "coop", {}),
}

VTAB_SPLITS: tuple[str, ...] = SPLITS["vtab1k"]
FGVC_SPLITS: tuple[str, ...] = SPLITS["fgvc"]

#: Segmentation key -> (benchmark, format, folder under the data root, number of classes,
#: group, options). ``options`` are the dataset's facts that its reader and mask field read:
#: ``variant`` (which mmseg folder names, see ``mmseg.py``), file suffixes,
#: ``reduce_zero_label`` (mmseg's: label 0 is "other", ignored; class k is stored as k + 1),
#: ``binary`` (a foreground mask, thresholded) and the kind's ``primary_metric``.
SEG_DATASETS: dict[str, tuple[str, str, str, int, str, dict]] = {
    "ade20k": ("seg", "mmseg", "ADEChallengeData2016", 150, "ade20k",
               {"variant": "ade20k", "reduce_zero_label": True, "img_suffix": ".jpg", "seg_map_suffix": ".png"}),
    "voc2012": ("seg", "mmseg", "VOCdevkit/VOC2012", 21, "voc",
                {"variant": "voc", "reduce_zero_label": False, "img_suffix": ".jpg", "seg_map_suffix": ".png"}),
    "kvasir_seg": ("medseg", "mask_folders", "Kvasir-SEG", 2, "medical",
                   {"binary": True, "image_suffix": ".jpg", "mask_suffix": ".jpg", "primary_metric": "dice"}),
}

#: Per-class names, in label order. ADE20K's are mmseg's ``ADE20KDataset`` METAINFO classes,
#: verbatim (including its 'bed ' with a trailing space), so per-class tables line up with
#: mmseg's; VOC's are mmseg's ``PascalVOCDataset`` classes.
SEG_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "ade20k": (
        "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed ", "windowpane", "grass",
        "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
        "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
        "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
        "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
        "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
        "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
        "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair",
        "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
        "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole",
        "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship",
        "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
        "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
        "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
        "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
        "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
    ),
    "voc2012": (
        "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
        "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
        "tvmonitor",
    ),
    "kvasir_seg": ("background", "polyp"),
}

#: Video key -> (benchmark, format, folder under the data root, number of classes, group,
#: options), the layouts of mmaction2's ``tools/data`` (``data/sthv2``, ``data/hmdb51``,
#: ``data/kinetics400``) and V-PETL's CSV folders. ``options`` hold the reader's keys
#: (``video.py``: ``lists``, ``videos_folder``, ``frames_folder``, ``labels``, ``video_suffix``)
#: and the anchor's sampling protocol, which the video kind reads:
#:
#: * ``num_frames`` T, ``sampling`` "uniform" (TSN: T equal segments, a frame from each) or
#:   "dense" (T frames ``stride`` apart); ``positions``: uniform, cached frames per segment
#:   (temporal jitter draws among them); dense, start positions of the T-frame window;
#: * ``test_clips`` x ``test_crops`` views at test time; ``aspect``: width / height of the
#:   cached frames (4:3, the 320x240 of HMDB51 and most SSv2 videos, K400's 340x256; room for
#:   three crops along the long side); ``flip``: horizontal flips in training (never for SSv2,
#:   whose classes say left and right: AIM's ``Flip(flip_ratio=0)``, ST-Adapter without
#:   ``--mirror``, V-PETL's ``random_horizontal_flip=False if SSV2``).
#:
#: Sources: ST-Adapter ``scripts/train_ssv2_*.sh`` (8 frames, ``--sampling_rate 0`` = TSN
#: uniform, 3 spatial x 1 temporal views) and ``scripts/train_k400_*.sh`` (8 frames at stride
#: 16, 1 spatial x 3 temporal views, ``--mirror``); AIM ``configs/recognition/vit/
#: vitclip_base_sthv2.py`` (8 frames ``frame_uniform``, test 1 clip x ``ThreeCrop``); ZeroI2V
#: ``vit_zero_base_clip_hmdb51_u32_split1.py`` (``RawframeDataset`` split 1, ``UniformSample``
#: 32 frames, test 2 clips x ``ThreeCrop``, ``Flip(0.5)``); V-PETL ``train/train_model_*.py``
#: (8 frames, ``sampling_rate`` 4, test 4 segments x 3 crops) and ``dataloader/kinetics.py``.
#: HMDB51 keeps 2 positions per segment: 32 x 4 frames would exceed most of its ~3 s clips.
_CLIP_UNIFORM_8 = {"num_frames": 8, "sampling": "uniform", "stride": 1, "positions": 4,
                   "test_clips": 1, "test_crops": 3, "aspect": 4 / 3}
_VPETL_DENSE_8 = {"num_frames": 8, "sampling": "dense", "stride": 4, "positions": 4,
                  "test_clips": 4, "test_crops": 3, "aspect": 4 / 3}
VIDEO_DATASETS: dict[str, tuple[str, str, str, int, str, dict]] = {
    "ssv2": ("video", "ssv2", "sthv2", 174, "clip_video",
             {"labels": "annotations/something-something-v2-labels.json",
              "lists": {"train": "annotations/something-something-v2-train.json",
                        "val": "annotations/something-something-v2-validation.json"},
              "videos_folder": "videos", "video_suffix": ".webm",
              **_CLIP_UNIFORM_8, "flip": False}),
    "hmdb51": ("video", "mmaction_rawframes", "hmdb51", 51, "clip_video",
               {"lists": {"train": "hmdb51_train_split_1_rawframes.txt", "val": "hmdb51_val_split_1_rawframes.txt"},
                "frames_folder": "rawframes",
                "num_frames": 32, "sampling": "uniform", "stride": 1, "positions": 2,
                "test_clips": 2, "test_crops": 3, "aspect": 4 / 3, "flip": True}),
    "k400": ("video", "mmaction_video", "kinetics400", 400, "clip_video",
             {"lists": {"train": "kinetics400_train_list_videos.txt", "val": "kinetics400_val_list_videos.txt"},
              "videos_folder": {"train": "videos_train", "val": "videos_val"},
              "num_frames": 8, "sampling": "dense", "stride": 16, "positions": 4,
              "test_clips": 3, "test_crops": 1, "aspect": 4 / 3, "flip": True}),
    "vpetl/ssv2": ("video", "vpetl_csv", "vpetl/ssv2", 174, "vpetl",
                   {"lists": {"train": "train.csv", "val": "val.csv"}, **_VPETL_DENSE_8, "flip": False}),
    "vpetl/hmdb51": ("video", "vpetl_csv", "vpetl/hmdb51", 51, "vpetl",
                     {"lists": {"train": "train.csv", "val": "val.csv"}, **_VPETL_DENSE_8, "flip": True}),
}
