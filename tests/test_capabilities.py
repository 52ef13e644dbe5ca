"""Impossible (backbone, adapter) pairs are ``n/a``, not failures: ``validate`` lists them and
exits 0, ``run`` records them without running them (and never again), a single ``train`` says
n/a and why, and the leaderboard shows ``n/a`` for the cell and its means.

``bhwc_test`` is a plugin written by these tests: ``vit_tiny_test`` declaring SAM's "BHWC"
token layout (its forward is unchanged). VPT needs a token sequence ("BNC"), so it cannot run
on it, while the linear probe can: the matrix has both kinds of cell, on tiny CPU runs.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from adaptbench.errors import AdaptbenchError
from adaptbench.runner.capabilities import Capabilities
from adaptbench.runner.spec import load_spec
from adaptbench.runner.train import record_path_for, start_record
from helpers import adaptbench, in_order_executor

PLUGIN = '''
"""bhwc_test: vit_tiny_test declaring the BHWC token layout, so that VPT is n/a on it."""
import dataclasses

from adaptbench.backbones.families.timm import vit_tiny_test
from adaptbench.registry import register_backbone


def bhwc_test(weights=None, **options):
    """vit_tiny_test declaring the BHWC layout (a stand-in for SAM in tests)."""
    backbone = vit_tiny_test(weights=weights, **options)
    backbone.name = "bhwc_test"
    backbone.anatomy = dataclasses.replace(backbone.anatomy, token_layout="BHWC")
    return backbone


bhwc_test.check_weights = lambda weights: "random (test backbone)"  # validate never builds it
register_backbone("bhwc_test", bhwc_test)
'''
LAYOUT_REASON = "needs a token layout in ('BNC',); the backbone's is 'BHWC'"

SPEC = """
    name: caps
    backbones: [vit_tiny_test, bhwc_test]
    tasks: [micro/texture]
    adapters: [linear, vpt_shallow]
    train: {epochs: 1, batch_size: 250}
    out: results
    leaderboard: {out: boards, formats: [md, csv, html, tex]}
