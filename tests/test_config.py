"""The one typed run configuration: every field checked by its type, the same way in
``adaptbench train`` (flags generated from the fields) and in specs (``file:line: key``).

Each bad value ends in one line naming the flag or key and what was expected, exit 2, and no
record (the outside test's cases, and their class)."""

from __future__ import annotations

import argparse

import pytest

from adaptbench.cli import build_parser
from adaptbench.config import (
    BackboneOptions,
    ConfigError,
    RunConfig,
    RunPlaceOptions,
    RunPolicy,
    check_model,
    cli_fields,
)
from adaptbench.errors import AdaptbenchError
from adaptbench.runner.spec import load_spec
from tests.test_cli import adaptbench, assert_one_line_error, no_records

BASE = {"task": "micro/digits", "backbone": "vit_tiny_test", "adapter": "linear"}


def test_every_field_has_help_and_every_scalar_field_a_flag():
    parser = build_parser()
    train = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction)).choices["train"]
    flags = {option for action in train._actions for option in action.option_strings}
    for model in (RunConfig, RunPolicy, RunPlaceOptions, BackboneOptions):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no help"
        for option in cli_fields(model, skip=("adapter_options",)):
            assert option.flag in flags
    assert "--adapter-arg" in flags and "--no-save-adapter" in flags and "--img-size" in flags


@pytest.mark.parametrize("values, where, expected", [
    ({"warmup_epochs": -1}, "warmup_epochs", "expected an integer >= 0"),
    ({"seed": -1}, "seed", "expected an integer >= 0"),
    ({"weight_decay": -1}, "weight_decay", "expected a number >= 0"),
    ({"lr": 0}, "lr", "expected a positive number"),
    ({"lr": float("inf")}, "lr", "expected a positive number"),
    ({"epochs": 1.5}, "epochs", "expected an integer >= 0"),
    ({"precision": "bf16_mixed"}, "precision", "expected one of 'auto', '32-true'"),
    ({"pool": "max"}, "pool", "expected one of 'cls', 'mean'"),
    ({"warmup_epochs": 5, "epochs": 1}, "warmup_epochs", "expected at most the epochs (1), got 5"),
    ({"backbone_options": {"img_size": 2}}, "backbone_options.img_size", "expected an integer >= 8"),
    ({"backbone_options": {"quick": True}}, "backbone_options.quick", "unknown key"),
    ({"batch_size": True}, "batch_size", "expected an integer >= 1"),
])
def test_bad_values_name_their_field_and_what_was_expected(values, where, expected):
    with pytest.raises(ConfigError) as caught:
        check_model(RunConfig, {**BASE, **values})
    assert ".".join(map(str, caught.value.keys)) == where and expected in caught.value.problem


def test_text_from_the_command_line_is_parsed_by_the_fields_type():
    config = check_model(RunConfig, {**BASE, "lr": "5e-3", "epochs": "0", "pool": "null"}, from_text=True)
    assert (config.lr, config.epochs, config.pool) == (0.005, 0, None)


@pytest.mark.parametrize("flags, fragment", [
    (["--warmup-epochs", "-1"], "--warmup-epochs -1: expected an integer >= 0"),
    (["--seed", "-1"], "--seed -1: expected an integer >= 0"),
    (["--weight-decay", "-1"], "--weight-decay -1: expected a number >= 0"),
    (["--warmup-epochs", "5", "--epochs", "1"], "--warmup-epochs 5: expected at most the epochs (1)"),
    (["--precision", "bf16_mixed"], "--precision bf16_mixed: expected one of"),
    (["--accelerator", "gpu"], "--accelerator gpu"),
    (["--img-size", "x"], "--img-size x: expected an integer >= 8"),
    (["--head", "linaer"], "unknown head 'linaer' (did you mean 'linear'"),
    (["--wise-ft", "a,b"], "--wise-ft a,b: expected a list of numbers"),
    (["--wise-ft", "0,2"], "--wise-ft 0,2: expected mixing weights in [0, 1]"),
    (["--shots", "0"], "--shots 0: expected an integer >= 1 or null"),
    (["--head-arg", "n_ctx=4"], "head 'linear' takes no options; got n_ctx"),
    (["--adapter-arg", "dropout=high"], "adapter 'linear' has no option"),
])
def test_bad_flags_are_one_line_exit_2_and_leave_no_record(flags, fragment, tmp_path):
    out = tmp_path / "results"
    result = adaptbench("train", "--task", "micro/digits", "--backbone", "vit_tiny_test", "--adapter", "linear",
                        "--epochs", "1", *flags, "--out", str(out))
    assert result.returncode == 2
    assert_one_line_error(result, fragment)
    assert no_records(out)


