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
