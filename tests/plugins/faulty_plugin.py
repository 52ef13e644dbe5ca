"""A plugin adapter that fails on purpose, to test how the matrix runner records failures.

``fault`` scales the output of every block's ``mlp_out`` by a learnable ``1 + s`` (s = 0 at
init) and, once training has taken ``after_steps`` steps, fails the way ``mode`` says:

* ``raise``: raises RuntimeError (an exception in a cell);
* ``nan``: returns NaN (a NaN loss);
* ``kill``: SIGKILLs its own process (a worker killed by the OS, e.g. for memory).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field

import torch
from torch import nn

from adaptbench.adapters import Adapter, AdapterConfig, SiteWrapper
from adaptbench.registry import register_adapter

MODES = ("raise", "nan", "kill")


@dataclass
class FaultConfig(AdapterConfig):
    mode: str = field(default="raise", metadata={"help": "raise | nan | kill"})
    after_steps: int = field(default=1, metadata={"help": "training steps before failing"})

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")


class FailingScale(SiteWrapper):
    def __init__(self, base_layer: nn.Module, config: FaultConfig):
        super().__init__(base_layer)
        self.config = config
        self.scale = nn.Parameter(torch.zeros(()))
        self.steps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.steps += 1
            if self.steps > self.config.after_steps:
                self._fail()
                if self.config.mode == "nan":
                    return self.base_layer(x) * float("nan")
        return self.base_layer(x) * (1 + self.scale)

    def _fail(self) -> None:
        if self.config.mode == "raise":
            raise RuntimeError("fault adapter: deliberate failure")
        if self.config.mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)


class Fault(Adapter):
    """Fault (test plugin): fails during training as its mode says."""

    def _attach(self, backbone) -> None:
        wrapper = self.wrap_site("mlp_out", 0, lambda base: FailingScale(base, self.config))
        self.declare("blocks.0.mlp_out.scale", wrapper.scale)


register_adapter("fault", FaultConfig, Fault)
