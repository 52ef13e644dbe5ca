"""Video classification lists in the formats the video PETL anchors read, each read strictly
into a :class:`VideoList` (a ``SampleList``) of ``(video, label)``: a video is a file (decoded
with PyAV) or a folder of frames (``video_decode.FramesField`` decodes both). Formats (a task's
``format``):

``mmaction_video`` -- mmaction2's ``VideoDataset`` list (``kinetics400_train_list_videos.txt``,
``sthv2_train_list_videos.txt``; AIM's and ST-Adapter's lists too), one video per line::

    <video path> <label>          path relative to the videos folder

``mmaction_rawframes`` -- mmaction2's ``RawframeDataset`` list (``hmdb51_train_split_1_rawframes.txt``,
ZeroI2V's HMDB51 configs)::

    <frame folder> <total frames> <label>

the folder relative to the rawframes folder, holding ``img_00001.jpg`` ... ``img_<total>.jpg``
(mmaction's default ``filename_tmpl='img_{:05}.jpg'``, first index 1). The listed total is kept
per sample (:class:`FrameFolderList`) and checked against the folder when the split is first
decoded (``images.check_images_exist``: one ``stat`` of the last listed frame and one of the
next), so a stale list is one line naming its ``file:line``.

``ssv2`` -- Something-Something v2 as released: ``something-something-v2-labels.json`` maps each
template to its class id (a string), ``something-something-v2-{train,validation}.json`` hold
``[{"id": "78687", "template": "Holding [something] next to [something]", ...}, ...]``; the class
is ``labels[template with "[" and "]" removed]``, as mmaction2's ``parse_sthv2_splits`` and
the anchors' converters read it; the video is ``<videos folder>/<id>.webm``.

``vpetl_csv`` -- V-PETL Bench's ``dataloader/<dataset>/{train,val,test}.csv``: ``<path>,<label>``
per line, comma separated, no header, absolute paths (a relative path is taken relative to
the CSV's folder). V-PETL's ``build_dataset`` reads ``val.csv`` in ``test_mode`` and
``test.csv`` for its per-epoch "validation" (``dataloader/video_datasets.py``); here every
split reads the file named for it in ``options["lists"]`` (``val`` -> ``val.csv``).

``micro_video`` -- the embedded micro video tasks: the mmaction video list, as
``<task folder>/{train,val,trainval,test}.txt``, paths relative to the task folder.

The four real formats ship train and val only, and val is the reported split, so the tune
pair is held out of train exactly as for mmseg's layouts (``mmseg.held_out``: a seeded
``tune_val_fraction`` of train, default 0.1); the final run trains on ``train`` and
evaluates once on ``val``.

Every problem is one line naming the file (and line, or JSON entry's line) and what was
expected. Only list files are read: no video is opened, no folder listed and no torch
imported, so every split of a run is checked before anything is built.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AdaptbenchError, did_you_mean
from .formats import SPLITS
from .images import SampleList, read_text_file, shorten
from .mmseg import _tune_fraction, held_out

__all__ = ["FORMATS", "FRAME_NAME", "FRAME_TEMPLATE", "FrameFolderList", "VideoList", "read_rawframes_list",
           "read_ssv2", "read_ssv2_labels", "read_video_list", "read_vpetl_csv", "take", "video_class_names",
           "video_layout", "video_samples"]

#: mmaction2's default ``filename_tmpl`` of a rawframes folder; frames are numbered from 1
FRAME_TEMPLATE = "img_{:05}.jpg"
#: the names it gives: five digits, more only past 99999
FRAME_NAME = re.compile(r"img_([0-9]{5}|[1-9][0-9]{5,})\.jpg")
SSV2_LABELS = "annotations/something-something-v2-labels.json"
SSV2_LISTS = {"train": "annotations/something-something-v2-train.json",
              "val": "annotations/something-something-v2-validation.json"}
_INTEGER = re.compile(r"-?[0-9]+")
_TUNE = ("tune_train", "tune_val")
_SPACE = re.compile(r"[ \t\r\n]*")  # JSON's whitespace


class VideoList(SampleList):
    """A split of videos: ``folders`` tells the existence check (``images.check_images_exist``)
    that a listed path may be a folder of frames as well as a video file."""

    folders = True


class FrameFolderList(VideoList):
    """A rawframes split: ``(frame folder, label)`` samples with the ``frame_counts`` their list gives."""

    def __init__(self, samples=(), source: str = "", where: list[str] | None = None,
                 frame_counts: list[int] | None = None):
        super().__init__(samples, source, where)
        self.frame_counts = list(frame_counts or [])

    def check_listed(self, source: str, where: list[str] | None) -> None:
        """Each folder ends at its listed total: ``img_<total>.jpg`` exists and the next does not
        (two ``stat`` s; a gap inside the folder is found when the frames are read)."""
        where = where if where is not None else self.where
        for index, ((folder, _), total) in enumerate(zip(self, self.frame_counts)):
            last, after = Path(folder) / FRAME_TEMPLATE.format(total), Path(folder) / FRAME_TEMPLATE.format(total + 1)
            if not last.is_file() or after.exists():
                at = where[index] if where is not None else source
                raise AdaptbenchError(
                    f"{at}: the list says {total} frames, but rawframes folder {os.path.abspath(folder)} holds "
                    f"{count_frames(folder)} ({FRAME_TEMPLATE.format(1)}, ...); expected the folder to hold "
                    f"{FRAME_TEMPLATE.format(1)} .. {last.name}, as the list says")


def count_frames(folder: Path) -> int:
    """The number of ``img_NNNNN.jpg`` files in a rawframes folder (one listing)."""
    try:
        return sum(1 for name in os.listdir(folder) if FRAME_NAME.fullmatch(name))
    except OSError:
        return 0


# -- lines -------------------------------------------------------------------------------------
def numbered_lines(path: Path, what: str, form: str) -> list[tuple[int, str]]:
    """(line number, stripped text) of a list file's lines; blank lines only at the end (a final
    newline, or a few), as in a VTAB-1k split file; an empty list is an error."""
    lines = read_text_file(path, what, f"one line {form} per video").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise AdaptbenchError(f"{what} {path} is empty; expected one line {form} per video")
    numbered = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise AdaptbenchError(f"{path}:{number}: blank line between videos; expected {form} on every line "
                                  f"(blank lines only at the end)")
        numbered.append((number, line.strip()))
    return numbered


def parse_label(at: str, text: Any, num_classes: int, form: str) -> int:
    """A class index in ``0..num_classes-1`` from a list's label field (``at``: ``file:line``)."""
    if isinstance(text, bool) or not _INTEGER.fullmatch(str(text)):
        raise AdaptbenchError(f"{at}: label {shorten(text)} is not an integer; expected {form}")
    label = int(text)
    if not 0 <= label < num_classes:
        raise AdaptbenchError(f"{at}: label {label} out of range; expected 0..{num_classes - 1} ({num_classes} classes)")
    return label


