"""How long one method takes over VTAB-1k, end to end through the real CLI.

    # CPU quick check: 3 tasks, 2 epochs, test splits capped at 200 images (micro ViT)
    python benchmarks/vtab1k_timing.py --tasks cifar eurosat kitti --epochs 2 --test-cap 200
    # GPU full run: all 19 tasks, 100 epochs, ViT-B/16 at 224 with random weights (the default
    # backbone when a GPU is visible); test splits of 500 images, scaled to the real sizes
    python benchmarks/vtab1k_timing.py --adapter lora --json vtab1k_timing.json
    # ... or with the real test sizes (--test-cap 100000: about 430k JPEGs to write once)

The script writes a synthetic data set with VTAB-1k's shapes into the real on-disk layout
(NOAH's, read by ``adaptbench/datasets/vtab.py``): for each task, 800 + 200 images at the
task's class count and a typical native image size of its source data set, train800val200 as
their second copy, and a test split of the real VTAB-1k test size capped by ``--test-cap``.
Images are procedural JPEGs (a per-class colour field plus noise), so decoding costs what a
real photo of that size costs; the labels carry nothing worth learning. The folder is kept
and reused (a marker written last says which settings made it).

It then writes a matrix spec (one backbone, one adapter, the chosen tasks, one seed, final
stage only: train800val200 -> test, no grid) and times ``adaptbench run SPEC --workers 1
--no-leaderboard`` as a subprocess.

Measured (from the run records, one per task): wall time of each cell, train img/s
(``train_info.train_images_per_s``), eval img/s where the record has it
(``train_info.eval_images_per_s``), the record's ``timings`` (``decode_s``: decoding the splits
into the cache; ``features_s``: caching backbone features for a linear probe; ``fit_s``,
``eval_s``), and the wall time of the whole CLI call. The run gets its own, empty
``ADAPTBENCH_CACHE`` (``--cache``), so decoding is measured cold.

Extrapolated to the protocol's final stage (one seed, ``--full-epochs`` epochs, real test
sizes), per task::

    time = 1000 train images x epochs / train img/s
         + real test size / eval img/s              (not recorded: 3 x train img/s, an assumption)
         + (decode_s + features_s) x (1000 + real test size) / (images decoded in the run)
         + overhead                                 (measured: cell wall time - all of the above)

summed over the 19 tasks (tasks not measured get the median of the measured ones), plus the
CLI's own start-up once. Decoding happens once per split and machine (later cells, tune points
and seeds read the cache), so a total with a warm cache is printed too. The overhead (building
the model, Lightning's set-up, the first step, saving the adapter) is held fixed per cell;
a record without ``timings`` leaves decoding in it, unscaled.

The project's target: one method over VTAB-1k (19 tasks, final stage, one seed, 100 epochs)
on one H100/H200-class GPU in under 10 minutes; the compute floor (ViT-B/16 forward and
backward over 19 x 1000 x 100 images plus the test sets) is about 3-4 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from adaptbench.errors import AdaptbenchError, did_you_mean
from adaptbench.files import build_folder_once

#: Real VTAB-1k test sizes: the test splits of google-research/task_adaptation, as NOAH's
#: get_vtab1k.py dumps them and VPT reads them (Clevr: the CLEVR validation set; EuroSAT,
#: Resisc45: the last 20% of train; dSprites: the last 10%; sNORB: half of the test set).
REAL_TEST_SIZES: dict[str, int] = {
    "cifar": 10000, "caltech101": 6084, "dtd": 1880, "oxford_flowers102": 6149,
    "oxford_iiit_pet": 3669, "svhn": 26032, "sun397": 21750,
    "patch_camelyon": 32768, "eurosat": 5400, "resisc45": 6300, "diabetic_retinopathy": 42670,
    "clevr_count": 15000, "clevr_dist": 15000, "dmlab": 22735, "kitti": 711,
    "dsprites_loc": 73728, "dsprites_ori": 73728, "smallnorb_azi": 12150, "smallnorb_ele": 12150,
}

#: A typical native image (width, height, PIL mode) of each source data set; the natural-image
#: sets vary per image, so these are representative, not exact.
NATIVE_IMAGES: dict[str, tuple[int, int, str]] = {
    "cifar": (32, 32, "RGB"), "caltech101": (300, 200, "RGB"), "dtd": (500, 400, "RGB"),
    "oxford_flowers102": (667, 500, "RGB"), "oxford_iiit_pet": (500, 375, "RGB"),
    "svhn": (32, 32, "RGB"), "sun397": (400, 300, "RGB"),  # tfds sun397/tfds: <= 120k pixels
    "patch_camelyon": (96, 96, "RGB"), "eurosat": (64, 64, "RGB"), "resisc45": (256, 256, "RGB"),
    "diabetic_retinopathy": (540, 540, "RGB"),  # btgraham-300: eye radius 300, cropped to 90%
    "clevr_count": (480, 320, "RGB"), "clevr_dist": (480, 320, "RGB"), "dmlab": (480, 360, "RGB"),
    "kitti": (1242, 375, "RGB"), "dsprites_loc": (64, 64, "L"), "dsprites_ori": (64, 64, "L"),
    "smallnorb_azi": (96, 96, "L"), "smallnorb_ele": (96, 96, "L"),
}

TRAIN800, VAL200 = 800, 200
FULL_TRAIN = TRAIN800 + VAL200  # train800val200: what the final stage trains on
EVAL_SPEEDUP = 3.0  # assumed eval img/s / train img/s when a record has no eval figure
TARGET_S, FLOOR_S = 600.0, (180.0, 240.0)
TUNE_POINTS, FINAL_SEEDS = 16, 3  # recipes/equal_search.yaml: a 4 x 4 grid on the first seed, then 3 seeds
MARKER = ".synthetic-vtab1k.json"  # written last: the settings that made the folder
GENERATOR_VERSION = 1
NOISE_MARGIN = 32  # the noise tile is this much larger than an image: offsets make images differ
TIMED_BACKBONE_GPU = "timm:vit_base_patch16_224.augreg_in21k"


# -- tasks -----------------------------------------------------------------------------------------
def vtab_tasks(selection: list[str] | None):
    """The TaskSpecs of the VTAB-1k tasks named (``cifar``, ``vtab1k/cifar``, ``natural`` or
    ``vtab1k/natural``), in catalogue order; all 19 when ``selection`` is empty."""
    from adaptbench.registry import TASKS
    from adaptbench.tasks.groups import task_groups

    groups = task_groups()
    names = groups["vtab1k"]
    if not selection:
        return [TASKS.get(name) for name in names]
    chosen: list[str] = []
    for item in selection:
        key = item if item.startswith("vtab1k") else f"vtab1k/{item}"
        if key in names:
            picked = [key]
        elif key in groups:
            picked = groups[key]
        else:
            known = [name.removeprefix("vtab1k/") for name in names] + ["natural", "specialized", "structured"]
            raise AdaptbenchError(f"--tasks: unknown VTAB-1k task or group {item!r}{did_you_mean(item, known)}; "
                                  f"expected one of {', '.join(known)}")
        chosen.extend(name for name in picked if name not in chosen)
    return [TASKS.get(name) for name in names if name in chosen]


# -- the synthetic data set --------------------------------------------------------------------------
def split_sizes(folder: str, test_cap: int) -> dict[str, int]:
    return {"train800": TRAIN800, "val200": VAL200, "test": min(REAL_TEST_SIZES[folder], test_cap)}


def task_settings(spec, test_cap: int) -> dict[str, Any]:
    """What the marker records; a folder whose marker differs is written again."""
    width, height, mode = NATIVE_IMAGES[spec.dataset]
    return {"generator": GENERATOR_VERSION, "task": spec.dataset, "num_classes": spec.num_classes,
            "sizes": split_sizes(spec.dataset, test_cap), "image": [width, height, mode]}


def ensure_data(root: Path, specs, test_cap: int, threads: int) -> dict[str, dict[str, Any]]:
    """Write (or reuse) every task's folder; per task: its settings, whether it was reused, seconds."""
    written = {}
    for spec in specs:
        folder = root / spec.dataset
        settings = task_settings(spec, test_cap)
        started = time.perf_counter()
        reused = _marker(folder) == settings
        if not reused:
            if folder.exists() and _marker(folder) is None:  # never replace data this script did not write
                raise AdaptbenchError(f"{folder} exists and has no {MARKER} (not written by this script); "
                                      f"expected a --data-root of synthetic data only, e.g. a new folder")
            build_folder_once(folder, lambda path, s=settings: _marker(path) == s,
                              lambda staging, s=spec: write_task(staging, s, test_cap, threads))
        written[spec.name] = {**settings, "reused": reused, "seconds": time.perf_counter() - started}
    return written


