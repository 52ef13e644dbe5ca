"""What an executor costs: one tiny matrix through the local executor, Ray actors and Ray tasks.

    python benchmarks/executor_overhead.py [--workers 2] [--tasks micro/texture micro/count]
                                           [--adapters linear bitfit lora] [--epochs 1]

The matrix is a cut of ``benchmarks/micro.yaml`` (``vit_micro``, one seed, no search) small
enough for a couple of minutes on 2 CPU cores. It runs three times, each into a fresh
results folder, with ``--workers`` cells at a time:

* ``local``: the local executor (worker processes kept between cells);
* ``ray actors``: the Ray executor with long-lived actors (``long_lived: true``);
* ``ray tasks``: the Ray executor with one fresh worker process per cell (``long_lived: false``).

Each Ray run starts its own local cluster, as ``adaptbench run --executor ray`` does, so its
wall time includes that start. Printed per executor: the matrix's wall time and its ratio to
the local executor's, and the cells' set-up seconds (``train_info.timings.setup_s``: from the
worker taking the cell to its first training step, so a fresh process's start and imports
count) as median and max. Beforehand, in this process, the cells of the first adapter
(``linear``: its features are cached too) run once into a scratch folder, so every timed run
finds the micro tasks generated and decoded (in a temporary ``ADAPTBENCH_CACHE`` unless one is
set): otherwise the first run would pay for it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import textwrap
from pathlib import Path

RUNS = (("local", {"name": "local"}), ("ray actors", {"name": "ray", "long_lived": True}),
        ("ray tasks", {"name": "ray", "long_lived": False}))


def write_spec(folder: Path, tasks: list[str], adapters: list[str], epochs: int) -> Path:
    path = folder / "overhead.yaml"
    path.write_text(textwrap.dedent(f"""
        name: executor_overhead
        backbones: [vit_micro]
        tasks: [{", ".join(tasks)}]
        adapters: [{", ".join(adapters)}]
        seeds: [0]
        train: {{epochs: {epochs}, batch_size: 64, lr: 0.005, weight_decay: 0.0001}}
        out: results
    """).lstrip())
    return path


def warm_caches(spec_path: Path, out: Path) -> None:
    """Run the first adapter's cells here, untimed: each task is generated and decoded (and the
    linear probe's features cached) before any executor starts."""
    from adaptbench.runner.cells import search_groups
    from adaptbench.runner.jobs import CellJob, execute_cell
    from adaptbench.runner.spec import load_spec
    from adaptbench.runner.train import RunPlace

    spec = load_spec(spec_path)
    place = RunPlace(out_dir=str(out.absolute()), data_root=spec.data_root)
    first = spec.adapters[0].label
    for group in search_groups(spec):
        for cell in group.final_cells({}) if group.adapter.label == first else ():
            execute_cell(CellJob(cell.cell_id, cell.config, place, cell.annotations), lambda event: None)


def run_once(spec_path: Path, out: Path, settings: dict, workers: int) -> tuple[float, list[float], int]:
    """(wall seconds, the cells' set-up seconds, cells that succeeded) of one matrix run."""
    from rich.console import Console

    from adaptbench.config import ExecutorSettings
    from adaptbench.runner.executors import build_executor
    from adaptbench.runner.matrix import MatrixOptions, MatrixRun
    from adaptbench.runner.spec import load_spec

    executor = build_executor(ExecutorSettings(workers=workers, **settings))
    summary = MatrixRun(load_spec(spec_path), MatrixOptions(out=out, leaderboard=False), executor=executor,
                        console=Console(file=io.StringIO())).run()
    records = [json.loads(path.read_text()) for path in out.glob("*.json")]
    setups = [r["train_info"].get("timings", {}).get("setup_s") for r in records]
    return summary.wall_time_s, [s for s in setups if s is not None], summary.succeeded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", nargs="+", default=["micro/texture", "micro/count"])
    parser.add_argument("--adapters", nargs="+", default=["linear", "bitfit", "lora"])
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="executor_overhead_") as scratch:
        folder = Path(scratch)
        os.environ.setdefault("ADAPTBENCH_CACHE", str(folder / "cache"))  # before any worker starts
        spec = write_spec(folder, args.tasks, args.adapters, args.epochs)
        warm_caches(spec, folder / "warm-up")
        cells = len(args.tasks) * len(args.adapters)
        print(f"{cells} cells (vit_micro, {args.epochs} epoch(s)), {args.workers} at a time")
        results = {label: run_once(spec, folder / label.replace(" ", "_"), settings, args.workers)
                   for label, settings in RUNS}
    local_wall = results["local"][0]
    print(f"{'executor':<12}{'wall s':>9}{'x local':>9}{'set-up median s':>17}{'set-up max s':>14}{'ok':>6}")
    for label, (wall, setups, succeeded) in results.items():
        median = statistics.median(setups) if setups else float("nan")
        longest = max(setups) if setups else float("nan")
        print(f"{label:<12}{wall:>9.1f}{wall / local_wall:>9.2f}{median:>17.1f}{longest:>14.1f}{succeeded:>4}/{cells}")


if __name__ == "__main__":
    main()
