"""Structure changes, numbers do not: every built-in adapter reproduces the recorded outputs
(``tests/fixtures/make_golden_adapters.py``: the code that gave 429349c's outputs bit for bit),
unmerged and merged, within ``TOLERANCE``. Those outputs carry the checks made at 429349c
against the authors' code and PEFT."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from make_golden_adapters import BACKBONES, FIXTURE, TOLERANCE, golden_case  # noqa: E402

with safe_open(str(FIXTURE), framework="pt") as _handle:
    RECORDED_ADAPTERS = _handle.metadata()["adapters"].split(",")


def recorded(key: str) -> torch.Tensor:
    with safe_open(str(FIXTURE), framework="pt") as handle:
        return handle.get_tensor(key)


@pytest.mark.parametrize("backbone_name", BACKBONES)
@pytest.mark.parametrize("adapter_name", RECORDED_ADAPTERS)
def test_outputs_equal_the_recorded_ones(adapter_name, backbone_name):
    for key, value in golden_case(adapter_name, backbone_name).items():
        torch.testing.assert_close(value, recorded(key), atol=TOLERANCE, rtol=0, msg=key)


def test_fixture_covers_every_builtin_adapter():
    from make_golden_adapters import builtin_adapters

    assert set(builtin_adapters()) == set(RECORDED_ADAPTERS)
