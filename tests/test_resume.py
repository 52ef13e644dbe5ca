"""Resume checkpoints (``adaptbench/runner/resume.py``): a cell killed mid-training resumes from
its adapter-only checkpoint and ends with exactly the metrics of an uninterrupted run.

The preemption is real: the cell runs in a subprocess that SIGKILLs itself in its third epoch
(the faulty plugin's ``preempt`` mode, whose kill point is an environment variable, so the
killed run, its resumed run and the reference run are one cell). The other runs are
in-process: 3 epochs of the 2-block test ViT take about a second.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import lightning as L
import pytest
import torch

from adaptbench.config import RunConfig
from adaptbench.runner.resume import KEY, checkpoint_location, resume_keys
from adaptbench.runner.store import ResultStore
from adaptbench.runner.train import RunPlace, cell_id, quiet_lightning, run

FAULTY_PLUGIN = Path(__file__).parent / "plugins" / "faulty_plugin.py"
STEPS_PER_EPOCH = 4  # micro/texture: 800 training images in batches of 250


def run_id_of(config: RunConfig) -> str:
    """The cell id ``run`` gives ``config`` (its "auto" precision resolved first)."""
    return cell_id(config.for_accelerator("auto"))


def metrics(result) -> dict:
    return result.record.train_info.metrics


def resume_files(out: Path) -> list[str]:
    folder = out / ".resume"
    return sorted(str(path.relative_to(out)) for path in folder.rglob("*") if path.is_file()) if folder.exists() else []


@pytest.fixture(autouse=True)
def _quiet():
    quiet_lightning()



def test_a_cell_killed_mid_training_resumes_from_its_epoch_and_ends_as_an_uninterrupted_run(tmp_path, faulty_plugin):
    config = RunConfig(task="micro/texture", backbone="vit_tiny_test", adapter="fault",
                       adapter_options={"mode": "preempt"}, epochs=3, batch_size=250, seed=0,
                       backbone_options={"drop_path": 0.1})  # drop-path draws from torch's global generator
    run_id = run_id_of(config)
    killed_out, reference_out = tmp_path / "killed", tmp_path / "reference"
    code = f"""
        from adaptbench.config import RunConfig
        from adaptbench.registry import load_plugin_file
        from adaptbench.runner.train import RunPlace, run

        load_plugin_file({str(FAULTY_PLUGIN)!r})
        config = RunConfig.model_validate({config.model_dump(mode="json")!r})
        run(config, RunPlace(out_dir={str(killed_out)!r}, resume=True))
    """
    # killed after optimiser step 10: two epochs done (their checkpoint written), two steps into the third
    env = {**os.environ, "ADAPTBENCH_TEST_PREEMPT_AT_STEP": str(2 * STEPS_PER_EPOCH + 2)}
    with subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as killed:
        reference = run(config, RunPlace(out_dir=reference_out))  # meanwhile; resume=False: the default
        output, _ = killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL, output
    assert not list(killed_out.glob("*.json"))  # no record: the cell did not end
    location = Path(checkpoint_location(ResultStore.at(killed_out), run_id))
    assert resume_files(killed_out) == [f".resume/{run_id}/last.ckpt"]

    # adapter-only, and readable by the weights-only unpickler
    checkpoint = torch.load(location, map_location="cpu", weights_only=True)
    assert checkpoint[KEY]["epochs_done"] == 2 and checkpoint[KEY]["run_id"] == run_id
    saved = set(checkpoint["state_dict"])
    assert len(saved) == 3 and all(key.endswith(".scale") or key.startswith("head.") for key in saved), saved
    assert {"optimizer_states", "lr_schedulers", "loops"} <= set(checkpoint)
    assert "hyper_parameters" not in checkpoint

    resumed = run(config, RunPlace(out_dir=killed_out, resume=True))
    assert resumed.record.run_id == reference.record.run_id == run_id
    assert resumed.record.train_info.timings["resumed_from_epoch"] == 2
    assert "resumed_from_epoch" not in reference.record.train_info.timings
    assert metrics(resumed) == metrics(reference), (metrics(resumed), metrics(reference))
    assert resume_files(killed_out) == [] and not location.parent.exists()  # gone once the record is written
    assert not (reference_out / ".resume").exists()  # resume=False writes no checkpoint


class FailAtEpoch(L.Callback):
    """Raises when epoch ``epoch`` (0-based) starts: a cell failing after that many epochs."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("deliberate failure")


