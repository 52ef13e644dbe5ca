"""The fast path: the decode-once cache, batches on the device, cached features, precision and
policy defaults, no host sync per step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from adaptbench.backbones.base import DataConfig
from adaptbench.config import RunConfig, RunPolicy
from adaptbench.datasets import decoded as decoded_module
from adaptbench.datasets.decoded import ImageField, LabelField, decoded_split
from adaptbench.datasets.images import SampleList
from adaptbench.errors import AdaptbenchError
from adaptbench.registry import TASKS
from adaptbench.runner.features import training_differs, why_not_cached
from adaptbench.runner.train import RunPlace, quiet_lightning, run
from adaptbench.tasks.batches import NormalizeImages, SplitBatches
from adaptbench.tasks.kinds import task_kind

quiet_lightning()


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A cache of this test's own (the session's is shared by every test)."""
    monkeypatch.setenv("ADAPTBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_images(folder: Path, count: int = 6) -> SampleList:
    """Images of assorted sizes and modes (grey, palette, RGBA, odd sizes), as a split lists them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    samples = []
    for index in range(count):
        height, width = [(17, 23), (40, 40), (9, 64), (32, 32), (50, 31), (8, 8)][index % 6]
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        image = [image, image.convert("L"), image.convert("P"), image.convert("RGBA")][index % 4]
        path = folder / f"{index:03d}.png"
        image.save(path)
        samples.append((path, index % 3))
    return SampleList(samples, str(folder / "list.txt"), [f"{folder / 'list.txt'}:{i + 1}" for i in range(count)])


def fields(size=(16, 16), interpolation="bicubic"):
    return {"images": ImageField(size, interpolation), "labels": LabelField()}


def decode(samples, **kwargs):
    return decoded_split(samples, kwargs.pop("fields", None) or fields(), task="t/x", split="test",
                         source=samples.source, where=samples.where, **kwargs)


# -- decode once, bit-identical ------------------------------------------------------------------
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
@pytest.mark.parametrize("size", [(16, 16), (24, 20)])
def test_decoded_then_normalised_on_the_device_equals_the_pil_path_bit_for_bit(tmp_path, interpolation, size):
    samples = write_images(tmp_path / "images")
    config = DataConfig(size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), interpolation)
    pil_path = T.Compose([T.Resize(size, interpolation=T.InterpolationMode(interpolation), antialias=True),
                          T.ToTensor(), T.Normalize(config.mean, config.std)])
    expected = torch.stack([pil_path(Image.open(path).convert("RGB")) for path, _ in samples])
    cached = decode(samples, fields=fields(size, interpolation))
    batch = torch.from_numpy(np.array(cached.arrays["images"]))
    assert batch.dtype == torch.uint8 and batch.shape == (len(samples), *size, 3)
    assert torch.equal(NormalizeImages(config.mean, config.std)(batch), expected)
    assert cached.arrays["labels"].tolist() == [label for _, label in samples]


def test_a_split_is_decoded_and_checked_once_then_memory_mapped(tmp_path, monkeypatch):
    samples = write_images(tmp_path / "images")
    first = decode(samples)
    calls = []
    monkeypatch.setattr(ImageField, "decode", lambda *args: calls.append(args))
    monkeypatch.setattr(decoded_module, "check_images_exist", lambda *args: calls.append(args))
    again = decode(samples)
    assert calls == [] and again.folder == first.folder
    assert isinstance(again.arrays["images"], np.memmap) and not again.arrays["images"].flags.writeable


def test_the_key_holds_size_interpolation_and_the_file_list(tmp_path):
    samples = write_images(tmp_path / "images")
    base = decode(samples).folder
    assert decode(samples, fields=fields((8, 8))).folder != base
    assert decode(samples, fields=fields(interpolation="bilinear")).folder != base
    relabelled = SampleList([(path, (label + 1) % 3) for path, label in samples], samples.source, samples.where)
    assert decode(relabelled).folder != base
    assert decode(SampleList(samples[:-1], samples.source)).folder != base


@pytest.mark.parametrize("damage", ["no manifest", "another key", "short array", "missing array"])
def test_a_stale_or_half_written_cache_is_rebuilt(tmp_path, damage, own_cache):
    samples = write_images(tmp_path / "images")
    folder = decode(samples).folder
    good = np.array(np.load(folder / "images.npy"))
    if damage == "no manifest":
        (folder / "manifest.json").unlink()
    elif damage == "another key":
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["key"]["samples"] = "0" * 64
        (folder / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "short array":
        np.save(folder / "images.npy", good[:-1])
    else:
        (folder / "labels.npy").unlink()
    rebuilt = decode(samples)
    assert rebuilt.folder == folder and np.array_equal(rebuilt.arrays["images"], good)
    assert [path.name for path in folder.parent.iterdir()] == [folder.name]  # nothing set aside remains


SLOW_BUILD = textwrap.dedent("""
    import sys, time
    from adaptbench.datasets.decoded import ImageField, LabelField, decoded_split
    from adaptbench.datasets.images import SampleList

    real_decode = ImageField.decode

    def slow_decode(self, sample, source):
        print("decoding", flush=True)
        time.sleep(0.05)
        return real_decode(self, sample, source)

    ImageField.decode = slow_decode
    samples = SampleList([(sys.argv[1], 0)] * 400, "list.txt")
    decoded_split(samples, {"images": ImageField((8, 8), "bicubic"), "labels": LabelField()},
                  task="t/x", split="train", source="list.txt", workers=1)
""")


def test_a_build_killed_with_sigkill_loses_nothing_else_and_the_next_build_completes(tmp_path, own_cache):
    samples = write_images(tmp_path / "images")
    other = decode(samples).folder  # another split's cache, there before the killed build
    child = subprocess.Popen([sys.executable, "-c", SLOW_BUILD, str(samples[0][0])], stdout=subprocess.PIPE,
                             text=True)  # inherits ADAPTBENCH_CACHE
    assert child.stdout.readline().strip() == "decoding"  # mid-build
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    parent = other.parent
    assert [path.name for path in parent.iterdir() if path.name.startswith("train")] == []  # no half folder
    assert any(path.name.startswith(".train") for path in parent.iterdir())  # only its staging
    # The next build of that split removes the staging folder and completes; the other is untouched.
    rebuilt = decoded_split(SampleList([(samples[0][0], 0)] * 400, "list.txt"), fields((8, 8)), task="t/x",
                            split="train", source="list.txt")
    assert len(rebuilt) == 400 and not any(path.name.startswith(".") for path in parent.iterdir())
    assert decode(samples).folder == other


def test_a_missing_image_is_named_with_its_line_when_the_split_is_first_decoded(tmp_path):
    samples = write_images(tmp_path / "images")
    samples[2][0].unlink()
    with pytest.raises(AdaptbenchError, match=rf"image {samples[2][0]} listed in .*list.txt does not exist "
                                              rf"\(.*list.txt:3; 1 of the 6 listed images are missing\)"):
        decode(samples)


def test_builders_of_one_split_take_turns_and_the_second_builds_nothing(tmp_path, monkeypatch):
    import threading

    samples = write_images(tmp_path / "images")
    calls = []
    real = ImageField.decode

    def counting(self, sample, source):
        calls.append(sample)
        time.sleep(0.01)
        return real(self, sample, source)

    monkeypatch.setattr(ImageField, "decode", counting)
    results = []
    threads = [threading.Thread(target=lambda: results.append(decode(samples).folder)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(calls) == len(samples)


# -- batches ----------------------------------------------------------------------------------
def test_shuffled_batches_come_in_the_order_the_seeded_data_loader_drew(tmp_path):
    samples = SampleList([(Path(f"/x/{i}.png"), i) for i in range(50)])
    split = decoded_module.CachedArrays(tmp_path, {"labels": np.arange(50)})
    batches = SplitBatches(split, ("labels",), 8, shuffle=True, seed=3)
    loader = torch.utils.data.DataLoader([label for _, label in samples], batch_size=8, shuffle=True,
                                         generator=torch.Generator().manual_seed(3))
    iter(batches)  # Lightning checks a loader with iter(): that must not consume an epoch
    for _ in range(3):  # epoch after epoch
        assert [batch[0].tolist() for batch in batches] == [batch.tolist() for batch in loader]
    assert len(batches) == len(loader) == 7


def test_evaluation_batches_stream_in_order(tmp_path):
    split = decoded_module.CachedArrays(tmp_path, {"labels": np.arange(10), "x": np.arange(20).reshape(10, 2)})
    batches = SplitBatches(split, ("x", "labels"), 4, shuffle=False, seed=0)
    got = list(batches)
    assert [b[1].tolist() for b in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert torch.equal(got[2][0], torch.tensor([[16, 17], [18, 19]]))


# -- cached features ----------------------------------------------------------------------------
def test_the_linear_probe_trains_on_cached_features_with_the_same_result(tmp_path):
    config = RunConfig(task="micro/digits", backbone="vit_micro", adapter="linear", epochs=2, lr=0.01, batch_size=64)
    cached = run(config, RunPlace(out_dir=tmp_path / "a", accelerator="cpu", save_adapter=False)).record
    images = run(config, RunPlace(out_dir=tmp_path / "b", accelerator="cpu", save_adapter=False,
                                  policy=RunPolicy(feature_cache=False))).record
    assert cached.train_info.data["inputs"] == "cached backbone features"
    assert images.train_info.data["inputs"].startswith("decoded images (features not cached: turned off")
    assert cached.run_id == images.run_id  # a policy, not part of the identity
    # The same maths on the same data order: only float reassociation between batch shapes.
    assert cached.primary_score() == pytest.approx(images.primary_score(), abs=0.01)
    assert cached.train_info.metrics["train800val200"]["loss"] == pytest.approx(
        images.train_info.metrics["train800val200"]["loss"], rel=1e-3)
    again = run(config, RunPlace(out_dir=tmp_path / "c", accelerator="cpu", save_adapter=False)).record
    assert again.primary_score() == cached.primary_score()  # read back from the feature cache


def test_features_are_cached_only_where_they_stand_in_exactly_for_the_backbone():
    from adaptbench.adapters import build_adapter
    from adaptbench.backbones import load_backbone
    from adaptbench.tasks.heads import build_head

    spec = TASKS.get("micro/digits")
    kind = task_kind(spec.kind)
    settings = {"lr": 0.1, "weight_decay": 0.0, "warmup_epochs": 0, "pool": None}

    def module_for(adapter_name):
        backbone = load_backbone("vit_tiny_test")
        adapter = build_adapter(adapter_name, backbone, {})
        return kind.build_module(backbone, adapter, build_head("linear", backbone, spec), spec, settings), adapter

    linear, adapter = module_for("linear")
    assert why_not_cached(linear, adapter, kind) is None
    for name in ("lora", "bitfit", "full", "vpt_deep"):
        module, adapter = module_for(name)
        assert "trains, wraps or perturbs the backbone" in why_not_cached(module, adapter, kind)
    linear.backbone.blocks[0].drop_path1 = __import__("timm").layers.DropPath(0.1)
    assert training_differs(linear.backbone).startswith("drop-path 0.1")


# -- precision, policy ------------------------------------------------------------------------
def test_precision_auto_is_fp32_on_the_cpu_and_bf16_mixed_on_cuda(monkeypatch):
    config = RunConfig(task="micro/digits", backbone="vit_micro", adapter="lora")
    assert config.precision == "auto"
    assert config.for_accelerator("cpu").precision == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert config.for_accelerator("auto").precision == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert config.for_accelerator("gpu").precision == "16-mixed"
    assert config.model_copy(update={"precision": "32-true"}).for_accelerator("gpu").precision == "32-true"


def test_the_policy_is_deterministic_on_the_cpu_and_fast_on_cuda():
    assert RunPolicy().for_device(cuda=False).model_dump(include={"deterministic", "matmul_precision"}) == {
        "deterministic": True, "matmul_precision": "highest"}
    assert RunPolicy().for_device(cuda=True).model_dump(include={"deterministic", "matmul_precision"}) == {
        "deterministic": False, "matmul_precision": "high"}
    assert RunPolicy(deterministic=True).for_device(cuda=True).deterministic is True


def test_a_record_holds_the_precision_and_policy_it_ran_with(tmp_path):
    config = RunConfig(task="micro/digits", backbone="vit_tiny_test", adapter="lora", epochs=1, batch_size=250)
    record = run(config, RunPlace(out_dir=tmp_path, accelerator="cpu", save_adapter=False)).record
    assert record.config["precision"] == "32-true"
    assert record.run_info.policy["deterministic"] is True and record.run_info.policy["matmul_precision"] == "highest"
    timings = record.train_info.timings
    assert {"decode_s", "fit_s", "eval_s"} <= set(timings) and record.train_info.eval_images_per_s > 0


@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
def test_half_precision_parameters_are_refused_for_an_adapter_with_fp32_state(tmp_path, precision):
    from adaptbench import api

    config = RunConfig(task="micro/digits", backbone="vit_tiny_test", adapter="mask_tuning", precision=precision)
    with pytest.raises(AdaptbenchError, match=rf"adapter mask_tuning with precision {precision}: its scores .*; "
                                              r"expected a precision that keeps parameters in float32"):
        api.run_checked(config, RunPlace(out_dir=tmp_path, accelerator="cpu"))
    assert not list(tmp_path.iterdir())


def test_a_spec_giving_an_fp32_state_adapter_half_parameters_is_refused(tmp_path):
    from adaptbench.runner.spec import load_spec
    from adaptbench.runner.validate import problems, validate_spec

    path = tmp_path / "spec.yaml"
    path.write_text("name: s\nbackbones: [vit_tiny_test]\ntasks: [micro/digits]\n"
                    "adapters:\n  - name: mask_tuning\n    train: {precision: bf16-true}\n  - lora\n")
    found = problems(validate_spec(load_spec(path)))
    assert len(found) == 1 and "adapter mask_tuning with precision bf16-true" in found[0]


def test_compile_is_a_policy_switch_applied_to_the_backbone(tmp_path, monkeypatch):
    from adaptbench.backbones.base import Backbone

    compiled = []
    monkeypatch.setattr(Backbone, "compile", lambda self, *a, **k: compiled.append(self.name))
    config = RunConfig(task="micro/digits", backbone="vit_tiny_test", adapter="lora", epochs=1, batch_size=250)
    run(config, RunPlace(out_dir=tmp_path, accelerator="cpu", save_adapter=False, policy=RunPolicy(compile=True)))
    assert compiled == ["vit_tiny_test"]


# -- no host synchronisation per step ---------------------------------------------------------
def _host_reads_during_fit(steps: int, monkeypatch) -> int:
    """How often tensor values were read on the host while fitting ``steps`` steps (on CUDA each
    read waits for the device)."""
    import lightning as L

    from adaptbench.adapters import build_adapter
    from adaptbench.backbones import load_backbone
    from adaptbench.tasks.heads import build_head

    spec = TASKS.get("micro/digits")
    kind = task_kind(spec.kind)
    backbone = load_backbone("vit_tiny_test")
    adapter = build_adapter("lora", backbone, {})
    settings = {"lr": 0.01, "weight_decay": 0.0, "warmup_epochs": 0, "pool": None}
    module = kind.build_module(backbone, adapter, build_head("linear", backbone, spec), spec, settings)
    images = torch.randint(0, 256, (steps * 4, 32, 32, 3), dtype=torch.uint8).numpy()
    split = decoded_module.CachedArrays(Path("."), {"images": images, "labels": np.arange(steps * 4) % 10})
    module.set_inputs(NormalizeImages((0.5,) * 3, (0.5,) * 3))
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    reads = []

    def counted(original):
        def read(self, *args, **kwargs):
            # Adam's step counters live on the host even on CUDA (reading them waits for nothing).
            if not any("torch/optim/" in frame.filename for frame in traceback.extract_stack(limit=6)):
                reads.append(1)
            return original(self, *args, **kwargs)
        return read

    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, counted(getattr(torch.Tensor, name)))
    trainer.fit(module, SplitBatches(split, ("images", "labels"), 4, shuffle=True, seed=0))
    monkeypatch.undo()
    return len(reads)


def test_training_reads_no_tensor_on_the_host_per_step(monkeypatch):
    # Whatever is read once per epoch (the non-finite flag, the epoch's logged means) is the
    # same for 3 steps as for 12: nothing is read per step.
    assert _host_reads_during_fit(12, monkeypatch) == _host_reads_during_fit(3, monkeypatch)


def test_a_cache_root_that_cannot_be_a_folder_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTBENCH_CACHE", str(tmp_path / "a-file" / "cache"))
    (tmp_path / "a-file").write_text("")
    samples = write_images(tmp_path / "images")
    with pytest.raises(AdaptbenchError, match=r"^cannot create the cache folder .*a-file/cache/decoded/v1/t__x "
                                              r"\(Not a directory\); expected a writable folder"):
        decode(samples)