def _fields(path: Path, number: int, line: str, count: int, form: str, sep: str | None = None) -> list[str]:
    fields = [field.strip() for field in line.split(sep)] if sep else line.split()
    if len(fields) != count or not all(fields):
        raise AdaptbenchError(f"{path}:{number}: got {shorten(line)} ({len(fields)} field(s)); expected {form}")
    return fields


# -- the four list formats -----------------------------------------------------------------------
VIDEO_LINE = "'<video path> <label>'"
RAWFRAMES_LINE = "'<frame folder> <total frames> <label>'"
CSV_LINE = "'<video path>,<label>'"


def read_video_list(path: Path, videos: Path, num_classes: int) -> VideoList:
    """mmaction2's video list (``<video path> <label>``), paths relative to ``videos``."""
    samples, where = [], []
    for number, line in numbered_lines(path, "video list", VIDEO_LINE):
        video, label = _fields(path, number, line, 2, VIDEO_LINE)
        samples.append((videos / video, parse_label(f"{path}:{number}", label, num_classes, VIDEO_LINE)))
        where.append(f"{path}:{number}")
    return VideoList(samples, str(path), where)


def read_rawframes_list(path: Path, frames: Path, num_classes: int) -> FrameFolderList:
    """mmaction2's rawframes list (``<frame folder> <total frames> <label>``), folders relative to ``frames``."""
    samples, where, totals = [], [], []
    for number, line in numbered_lines(path, "rawframes list", RAWFRAMES_LINE):
        folder, total, label = _fields(path, number, line, 3, RAWFRAMES_LINE)
        if not total.isdigit() or int(total) < 1:
            raise AdaptbenchError(f"{path}:{number}: total frames {shorten(total)} is not a positive integer; "
                                  f"expected {RAWFRAMES_LINE}")
        samples.append((frames / folder, parse_label(f"{path}:{number}", label, num_classes, RAWFRAMES_LINE)))
        where.append(f"{path}:{number}")
        totals.append(int(total))
    return FrameFolderList(samples, str(path), where, totals)