def _marker(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_task(folder: Path, spec, test_cap: int, threads: int) -> None:
    """One task in NOAH's layout: ``images/<split>/<000123>.jpg`` and ``<split>.txt`` listing
    them relative to ``folder``; train800val200 is train800 then val200, hard-linked copies."""
    width, height, mode = NATIVE_IMAGES[spec.dataset]
    rng = np.random.default_rng(zlib.crc32(spec.dataset.encode()))
    channels = (3,) if mode == "RGB" else ()
    # One smooth colour field per class (a 3 x 3 grid upsampled), and one noise tile whose
    # crops at random offsets make every image different at the cost of a crop and a blend.
    bases = [Image.fromarray(rng.integers(0, 256, (3, 3, *channels), dtype=np.uint8), mode)
             .resize((width, height), Image.BILINEAR) for _ in range(spec.num_classes)]
    noise = Image.fromarray(rng.integers(0, 256, (height + NOISE_MARGIN, width + NOISE_MARGIN, *channels),
                                         dtype=np.uint8), mode)

    def draw(job: tuple[Path, int, int, int]) -> None:
        path, label, dx, dy = job
        image = Image.blend(bases[label], noise.crop((dx, dy, dx + width, dy + height)), 0.15)
        image.save(path, format="JPEG", quality=90)

    lines: dict[str, list[str]] = {}
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for split, size in split_sizes(spec.dataset, test_cap).items():
            (folder / "images" / split).mkdir(parents=True)
            labels = rng.permutation(np.arange(size) % spec.num_classes)  # balanced to within one
            offsets = rng.integers(0, NOISE_MARGIN + 1, (size, 2))
            names = [f"images/{split}/{index:06d}.jpg" for index in range(size)]
            jobs = [(folder / name, int(label), int(dx), int(dy)) for name, label, (dx, dy) in zip(names, labels, offsets)]
            list(pool.map(draw, jobs, chunksize=32))
            lines[split] = [f"{name} {int(label)}\n" for name, label in zip(names, labels)]
    union = folder / "images" / "train800val200"
    union.mkdir()
    lines["train800val200"] = []
    for split in ("train800", "val200"):
        for line in lines[split]:
            source = folder / line.split()[0]
            name = f"images/train800val200/{len(lines['train800val200']):06d}.jpg"
            _second_copy(source, folder / name)
            lines["train800val200"].append(f"{name} {line.split()[1]}\n")
    for split, split_lines in lines.items():
        (folder / f"{split}.txt").write_text("".join(split_lines), encoding="utf-8")
    (folder / MARKER).write_text(json.dumps(task_settings(spec, test_cap)), encoding="utf-8")


def _second_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # the reader cannot tell a hard link from a copy
    except OSError:
        shutil.copyfile(source, target)


# -- the spec and the run ---------------------------------------------------------------------------
def write_spec(path: Path, args: argparse.Namespace, specs, data_root: Path, records: Path) -> dict[str, Any]:
    """A matrix spec of one backbone x one adapter x the tasks, one seed, no grid (final cells only)."""
    import yaml

    backbone: dict[str, Any] = {"name": args.backbone}
    if args.weights:
        backbone["weights"] = args.weights
    train: dict[str, Any] = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": 1e-4}
    if args.precision:  # else the package's default (auto: bf16-mixed on CUDA, 32-true on the CPU)
        train["precision"] = args.precision
    spec = {
        "name": "vtab1k_timing",
        "description": "written by benchmarks/vtab1k_timing.py: synthetic VTAB-1k, final stage, one seed",
        "backbones": [backbone], "tasks": [s.name for s in specs], "adapters": [args.adapter],
        "seeds": [0], "train": train, "data_root": str(data_root), "out": str(records),
    }
    if args.policy:
        spec["policy"] = args.policy
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return spec


def run_cli(spec_path: Path, accelerator: str | None, cache: Path) -> tuple[int, float]:
    """``adaptbench run SPEC --workers 1 --no-leaderboard`` in a subprocess: (exit code, wall s)."""
    command = [sys.executable, "-m", "adaptbench.cli", "run", str(spec_path), "--workers", "1", "--no-leaderboard"]
    if accelerator:
        command += ["--accelerator", accelerator]
    print(f"$ ADAPTBENCH_CACHE={cache} adaptbench " + " ".join(command[4:]), flush=True)
    started = time.perf_counter()
    code = subprocess.run(command, check=False, env={**os.environ, "ADAPTBENCH_CACHE": str(cache)}).returncode
    return code, time.perf_counter() - started


def read_records(folder: Path) -> dict[str, dict[str, Any]]:
    """Task name -> the raw JSON run record (read raw: fields newer than this script pass through)."""
    records = {}
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("run_info"), dict) and isinstance(data.get("train_info"), dict):
            task = (data["run_info"].get("config") or {}).get("task")
            if task:
                records[task] = data
    return records


