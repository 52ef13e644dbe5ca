"""A plugin adapter that fails on purpose, to test how the matrix runner records failures.

``fault`` scales the output of every block's ``mlp_out`` by a learnable ``1 + s`` (s = 0 at
init) and, once training has taken ``after_steps`` steps, fails the way ``mode`` says:

* ``raise``: raises RuntimeError (an exception in a cell);
* ``nan``: returns NaN (a NaN loss);
* ``kill``: SIGKILLs its own process (a worker killed by the OS, e.g. for memory);
* ``oom``: asks the allocator for an impossible tensor (an out-of-memory error, raised by
  torch's own allocator: ``RuntimeError`` on the CPU, ``torch.OutOfMemoryError`` on a GPU);
* ``preempt``: a preemption, for resume tests: SIGKILLs its own process once the run has taken
  ``ADAPTBENCH_TEST_PREEMPT_AT_STEP`` optimiser steps in all (the global step, which a resumed
  run restores), and never fails when that variable is unset. The kill point is an environment
  variable, not an option, so the killed run, its resumed run and an uninterrupted reference
  are the same cell (``after_steps`` is ignored in this mode).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field

import torch
from torch import nn

from adaptbench.adapters import Adapter, AdapterConfig, SiteWrapper
from adaptbench.registry import register_adapter

MODES = ("raise", "nan", "kill", "oom", "preempt")
PREEMPT_AT_STEP = "ADAPTBENCH_TEST_PREEMPT_AT_STEP"


@dataclass
class FaultConfig(AdapterConfig):
    mode: str = field(default="raise", metadata={"help": "raise | nan | kill | oom | preempt"})
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
        if self.training and self.config.mode != "preempt":
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
        if self.config.mode == "oom":
            torch.empty(1 << 62, dtype=torch.uint8, device=self.scale.device)


class Fault(Adapter):
    """Fault (test plugin): fails during training as its mode says."""

    def _attach(self, backbone) -> None:
        wrapper = self.wrap_site("mlp_out", 0, lambda base: FailingScale(base, self.config))
        self.declare("blocks.0.mlp_out.scale", wrapper.scale)

    def on_train_batch_end(self, step: int) -> None:
        at_step = os.environ.get(PREEMPT_AT_STEP)
        if self.config.mode == "preempt" and at_step and step + 1 >= int(at_step):
            os.kill(os.getpid(), signal.SIGKILL)  # after optimiser step ``step`` (0-based)


register_adapter("fault", FaultConfig, Fault)
