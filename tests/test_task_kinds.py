"""The task layer: kinds dispatch, the shared module (schedule, hooks, NaN check), heads,
readers, evaluate-only runs, precision, gradient checkpointing and the learning check."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from adaptbench.adapters import build_adapter
from adaptbench.backbones import load_backbone
from adaptbench.errors import AdaptbenchError
from adaptbench.registry import HEADS, READERS, TASK_KINDS, TASKS
from adaptbench.runner.train import RunPlace, quiet_lightning, run, trainer_for
from adaptbench.config import RunConfig, RunPolicy
from adaptbench.tasks.heads import build_head
from adaptbench.tasks.kinds import task_kind
from adaptbench.tasks.modules.base import warmup_cosine

quiet_lightning()


def test_builtin_kinds_heads_and_readers_are_registered_lazily():
    assert "classification" in TASK_KINDS.names()
    assert "linear" in HEADS.names()
    assert {"vtab1k", "fgvc"} <= set(READERS.names())
    assert all(TASK_KINDS.require(TASKS.get(name).kind) for name in TASKS.names())


# -- the schedule -----------------------------------------------------------------------------
def test_warmup_cosine_at_its_first_warmup_end_and_last_step():
    factor = warmup_cosine(warmup_steps=4, total_steps=20)
    assert factor(0) == pytest.approx(1 / 5)  # the first step already moves
    assert factor(3) == pytest.approx(4 / 5)
    assert factor(4) == pytest.approx(1.0)  # warm-up ends at the base rate
    assert factor(12) == pytest.approx(0.5)  # half way through the cosine
    assert factor(19) == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 16)))
    assert factor(20) == pytest.approx(0.0)


def _tiny_module(adapter_name="linear", options=None, lr=0.1, warmup_epochs=1):
    backbone = load_backbone("vit_tiny_test")
    adapter = build_adapter(adapter_name, backbone, options or {})
    spec = TASKS.get("micro/digits")
    settings = {"lr": lr, "weight_decay": 0.0, "warmup_epochs": warmup_epochs, "label_smoothing": 0.0, "pool": None}
    return task_kind(spec.kind).build_module(backbone, adapter, build_head("linear", backbone, spec), spec, settings)


def _loader(batches=4, batch=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batches * batch, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (batches * batch,), generator=generator)
    return DataLoader(TensorDataset(images, labels), batch_size=batch)


def test_the_optimiser_steps_the_learning_rate_the_schedule_says():
    module = _tiny_module(lr=0.1, warmup_epochs=1)
    seen = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = trainer_for(RunPlace(accelerator="cpu"), "32-true", max_epochs=3, callbacks=[Record()])
    trainer.fit(module, _loader(batches=4))
    factor = warmup_cosine(4, 12)
    assert seen == pytest.approx([0.1 * factor(step) for step in range(12)])
    # the optimiser holds exactly the adapter's declared tensors and the head
    [group] = trainer.optimizers[0].param_groups
    assert {id(p) for p in group["params"]} == {id(p) for p in module.trainable_parameters()}


# -- adapter hooks -------------------------------------------------------------------------------
class _Counting:
    """Wraps an adapter: counts hook calls and adds a known loss term."""

    def __init__(self, adapter, weight=0.25):
        self.adapter, self.weight = adapter, weight
        self.starts, self.steps, self.contexts = [], [], []

    def __getattr__(self, name):
        return getattr(self.adapter, name)

    def extra_loss(self, context):
        self.contexts.append(context)
        again = context.forward(context.inputs)  # a second forward is possible
        assert again.shape == context.outputs.shape
        return {"known": self.weight * context.outputs.pow(2).mean()}

    def on_train_start(self, total_steps):
        self.starts.append(total_steps)

    def on_train_batch_end(self, step):
        self.steps.append(step)


def test_every_step_adds_the_adapters_terms_logs_them_and_calls_its_hooks():
    module = _tiny_module()
    counting = _Counting(module.adapter)
    module.adapter = counting
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = trainer_for(RunPlace(accelerator="cpu"), "32-true", max_epochs=2, callbacks=[Record()])
    trainer.fit(module, _loader(batches=3))
    assert counting.starts == [6] and counting.steps == list(range(6))
    # the step's loss is the task's plus the term, computed on the same outputs
    context = counting.contexts[-1]
    expected = (context.loss + 0.25 * context.outputs.pow(2).mean()).detach()
    assert losses[-1] == pytest.approx(float(expected), rel=1e-5)
    assert "train_extra_known" in trainer.logged_metrics


def test_a_non_finite_loss_stops_the_run_with_its_step():
    module = _tiny_module()
    counting = _Counting(module.adapter, weight=float("nan"))
    module.adapter = counting
    trainer = trainer_for(RunPlace(accelerator="cpu"), "32-true", max_epochs=1)
    with pytest.raises(RuntimeError, match=r"training loss is nan at step 0 \(found at the check in epoch 0\)"):
        trainer.fit(module, _loader())


# -- runs ----------------------------------------------------------------------------------------
def test_a_linear_probe_on_digits_learns_in_two_epochs(tmp_path):
    """vit_micro's features + a linear head: far above chance (10%) after 2 epochs."""
    config = RunConfig(task="micro/digits", backbone="vit_micro", adapter="linear", epochs=2, lr=0.01,
                       batch_size=64)
    record = run(config, RunPlace(out_dir=tmp_path, accelerator="cpu", save_adapter=False)).record
    assert record.primary_score() > 0.5  # measured 0.85