# -- measured and extrapolated -------------------------------------------------------------------
def measured_task(record: dict[str, Any] | None, epochs: int, eval_speedup: float) -> dict[str, Any]:
    """The record's figures, and the split of its wall time into train, eval and overhead."""
    if record is None:
        return {"status": "missing", "error": "no run record"}
    info = record["train_info"]
    data = info.get("data") or {}
    out = {
        "status": info.get("status"), "error": info.get("error"),
        "epochs": (record["run_info"].get("config") or {}).get("epochs", epochs),
        "train_size": data.get("train_size"), "eval_size": data.get("eval_size"),
        "wall_time_s": info.get("wall_time_s"), "train_images_per_s": info.get("train_images_per_s"),
        "eval_images_per_s": info.get("eval_images_per_s"), "timings": info.get("timings"),
        "precision": (record["run_info"].get("config") or {}).get("precision"),
        "inputs": data.get("inputs"), "peak_memory_bytes": info.get("peak_memory_bytes"), "device": (record.get("meta_info") or {}).get("device"),
    }
    train_rate, wall = out["train_images_per_s"], out["wall_time_s"]
    if not (train_rate and wall and out["train_size"] is not None and out["eval_size"] is not None):
        return out
    timings = out["timings"] if isinstance(out["timings"], dict) else {}
    out["eval_rate_used"] = out["eval_images_per_s"] or eval_speedup * train_rate
    out["eval_rate_assumed"] = not out["eval_images_per_s"]
    out["train_s"] = out["train_size"] * out["epochs"] / train_rate
    out["eval_s"] = out["eval_size"] / out["eval_rate_used"]
    # Decoding and feature caching: once per image of both splits, so they scale with the images.
    out["per_image_s"] = sum(timings.get(key) or 0.0 for key in ("decode_s", "features_s"))
    out["per_image_rate"] = (out["train_size"] + out["eval_size"]) / out["per_image_s"] if out["per_image_s"] else None
    out["overhead_s"] = max(0.0, wall - out["train_s"] - out["eval_s"] - out["per_image_s"])
    return out


