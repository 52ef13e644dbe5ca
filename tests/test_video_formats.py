"""Video list formats (mmaction's video and rawframes lists, SSv2's JSON, V-PETL's CSV), the
frame choice and the ``frames`` field, on tiny real data written here: mp4 (H.264, MPEG-4 Part 2)
and webm (VP9) videos encoded with PyAV, and rawframes folders of JPEGs, 24x32 px, frame k
of brightness 10 + 20k so that which frames were decoded, and in which order, can be read back.

Every bad-input case checks the promise of ``adaptbench.errors``: one line naming the file
(and the line, for a list).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaptbench.datasets.decoded import LabelField, decoded_split
from adaptbench.datasets.formats import SPLITS, VIDEO_DATASETS
from adaptbench.datasets.images import check_images_exist
from adaptbench.datasets.video import FrameFolderList, VideoList
from adaptbench.datasets.video_decode import FramesField, TooFewFrames, cached_frame_indices, cover_crop
from adaptbench.errors import AdaptbenchError
from adaptbench.registry import READERS
from adaptbench.tasks.catalog import TaskSpec
from helpers import raises_one_line

HEIGHT, WIDTH, FRAMES = 24, 32, 12
TEMPLATES = ["Holding something next to something", "Pushing something from left to right", "Opening something"]


def brightness(k: int) -> int:
    return 10 + 20 * k


def frame_pixels(k: int) -> np.ndarray:
    return np.full((HEIGHT, WIDTH, 3), brightness(k), np.uint8)


def levels(frames: np.ndarray) -> list[int]:
    """The frame number each decoded frame shows (its mean brightness, rounded to the nearest level)."""
    return [round((float(frame.mean()) - 10) / 20) for frame in frames]


# -- data written here ---------------------------------------------------------------------
def write_video(path: Path, codec: str, frames: int = FRAMES) -> Path:
    av = pytest.importorskip("av")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"libx264": {"qp": "0"}, "libvpx-vp9": {"lossless": "1"}}.get(codec, {})
        for k in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_pixels(k), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_rawframes(folder: Path, frames: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(frames):
        Image.fromarray(frame_pixels(k)).save(folder / f"img_{k + 1:05d}.jpg", quality=95)
    return folder


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def spec(fmt: str, folder: str, options: dict, classes: int = 3) -> TaskSpec:
    return TaskSpec(f"video/{folder}", "video", fmt, folder, classes, "video", "test", options=options)


def samples_of(root: Path, fmt: str, folder: str, options: dict, split: str, classes: int = 3):
    return READERS.get(fmt)().samples(root, spec(fmt, folder, options, classes), split)


def pairs(samples, base: Path) -> list[tuple[str, int]]:
    return [(Path(path).relative_to(base).as_posix(), label) for path, label in samples]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """One 12-frame video per codec, and a 5-frame one."""
    av = pytest.importorskip("av")
    folder = tmp_path_factory.mktemp("videos")
    made = {"mp4": write_video(folder / "h264.mp4", "libx264" if _encoder(av, "libx264") else "mpeg4"),
            "mpeg4": write_video(folder / "mpeg4.mp4", "mpeg4"),
            "short": write_video(folder / "short.mp4", "mpeg4", frames=5)}
    if _encoder(av, "libvpx-vp9"):
        made["webm"] = write_video(folder / "vp9.webm", "libvpx-vp9")
    return made


def _encoder(av, name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
        return True
    except ValueError:  # UnknownCodecError: not in this build of FFmpeg
        return False


def field(count: int = 4, sampling: str = "uniform", num_frames: int = 4, stride: int = 1,
          size: tuple[int, int] = (HEIGHT, WIDTH)) -> FramesField:
    return FramesField(size, count, sampling, num_frames, stride)


# -- tables --------------------------------------------------------------------------------
def test_the_tables_hold_the_formats_and_the_anchors_protocols():
    for fmt in ("mmaction_video", "mmaction_rawframes", "ssv2", "vpetl_csv"):
        assert SPLITS[fmt] == ("tune_train", "tune_val", "train", "val")
        assert fmt in READERS.names()
    assert SPLITS["micro_video"] == ("train", "val", "trainval", "test")
    assert VIDEO_DATASETS["ssv2"][1:4] == ("ssv2", "sthv2", 174)
    assert VIDEO_DATASETS["hmdb51"][1:4] == ("mmaction_rawframes", "hmdb51", 51)
    assert VIDEO_DATASETS["k400"][1:4] == ("mmaction_video", "kinetics400", 400)
    ssv2, hmdb, k400 = (VIDEO_DATASETS[key][5] for key in ("ssv2", "hmdb51", "k400"))
    assert (ssv2["num_frames"], ssv2["sampling"], ssv2["test_clips"], ssv2["test_crops"], ssv2["flip"]) == \
        (8, "uniform", 1, 3, False)
    assert (hmdb["num_frames"], hmdb["sampling"], hmdb["test_clips"]) == (32, "uniform", 2)
    assert (k400["num_frames"], k400["sampling"], k400["stride"]) == (8, "dense", 16)
    for key in ("vpetl/ssv2", "vpetl/hmdb51"):
        options = VIDEO_DATASETS[key][5]
        assert VIDEO_DATASETS[key][1] == "vpetl_csv"
        assert (options["num_frames"], options["sampling"], options["stride"], options["test_clips"],
                options["test_crops"]) == (8, "dense", 4, 4, 3)
    assert VIDEO_DATASETS["vpetl/ssv2"][5]["flip"] is False and VIDEO_DATASETS["vpetl/hmdb51"][5]["flip"] is True
    for _, fmt, folder, _, _, options in VIDEO_DATASETS.values():
        json.dumps(options)  # plain data
        assert folder in READERS.get(fmt)().layout(spec(fmt, folder, options))


# -- readers -------------------------------------------------------------------------------
def test_mmaction_video_lists_per_split_video_folders(tmp_path):
    base = tmp_path / "kinetics400"
    write(base / "train_list.txt", "abseiling/a.mp4 0\nzumba/b.mp4 2\n\n")
    write(base / "val_list.txt", "c.mp4 1\n")
    options = {"lists": {"train": "train_list.txt", "val": "val_list.txt"},
               "videos_folder": {"train": "videos_train", "val": "videos_val"}}
    train = samples_of(tmp_path, "mmaction_video", "kinetics400", options, "train")
    assert pairs(train, base) == [("videos_train/abseiling/a.mp4", 0), ("videos_train/zumba/b.mp4", 2)]
    assert isinstance(train, VideoList) and train.folders  # the existence check accepts frame folders too
    assert train.where == [f"{base / 'train_list.txt'}:1", f"{base / 'train_list.txt'}:2"]
    assert pairs(samples_of(tmp_path, "mmaction_video", "kinetics400", options, "val"), base) == \
        [("videos_val/c.mp4", 1)]


def test_rawframes_lists_keep_the_listed_totals(tmp_path):
    base = tmp_path / "hmdb51"
    write(base / "hmdb51_train_split_1_rawframes.txt", "brush_hair/v1 6 0\ncartwheel/v2 163 2\n")
    options = {"lists": {"train": "hmdb51_train_split_1_rawframes.txt"}, "frames_folder": "rawframes"}
    train = samples_of(tmp_path, "mmaction_rawframes", "hmdb51", options, "train")
    assert isinstance(train, FrameFolderList) and train.folders
    assert pairs(train, base) == [("rawframes/brush_hair/v1", 0), ("rawframes/cartwheel/v2", 2)]
    assert train.frame_counts == [6, 163]


def ssv2_folder(root: Path, train: list[dict], labels: dict | None = None) -> Path:
    base = root / "sthv2"
    write(base / "annotations/something-something-v2-labels.json",
          json.dumps(labels if labels is not None else {name: str(i) for i, name in enumerate(TEMPLATES)}))
    write(base / "annotations/something-something-v2-train.json", json.dumps(train, indent=1))
    write(base / "annotations/something-something-v2-validation.json",
          json.dumps([{"id": "9", "template": "Opening [something]", "label": "opening a door",
                       "placeholders": ["a door"]}]))
    return base


SSV2_TRAIN = [{"id": "78687", "label": "holding potato next to vicks vaporub bottle",
               "template": "Holding [something] next to [something]", "placeholders": ["potato", "bottle"]},
              {"id": "42326", "label": "pushing a cup from left to right",
               "template": "Pushing [something] from left to right", "placeholders": ["a cup"]}]


def test_ssv2_classes_are_the_labels_of_the_bracketless_templates(tmp_path):
    base = ssv2_folder(tmp_path, SSV2_TRAIN)
    train = samples_of(tmp_path, "ssv2", "sthv2", {}, "train")
    assert pairs(train, base) == [("videos/78687.webm", 0), ("videos/42326.webm", 1)]
    train_json = base / "annotations/something-something-v2-train.json"
    assert train.where == [f"{train_json}:2", f"{train_json}:11"]  # the line each entry starts on
    assert pairs(samples_of(tmp_path, "ssv2", "sthv2", {}, "val"), base) == [("videos/9.webm", 2)]
    spec_ = spec("ssv2", "sthv2", {})
    assert READERS.get("ssv2")().class_names(tmp_path, spec_) == tuple(TEMPLATES)


def test_vpetl_csv_reads_the_file_named_for_the_split(tmp_path):
    base = tmp_path / "vpetl" / "ssv2"
    write(base / "train.csv", f"{tmp_path}/data/74225.mp4,2\r\n{tmp_path}/data/116154.mp4,0\r\n")
    write(base / "val.csv", "relative/1.mp4,1\n")
    write(base / "test.csv", "/elsewhere/never.mp4,0\n")
    train = samples_of(tmp_path, "vpetl_csv", "vpetl/ssv2", {}, "train")
    assert [(str(path), label) for path, label in train] == [(f"{tmp_path}/data/74225.mp4", 2),
                                                             (f"{tmp_path}/data/116154.mp4", 0)]
    assert pairs(samples_of(tmp_path, "vpetl_csv", "vpetl/ssv2", {}, "val"), base) == [("relative/1.mp4", 1)]


def test_micro_video_reads_its_four_lists(tmp_path):
    base = tmp_path / "arrow_of_time"
    for index, split in enumerate(("train", "val", "trainval", "test")):
        write(base / f"{split}.txt", f"videos/{split}_{index}.mp4 {index % 2}\n")
    for index, split in enumerate(SPLITS["micro_video"]):
        assert pairs(samples_of(tmp_path, "micro_video", "arrow_of_time", {}, split, 2), base) == \
            [(f"videos/{split}_{index}.mp4", index % 2)]


def test_the_tune_pair_is_a_seeded_held_out_part_of_train(tmp_path):
    base = tmp_path / "hmdb51"
    write(base / "train.txt", "".join(f"v{i} {i + 1} {i % 3}\n" for i in range(20)))
    options = {"lists": {"train": "train.txt"}}
    train = samples_of(tmp_path, "mmaction_rawframes", "hmdb51", options, "train")
    tune_train = samples_of(tmp_path, "mmaction_rawframes", "hmdb51", options, "tune_train")
    tune_val = samples_of(tmp_path, "mmaction_rawframes", "hmdb51", options, "tune_val")
    assert len(tune_val) == 2 and len(tune_train) == 18
    assert not set(tune_train) & set(tune_val) and sorted(tune_train + tune_val) == sorted(train)
    assert tune_val == samples_of(tmp_path, "mmaction_rawframes", "hmdb51", options, "tune_val")  # seeded
    assert isinstance(tune_val, FrameFolderList)  # keeps the listed totals and lines
    assert tune_val.frame_counts == [int(Path(path).name[1:]) + 1 for path, _ in tune_val]
    assert tune_val.where == [train.where[int(Path(path).name[1:])] for path, _ in tune_val]
    bigger = samples_of(tmp_path, "mmaction_rawframes", "hmdb51", {**options, "tune_val_fraction": 0.5}, "tune_val")
    assert len(bigger) == 10


# -- bad lists ------------------------------------------------------------------------------
VIDEO_OPTIONS = {"lists": {"train": "train.txt", "val": "val.txt"}}


@pytest.mark.parametrize("fmt,text,line,match", [
    ("mmaction_video", "a.mp4 0\nb.mp4\n", 2, r"got 'b.mp4' \(1 field\(s\)\); expected '<video path> <label>'"),
    ("mmaction_video", "a.mp4 0\nb.mp4 1 2\n", 2, "expected '<video path> <label>'"),
    ("mmaction_video", "a.mp4 zero\n", 1, "label 'zero' is not an integer"),
    ("mmaction_video", "a.mp4 3\n", 1, r"label 3 out of range; expected 0..2 \(3 classes\)"),
    ("mmaction_video", "a.mp4 -1\n", 1, "label -1 out of range"),
    ("mmaction_video", "a.mp4 0\n\nb.mp4 1\n", 2, "blank line between videos"),
    ("mmaction_rawframes", "v1 6\n", 1, "expected '<frame folder> <total frames> <label>'"),
    ("mmaction_rawframes", "v1 six 0\n", 1, "total frames 'six' is not a positive integer"),
    ("mmaction_rawframes", "v1 6 9\n", 1, "label 9 out of range"),
    ("vpetl_csv", "/a.mp4 0\n", 1, "expected '<video path>,<label>' \\(comma separated, no header\\)"),
    ("vpetl_csv", "/a.mp4,0,1\n", 1, r"\(3 field\(s\)\)"),
    ("vpetl_csv", "path,label\n", 1, "label 'label' is not an integer"),
])
def test_a_bad_list_line_is_one_line_naming_file_and_line(tmp_path, fmt, text, line, match):
    name = "train.csv" if fmt == "vpetl_csv" else "train.txt"
    path = write(tmp_path / "ds" / name, text)
    options = {} if fmt == "vpetl_csv" else VIDEO_OPTIONS
    with raises_one_line(match, f"{path}:{line}"):
        samples_of(tmp_path, fmt, "ds", options, "train")


@pytest.mark.parametrize("fmt", ["mmaction_video", "mmaction_rawframes", "vpetl_csv", "ssv2", "micro_video"])
def test_a_missing_or_empty_list_file_is_named(tmp_path, fmt):
    (tmp_path / "ds").mkdir()
    options = VIDEO_OPTIONS if fmt.startswith("mmaction") else {}
    listed = {"vpetl_csv": "train.csv", "ssv2": "annotations/something-something-v2-labels.json"}.get(fmt, "train.txt")
    with raises_one_line("does not exist; expected", tmp_path / "ds" / listed):
        samples_of(tmp_path, fmt, "ds", options, "train")
    if fmt != "ssv2":
        write(tmp_path / "ds" / listed, "\n\n")
        with raises_one_line("is empty; expected one line", tmp_path / "ds" / listed):
            samples_of(tmp_path, fmt, "ds", options, "train")


def test_a_missing_dataset_folder_or_split_list_says_what_is_expected(tmp_path):
    with raises_one_line("does not exist; expected video lists", tmp_path / "k400"):
        samples_of(tmp_path, "mmaction_video", "k400", VIDEO_OPTIONS, "train")
    (tmp_path / "k400").mkdir()
    with raises_one_line("names no file for split 'val'", "lists"):
        samples_of(tmp_path, "mmaction_video", "k400", {"lists": {"train": "t.txt"}}, "val")
    with raises_one_line("unknown mmaction_video split 'test'", "val"):
        samples_of(tmp_path, "mmaction_video", "k400", VIDEO_OPTIONS, "test")


@pytest.mark.parametrize("case,match", [
    ("unknown template", r"template 'Juggling \[something\]' is not in .*labels.json.*expected one of its 3 templates"),
    ("no id", "lacks a string 'id' or 'template'"),
    ("bad json", "not valid JSON"),
    ("not a list", "not a JSON list"),
])
def test_bad_ssv2_annotations_are_one_line_naming_file_and_line(tmp_path, case, match):
    train = [dict(entry) for entry in SSV2_TRAIN]
    if case == "unknown template":
        train[1]["template"] = "Juggling [something]"
    elif case == "no id":
        del train[1]["id"]
    base = ssv2_folder(tmp_path, train)
    train_json = base / "annotations/something-something-v2-train.json"
    line = 11
    if case == "bad json":
        train_json.write_text(train_json.read_text().replace('"42326",', '"42326"'))
        line = 13
    elif case == "not a list":
        train_json.write_text('\n{"id": "1"}')
        line = 2
    with raises_one_line(match, f"{train_json}:{line}"):
        samples_of(tmp_path, "ssv2", "sthv2", {}, "train")


@pytest.mark.parametrize("labels,match", [
    ({TEMPLATES[0]: "0", TEMPLATES[1]: "x", TEMPLATES[2]: "2"}, "label 'x' is not an integer"),
    ({TEMPLATES[0]: "0", TEMPLATES[1]: "0", TEMPLATES[2]: "2"}, "class id 0 is given to"),
    ({TEMPLATES[0]: "0", TEMPLATES[1]: "1"}, "holds 2 classes; expected"),
    ({TEMPLATES[0]: "0", TEMPLATES[1]: "1", TEMPLATES[2]: "7"}, "label 7 out of range"),
])
def test_a_bad_ssv2_labels_file_is_named(tmp_path, labels, match):
    base = ssv2_folder(tmp_path, SSV2_TRAIN, labels)
    with raises_one_line(match, base / "annotations/something-something-v2-labels.json"):
        samples_of(tmp_path, "ssv2", "sthv2", {}, "train")


# -- which frames ----------------------------------------------------------------------------
@pytest.mark.parametrize("total,count,num_frames,expected", [
    (12, 4, 4, [1, 4, 7, 10]),                   # one frame per segment, at its centre
    (10, 4, 2, [1, 3, 6, 8]),                    # floor(10/2 * (i + (j + .5)/2))
    (8, 8, 8, list(range(8))),                   # as many frames as the clip: every frame
    (3, 8, 2, [0, 0, 0, 1, 1, 2, 2, 2]),         # positions repeat frames of a short video
])
def test_uniform_indices_are_the_centres_of_equal_parts_of_each_segment(total, count, num_frames, expected):
    assert cached_frame_indices(total, count, "uniform", num_frames).tolist() == expected


@pytest.mark.parametrize("total,count,stride,expected", [
    (100, 8, 4, list(range(35, 64, 4))),         # span 29, centred: start (100 - 29) // 2
    (50, 10, 4, list(range(6, 43, 4))),          # a longer window (positions), still centred
    (30, 10, 4, [0, 4, 8, 12, 16, 20, 24, 28, 29, 29]),  # wider than the video: from 0, clamped
    (29, 8, 4, list(range(0, 29, 4))),           # exactly one clip's span
])
def test_dense_indices_are_a_centred_strided_window_clamped_to_the_video(total, count, stride, expected):
    assert cached_frame_indices(total, count, "dense", 8, stride).tolist() == expected


def test_too_short_videos_and_bad_settings_raise():
    with pytest.raises(TooFewFrames, match="^has 5 frames; uniform sampling of 8 frames needs at least 8$"):
        cached_frame_indices(5, 8, "uniform", 8)
    with pytest.raises(TooFewFrames, match="^has 7 frames; dense sampling of 8 frames at stride 4 needs at least 8$"):
        cached_frame_indices(7, 8, "dense", 8, 4)
    # shorter than one strided span: the last frame repeats (ST-Adapter's padding)
    assert cached_frame_indices(12, 8, "dense", 8, 4).tolist() == [0, 4, 8, 11, 11, 11, 11, 11]
    with pytest.raises(AdaptbenchError, match="expected a multiple of 4"):
        cached_frame_indices(12, 6, "uniform", 4)
    with pytest.raises(AdaptbenchError, match="expected one of uniform, dense"):
        cached_frame_indices(12, 4, "random", 4)
    with pytest.raises(AdaptbenchError, match="expected at least 8"):
        FramesField((8, 8), 4, "dense", 8, 2)
    with pytest.raises(AdaptbenchError, match="interpolation 'cubic'"):
        FramesField((8, 8), 8, "uniform", 8, interpolation="cubic")


# -- pixels ----------------------------------------------------------------------------------
def test_frames_are_resized_to_cover_then_centre_cropped():
    columns = np.tile((np.arange(WIDTH, dtype=np.uint8) * 8)[None, :, None], (HEIGHT, 1, 3))  # value = 8 * x
    image = Image.fromarray(columns)
    same_height = cover_crop(image, (24, 24), "nearest")  # no resize: the middle 24 of 32 columns
    assert same_height.shape == (24, 24, 3) and same_height[0, :, 0].tolist() == [8 * x for x in range(4, 28)]
    tall = cover_crop(image, (24, 8), "nearest")
    assert tall[0, :, 0].tolist() == [8 * x for x in range(12, 20)]
    small = cover_crop(image, (12, 12), "nearest")  # to 16x12 (column j: source 2j + 1), the middle 12
    assert small.shape == (12, 12, 3) and small[0, :, 0].tolist() == [8 * x for x in range(5, 29, 2)]
    wide = cover_crop(image, (30, 60), "bilinear")  # upscaled to 60x45 (cover), 30 rows kept
    assert wide.shape == (30, 60, 3)
    spec_ = FramesField((30, 60), 8, "uniform", 4, interpolation="bicubic")
    assert spec_.array_spec().shape == (8, 30, 60, 3) and spec_.array_spec().dtype == "uint8"
    assert {"size", "count", "sampling", "num_frames", "stride", "interpolation"} <= set(spec_.describe())
    assert spec_.describe() != FramesField((30, 60), 8, "uniform", 4, interpolation="bilinear").describe()


# -- decoding --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mp4", "mpeg4", "webm"])
def test_videos_decode_the_chosen_frames_in_order(videos, kind):
    if kind not in videos:
        pytest.skip(f"no {kind} encoder in this FFmpeg")
    frames = field().decode((videos[kind], 0), "list.txt")
    assert frames.shape == (4, HEIGHT, WIDTH, 3) and frames.dtype == np.uint8
    assert levels(frames) == [1, 4, 7, 10]
    dense = field(count=5, sampling="dense", num_frames=3, stride=2).decode((videos[kind], 0), "list.txt")
    assert levels(dense) == [1, 3, 5, 7, 9]  # span 9, start (12 - 9) // 2 = 1
    small = field(count=8, num_frames=4, size=(12, 12)).decode((videos[kind], 0), "list.txt")
    assert small.shape == (8, 12, 12, 3) and levels(small) == [0, 2, 3, 5, 6, 8, 9, 11]


def test_webm_has_no_frame_count_so_its_packets_are_counted(videos):
    if "webm" not in videos:
        pytest.skip("no VP9 encoder in this FFmpeg")
    import av

    from adaptbench.datasets.video_decode import video_frame_count

    with av.open(str(videos["webm"])) as container:
        assert container.streams.video[0].frames == 0
    assert video_frame_count(av, videos["webm"], "list.txt") == FRAMES


def test_a_container_promising_too_many_frames_is_sampled_from_what_decodes(videos, monkeypatch):
    from adaptbench.datasets import video_decode

    monkeypatch.setattr(video_decode, "video_frame_count", lambda *args: 20)
    assert levels(field().decode((videos["mp4"], 0), "list.txt")) == [1, 4, 7, 10]


def test_rawframes_decode_the_chosen_jpgs_in_order(tmp_path):
    folder = write_rawframes(tmp_path / "v1", frames=6)
    frames = field(count=6, num_frames=3).decode((folder, 0), "list.txt")  # floor(6 * (2k + 1) / 12)
    assert levels(frames) == [0, 1, 2, 3, 4, 5]
    assert levels(field(count=3, num_frames=3).decode((folder, 0), "list.txt")) == [1, 3, 5]


def test_a_split_of_videos_and_one_of_rawframes_go_through_the_cache(tmp_path, videos):
    base = tmp_path / "ds"
    write_rawframes(base / "rawframes/a", 6)
    write_rawframes(base / "rawframes/b", 8)
    write(base / "train.txt", "a 6 1\nb 8 2\n")
    rawframes = samples_of(tmp_path, "mmaction_rawframes", "ds", {"lists": {"train": "train.txt"}}, "train")
    fields = {"frames": field(count=4, num_frames=4, size=(12, 16)), "labels": LabelField()}
    cached = decoded_split(rawframes, fields, task="video/t", split="train", source=rawframes.source,
                           where=rawframes.where, workers=2)
    assert cached.arrays["frames"].shape == (2, 4, 12, 16, 3) and cached.arrays["labels"].tolist() == [1, 2]
    assert [levels(clip) for clip in cached.arrays["frames"]] == [[0, 2, 3, 5], [1, 3, 5, 7]]
    write(base / "videos.txt", f"{videos['mp4']} 0\n{videos['mpeg4']} 1\n")
    listed = samples_of(tmp_path, "mmaction_video", "ds", {"lists": {"train": "videos.txt"}}, "train")
    cached = decoded_split(listed, fields, task="video/v", split="train", source=listed.source, where=listed.where)
    assert [levels(clip) for clip in cached.arrays["frames"]] == [[1, 4, 7, 10]] * 2


# -- bad videos and frame folders ------------------------------------------------------------
def test_bad_videos_are_one_line_naming_the_video_and_its_list(tmp_path, videos):
    import av

    garbage = write(tmp_path / "garbage.mp4", "not a video at all " * 20)
    with raises_one_line(re.escape(f"cannot read video {garbage} (listed in list.txt): ") + ".*expected a readable",
                         garbage):
        field().decode((garbage, 0), "list.txt")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(videos["mp4"].read_bytes()[:300])
    with raises_one_line("cannot read video .*truncated.mp4 \\(listed in list.txt\\)", truncated):
        field().decode((truncated, 0), "list.txt")
    with raises_one_line(re.escape(f"video {videos['short']} (listed in list.txt) has 5 frames; uniform sampling "
                                   f"of 8 frames needs at least 8"), videos["short"]):
        field(count=8, num_frames=8).decode((videos["short"], 0), "list.txt")
    with raises_one_line("dense sampling of 6 frames at stride 2 needs at least 6", videos["short"]):
        field(count=6, sampling="dense", num_frames=6, stride=2).decode((videos["short"], 0), "list.txt")
    audio = tmp_path / "audio.wav"
    with av.open(str(audio), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with raises_one_line("has no video stream; expected a video file with a video track", audio):
        field().decode((audio, 0), "list.txt")


def test_without_pyav_a_video_says_how_to_install_it(tmp_path, videos, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    with raises_one_line(r"needs PyAV.*pip install adaptbench\[video\] \(or pip install av\)", videos["mp4"]):
        field().decode((videos["mp4"], 0), "list.txt")


def test_bad_rawframes_folders_are_one_line_naming_folder_or_jpg_and_list(tmp_path):
    folder = write_rawframes(tmp_path / "v1", frames=6)
    (folder / "img_00003.jpg").unlink()
    with raises_one_line(re.escape(f"rawframes folder {folder} (listed in list.txt) lacks img_00003.jpg"), folder):
        field(count=3, num_frames=3).decode((folder, 0), "list.txt")
    write_rawframes(folder, frames=6)
    (folder / "img_00004.jpg").write_bytes(b"not a jpeg")
    with raises_one_line(re.escape(f"cannot read image {folder / 'img_00004.jpg'} (listed in list.txt)"), folder):
        field(count=6, num_frames=3).decode((folder, 0), "list.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with raises_one_line("holds no img_00001.jpg", empty):
        field().decode((empty, 0), "list.txt")
    short = write_rawframes(tmp_path / "short", frames=2)
    with raises_one_line(re.escape(f"rawframes folder {short} (listed in list.txt) has 2 frames; uniform sampling"),
                         short):
        field().decode((short, 0), "list.txt")


def test_a_missing_folder_or_a_wrong_total_names_the_list_line_when_decoded(tmp_path):
    base = tmp_path / "ds"
    write_rawframes(base / "rawframes/a", 6)
    write_rawframes(base / "rawframes/b", 6)
    listed = write(base / "train.txt", "a 6 0\nb 7 1\n")
    samples = samples_of(tmp_path, "mmaction_rawframes", "ds", {"lists": {"train": "train.txt"}}, "train")
    fields = {"frames": field(count=3, num_frames=3), "labels": LabelField()}
    stale = re.escape(f"{listed}:2: the list says 7 frames, but rawframes folder {base / 'rawframes/b'} holds 6")
    with raises_one_line(stale, f"{listed}:2"):
        decoded_split(samples, fields, task="video/t", split="train", source=samples.source, where=samples.where)
    with raises_one_line(stale, f"{listed}:2"):
        check_images_exist(samples)  # what a run's validation calls
    write(listed, "a 6 0\ngone 6 1\n")
    samples = samples_of(tmp_path, "mmaction_rawframes", "ds", {"lists": {"train": "train.txt"}}, "train")
    with raises_one_line(re.escape(f"path {base / 'rawframes/gone'} listed in {listed} does not exist ({listed}:2;"),
                         f"{listed}:2"):
        decoded_split(samples, fields, task="video/t", split="train", source=samples.source, where=samples.where)


def test_a_missing_video_names_the_list_line_when_decoded(tmp_path, videos):
    listed = write(tmp_path / "ds" / "train.txt", f"{videos['mp4']} 0\ngone.mp4 1\n")
    samples = samples_of(tmp_path, "mmaction_video", "ds", VIDEO_OPTIONS, "train")
    fields = {"frames": field(), "labels": LabelField()}
    with raises_one_line(re.escape(f"path {tmp_path / 'ds' / 'gone.mp4'} listed in {listed} does not exist"),
                         f"{listed}:2"):
        decoded_split(samples, fields, task="video/t", split="train", source=samples.source, where=samples.where)