def read_vpetl_csv(path: Path, num_classes: int) -> VideoList:
    """V-PETL's CSV (``<path>,<label>``, no header; V-PETL reads it with pandas, ``header=None``)."""
    samples, where = [], []
    for number, line in numbered_lines(path, "CSV list", CSV_LINE):
        video, label = _fields(path, number, line, 2, f"{CSV_LINE} (comma separated, no header)", sep=",")
        samples.append((path.parent / video, parse_label(f"{path}:{number}", label, num_classes, CSV_LINE)))
        where.append(f"{path}:{number}")
    return VideoList(samples, str(path), where)


def read_ssv2(path: Path, labels_path: Path, videos: Path, num_classes: int, suffix: str = ".webm") -> VideoList:
    """One Something-Something v2 annotation file, classes from its labels file (module docstring)."""
    classes = read_ssv2_labels(labels_path, num_classes)
    form = '{"id": "<video id>", "template": "<template>", ...}'
    samples, where = [], []
    for line, entry in json_array(path, "SSv2 annotation file", f"a JSON list of {form}"):
        at = f"{path}:{line}"
        if not isinstance(entry, dict) or not _is_id(entry.get("id")) or not isinstance(entry.get("template"), str):
            raise AdaptbenchError(f"{at}: entry {shorten(entry)} lacks a string 'id' or 'template'; expected {form}")
        template = entry["template"].replace("[", "").replace("]", "")
        if template not in classes:
            raise AdaptbenchError(f"{at}: template {shorten(entry['template'])} is not in {labels_path}"
                                  f"{did_you_mean(template, classes)}; expected one of its {len(classes)} templates "
                                  f"(with '[' and ']' removed)")
        samples.append((videos / f"{entry['id']}{suffix}", classes[template]))
        where.append(at)
    return VideoList(samples, str(path), where)


def _is_id(value: Any) -> bool:
    return (isinstance(value, str) and value.strip() != "") or (isinstance(value, int) and not isinstance(value, bool))


def read_ssv2_labels(path: Path, num_classes: int) -> dict[str, int]:
    """``{template: class id}`` of ``something-something-v2-labels.json``: ids ``0..C-1``, each once."""
    expected = f'a JSON object {{"<template>": "<class id>", ...}} with the {num_classes} ids 0..{num_classes - 1}'
    text = read_text_file(path, "SSv2 labels file", expected)
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as err:
        raise AdaptbenchError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); expected {expected}") from None
    if not isinstance(mapping, dict):
        raise AdaptbenchError(f"SSv2 labels file {path} holds a {type(mapping).__name__}; expected {expected}")
    classes, seen = {}, {}
    for template, value in mapping.items():
        label = parse_label(f"{path} (template {shorten(template)})", value, num_classes, expected)
        if label in seen:
            raise AdaptbenchError(f"{path}: class id {label} is given to {shorten(template)} and to "
                                  f"{shorten(seen[label])}; expected each id once")
        classes[template], seen[label] = label, template
    if len(classes) != num_classes:
        raise AdaptbenchError(f"SSv2 labels file {path} holds {len(classes)} classes; expected {expected}")
    return classes


def json_array(path: Path, what: str, expected: str) -> list[tuple[int, Any]]:
    """(line number, entry) of each entry of a JSON list, so errors can name the entry's line
    (``json.load`` forgets where an entry was): the list is decoded one entry at a time."""
    text = read_text_file(path, what, expected)
    decoder = json.JSONDecoder()
    entries: list[tuple[int, Any]] = []
    line, counted = 1, 0  # the line of text[counted]

    def skip(position: int) -> int:
        return _SPACE.match(text, position).end()

    def bad(at: int, message: str) -> AdaptbenchError:
        return AdaptbenchError(f"{path}:{text.count(chr(10), 0, at) + 1}: {message}; expected {expected}")

    position = skip(0)
    if position == len(text):
        raise AdaptbenchError(f"{what} {path} is empty; expected {expected}")
    if text[position] != "[":
        raise bad(position, "not a JSON list")
    position = skip(position + 1)
    while position < len(text) and text[position] != "]":
        if entries:
            if text[position] != ",":
                raise bad(position, "not valid JSON (no ',' or ']' after an entry)")
            position = skip(position + 1)
        line, counted = line + text.count("\n", counted, position), position
        try:
            entry, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            raise AdaptbenchError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); expected {expected}") from None
        entries.append((line, entry))
        position = skip(position)
    if position >= len(text):
        raise bad(len(text), "not valid JSON (the list is not closed by ']')")
    if skip(position + 1) != len(text):
        raise bad(skip(position + 1), "not valid JSON (text after the list)")
    if not entries:
        raise AdaptbenchError(f"{what} {path} is an empty list; expected {expected}")
    return entries