def extrapolate(folder: str, train_rate: float, eval_rate: float, per_image_rate: float | None, overhead: float,
                full_epochs: int) -> dict[str, float]:
    """One final cell at the protocol's size (see the module docstring for the formula)."""
    test_size = REAL_TEST_SIZES[folder]
    train_s = FULL_TRAIN * full_epochs / train_rate
    eval_s = test_size / eval_rate
    decode_s = (FULL_TRAIN + test_size) / per_image_rate if per_image_rate else 0.0
    warm = train_s + eval_s + overhead
    tune_s = TRAIN800 * full_epochs / train_rate + VAL200 / eval_rate + overhead  # warm: the cache holds it
    return {"train_images": FULL_TRAIN, "epochs": full_epochs, "test_size": test_size, "train_s": train_s,
            "eval_s": eval_s, "decode_s": decode_s, "overhead_s": overhead, "total_s": warm + decode_s,
            "warm_cache_total_s": warm, "tune_cell_s": tune_s}


def analyse(records: dict[str, dict[str, Any]], specs, args: argparse.Namespace, cli_wall: float) -> dict[str, Any]:
    from adaptbench.tasks.groups import task_groups

    measured = {spec.name: measured_task(records.get(spec.name), args.epochs, args.eval_speedup) for spec in specs}
    usable = {name: m for name, m in measured.items() if "overhead_s" in m}
    extrapolated: dict[str, dict[str, Any]] = {}
    for name, m in usable.items():
        extrapolated[name] = {**extrapolate(name.removeprefix("vtab1k/"), m["train_images_per_s"], m["eval_rate_used"],
                                            m["per_image_rate"], m["overhead_s"], args.full_epochs),
                              "from": "measured"}
    cells_wall = sum(m["wall_time_s"] or 0.0 for m in measured.values())
    cli_overhead = max(0.0, cli_wall - cells_wall)
    result: dict[str, Any] = {
        "measured": {"tasks": measured, "cli_wall_s": cli_wall, "cells_wall_s": cells_wall,
                     "cli_overhead_s": cli_overhead},
        "extrapolated": {"tasks": extrapolated, "full_epochs": args.full_epochs},
    }
    if not usable:
        return result
    median = {key: statistics.median(m[key] or 0.0 for m in usable.values())
              for key in ("train_images_per_s", "eval_rate_used", "per_image_rate", "overhead_s")}
    everything = dict(extrapolated)
    for name in task_groups()["vtab1k"]:
        if name not in everything:  # not measured: the measured tasks' median rates and overhead
            everything[name] = {**extrapolate(name.removeprefix("vtab1k/"), median["train_images_per_s"],
                                              median["eval_rate_used"], median["per_image_rate"],
                                              median["overhead_s"], args.full_epochs),
                                "from": "median of measured tasks"}
    complete = len(usable) == len(specs)
    result["extrapolated"].update({
        "measured_tasks_total_s": sum(e["total_s"] for e in extrapolated.values()) + cli_overhead,
        "all19_tasks": everything,
        "total_s": sum(e["total_s"] for e in everything.values()) + cli_overhead,
        "warm_cache_total_s": sum(e["warm_cache_total_s"] for e in everything.values()) + cli_overhead,
        "total_with_search_and_3_seeds_s": sum(e["decode_s"] + TUNE_POINTS * e["tune_cell_s"]
                                               + FINAL_SEEDS * e["warm_cache_total_s"]
                                               for e in everything.values()) + cli_overhead,
        "median_of_measured": median, "complete": complete,
        "target_s": TARGET_S, "compute_floor_s": list(FLOOR_S),
    })
    return result


