"""The video classification kind: clip sampling from cached frames, test views, temporal
pooling, scores averaged over views, and frames published to the backbone."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from adaptbench.backbones import load_backbone
from adaptbench.errors import AdaptbenchError
from adaptbench.tasks.kinds import task_kind
from adaptbench.tasks.modules.video import VideoModule
from adaptbench.tasks.video import ClipSampling, ClipTransform, crop_offsets


def spec(**options):
    return SimpleNamespace(name="video/test", options=options, num_classes=10)


# -- which cached frames a clip takes ------------------------------------------------------------
def test_uniform_sampling_takes_one_position_per_segment():
    sampling = ClipSampling(num_frames=4, sampling="uniform", positions=3, test_clips=3)
    assert sampling.cached_frames == 12
    torch.manual_seed(0)
    drawn = sampling.train_indices(500)
    segments = drawn // 3
    assert (segments == torch.arange(4)).all()  # frame i always comes from segment i
    assert set((drawn % 3).flatten().tolist()) == {0, 1, 2}  # every position is drawn
    # views take positions (v + 1/2) P / V: 0, 1, 2 of every segment
    assert sampling.view_indices().tolist() == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
    assert ClipSampling(num_frames=2, positions=4).view_indices().tolist() == [[2, 6]]


def test_dense_sampling_takes_consecutive_cached_frames():
    sampling = ClipSampling(num_frames=3, sampling="dense", stride=4, positions=5, test_clips=2)
    assert sampling.cached_frames == 7
    torch.manual_seed(0)
    drawn = sampling.train_indices(200)
    assert (drawn[:, 1:] - drawn[:, :-1] == 1).all()
    assert set(drawn[:, 0].tolist()) == set(range(5))
    assert sampling.view_indices().tolist() == [[0, 1, 2], [4, 5, 6]]
    assert ClipSampling(num_frames=3, sampling="dense", positions=5).view_indices().tolist() == [[2, 3, 4]]


def test_three_crops_lie_along_the_long_side():
    assert crop_offsets((8, 14), (8, 8), 3) == [(0, 0), (0, 3), (0, 6)]
    assert crop_offsets((14, 8), (8, 8), 3) == [(0, 0), (3, 0), (6, 0)]
    assert crop_offsets((8, 14), (8, 8), 1) == [(0, 3)]


@pytest.mark.parametrize("option, value, expected", [
    ("sampling", "random", "one of uniform, dense"), ("num_frames", 0, "an integer >= 1"),
    ("test_crops", 2, "1 or 3"), ("aspect", 0.5, "a number >= 1"), ("flip", "yes", "true or false"),
])
def test_bad_sampling_options_name_the_task_and_option(option, value, expected):
    with pytest.raises(AdaptbenchError, match=f"task 'video/test' option {option}=.*expected {expected}"):
        ClipSampling.of(spec(**{option: value}))


# -- the transform ---------------------------------------------------------------------------------
def numbered_frames(clips: int, count: int, size=(4, 6)) -> torch.Tensor:
    """uint8 (clips, count, H, W, 3) whose every pixel holds 10 * clip + frame (and column in
    channel 1), so that picked frames and crops can be read back."""
    frames = torch.zeros(clips, count, *size, 3, dtype=torch.uint8)
    for clip in range(clips):
        for frame in range(count):
            frames[clip, frame, ..., 0] = 10 * clip + frame
    frames[..., 1] = torch.arange(size[1], dtype=torch.uint8)
    return frames


def test_training_clips_follow_the_sampling_and_crop_within_the_frame():
    sampling = ClipSampling(num_frames=3, positions=2, aspect=1.5)
    transform = ClipTransform(sampling, (4, 4), mean=(0, 0, 0), std=(1 / 255,) * 3).train()
    torch.manual_seed(1)
    clips = transform(numbered_frames(5, 6))
    assert clips.shape == (5, 3, 3, 4, 4)
    picked = clips[:, :, 0, 0, 0].round().long()
    assert ((picked // 10) == torch.arange(5)[:, None]).all()  # frames of their own clip
    assert ((picked % 10) // 2 == torch.arange(3)).all()  # frame i from segment i
    columns = clips[:, 0, 1, 0, :].round()
    assert ((columns[:, 1:] - columns[:, :-1]) == 1).all() and columns.min() >= 0 and columns.max() <= 5


def test_evaluation_views_are_clips_times_crops_in_order():
    sampling = ClipSampling(num_frames=2, positions=2, test_clips=2, test_crops=3, aspect=1.5)
    transform = ClipTransform(sampling, (4, 4), mean=(0, 0, 0), std=(1 / 255,) * 3).eval()
    views = transform(numbered_frames(2, 4))
    assert views.shape == (2, 6, 2, 3, 4, 4)
    assert views[0, :, :, 0, 0, 0].round().tolist() == [[0, 2]] * 3 + [[1, 3]] * 3
    assert views[1, :, 0, 1, 0, 0].round().tolist() == [0, 1, 2, 0, 1, 2]  # left, centre, right crops


def test_flip_only_where_the_task_allows_it():
    frames = numbered_frames(20, 1, size=(4, 4))
    for flip, expect_flipped in ((False, False), (True, True)):
        transform = ClipTransform(ClipSampling(num_frames=1, flip=flip), (4, 4), (0, 0, 0), (1 / 255,) * 3).train()
        torch.manual_seed(0)
        first_column = transform(frames)[:, 0, 1, 0, 0].round()
        assert bool((first_column == 3).any()) is expect_flipped


# -- the module -------------------------------------------------------------------------------------
def video_module(num_classes: int = 10, **options):
    backbone = load_backbone("vit_tiny_test").eval()
    kind = task_kind("video_classification")
    task = SimpleNamespace(name="video/test", options={"num_frames": 3, **options}, num_classes=num_classes)
    head = torch.nn.Linear(backbone.anatomy.feature_dim, num_classes)
    settings = {"lr": 1e-3, "weight_decay": 0.0, "warmup_epochs": 0, "pool": None}
    from adaptbench.adapters import build_adapter

    adapter = build_adapter("linear", backbone, {})
    return kind.build_module(backbone, adapter, head, task, settings).eval(), kind, task


def test_frames_are_published_and_pooled_over_time():
    module, _, _ = video_module()
    seen = []
    module.backbone.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(module.backbone.geometry.current))
    clips = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        features = module.encode(clips)
        per_frame = module.backbone(clips.flatten(0, 1)).view(2, 3, -1)
    assert seen[0].frames == 3 and seen[0].batch == 6
    assert features.shape == (2, 1, module.backbone.anatomy.feature_dim)
    torch.testing.assert_close(features[:, 0], per_frame.mean(dim=1))


def test_view_scores_are_averaged():
    module, _, _ = video_module()
    views = torch.randn(2, 4, 3, 3, 32, 32)
    with torch.no_grad():
        logits = module(views)
        one_by_one = torch.stack([module(views[:, v]) for v in range(4)], dim=1).mean(dim=1)
    torch.testing.assert_close(logits, one_by_one)


def test_metrics_have_top5_only_with_more_than_five_classes():
    kind = task_kind("video_classification")
    assert set(kind.metrics(SimpleNamespace(num_classes=10))) == {"top1", "top5"}
    assert set(kind.metrics(SimpleNamespace(num_classes=4))) == {"top1"}


def test_features_are_cached_only_when_training_sees_the_evaluation_view():
    assert isinstance(video_module()[0], VideoModule)
    assert video_module()[0].why_not_cacheable() is None
    assert "drawn anew" in video_module(positions=2)[0].why_not_cacheable()
    assert "several views" in video_module(test_crops=3, aspect=1.0)[0].why_not_cacheable()


def test_throughput_counts_clips_and_frames():
    from adaptbench.runner.train import throughput

    kind = task_kind("video_classification")
    task = spec(num_frames=8, test_clips=2, test_crops=3)
    assert throughput(kind, task, 10.0, 4.0) == {"train_clips_per_s": 10.0, "train_frames_per_s": 80.0,
                                                 "eval_clips_per_s": 4.0, "eval_frames_per_s": 192.0}


# -- a whole run: the real mp4 reader, the decode cache, the runner, eval from the checkpoint ----------
def test_a_video_run_trains_records_and_evaluates_from_its_checkpoint(tmp_path):
    """A few-shot ST-Adapter run on the embedded mp4 task: the record holds the clip sampling,
    clips/s and frames/s, and ``eval`` from the saved adapter reproduces the test score."""
    pytest.importorskip("av")
    from adaptbench.config import RunConfig
    from adaptbench.runner.evaluate import evaluate_checkpoint
    from adaptbench.runner.train import RunPlace, quiet_lightning, run

    quiet_lightning()
    config = RunConfig(task="micro_video/count_events", backbone="vit_micro", adapter="st_adapter", epochs=2,
                       shots=4, batch_size=16, lr=0.005)
    result = run(config, RunPlace(out_dir=tmp_path, accelerator="cpu"))
    info = result.record.train_info
    assert info.data["clip_sampling"]["num_frames"] == 4 and info.data["train_size"] == 16
    rates = info.data["throughput"]
    assert rates["train_frames_per_s"] == pytest.approx(4 * rates["train_clips_per_s"])
    assert rates["eval_frames_per_s"] == pytest.approx(4 * rates["eval_clips_per_s"])
    assert "drawn anew" in info.data["inputs"]
    evaluated = evaluate_checkpoint(result.checkpoint_path, "micro_video/count_events", "vit_micro", batch_size=50,
                                    accelerator="cpu")
    assert evaluated["test"]["top1"] == pytest.approx(result.record.primary_score(), abs=1e-6)


# -- every registered adapter on clips -----------------------------------------------------------------
@pytest.mark.parametrize("adapter_name", __import__("adaptbench.registry", fromlist=["ADAPTERS"]).ADAPTERS.names())
def test_every_adapter_runs_on_clips_frame_wise_unless_it_is_temporal(adapter_name):
    """Image adapters run frame-wise on video (a clip's frames give what they give as images); a
    temporal adapter (``Adapter.temporal``) mixes the frames of a clip, never two clips."""
    from adaptbench.adapters import adapter_class

    from helpers import adapter_or_skip, clips, randomise

    torch.manual_seed(0)
    backbone = load_backbone("vit_tiny_test")
    adapter = adapter_or_skip(adapter_name, backbone, "vit_tiny_test")
    randomise(adapter, 3)
    backbone.eval()
    x = clips(batch=2, frames=4)
    with torch.no_grad():
        as_clips = backbone(x, frames=4)
        as_images = backbone(x)
        other_first_clip = backbone(torch.cat([x[:4], clips(seed=9, batch=1, frames=4)]), frames=4)
    assert torch.isfinite(as_clips).all()
    torch.testing.assert_close(other_first_clip[:4], as_clips[:4])  # clips never mix
    if adapter_class(adapter_name).temporal:
        assert not torch.allclose(as_clips, as_images, atol=1e-4)
    else:
        torch.testing.assert_close(as_clips, as_images)