def test_epochs_zero_evaluates_without_training(tmp_path):
    config = RunConfig(task="micro/digits", backbone="vit_tiny_test", adapter="lora", epochs=0, batch_size=250)
    record = run(config, RunPlace(out_dir=tmp_path, accelerator="cpu")).record
    assert record.config["epochs"] == 0 and record.config["warmup_epochs"] == 0
    assert set(record.train_info.metrics) == {"test"} and record.primary_score() is not None
    assert record.train_info.train_images_per_s is None


def test_tune_validates_once_at_the_end_by_default_and_every_epoch_gives_the_same_score(tmp_path):
    config = RunConfig(task="micro/digits", backbone="vit_tiny_test", adapter="lora", epochs=2, batch_size=250,
                       stage="tune")
    at_end = run(config, RunPlace(out_dir=tmp_path / "a", accelerator="cpu", save_adapter=False)).record
    every = run(config, RunPlace(out_dir=tmp_path / "b", accelerator="cpu", save_adapter=False,
                                 policy=RunPolicy(validation="every_epoch"))).record
    assert at_end.run_id == every.run_id  # the policy is not part of the identity
    assert at_end.primary_score() == pytest.approx(every.primary_score(), abs=1e-6)
    assert at_end.run_info.policy["validation"] == "end"


def test_a_conformance_case_runs_under_bf16_mixed_on_cpu(tmp_path):
    config = RunConfig(task="micro/digits", backbone="vit_tiny_test", adapter="lora", epochs=1, batch_size=250,
                       precision="bf16-mixed")
    record = run(config, RunPlace(out_dir=tmp_path, accelerator="cpu")).record
    assert record.status == "success" and math.isfinite(record.primary_score())
    assert record.config["precision"] == "bf16-mixed"


def test_gradient_checkpointing_gives_the_same_gradients():
    images = torch.randn(2, 3, 32, 32)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        backbone = load_backbone("vit_tiny_test", options={"grad_checkpointing": checkpointing})
        adapter = build_adapter("vpt_deep", backbone, {"num_tokens": 2})  # changes the geometry
        backbone.train()
        backbone(images).pow(2).sum().backward()
        grads.append({name: p.grad.clone() for name, p in adapter.trainable_parameters().items()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_a_backbone_option_its_family_cannot_honour_is_one_line():
    with pytest.raises(AdaptbenchError, match=r"backbone option keep_projection=False does not apply to vit_tiny_test"):
        load_backbone("vit_tiny_test", options={"keep_projection": False})
    assert load_backbone("vit_tiny_test", options={"img_size": 48}).data_config.input_size[-1] == 48


def test_the_runner_and_eval_import_no_kind_by_name():
    """They dispatch on the task's kind: no module of the runner, the API or the CLI imports one."""
    import ast
    from pathlib import Path

    import adaptbench

    package = Path(adaptbench.__file__).parent
    sources = [*sorted((package / "runner").glob("*.py")), package / "api.py", package / "cli.py"]
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "classification" not in (node.module or ""), f"{path.name} imports {node.module}"


def test_a_wrong_data_root_answers_before_torch_is_imported(tmp_path):
    """Names and split files are checked first: a wrong --data-root costs the CLI's start-up."""
    import subprocess
    import sys

    code = ("import sys\nfrom adaptbench.cli import main\n"
            "rc = main(['train', '--task', 'vtab1k/cifar', '--data-root', sys.argv[1], '--backbone',"
            " 'timm:vit_base_patch16_224.augreg_in21k', '--adapter', 'lora'])\n"
            "print(rc, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "nope")], capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
    assert "nope/cifar does not exist" in result.stderr