def assumptions(args: argparse.Namespace, result: dict[str, Any]) -> list[str]:
    lines = [
        f"final stage only: {FULL_TRAIN} train images (train800val200) x {args.full_epochs} epochs, "
        f"one seed, the real VTAB-1k test sizes",
        "train time = images x epochs / measured train img/s; eval time = test images / measured eval img/s",
        "decoding (and feature caching) scale with the images of both splits, measured on a cold cache",
        "overhead per cell = measured cell wall time - train - eval - decode time, held fixed",
        "CLI start-up and planning (CLI wall time - sum of cell wall times) counted once",
        "tasks not measured take the median train img/s, eval img/s, decode rate and overhead of the measured "
        "ones (decoding depends on the image size: measure all 19 for a real figure)",
        "a per-image rate measured on few images holds fixed costs too (Lightning's loops, a feature pass's "
        "set-up): small --test-cap values over-estimate eval and decode time",
        "synthetic JPEGs at a typical native size per task; decoding is the real cost, content is not",
    ]
    tasks = result["measured"]["tasks"].values()
    if any("overhead_s" in m and not m.get("per_image_s") for m in tasks):
        lines.append("records without timings: decoding stays in the overhead, unscaled (optimistic)")
    if any(m.get("eval_rate_assumed") for m in tasks):
        lines.insert(2, f"eval img/s not recorded: assumed {args.eval_speedup:g} x train img/s "
                        f"(a forward pass, no backward, no optimizer step)")
    return lines


