"""The split protocol, fixed once here and never per method (DESIGN.md, "Protocol").

* ``tune``: train on train800 (FGVC: train), evaluate on val200 (FGVC: val). Used to choose
  hyper-parameters.
* ``final``: train on train800val200 (FGVC: train+val), evaluate once on test after the last
  epoch. The test split never picks a checkpoint, an epoch or a hyper-parameter: there is
  no validation during final training, and the last epoch's model is the one tested.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import AdaptbenchError

STAGES = ("tune", "final")


@dataclass(frozen=True)
class SplitPlan:
    stage: str
    train_split: str
    eval_split: str
    eval_is_test: bool


def split_plan(spec, stage: str) -> SplitPlan:
    """Which split trains and which evaluates, for a task and a stage."""
    tune_train, tune_eval, final_train, final_eval = spec.splits
    if stage == "tune":
        return SplitPlan(stage, tune_train, tune_eval, eval_is_test=False)
    if stage == "final":
        return SplitPlan(stage, final_train, final_eval, eval_is_test=True)
    raise AdaptbenchError(f"unknown stage {stage!r}; expected one of {STAGES}")