def test_a_failed_cell_keeps_its_checkpoint_and_its_retry_resumes_on_cached_features_in_a_url_store(tmp_path):
    """The linear probe trains on cached backbone features (another batch source, the same
    seeded order); the store is an fsspec URL (the checkpoint goes through a local copy)."""
    config = RunConfig(task="micro/texture", backbone="vit_tiny_test", adapter="linear", epochs=3,
                       batch_size=250, seed=0)
    run_id = run_id_of(config)
    url = f"memory://adaptbench-test-resume-{uuid.uuid4().hex}/results"
    store = ResultStore.at(url)
    try:
        with pytest.raises(RuntimeError, match="deliberate failure"):
            run(config, RunPlace(out_dir=url, resume=True), callbacks=[FailAtEpoch(2)])
        assert store.read_record(run_id).train_info.status == "failed"
        assert store.exists(checkpoint_location(store, run_id))  # a failed cell keeps it

        retried = run(config, RunPlace(out_dir=url, resume=True))
        assert not store.exists(store.resume_location(run_id))
    finally:
        store.remove(url, recursive=True)
    reference = run(config, RunPlace(out_dir=tmp_path, resume=True))  # saves each epoch, resumes nothing
    assert retried.record.train_info.data["inputs"] == reference.record.train_info.data["inputs"] \
        == "cached backbone features"
    assert retried.record.train_info.timings["resumed_from_epoch"] == 2
    assert "resumed_from_epoch" not in reference.record.train_info.timings
    assert metrics(retried) == metrics(reference)
    assert resume_files(tmp_path) == []


class Payload:
    """Unpickling this runs code (what the weights-only loader must refuse)."""

    def __reduce__(self):
        return (Path.touch, (Path(os.environ["PAYLOAD_MARK"]),))


def test_a_checkpoint_that_is_not_ours_is_ignored_with_a_warning_and_runs_no_code(tmp_path, monkeypatch):
    config = RunConfig(task="micro/texture", backbone="vit_tiny_test", adapter="linear", epochs=2,
                       batch_size=250, seed=0)
    location = Path(checkpoint_location(ResultStore.at(tmp_path / "out"), run_id_of(config)))
    location.parent.mkdir(parents=True)
    mark = tmp_path / "payload-ran"
    monkeypatch.setenv("PAYLOAD_MARK", str(mark))
    torch.save({"state_dict": {}, "evil": Payload()}, location)  # a pickle with code in it
    with pytest.warns(UserWarning, match="cannot be read.*from its start"):
        result = run(config, RunPlace(out_dir=tmp_path / "out", resume=True))
    assert not mark.exists()
    assert result.record.train_info.status == "success"
    assert "resumed_from_epoch" not in result.record.train_info.timings
    assert not location.exists()
    pickle.loads(pickle.dumps(Payload()))  # the payload is real: unpickled freely, it runs
    assert mark.exists()


def test_resume_keys_are_the_trained_tensors_and_leave_out_the_frozen_backbone(tmp_path):
    from adaptbench.runner.train import _prepare, resolved_config

    config = RunConfig(task="micro/texture", backbone="vit_tiny_test", adapter="bitfit", epochs=1, batch_size=250)
    module = _prepare(config, RunPlace(out_dir=tmp_path), resolved_config(config)).module
    kept = resume_keys(module)
    assert kept == {name for name, param in module.named_parameters() if param.requires_grad}
    assert {key for key in kept if not key.startswith("head.")} == \
        {f"backbone.{name}" for name, _ in module.backbone.named_parameters() if name.endswith("bias")}
    sealed = {id(param) for param in module.backbone.sealed_parameters()}
    frozen = {name for name, param in module.named_parameters() if id(param) in sealed and not param.requires_grad}
    assert frozen and not frozen & kept