# -- printing --------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def print_report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=160)
    config = result["config"]
    precision = next((m["precision"] for m in result["measured"]["tasks"].values() if m.get("precision")), "n/a")
    console.print(f"\n[bold]{config['adapter']}[/] on {config['backbone']} ({precision}), "
                  f"{config['epochs']} epochs measured, device: {result.get('device') or 'n/a'}")
    table = Table(title="Measured (synthetic VTAB-1k, one cell per task)")
    for column in ("task", "classes", "image", "train", "test", "epochs", "wall s", "train img/s",
                   "eval img/s", "train s", "eval s", "decode s†", "overhead s"):
        table.add_column(column, justify="left" if column in ("task", "image") else "right")
    for name, m in result["measured"]["tasks"].items():
        data = result["data"]["tasks"][name]
        if m.get("status") != "success":
            table.add_row(name, str(data["num_classes"]), "", "", "", "", "", f"[red]{m.get('status')}: "
                          f"{m.get('error') or ''}"[:80])
            continue
        eval_rate = _fmt(m["eval_images_per_s"]) if m.get("eval_images_per_s") else "n/a"
        table.add_row(name.removeprefix("vtab1k/"), str(data["num_classes"]), "x".join(map(str, data["image"][:2])),
                      _fmt(m["train_size"]), _fmt(m["eval_size"]), _fmt(m["epochs"]), _fmt(m["wall_time_s"]),
                      _fmt(m["train_images_per_s"]), eval_rate, _fmt(m.get("train_s")),
                      _fmt(m.get("eval_s")) + ("*" if m.get("eval_rate_assumed") else ""),
                      _fmt(m.get("per_image_s")) if m.get("per_image_s") else "n/a", _fmt(m.get("overhead_s")))
    console.print(table)
    measured = result["measured"]
    console.print(f"measured: CLI wall {measured['cli_wall_s']:.1f} s = cells {measured['cells_wall_s']:.1f} s "
                  f"+ start-up/planning {measured['cli_overhead_s']:.1f} s; data written in "
                  f"{result['data']['seconds']:.1f} s ({result['data']['reused']} of "
                  f"{len(result['data']['tasks'])} tasks reused)\n"
                  f"* eval s from an assumed eval img/s   † decoding into the cache + caching backbone features")
    timings = {name: m["timings"] for name, m in measured["tasks"].items() if isinstance(m.get("timings"), dict)}
    if timings:
        keys = sorted({key for value in timings.values() for key in value})
        table = Table(title="Recorded timings (train_info.timings)")
        table.add_column("task")
        for key in keys:
            table.add_column(key, justify="right")
        for name, value in timings.items():
            table.add_row(name.removeprefix("vtab1k/"), *(_fmt(value.get(key), 2) for key in keys))
        console.print(table)
    extra = result["extrapolated"]
    if "total_s" not in extra:
        console.print("[red]no task gave a usable record: nothing to extrapolate[/]")
        return
    table = Table(title=f"Extrapolated: final stage, {FULL_TRAIN} train images x {extra['full_epochs']} epochs, "
                        f"real test sizes, one seed")
    for column in ("task", "from", "test", "train s", "eval s", "decode s", "overhead s", "total s"):
        table.add_column(column, justify="left" if column in ("task", "from") else "right")
    for name, e in extra["all19_tasks"].items():
        table.add_row(name.removeprefix("vtab1k/"), e["from"], _fmt(e["test_size"]), _fmt(e["train_s"]),
                      _fmt(e["eval_s"]), _fmt(e["decode_s"]), _fmt(e["overhead_s"]), _fmt(e["total_s"]))
    console.print(table)
    total = extra["total_s"]
    verdict = "[green]within[/]" if total <= TARGET_S else "[red]over[/]"
    console.print(f"[bold]extrapolated total, 19 tasks, cold cache: {total:,.0f} s ({total / 60:.1f} min)[/] "
                  f"{verdict} the target of {TARGET_S / 60:.0f} min on one H100/H200-class GPU (compute floor "
                  f"about {FLOOR_S[0] / 60:.0f}-{FLOOR_S[1] / 60:.0f} min)")
    search = extra["total_with_search_and_3_seeds_s"]
    console.print(f"  warm cache (splits decoded before): {extra['warm_cache_total_s']:,.0f} s\n"
                  f"  the {len(extra['tasks'])} measured tasks alone, cold: {extra['measured_tasks_total_s']:,.0f} s\n"
                  f"  with the {TUNE_POINTS}-point search (train800 -> val200) and {FINAL_SEEDS} final seeds "
                  f"(recipes/equal_search.yaml): {search:,.0f} s ({search / 3600:.1f} h)")
    console.print("assumptions:")
    for line in result["assumptions"]:
        console.print(f"  - {line}")