def _spec(tmp_path, body: str):
    path = tmp_path / "spec.yaml"
    path.write_text("backbones: [vit_tiny_test]\ntasks: [micro/digits]\nadapters: [linear]\n" + body)
    return path


@pytest.mark.parametrize("body, expected", [
    ("train: {precision: bf16_mixed}\n", "spec.yaml:4: train.precision: expected one of 'auto', '32-true'"),
    ("train: {epochs: 1, warmup_epochs: 5}\n", "spec.yaml:4: train.warmup_epochs: expected at most the epochs (1), got 5"),
    ("policy: {validation: sometimes}\n", "spec.yaml:4: policy.validation: expected one of 'end', 'every_epoch'"),
    ("policy: {fast: true}\n", "spec.yaml:4: policy.fast: unknown key"),
    ("grid: {seed: [1, 2]}\n", "spec.yaml:4: grid.seed: unknown grid key"),
    ("grid: {lr: [0.1, -1]}\n", "spec.yaml:4: grid.lr[1]: expected a positive number, got -1"),
    ("train: {head: linaer}\n", "spec.yaml:4: train.head: unknown head 'linaer' (did you mean 'linear'"),
])
def test_bad_spec_values_name_file_line_and_key(tmp_path, body, expected):
    with pytest.raises(AdaptbenchError) as caught:
        load_spec(_spec(tmp_path, body))
    assert expected in caught.value.message


def test_backbone_options_in_a_spec_are_checked_and_reach_the_cells(tmp_path):
    from adaptbench.runner.cells import search_groups

    path = tmp_path / "spec.yaml"
    path.write_text("backbones:\n  - {name: vit_tiny_test, options: {img_size: 48, grad_checkpointing: true}}\n"
                    "tasks: [micro/digits]\nadapters: [linear]\n")
    [group] = search_groups(load_spec(path))
    [cell] = group.final_cells({})
    assert cell.config.backbone_options == BackboneOptions(img_size=48, grad_checkpointing=True)
    path.write_text("backbones:\n  - {name: vit_tiny_test, options: {img_size: big}}\n"
                    "tasks: [micro/digits]\nadapters: [linear]\n")
    with pytest.raises(AdaptbenchError, match=r"spec.yaml:2: backbones\[0\].options.img_size: expected an integer"):
        load_spec(path)
    path.write_text("backbones:\n  - name: vit_tiny_test\n    options:\n      quick_gelu: true\n"
                    "tasks: [micro/digits]\nadapters: [linear]\n")
    with pytest.raises(AdaptbenchError, match=r"spec.yaml:4: backbones\[0\].options.quick_gelu: backbone option "
                                              r"quick_gelu=True does not apply to vit_tiny_test"):
        load_spec(path)


def test_a_gpu_run_on_a_machine_without_one_is_refused_before_any_cell(tmp_path):
    spec = _spec(tmp_path, f"train: {{epochs: 1}}\nout: {tmp_path / 'results'}\n")
    result = adaptbench("run", str(spec), "--accelerator", "gpu", cwd=tmp_path)
    assert_one_line_error(result, "--accelerator gpu")
    assert no_records(tmp_path / "results")


@pytest.mark.parametrize("argv, fragment", [
    (["eval", "--checkpoint", "x.safetensors", "--task", "micro/digits", "--backbone", "vit_micro",
      "--batch-size", "-3"], "--batch-size -3: expected an integer >= 1"),
    (["eval", "--checkpoint", "x.safetensors", "--task", "micro/digits", "--backbone", "vit_micro",
      "--num-workers", "two"], "--num-workers two: expected an integer >= 0"),
    (["run", "spec.yaml", "--accelerator", "tpu"], "--accelerator tpu: expected one of 'auto'"),
    (["run", "spec.yaml", "--workers", "0"], "--workers 0: expected an integer >= 1"),
])
def test_every_commands_flags_are_checked_by_their_fields(argv, fragment, tmp_path):
    assert_one_line_error(adaptbench(*argv, cwd=tmp_path), fragment)