# -- formats: options, layouts, splits ---------------------------------------------------------
@dataclass(frozen=True)
class VideoFormat:
    """How one format finds its files under ``<root>/<folder>`` (option defaults) and reads a shipped split."""

    read: Callable[[Path, str, int, Mapping[str, Any]], VideoList]
    defaults: Mapping[str, Any]
    layout: Callable[[str, Mapping[str, Any]], str]


def _options(fmt: str, options: Mapping[str, Any]) -> dict[str, Any]:
    return {**FORMATS[fmt].defaults, **options}


def _list_file(base: Path, split: str, options: Mapping[str, Any]) -> Path:
    lists = options.get("lists")
    if not isinstance(lists, Mapping) or not all(isinstance(name, str) and name for name in lists.values()):
        raise AdaptbenchError(f"task option lists is {shorten(lists)}; expected a mapping from split names "
                              f"(train, val) to list files, e.g. {{\"train\": \"train_list.txt\", \"val\": \"val_list.txt\"}}")
    if split not in lists:
        raise AdaptbenchError(f"task option lists names no file for split {split!r} (it names "
                              f"{', '.join(map(repr, lists)) or 'none'}); expected a list file for each of the "
                              f"splits read")
    return base / lists[split]


def _folder(base: Path, split: str, options: Mapping[str, Any], key: str) -> Path:
    """``options[key]``: one folder for every split, or one per split (K400's ``videos_train``/``videos_val``)."""
    value = options.get(key, "")
    if isinstance(value, Mapping):
        value = value.get(split)
    if not isinstance(value, str):
        raise AdaptbenchError(f"task option {key} is {shorten(options.get(key))}; expected a folder name, or a "
                              f"mapping from split names to folder names that names split {split!r}")
    return base / value


def _read_video(base: Path, split: str, num_classes: int, options: Mapping[str, Any]) -> VideoList:
    return read_video_list(_list_file(base, split, options), _folder(base, split, options, "videos_folder"), num_classes)


def _read_rawframes(base: Path, split: str, num_classes: int, options: Mapping[str, Any]) -> VideoList:
    return read_rawframes_list(_list_file(base, split, options), _folder(base, split, options, "frames_folder"),
                               num_classes)


def _read_ssv2(base: Path, split: str, num_classes: int, options: Mapping[str, Any]) -> VideoList:
    for key in ("labels", "video_suffix"):
        if not isinstance(options[key], str) or not options[key]:
            raise AdaptbenchError(f"task option {key} is {shorten(options[key])}; expected a file name "
                                  f"(labels) or a suffix such as '.webm' (video_suffix)")
    return read_ssv2(_list_file(base, split, options), base / options["labels"],
                     _folder(base, split, options, "videos_folder"), num_classes, options["video_suffix"])


def _read_csv(base: Path, split: str, num_classes: int, options: Mapping[str, Any]) -> VideoList:
    return read_vpetl_csv(_list_file(base, split, options), num_classes)


def _lists_text(folder: str, options: Mapping[str, Any]) -> str:
    lists = options.get("lists")
    names = list(lists.values()) if isinstance(lists, Mapping) else ["<train list>", "<val list>"]
    return " and ".join(f"<root>/{folder}/{name}" for name in names)


def _folder_text(folder: str, options: Mapping[str, Any], key: str) -> str:
    value = options.get(key, "")
    if isinstance(value, Mapping):
        value = "{" + ",".join(map(str, value.values())) + "}"
    return f"<root>/{folder}/{value}".rstrip("/")


def _video_layout(folder: str, options: Mapping[str, Any]) -> str:
    return (f"video lists {_lists_text(folder, options)} with lines {VIDEO_LINE}, paths relative to "
            f"{_folder_text(folder, options, 'videos_folder')}")