"""


@pytest.fixture(scope="module")
def plugin_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plugin") / "bhwc_plugin.py"
    path.write_text(PLUGIN.lstrip())
    return path


@pytest.fixture
def bhwc(plugin_file):
    """bhwc_test registered in this process, and unregistered afterwards (other files list names)."""
    from adaptbench.registry import BACKBONES, load_plugin_file

    load_plugin_file(plugin_file)
    yield "bhwc_test"
    BACKBONES._entries.pop("bhwc_test", None)


def write_spec(folder: Path, body: str = SPEC) -> Path:
    path = folder / "spec.yaml"
    path.write_text(textwrap.dedent(body).lstrip())
    return path


def records(folder: Path) -> dict[tuple[str, str, str], dict]:
    """(backbone, adapter label, stage) -> record."""
    found = {}
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        config = record["run_info"]["config"]
        found[(config["backbone"], record["run_info"]["matrix"]["adapter_label"], config["stage"],
               str(config["lr"]))] = record
    return found


# -- capabilities ----------------------------------------------------------------------------
def test_capabilities_give_the_adapters_reason_and_build_each_anatomy_once(bhwc, monkeypatch):
    import adaptbench.backbones as backbones

    built = []
    real = backbones.backbone_anatomy
    monkeypatch.setattr(backbones, "backbone_anatomy", lambda name, **kw: built.append(name) or real(name, **kw))
    capabilities = Capabilities()
    assert LAYOUT_REASON in capabilities.reason("bhwc_test", "vpt_shallow", {})
    assert capabilities.reason("bhwc_test", "vpt_deep", {"num_tokens": 5}) is not None
    assert capabilities.reason("bhwc_test", "linear", {}) is None
    assert capabilities.reason("vit_tiny_test", "vpt_shallow", {}) is None
    assert capabilities.message("bhwc_test", "vpt_shallow", {}).startswith("vpt_shallow on bhwc_test: n/a: needs")
    assert built == ["bhwc_test", "vit_tiny_test"]  # cached per backbone name
    # What it cannot tell is not n/a: the backbone's or the options' own check reports it.
    assert capabilities.reason("no_such_backbone", "vpt_shallow", {}) is None
    with pytest.raises(AdaptbenchError, match="unknown backbone 'no_such_backbone'"):
        capabilities.anatomy("no_such_backbone")
    assert capabilities.reason("bhwc_test", "lora", {"r": 0}) is None


# -- validate ----------------------------------------------------------------------------------
def test_validate_lists_the_na_pairs_with_their_reason_and_they_are_not_problems(bhwc, tmp_path):
    from adaptbench.runner.validate import not_applicable_cells, problems, validate_spec

    spec = load_spec(write_spec(tmp_path, SPEC.replace(
        "adapters: [linear, vpt_shallow]",
        "adapters: [linear, vpt_shallow, {name: vpt_deep, grid: {lr: [0.001, 0.01]}}]")))
    capabilities = Capabilities()
    checks = validate_spec(spec, capabilities=capabilities)
    assert problems(checks) == []
    pairs = {check.subject: check for check in checks if check.not_applicable}
    assert set(pairs) == {"vpt_shallow on bhwc_test", "vpt_deep on bhwc_test"}  # one per pair, not per lr
    assert pairs["vpt_shallow on bhwc_test"].detail.startswith(f"n/a: {LAYOUT_REASON}")
    backbone = next(check for check in checks if check.subject == "bhwc_test")
    assert backbone.ok and "BHWC tokens" in backbone.detail
    # vpt_shallow: 1 final; vpt_deep: 2 tune + its final, n/a because every tune cell is
    assert not_applicable_cells(spec, capabilities) == 4


def _registered(name: str) -> bool:
    from adaptbench.registry import BACKBONES

    return name in BACKBONES


@pytest.mark.skipif(not _registered("sam_tiny_test"), reason="the SAM family is not registered here")
def test_validate_finds_vpt_na_on_the_real_sam_backbone(tmp_path):
    from adaptbench.runner.validate import problems, validate_spec

    spec = load_spec(write_spec(tmp_path, SPEC.replace("bhwc_test", "sam_tiny_test")))
    checks = validate_spec(spec)
    assert problems(checks) == []
    [pair] = [check for check in checks if check.not_applicable]
    assert pair.subject == "vpt_shallow on sam_tiny_test" and pair.detail == f"n/a: {LAYOUT_REASON} (a grid of " \
        "patches with no token sequence)"


def test_validate_pairs_name_the_option_sets_of_a_grid(bhwc, tmp_path):
    from adaptbench.runner.validate import validate_spec

    spec = load_spec(write_spec(tmp_path, SPEC.replace(
        "adapters: [linear, vpt_shallow]", "adapters: [{name: vpt_shallow, grid: {options.num_tokens: [1, 2]}}]")))
    subjects = [check.subject for check in validate_spec(spec) if check.not_applicable]
    assert subjects == ["vpt_shallow (num_tokens=1) on bhwc_test", "vpt_shallow (num_tokens=2) on bhwc_test"]


def test_validate_checks_weights_without_ever_loading_a_backbone(bhwc, tmp_path, monkeypatch):
    import torch

    import adaptbench.backbones as backbones
    from adaptbench.runner.validate import validate_spec

    real = backbones.load_backbone

    def meta_only(name, weights=None, **options):
        # Reading an anatomy builds on the meta device (no weights); anything else is a load.
        if not torch.empty(()).is_meta:
            raise AssertionError(f"validate loaded backbone {name!r} (weights {weights!r})")
        return real(name, weights, **options)

    monkeypatch.setattr(backbones, "load_backbone", meta_only)
    spec = load_spec(write_spec(tmp_path, """
        backbones:
          - bhwc_test
          - {name: "timm:vit_tiny_patch16_224", weights: random}
          - {name: "timm:vit_tiny_patch16_224", weights: missing/weights.safetensors}
        tasks: [micro/texture]
        adapters: [linear, vpt_shallow]
    """))
    checks = {(check.kind, check.subject, check.ok): check for check in validate_spec(spec)}
    assert ("backbone", "bhwc_test", True) in checks
    assert ("backbone", "timm:vit_tiny_patch16_224", True) in checks
    missing = checks[("backbone", "timm:vit_tiny_patch16_224", False)]
    assert "missing/weights.safetensors does not exist" in missing.detail
    assert ("pair", "vpt_shallow on bhwc_test", True) in checks


# -- the matrix runner (scripted: no training) --------------------------------------------------
def succeeding_executor():
    """Writes a successful record for every job it is given; ``ran`` remembers the jobs."""
    from adaptbench.runner.jobs import CellOutcome

    def finish(job, on_event):
        config = job.config
        executor.ran.append((config.backbone, config.adapter))
        record = start_record(config, job.annotations)
        split = "val200" if config.stage == "tune" else "test"
        record.mark_success(stage=config.stage, metrics={split: {"top1": 0.5}},
                            primary_metric="top1", higher_is_better=True, data={"eval_split": split})
        record.write(record_path_for(job.place.out_dir, job.cell_id))
        return CellOutcome(job.cell_id, "success", score=0.5)

    executor = in_order_executor(finish)
    executor.ran = []
    return executor


GRID_SPEC = SPEC.replace("adapters: [linear, vpt_shallow]",
                         "adapters: [linear, vpt_shallow, {name: vpt_deep, grid: {lr: [0.001, 0.01]}}]")


def test_na_cells_are_recorded_unrun_their_search_is_na_and_a_rerun_rewrites_nothing(bhwc, tmp_path):
    from adaptbench.runner.matrix import MatrixOptions, MatrixRun

    spec = load_spec(write_spec(tmp_path, GRID_SPEC))
    out = tmp_path / "results"
    executor = succeeding_executor()
    summary = MatrixRun(spec, MatrixOptions(out=out, leaderboard=False), executor, Console(quiet=True)).run()
    assert ("bhwc_test", "vpt_shallow") not in executor.ran and ("bhwc_test", "vpt_deep") not in executor.ran
    # 2 backbones x (linear + vpt_shallow + 2 vpt_deep tune + 1 vpt_deep final)
    assert (summary.cells, summary.ran, summary.succeeded, summary.failed, summary.not_applicable) == (10, 6, 6, 0, 4)
    found = records(out)
    assert len(found) == 10
    for key in [("bhwc_test", "vpt_shallow", "final", "0.001"), ("bhwc_test", "vpt_deep", "tune", "0.001"),
                ("bhwc_test", "vpt_deep", "tune", "0.01"), ("bhwc_test", "vpt_deep", "final", "0.001")]:
        info = found[key]["train_info"]
        assert info["status"] == "n/a", key
        assert info["na_reason"].startswith(LAYOUT_REASON)
        assert info["error"].startswith(f"{key[1]} on bhwc_test: n/a: {LAYOUT_REASON}")
        assert not info["metrics"]

    stamps = {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in out.glob("*.json")}
    for retry_failed in (False, True):  # n/a is a result: --retry-failed does not touch it either
        again = succeeding_executor()
        options = MatrixOptions(out=out, leaderboard=False, retry_failed=retry_failed)
        summary = MatrixRun(spec, options, again, Console(quiet=True)).run()
        assert again.ran == []
        assert (summary.skipped, summary.succeeded, summary.not_applicable, summary.failed) == (10, 6, 4, 0)
        assert stamps == {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in out.glob("*.json")}


def test_dry_run_shows_na_cells_with_their_reason(bhwc, tmp_path):
    from adaptbench.runner.matrix import MatrixOptions, MatrixRun, dry_run_table

    spec = load_spec(write_spec(tmp_path, GRID_SPEC))
    run = MatrixRun(spec, MatrixOptions(out=tmp_path / "results"), succeeding_executor(), Console(quiet=True))
    table = dry_run_table(run)
    columns = {column.header: list(column._cells) for column in table.columns}
    rows = list(zip(columns["backbone"], columns["adapter"], columns["stage"], columns["cell id"], columns["status"]))
    na = [row for row in rows if row[-1].startswith("n/a")]
    assert {(backbone, adapter, stage) for backbone, adapter, stage, _, _ in na} == {
        ("bhwc_test", "vpt_shallow", "final"), ("bhwc_test", "vpt_deep", "tune"), ("bhwc_test", "vpt_deep", "final")}
    assert len(na) == 4 and all(status == f"n/a: {LAYOUT_REASON} (a grid of patches with no token sequence)"
                                for *_, status in na)
    # the search on the BNC backbone still waits for its tune runs
    assert ("vit_tiny_test", "vpt_deep", "final", "(after search)", "to run") in rows
    assert not (tmp_path / "results").exists()


def test_a_worker_that_meets_not_applicable_records_na_not_failed(bhwc, tmp_path):
    """The runner skips the pairs it knows; one it could not tell is caught where it runs."""
    from adaptbench.runner.jobs import CellJob, execute_cell
    from adaptbench.runner.train import RunConfig, RunPlace, quiet_lightning

    quiet_lightning()
    config = RunConfig(task="micro/texture", backbone="bhwc_test", adapter="vpt_shallow", epochs=1, batch_size=250)
    job = CellJob("cell", config, RunPlace(out_dir=tmp_path), {"adapter_label": "vpt_shallow"})
    outcome = execute_cell(job, lambda event: None)
    assert outcome.status == "n/a" and outcome.error.startswith("vpt_shallow on bhwc_test: n/a: needs")
    [path] = tmp_path.glob("*.json")
    info = json.loads(path.read_text())["train_info"]
    assert info["status"] == "n/a" and info["na_reason"].startswith(LAYOUT_REASON)


# -- end to end, as a user runs it ----------------------------------------------------------------
def test_run_records_the_na_cell_without_running_it_and_the_leaderboard_shows_na(plugin_file, tmp_path):
    spec = write_spec(tmp_path)
    plugin = ("--plugin", str(plugin_file))
    checked = adaptbench(*plugin, "validate", str(spec), cwd=tmp_path)  # exit 0: n/a is not a problem
    assert "1 n/a (recorded, not run)" in checked.stdout and "vpt_shallow on bhwc_test" in checked.stdout

    first = adaptbench(*plugin, "run", str(spec), cwd=tmp_path)
    text = " ".join(first.stdout.split())
    assert "3 succeeded, 0 failed, 1 n/a" in text and "3 run now, 0 found done" in text
    found = records(tmp_path / "results")
    assert len(found) == 4
    na = found[("bhwc_test", "vpt_shallow", "final", "0.001")]
    assert na["train_info"]["status"] == "n/a" and na["train_info"]["na_reason"].startswith(LAYOUT_REASON)
    assert na["meta_info"]["device"].startswith("none")  # never ran
    assert not list((tmp_path / "results").glob(f"{na['run_info']['run_id']}.adapter.*"))
    assert all(r["train_info"]["status"] == "success" for key, r in found.items() if key != (
        "bhwc_test", "vpt_shallow", "final", "0.001"))

    board = (tmp_path / "boards" / "caps.md").read_text()
    [na_row] = [line for line in board.splitlines() if line.startswith("| – | vpt_shallow | bhwc_test |")]
    assert na_row.split(" | ")[5:7] == ["n/a", "n/a"]  # texture, Mean (tasks)
    assert f"- n/a: vpt_shallow \\| bhwc_test: {LAYOUT_REASON}" in board
    csv = (tmp_path / "boards" / "caps.csv").read_text().splitlines()
    assert csv[0].endswith(",n/a reason") and any(line.startswith("–,vpt_shallow,bhwc_test,linear,ours,n/a,n/a,")
                                                  and LAYOUT_REASON in line for line in csv)

    # A re-run finds every record, the n/a one included: nothing runs, nothing is rewritten.
    out = tmp_path / "results"
    stamps = {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in out.glob("*.json")}
    again = adaptbench(*plugin, "run", str(spec), "--no-leaderboard", cwd=tmp_path)
    assert "0 run now, 4 found done" in " ".join(again.stdout.split())
    assert stamps == {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in out.glob("*.json")}


def test_a_single_train_run_says_na_and_why_and_records_it(plugin_file, tmp_path):
    result = adaptbench("--plugin", str(plugin_file), "train", "--task", "micro/texture", "--backbone", "bhwc_test",
                        "--adapter", "vpt_shallow", "--epochs", "1", "--out", "single", cwd=tmp_path, check_rc=2)
    assert result.stderr.count("\n") == 1  # one line
    assert f"vpt_shallow on bhwc_test: n/a: {LAYOUT_REASON}" in result.stderr and "recorded as n/a" in result.stderr
    [path] = (tmp_path / "single").glob("*.json")
    info = json.loads(path.read_text())["train_info"]
    assert info["status"] == "n/a" and info["error"].startswith("vpt_shallow on bhwc_test: n/a:")
