"""The Python API (``adaptbench.train``, ``run_matrix``, ``load_records``, ``leaderboard``):
lazy on import, checked like the CLI, and the same runs as the CLI's."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

import adaptbench
from adaptbench import AdaptbenchError

MICRO_LINEAR = {"task": "micro/digits", "backbone": "vit_micro", "adapter": "linear", "epochs": 1, "batch_size": 128,
                "lr": 0.01}


def python(code: str, cwd: Path | None = None) -> str:
    """Run ``code`` in a fresh interpreter; its stdout (it must succeed)."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            cwd=cwd, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One trained linear probe (vit_micro, micro/digits, 1 epoch): (record, results folder)."""
    out = tmp_path_factory.mktemp("api-results")
    with pytest.MonkeyPatch.context() as patch:  # the conftest's per-session cache, at module scope
        patch.setenv("ADAPTBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "adaptbench-cache"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        record = adaptbench.train(MICRO_LINEAR, out=out)
    return record, out


def test_import_stays_lazy_and_the_names_resolve():
    code = """
        import sys, adaptbench
        adaptbench.RunConfig, adaptbench.RunPolicy, adaptbench.BackboneOptions, adaptbench.RunRecord
        adaptbench.train, adaptbench.run_matrix, adaptbench.load_records, adaptbench.make_leaderboard
        print(sorted(m for m in ('torch', 'lightning', 'pandas') if m in sys.modules))
    """
    assert python(code).strip() == "[]"
    assert set(adaptbench.__all__) <= set(dir(adaptbench))
    from adaptbench.adapters import build_adapter
    from adaptbench.backbones import load_backbone

    assert adaptbench.load_backbone is load_backbone and adaptbench.build_adapter is build_adapter
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        adaptbench.nope  # noqa: B018


def test_train_returns_the_success_record_it_wrote(trained):
    record, out = trained
    assert isinstance(record, adaptbench.RunRecord)
    assert record.status == "success"
    assert record.train_info.metrics["test"]["top1"] > 0.4  # learnt: chance is 0.1 (measured 0.71)
    assert (out / f"{record.run_id}.json").is_file()
    assert adaptbench.RunRecord.read(out / f"{record.run_id}.json").run_id == record.run_id


@pytest.mark.parametrize("config,place,words", [
    ({**MICRO_LINEAR, "lr": -1}, {}, "lr: expected a positive number, got -1"),
    ({**MICRO_LINEAR, "epoch": 1}, {}, "epoch: unknown key"),
    ({k: v for k, v in MICRO_LINEAR.items() if k != "task"}, {}, "task: missing"),
    (MICRO_LINEAR, {"accelerator": "tpu"}, "accelerator: expected one of"),
    (MICRO_LINEAR, {"policy": {"validation": "often"}}, "policy.validation: expected one of"),
    ({**MICRO_LINEAR, "task": "micro/nope"}, {}, "unknown task 'micro/nope'"),
    ({**MICRO_LINEAR, "adapter": "lora", "adapter_options": {"r": 0}}, {}, "lora option r=0"),
])
def test_bad_input_is_one_line_before_any_backbone_is_built(monkeypatch, tmp_path, config, place, words):
    def built(*args, **kwargs):
        raise AssertionError("a backbone was built or a run started before the input was checked")

    monkeypatch.setattr("adaptbench.runner.train.run", built)
    monkeypatch.setattr("adaptbench.backbones.load_backbone", built)
    with pytest.raises(AdaptbenchError) as raised:
        adaptbench.train(config, out=tmp_path, **place)
    assert words in str(raised.value) and "\n" not in str(raised.value)
    assert not list(tmp_path.iterdir())  # no record


def test_train_takes_a_run_config(monkeypatch, tmp_path):
    seen = {}

    def run(config, place):
        seen.update(config=config, place=place)
        return SimpleNamespace(record="the record")

    monkeypatch.setattr("adaptbench.runner.train.check_environment", lambda *args: None)
    monkeypatch.setattr("adaptbench.runner.train.run", run)
    config = adaptbench.RunConfig(**MICRO_LINEAR)
    assert adaptbench.train(config, out=tmp_path, save_adapter=False, policy={"deterministic": False}) == "the record"
    assert seen["config"] == config.model_copy(update={"precision": "32-true"})  # "auto" resolved: no GPU here
    assert seen["place"].out_dir == tmp_path and not seen["place"].save_adapter
    assert seen["place"].policy == adaptbench.RunPolicy(deterministic=False)


def test_load_records_and_the_leaderboard(trained):
    record, out = trained
    frame = adaptbench.load_records(out)
    assert len(frame) == 1 and frame["adapter"][0] == "linear" and frame["status"][0] == "success"
    assert frame["score"][0] == pytest.approx(100 * record.train_info.metrics["test"]["top1"])
    assert adaptbench.load_records([str(out)])["run_id"].tolist() == [record.run_id]
    table = adaptbench.leaderboard([record], format="md")
    assert "| linear |" in table and "vit_micro" in table
    assert adaptbench.leaderboard(out, format="csv") == adaptbench.make_leaderboard([out], format="csv")
    assert "<table" in adaptbench.leaderboard([record], format="html")
    with pytest.raises(AdaptbenchError, match=r"^format 'xlsx': expected one of md, csv, tex, html$"):
        adaptbench.leaderboard([record], format="xlsx")
    with pytest.raises(AdaptbenchError, match="does not exist"):
        adaptbench.load_records(out / "missing")


@pytest.mark.parametrize("first", ["subpackage", "function"])
def test_leaderboard_is_the_subpackage_and_the_function_in_either_import_order(trained, first):
    _, out = trained
    subpackage = """
        import adaptbench.leaderboard as lb
        from adaptbench.leaderboard import build_leaderboards
        assert lb.build_leaderboards is build_leaderboards and lb.render_csv
    """
    function = f"""
        import adaptbench
        print(adaptbench.leaderboard([{str(out)!r}], format="csv").splitlines()[1])
    """
    steps = [subpackage, function] if first == "subpackage" else [function, subpackage]
    code = "\n".join(textwrap.dedent(step) for step in steps) + "assert adaptbench.leaderboard is lb\n"
    assert python(code).startswith("1,linear,vit_micro,linear,ours,")


def test_run_matrix_runs_a_spec_and_refuses_a_bad_one(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(textwrap.dedent(f"""
        backbones: [vit_tiny_test]
        tasks: [micro/digits]
        adapters: [linear]
        train: {{epochs: 1, batch_size: 250}}
        out: {tmp_path / "results"}
        leaderboard: {{out: {tmp_path / "boards"}, formats: [md]}}
    """))
    summary = adaptbench.run_matrix(spec)
    assert (summary.cells, summary.succeeded, summary.failed) == (1, 1, 0)
    assert len(list((tmp_path / "results").glob("*.json"))) == 1
    assert ".md" in [path.suffix for path in summary.leaderboard_files]
    with pytest.raises(AdaptbenchError, match="workers 0: expected an integer >= 1"):
        adaptbench.run_matrix(spec, workers=0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbones: [vit_tiny_test]\ntasks: [micro/digits]\nadapters: [lora]\n"
                   "grid:\n  options.rank: [4, 8]\n")
    with pytest.raises(AdaptbenchError, match="bad.yaml:5: grid.options.rank: adapter 'lora' has no option 'rank'"):
        adaptbench.run_matrix(bad, out=tmp_path / "never")
    assert not (tmp_path / "never").exists()