# -- main ------------------------------------------------------------------------------------------
def default_device() -> tuple[bool, str]:
    try:
        import torch

        if torch.cuda.is_available():
            return True, torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return False, "cpu"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                        help="VTAB-1k tasks or groups (cifar, vtab1k/dtd, natural); default: all 19")
    parser.add_argument("--adapter", default="lora")
    parser.add_argument("--backbone", default=None,
                        help=f"default: {TIMED_BACKBONE_GPU} with a GPU, else vit_micro")
    parser.add_argument("--weights", default=None, help="default: random for timm backbones, else the backbone's")
    parser.add_argument("--epochs", type=int, default=100, help="epochs of the measured run (default 100)")
    parser.add_argument("--full-epochs", type=int, default=100, help="epochs the extrapolation assumes (default 100)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--precision", default=None, help="Lightning precision (default: the package's)")
    parser.add_argument("--policy", action="append", default=[], metavar="KEY=VALUE",
                        help="a run policy setting for the spec, e.g. compile=true (repeatable)")
    parser.add_argument("--accelerator", default=None, help="passed to adaptbench run (default: its own)")
    parser.add_argument("--test-cap", type=int, default=500, help="at most this many test images per task (500)")
    parser.add_argument("--eval-speedup", type=float, default=EVAL_SPEEDUP,
                        help="eval img/s / train img/s assumed when a record has no eval figure (3)")
    parser.add_argument("--data-root", type=Path, default=Path(tempfile.gettempdir()) / "adaptbench-vtab1k-synthetic",
                        help="where the synthetic data goes; reused when complete (default: a folder in the temp dir)")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the spec and the run records (default: a new temp folder)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="ADAPTBENCH_CACHE of the run (default: a new folder in --work: decoding is timed cold)")
    parser.add_argument("--threads", type=int, default=min(8, 2 * (os.cpu_count() or 1)),
                        help="threads writing images")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write everything as JSON")
    args = parser.parse_args(argv)
    for flag in ("epochs", "full_epochs", "batch_size", "test_cap", "threads"):
        if getattr(args, flag) < (0 if flag == "epochs" else 1):
            parser.error(f"--{flag.replace('_', '-')}: expected a positive number, got {getattr(args, flag)}")
    args.policy = dict(_key_value(item, parser) for item in args.policy)
    return args


def _key_value(item: str, parser: argparse.ArgumentParser) -> tuple[str, Any]:
    import yaml

    key, sep, value = item.partition("=")
    if not sep or not key:
        parser.error(f"--policy {item!r}: expected KEY=VALUE, e.g. compile=true")
    return key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _main(args)
    except AdaptbenchError as err:
        print(f"vtab1k_timing: error: {err.message}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    gpu, device = default_device() if args.backbone is None else (False, "")
    args.backbone = args.backbone or (TIMED_BACKBONE_GPU if gpu else "vit_micro")
    if args.weights is None and args.backbone.startswith("timm:"):
        args.weights = "random"  # speed does not depend on the values; nothing to download
    specs = vtab_tasks(args.tasks)
    work = args.work or Path(tempfile.mkdtemp(prefix="vtab1k-timing-"))
    records = work / "records"
    if records.exists() and any(records.glob("*.json")):  # a resumed matrix would skip its cells
        raise AdaptbenchError(f"{records} already holds run records; expected a fresh --work folder")
    work.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    data = ensure_data(args.data_root, specs, args.test_cap, args.threads)
    data_seconds = time.perf_counter() - started
    reused = sum(item["reused"] for item in data.values())
    print(f"data: {args.data_root} ({len(specs) - reused} tasks written, {reused} reused, {data_seconds:.1f} s)")

    spec_path = work / "vtab1k_timing.yaml"
    spec = write_spec(spec_path, args, specs, args.data_root, records)
    args.cache = args.cache or work / "cache"
    code, cli_wall = run_cli(spec_path, args.accelerator, args.cache)

    result = analyse(read_records(records), specs, args, cli_wall)
    result["config"] = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    result["device"] = next((m["device"] for m in result["measured"]["tasks"].values() if m.get("device")),
                            device or None)
    result["spec"] = {"path": str(spec_path), **spec}
    result["data"] = {"root": str(args.data_root), "seconds": data_seconds, "reused": reused, "tasks": data}
    result["cli_exit_code"] = code
    result["assumptions"] = assumptions(args, result)
    print_report(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
        print(f"json: {args.json}")
    if code != 0:
        print(f"vtab1k_timing: error: adaptbench run exited with {code}; the records in {records} say why",
              file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
