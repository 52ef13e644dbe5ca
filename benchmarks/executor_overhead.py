"""What an executor costs: one matrix through the local executor, Ray actors and Ray tasks.

    python benchmarks/executor_overhead.py [--workers 2] [--tasks micro/texture micro/count]
                                           [--adapters linear bitfit lora] [--epochs 1]
                                           [--spec benchmarks/micro.yaml] [--runs local "ray actors"]

The matrix is a cut of ``benchmarks/micro.yaml`` (``vit_micro``, one seed, no search) small
enough for a couple of minutes on 2 CPU cores, or the spec ``--spec`` names, as it is (its
``out`` replaced). It runs once per executor in ``--runs`` (default: all), each into a fresh
results folder, with ``--workers`` cells at a time:

* ``local``: the local executor (worker processes kept between cells, each keeping the last
  backbone it built: ``keep_backbones: 1``);
* ``local, no kept backbones``: the same with ``keep_backbones: 0`` (each cell builds its own);
* ``ray actors``: the Ray executor with long-lived actors (``long_lived: true``);
* ``ray tasks``: the Ray executor with one fresh worker process per cell (``long_lived: false``).

Each run is its own ``adaptbench run`` process, as a user starts it, so its wall time counts
the process's imports, the local executor's server process and a Ray run's cluster start.
Printed per executor: the matrix's wall time and its ratio to the first run's, the cells'
set-up seconds (``train_info.timings.setup_s``: from the worker taking the cell to its first
training step, so a fresh process's start and imports count) as median and max, and the
median seconds spent getting the backbone (``timings.backbone_s``: building it, or copying a
kept one). Beforehand, in this process, the cells of the first adapter (``linear``: its
features are cached too) run once into a scratch folder, so every timed run finds the micro
tasks generated and decoded (in a temporary ``ADAPTBENCH_CACHE`` unless one is set):
otherwise the first run would pay for it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

RUNS = {"local": {"name": "local"}, "local, no kept backbones": {"name": "local", "keep_backbones": 0},
        "ray actors": {"name": "ray", "long_lived": True}, "ray tasks": {"name": "ray", "long_lived": False}}


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


def with_executor(spec_path: Path, folder: Path, executor: dict) -> Path:
    """A copy of the spec in ``folder`` with this run's executor block and its own results."""
    import yaml

    spec = yaml.safe_load(spec_path.read_text())
    spec.update(executor=executor, out=str(folder / "results"))
    spec.pop("leaderboard", None)
    if spec.get("data_root"):
        spec["data_root"] = str((spec_path.parent / spec["data_root"]).absolute())
    folder.mkdir(parents=True)
    path = folder / spec_path.name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
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


def run_once(spec_path: Path, workers: int) -> tuple[float, dict[str, list[float]], int]:
    """(wall seconds, the cells' timings by name, cells that succeeded) of one ``adaptbench run``."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "import sys; from adaptbench.cli import main; sys.exit(main())",
                           "run", str(spec_path), "--workers", str(workers),
                           "--no-leaderboard"], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode not in (0, 1):  # 1: some cell failed, which the table shows
        raise SystemExit(f"{spec_path}: adaptbench run exited {done.returncode}:\n{done.stderr[-2000:]}")
    records = [json.loads(path.read_text()) for path in (spec_path.parent / "results").glob("*.json")]
    timings = {name: [r["train_info"]["timings"][name] for r in records if name in r["train_info"]["timings"]]
               for name in ("setup_s", "backbone_s")}
    return wall, timings, sum(r["train_info"]["status"] == "success" for r in records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", nargs="+", default=["micro/texture", "micro/count"])
    parser.add_argument("--adapters", nargs="+", default=["linear", "bitfit", "lora"])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--spec", type=Path, help="run this spec instead of the cut (its out is replaced)")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="executor_overhead_") as scratch:
        folder = Path(scratch)
        os.environ.setdefault("ADAPTBENCH_CACHE", str(folder / "cache"))  # before any worker starts
        spec = args.spec.absolute() if args.spec else write_spec(folder, args.tasks, args.adapters, args.epochs)
        warm_caches(spec, folder / "warm-up")
        cells = _cell_count(spec)
        print(f"{spec.name}: {cells} cells, {args.workers} at a time")
        results = {label: run_once(with_executor(spec, folder / label.replace(" ", "_").replace(",", ""),
                                                 RUNS[label]), args.workers)
                   for label in args.runs}
    first_wall = results[args.runs[0]][0]
    print(f"{'executor':<26}{'wall s':>9}{'x ' + args.runs[0]:>12}{'set-up median s':>17}{'set-up max s':>14}"
          f"{'backbone median s':>19}{'ok':>7}")
    for label, (wall, timings, succeeded) in results.items():
        setups, builds = timings["setup_s"], timings["backbone_s"]
        print(f"{label:<26}{wall:>9.1f}{wall / first_wall:>12.2f}{_median(setups):>17.2f}"
              f"{max(setups, default=float('nan')):>14.2f}{_median(builds):>19.3f}{succeeded:>4}/{cells}")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _cell_count(spec_path: Path) -> int:
    from adaptbench.runner.cells import search_groups
    from adaptbench.runner.spec import load_spec

    return sum(len(group.final_cells({})) for group in search_groups(load_spec(spec_path)))


if __name__ == "__main__":
    main()
