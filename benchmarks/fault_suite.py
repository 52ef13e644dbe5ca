"""The executor fault suite at full strength: 20 random ``kill -9`` of the driver per executor.

CI runs the same code with 2 kills (``tests/test_executor_faults.py``); this script runs
``--kills`` (default 20) for each executor named and prints, per executor, the kills and the
records lost, duplicated (rewritten after they first appeared), corrupt (unparseable or not a
success) and different from an uninterrupted run, with the wall time::

    python benchmarks/fault_suite.py                 # local, ray, slurm (submitit's local cluster)
    python benchmarks/fault_suite.py --executors ray --kills 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_executor_faults import (  # noqa: E402 - the suite's own code, not a copy
    KILL_MATRIX,
    _executor_block,
    kill_and_resume,
    read_records,
    run_driver,
    write_spec,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executors", nargs="+", default=["local", "ray", "slurm"])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        reference_folder = Path(folder, "reference")
        reference_folder.mkdir()
        spec = write_spec(reference_folder, _executor_block("local"), KILL_MATRIX)
        if run_driver(spec).returncode != 0:
            print("the uninterrupted reference run failed", file=sys.stderr)
            return 1
        reference = read_records(reference_folder / "results")
        print(f"{'executor':<8} {'kills':>5} {'records':>7} {'lost':>4} {'dup':>4} {'corrupt':>7} {'differ':>6} {'wall s':>7}")
        for name in args.executors:
            block = _executor_block(name)
            if block is None:
                print(f"{name:<8} not installed here")
                continue
            run_folder = Path(folder, name)
            run_folder.mkdir()
            report = kill_and_resume(run_folder, block, args.kills, reference, seed=args.seed)
            print(f"{name:<8} {report.kills:>5} {report.records:>7}/{len(reference)} {len(report.lost):>4} "
                  f"{len(report.duplicated):>4} {len(report.corrupt):>7} {len(report.different):>6} {report.wall_s:>7.0f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
