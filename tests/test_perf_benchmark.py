"""Smoke test of ``benchmarks/perf.py``: its main runs in-process on a tiny problem and writes
the figures the table shows as JSON (speed itself is not tested)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

from adaptbench.registry import ADAPTERS

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "perf.py"


def load_script():
    """benchmarks/ is not a package: import the script by its path."""
    spec = importlib.util.spec_from_file_location("adaptbench_perf_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_perf_main_writes_images_per_second_and_ratios(tmp_path, capsys):
    perf = load_script()
    adapters = ["linear", "lora"] + (["peft:lora"] if "peft:lora" in ADAPTERS else [])
    out = tmp_path / "perf.json"
    threads = torch.get_num_threads()
    perf.main(["--device", "cpu", "--backbone", "vit_micro", "--adapters", *adapters, "--batch-size", "8",
               "--steps", "2", "--rounds", "1", "--threads", "1", "--json", str(out)])
    assert torch.get_num_threads() == threads  # main leaves the process as it found it

    data = json.loads(out.read_text())
    assert data["run_info"]["backbone"] == "vit_micro" and data["run_info"]["precision"] == "32-true"
    rows = {row["name"]: row for row in data["methods"]}
    assert list(rows) == ["forward", "input_grad", *adapters]
    for name in adapters:
        row = rows[name]
        assert row["status"] == "ok", row["note"]
        assert row["images_per_s"] > 0 and row["step_ms"] > 0
        assert row["ratios"]["forward"] > 0 and row["ratios"]["input_grad"] > 0
        assert row["ratios"]["full"] is None  # full fine-tuning was not measured
        assert row["saved_activation_bytes"] >= 0 and row["peak_step_bytes"] is None  # CPU: no peak
    assert rows["lora"]["saved_activation_bytes"] > rows["linear"]["saved_activation_bytes"]
    if "peft:lora" in rows:
        assert rows["lora"]["peft_twin"] == "peft:lora" and rows["lora"]["ratios"]["peft"] > 0
        assert rows["peft:lora"]["ratios"]["peft"] is None
    table = capsys.readouterr().out
    assert "fwd + input grad" in table and "lora" in table
