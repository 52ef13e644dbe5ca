"""On-disk format readers, registered by format name (a task's ``format``).

A reader turns one split of one dataset into ``[(image path, label), ...]`` (segmentation:
``[(image path, mask path), ...]``), best a ``datasets.images.SampleList``, which remembers
the file and line of each sample for error messages, and says what layout it expects (for
the "pass --data-root" message). It only reads split lists and lists folders: it neither
opens images (their existence is checked once, when the
decode cache decodes the split) nor imports torch, so every split a run will read can be
checked before any backbone is built (fail fast). Plugins add formats with
``register_reader("myformat", MyReader)`` or an ``adaptbench.tasks`` entry point named
``reader.myformat``.

``version`` enters the run id of every run that reads through the reader: bump it when a
change alters which samples a split yields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ..registry import register_reader


class Reader:
    """Base of format readers: ``samples`` and ``layout`` (see the module docstring)."""

    version: ClassVar[int] = 1

    def samples(self, root: Path, spec: Any, split: str) -> list[tuple[Path, int]]:
        raise NotImplementedError

    def layout(self, spec: Any) -> str:
        """The expected files under the data root, for error messages."""
        raise NotImplementedError

    def class_names(self, root: Path, spec: Any) -> tuple[str, ...] | None:
        """Class names in label order when the data itself holds them (CoOp's split files),
        else None (the task's specification then names them, or nothing does)."""
        return None


class Vtab1kReader(Reader):
    """VTAB-1k in NOAH's layout: ``<root>/<task>/<split>.txt`` with lines ``images/<split>/x.jpg <label>``."""

    def samples(self, root: Path, spec: Any, split: str) -> list[tuple[Path, int]]:
        from .vtab import vtab_samples

        return vtab_samples(root, spec.dataset, split, spec.num_classes, check_files=False)

    def layout(self, spec: Any) -> str:
        return f"<root>/{spec.dataset}/{{train800,val200,train800val200,test}}.txt"


class FgvcReader(Reader):
    """FGVC in VPT's layout: ``<root>/<dataset folder>/{train,val,test}.json`` mapping image to label."""

    def samples(self, root: Path, spec: Any, split: str) -> list[tuple[Path, int]]:
        from .fgvc import fgvc_samples

        return fgvc_samples(root, spec.dataset, split, check_files=False)

    def layout(self, spec: Any) -> str:
        from .formats import FGVC_DATASETS

        return f"<root>/{FGVC_DATASETS[spec.dataset][0]}/{{train,val,test}}.json"

    def class_names(self, root: Path, spec: Any) -> tuple[str, ...] | None:
        """CUB's and Stanford Dogs' from their class folders, NABirds' from its ``classes.txt``; else None."""
        from .fgvc import fgvc_class_names

        return fgvc_class_names(root, spec.dataset, spec.num_classes)


class CoopReader(Reader):
    """CoOp's 11 CLIP few-shot sets: ``<root>/<folder>/split_zhou_<Name>.json`` beside the image folder
    (FGVC-Aircraft's ``images_variant_*.txt``, ImageNet's class folders); class names from the data."""

    def samples(self, root: Path, spec: Any, split: str) -> list[tuple[Path, int]]:
        from .coop import coop_samples

        return coop_samples(root, spec.dataset, split, spec.num_classes, spec.options)

    def layout(self, spec: Any) -> str:
        from .coop import coop_layout

        return coop_layout(spec.dataset, spec.options)

    def class_names(self, root: Path, spec: Any) -> tuple[str, ...] | None:
        from .coop import coop_class_names

        return coop_class_names(root, spec.dataset, spec.num_classes, spec.options)


class MmsegReader(Reader):
    """Semantic segmentation in mmseg's layout: ``<root>/<folder>/{img_dir,ann_dir}/{train,val}`` (ADE20K, VOC)."""

    def samples(self, root: Path, spec: Any, split: str) -> list[tuple[Path, Path]]:
        from .mmseg import mmseg_samples

        return mmseg_samples(root, spec.dataset, split, spec.options)

    def layout(self, spec: Any) -> str:
        from .mmseg import mmseg_layout

        return mmseg_layout(spec.dataset, spec.options)


class MaskFoldersReader(Reader):
    """Binary masks beside images: ``<root>/<folder>/{images,masks}/<id>`` with ``{train,val,test}.txt`` id lists."""

    def samples(self, root: Path, spec: Any, split: str) -> list[tuple[Path, Path]]:
        from .mask_folders import mask_folder_samples

        return mask_folder_samples(root, spec.dataset, split, spec.options)

    def layout(self, spec: Any) -> str:
        from .mask_folders import mask_folder_layout

        return mask_folder_layout(spec.dataset, spec.options)


register_reader("vtab1k", Vtab1kReader)
register_reader("fgvc", FgvcReader)
register_reader("coop", CoopReader)
register_reader("mmseg", MmsegReader)
register_reader("mask_folders", MaskFoldersReader)


class VideoReader(Reader):
    """Video classification lists (``datasets/video.py``): ``(video file or frame folder, label)``
    samples from ``<root>/<folder>``; ``format`` names the list format. Option keys (the task's
    ``options``; paths relative to ``<root>/<folder>``):

    * ``lists``: ``{split: list file}`` for the shipped splits (train, val; the micro tasks'
      ``{train,val,trainval,test}.txt`` by default); the tune pair is held out of train
      (``tune_val_fraction``, default 0.1, seeded, as mmseg's);
    * ``videos_folder``: what video paths are relative to, one folder or ``{split: folder}``
      (``mmaction_video``, ``micro_video``: default the dataset folder; ``ssv2``: "videos");
    * ``frames_folder``: what frame folders are relative to (``mmaction_rawframes``, default "rawframes");
    * ``labels``, ``video_suffix``: SSv2's labels file and video suffix (defaults
      ``annotations/something-something-v2-labels.json``, ``.webm``).
    """

    format: ClassVar[str] = ""

    def samples(self, root: Path, spec: Any, split: str) -> list[tuple[Path, int]]:
        from .video import video_samples

        return video_samples(root, self.format, spec.dataset, split, spec.num_classes, spec.options)

    def layout(self, spec: Any) -> str:
        from .video import video_layout

        return video_layout(self.format, spec.dataset, spec.options)

    def class_names(self, root: Path, spec: Any) -> tuple[str, ...] | None:
        """SSv2's template names from its labels file; None for the other formats."""
        from .video import video_class_names

        return video_class_names(root, self.format, spec.dataset, spec.num_classes, spec.options)


class MmactionVideoReader(VideoReader):
    """mmaction2's video list: ``<video path> <label>`` lines (Kinetics-400), paths relative to ``videos_folder``."""

    format = "mmaction_video"


class MmactionRawframesReader(VideoReader):
    """mmaction2's rawframes list: ``<frame folder> <total frames> <label>`` lines (HMDB51), ``img_00001.jpg``, ..."""

    format = "mmaction_rawframes"


class Ssv2Reader(VideoReader):
    """Something-Something v2 as released: labels and train/validation JSON, ``videos/<id>.webm``."""

    format = "ssv2"


class VpetlCsvReader(VideoReader):
    """V-PETL Bench's ``{train,val}.csv``: ``<absolute path>,<label>`` lines, no header."""

    format = "vpetl_csv"


class MicroVideoReader(VideoReader):
    """The embedded micro video tasks: mmaction video lists ``{train,val,trainval,test}.txt`` in the task folder."""

    format = "micro_video"


register_reader("mmaction_video", MmactionVideoReader)
register_reader("mmaction_rawframes", MmactionRawframesReader)
register_reader("ssv2", Ssv2Reader)
register_reader("vpetl_csv", VpetlCsvReader)
register_reader("micro_video", MicroVideoReader)