def _rawframes_layout(folder: str, options: Mapping[str, Any]) -> str:
    return (f"rawframes lists {_lists_text(folder, options)} with lines {RAWFRAMES_LINE}, frame folders under "
            f"{_folder_text(folder, options, 'frames_folder')} holding {FRAME_TEMPLATE.format(1)}, "
            f"{FRAME_TEMPLATE.format(2)}, ...")


def _ssv2_layout(folder: str, options: Mapping[str, Any]) -> str:
    return (f"Something-Something v2 as released: <root>/{folder}/{options['labels']}, annotation files "
            f"{_lists_text(folder, options)}, videos {_folder_text(folder, options, 'videos_folder')}/"
            f"<id>{options['video_suffix']}")


def _csv_layout(folder: str, options: Mapping[str, Any]) -> str:
    return f"V-PETL CSV lists {_lists_text(folder, options)} with lines {CSV_LINE} (absolute paths, no header)"


FORMATS: dict[str, VideoFormat] = {
    "mmaction_video": VideoFormat(_read_video, {"videos_folder": ""}, _video_layout),
    "mmaction_rawframes": VideoFormat(_read_rawframes, {"frames_folder": "rawframes"}, _rawframes_layout),
    "ssv2": VideoFormat(_read_ssv2, {"labels": SSV2_LABELS, "lists": SSV2_LISTS, "videos_folder": "videos",
                                     "video_suffix": ".webm"}, _ssv2_layout),
    "vpetl_csv": VideoFormat(_read_csv, {"lists": {"train": "train.csv", "val": "val.csv"}}, _csv_layout),
    "micro_video": VideoFormat(_read_video, {"videos_folder": "",
                                             "lists": {split: f"{split}.txt" for split in SPLITS["micro_video"]}},
                               _video_layout),
}


def _format(fmt: str) -> VideoFormat:
    if fmt not in FORMATS:
        raise AdaptbenchError(f"unknown video format {fmt!r}{did_you_mean(fmt, FORMATS)}; "
                              f"expected one of {', '.join(FORMATS)}")
    return FORMATS[fmt]


def video_layout(fmt: str, folder: str, options: Mapping[str, Any]) -> str:
    """The files a dataset in format ``fmt`` must have, for error messages."""
    return _format(fmt).layout(folder, _options(fmt, options))


def video_samples(root: Path, fmt: str, folder: str, split: str, num_classes: int,
                  options: Mapping[str, Any]) -> VideoList:
    """The ``(video, label)`` samples of one split of ``<root>/<folder>`` in format ``fmt``; the
    tune pair is held out of train (module docstring). Keeps the list's order."""
    spec, splits = _format(fmt), SPLITS[fmt]
    if split not in splits:
        raise AdaptbenchError(f"unknown {fmt} split {split!r}{did_you_mean(split, splits)}; "
                              f"expected one of {', '.join(splits)}")
    options = _options(fmt, options)
    base = Path(root) / folder
    if not base.is_dir():
        state = "is not a folder" if base.exists() else "does not exist"
        raise AdaptbenchError(f"dataset folder {base} {state}; expected {spec.layout(folder, options)}")
    if split not in _TUNE:
        return spec.read(base, split, num_classes, options)
    train = spec.read(base, "train", num_classes, options)
    held = set(held_out(len(train), _tune_fraction(options), train.source))
    return take(train, [index for index in range(len(train)) if (index in held) == (split == "tune_val")])


def take(samples: VideoList, indices: list[int]) -> VideoList:
    """The samples at ``indices``, keeping where each was listed (and a rawframes list's totals)."""
    where = [samples.where[index] for index in indices] if samples.where is not None else None
    kept = [samples[index] for index in indices]
    if isinstance(samples, FrameFolderList):
        return FrameFolderList(kept, samples.source, where, [samples.frame_counts[index] for index in indices])
    return VideoList(kept, samples.source, where)


def video_class_names(root: Path, fmt: str, folder: str, num_classes: int,
                      options: Mapping[str, Any]) -> tuple[str, ...] | None:
    """SSv2's 174 template names in label order, from its labels file; None for the other formats
    (their lists hold class indices only)."""
    if fmt != "ssv2":
        return None
    options = _options(fmt, options)
    classes = read_ssv2_labels(Path(root) / folder / options["labels"], num_classes)
    return tuple(sorted(classes, key=classes.__getitem__))
