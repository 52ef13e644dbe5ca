"""Train-step cost of every registered adapter against the floors, side by side in one process.

    python benchmarks/perf.py                           # CPU: vit_micro, every adapter
    python benchmarks/perf.py --device cuda             # GPU: ViT-B/16 at 224, random weights
    python benchmarks/perf.py --precision bf16-mixed --compile --adapters lora lora@qkv peft:lora
    python benchmarks/perf.py --adapters lora fact dora --json perf.json

Per adapter (built with its defaults, ``build_adapter(name, backbone, {})``), on a fixed random
batch: images per second of a full training step as the runner takes it (forward, task loss
plus the adapter's ``extra_loss`` terms, backward, AdamW step of the declared tensors and a
linear head, ``on_train_batch_end``), and that step's time as ratios (lower is better) to

* the frozen forward (no grad) and forward + backward to the input
  (``inputs.requires_grad_()``): the floors any adapter inside the backbone pays
  (DESIGN.md, "Measuring");
* full fine-tuning (the ``full`` adapter);
* PEFT's implementation of the same method where the registry has one (``lora`` and
  ``peft:lora``; each with its own defaults, which the table names).

Memory: on CUDA the peak allocated during a step above what was resident before it
(``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``). Peak RSS cannot be
told apart per adapter inside one process, so on every device the bytes of the tensors saved
for backward are also counted (``torch.autograd.graph.saved_tensors_hooks``, one eager step,
each storage once, frozen and trained weights excluded): on CPU that is the memory figure.

Switches mirror the runner: ``--precision bf16-mixed`` runs the forward and the loss under
``torch.autocast(device, bfloat16)`` with fp32 parameters (Lightning's bf16-mixed);
``--compile`` calls ``backbone.compile()`` after the adapter is attached and reports the
compile time (first steps, less their steady-state time) apart from the step time.
Measurements are interleaved over ``--rounds`` rounds and the median kept, so drift of a
shared machine hits every method alike; ratios, not absolute times, carry over.

Targets of the project on the GPU (ViT-B/16, 224): an adapter's train step within 1.15x of the
forward + input-gradient floor, and our LoRA at or below PEFT's LoRA step time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import nn

from adaptbench.adapters import adapter_class, build_adapter
from adaptbench.adapters.base import NotApplicable
from adaptbench.adapters.hooks import LossContext
from adaptbench.backbones import load_backbone
from adaptbench.errors import AdaptbenchError
from adaptbench.records import git_state, library_versions
from adaptbench.registry import ADAPTERS

FLOORS = {"forward": "[frozen forward]", "input_grad": "[fwd + input grad]"}
#: Rows of an adapter with other options: ``name@variant`` -> (adapter, options). ``lora@qkv``
#: adapts the site PEFT's LoRA adapts on timm's fused qkv linear (PEFT cannot target q and v
#: apart), so ``lora@qkv`` against ``peft:lora`` compares like with like.
VARIANTS = {"lora@qkv": ("lora", {"targets": ("qkv",)})}
DEFAULT_BACKBONE = {"cpu": "vit_micro", "cuda": "timm:vit_base_patch16_224.augreg_in21k"}
DEFAULT_BATCH = {"cpu": 32, "cuda": 64}
DEFAULT_STEPS = {"cpu": 5, "cuda": 20}
NUM_CLASSES = 10
TOTAL_STEPS = 10_000  # the run length on_train_start announces (AdaLoRA schedules its budget on it)
# untimed first steps: allocations and lazy init (the saved-tensors step is one too), and
# with --compile the compilation of the forward and the backward
WARMUP_STEPS = {False: 1, True: 2}
TARGET_FLOOR_RATIO = 1.15  # the GPU target: step time / (forward + input grad) time
MIB = 2**20


@dataclass
class Method:
    """One row: an adapter or a floor, its step closure and what was measured of it."""

    name: str
    status: str = "ok"  # "ok", "n/a" (NotApplicable, with its reason) or "failed"
    note: str = ""
    step: Callable[[], None] | None = None
    seconds: list[float] = field(default_factory=list)  # per step, one entry per round
    warmup_s: float = 0.0  # the untimed first steps
    saved_bytes: int | None = None
    peak_bytes: int | None = None

    @property
    def step_s(self) -> float:
        return statistics.median(self.seconds)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", help=f"default: {DEFAULT_BACKBONE['cpu']} on CPU, {DEFAULT_BACKBONE['cuda']} on CUDA")
    parser.add_argument("--weights", default="random",
                        help="'random[:seed]' (default: speed does not depend on the values), 'pretrained' or a file")
    parser.add_argument("--precision", choices=("32-true", "bf16-mixed"), default="32-true")
    parser.add_argument("--compile", action="store_true", help="backbone.compile() after attaching the adapter")
    parser.add_argument("--matmul-precision", choices=("auto", "highest", "high", "medium"), default="auto",
                        help="torch.set_float32_matmul_precision; auto, as the runner: high (TF32) on CUDA, "
                             "highest on the CPU")
    parser.add_argument("--batch-size", type=int, help=f"default: {DEFAULT_BATCH['cpu']} on CPU, {DEFAULT_BATCH['cuda']} on CUDA")
    parser.add_argument("--steps", type=int, help=f"timed steps per round (default: {DEFAULT_STEPS['cpu']} on CPU, "
                                                   f"{DEFAULT_STEPS['cuda']} on CUDA)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice); "
                                                     "on a loaded machine 1 thread times steadier")
    parser.add_argument("--adapters", nargs="+", metavar="NAME",
                        help="default: every registered adapter and the peft:<name> twin of each that has one")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    args.backbone = args.backbone or DEFAULT_BACKBONE[args.device]
    args.batch_size = args.batch_size or DEFAULT_BATCH[args.device]
    args.steps = args.steps or DEFAULT_STEPS[args.device]
    if args.matmul_precision == "auto":
        args.matmul_precision = "high" if args.device == "cuda" else "highest"
    return args


def adapter_names(selected: list[str] | None) -> list[str]:
    if selected:
        for name in selected:
            ADAPTERS.require(adapter_and_options(name)[0])  # an unknown name fails now, with the closest valid one
        return list(dict.fromkeys(selected))
    names = [*ADAPTERS.names(), *VARIANTS]
    return names + list(dict.fromkeys(twin for twin in (peft_twin(name) for name in names) if twin))


def adapter_and_options(name: str) -> tuple[str, dict]:
    """The registered adapter and options of a row (``lora@qkv`` -> lora, targets qkv)."""
    return VARIANTS.get(name, (name, {}))


def peft_twin(name: str) -> str | None:
    """PEFT's implementation of our method ``name`` (``lora`` -> ``peft:lora``), if registered."""
    twin = f"peft:{adapter_and_options(name)[0]}"
    return twin if ":" not in name and twin in ADAPTERS else None


def autocast(args: argparse.Namespace):
    if args.precision == "bf16-mixed":
        return torch.autocast(args.device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_method(name: str, args: argparse.Namespace, images: torch.Tensor, labels: torch.Tensor) -> Method:
    """Build the backbone (and adapter) of one row and its step closure; never raises."""
    method = Method(name)
    try:
        backbone = load_backbone(args.backbone, weights=args.weights).to(args.device).train()
        method.step = floor_step(name, backbone, images, args) if name in FLOORS else \
            train_step(name, backbone, images, labels, args)
        method.saved_bytes = saved_activation_bytes(method.step, backbone)
        if args.compile:
            backbone.compile()
    except NotApplicable as err:
        method.status, method.note, method.step = "n/a", err.reason, None
    except Exception as err:  # noqa: BLE001 - a failed row is reported, the others still run
        fail(method, err)
    return method


def fail(method: Method, err: Exception) -> None:
    method.status, method.note, method.step = "failed", f"{type(err).__name__}: {err}".splitlines()[0], None


def floor_step(name: str, backbone: nn.Module, images: torch.Tensor, args: argparse.Namespace) -> Callable[[], None]:
    inputs = images.clone().requires_grad_(name == "input_grad")

    def step() -> None:
        if name == "forward":
            with torch.no_grad(), autocast(args):
                backbone(inputs)
            return
        inputs.grad = None
        with autocast(args):
            features = backbone(inputs)
        features.float().sum().backward()

    return step


def train_step(name: str, backbone: nn.Module, images: torch.Tensor, labels: torch.Tensor,
               args: argparse.Namespace) -> Callable[[], None]:
    """One training step as the task kinds take it (``tasks/kinds.py``), hooks included."""
    adapter_name, options = adapter_and_options(name)
    adapter = build_adapter(adapter_name, backbone, options)
    head = nn.Linear(backbone.anatomy.feature_dim, NUM_CLASSES).to(args.device)
    trained = list(adapter.trainable_parameters().values()) + list(head.parameters())
    optimizer = torch.optim.AdamW(trained, lr=1e-4)
    adapter.on_train_start(TOTAL_STEPS)
    count = iter(range(sys.maxsize))

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        return head(backbone(inputs))

    def step() -> None:
        index = next(count)
        optimizer.zero_grad(set_to_none=True)  # here, not after the step: AdaLoRA reads .grad
        with autocast(args):
            outputs = forward(images)
            loss = F.cross_entropy(outputs, labels)
            extras = adapter.extra_loss(LossContext(images, outputs, labels, loss, forward, index))
            total = loss + sum(extras.values()) if extras else loss
        total.backward()
        optimizer.step()
        adapter.on_train_batch_end(index)

    return step


def saved_activation_bytes(step: Callable[[], None], backbone: nn.Module) -> int:
    """Bytes of the tensors one eager step saves for backward, each storage once, the model's
    parameters excluded (a bf16 copy of a weight that autocast saves is counted: the step holds it)."""
    weights = {p.untyped_storage().data_ptr() for p in backbone.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return sum(seen.values())


def time_method(method: Method, args: argparse.Namespace, steps: int) -> float:
    """Seconds per step over ``steps`` steps (on CUDA also the step's peak memory)."""
    synchronize(args.device)
    if args.device == "cuda":
        resident = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        method.step()
    synchronize(args.device)
    elapsed = (time.perf_counter() - started) / steps
    if args.device == "cuda":
        method.peak_bytes = max(method.peak_bytes or 0, torch.cuda.max_memory_allocated() - resident)
    return elapsed


def measure(names: list[str], args: argparse.Namespace) -> dict[str, Method]:
    torch.manual_seed(0)
    size = load_backbone(args.backbone, weights=args.weights).data_config.input_size
    images = torch.randn(args.batch_size, 3, *size, device=args.device)
    labels = torch.randint(0, NUM_CLASSES, (args.batch_size,), device=args.device)
    methods = {name: make_method(name, args, images, labels) for name in [*FLOORS, *names]}
    for method in methods.values():  # warm-up, and with --compile the compilation, outside the rounds
        if method.step is None:
            continue
        synchronize(args.device)
        started = time.perf_counter()
        try:
            for _ in range(WARMUP_STEPS[args.compile]):
                method.step()
            synchronize(args.device)
        except Exception as err:  # noqa: BLE001 - as in make_method
            fail(method, err)
        method.warmup_s = time.perf_counter() - started
    live = [m for m in methods.values() if m.step is not None]
    for _ in range(args.rounds):
        for method in live:
            method.seconds.append(time_method(method, args, args.steps))
    return methods


def ratios(method: Method, methods: dict[str, Method]) -> dict[str, float | None]:
    """Step time over each reference's (lower is better); None where a reference is missing."""
    def over(reference: str | None) -> float | None:
        other = methods.get(reference) if reference else None
        if method.status != "ok" or other is None or other.status != "ok" or other is method:
            return None
        return method.step_s / other.step_s

    return {"forward": over("forward"), "input_grad": over("input_grad"), "full": over("full"),
            "peft": over(peft_twin(method.name))}


def figures(methods: dict[str, Method], args: argparse.Namespace) -> dict:
    """Everything measured, as the JSON output holds it."""
    rows = []
    for method in methods.values():
        row = {"name": method.name, "floor": method.name in FLOORS, "status": method.status, "note": method.note}
        if method.status == "ok":
            row.update({
                "images_per_s": args.batch_size / method.step_s,
                "step_ms": 1e3 * method.step_s,
                "step_ms_per_round": [1e3 * s for s in method.seconds],
                "ratios": ratios(method, methods),
                "peft_twin": peft_twin(method.name) if peft_twin(method.name) in methods else None,
                "saved_activation_bytes": method.saved_bytes,
                "peak_step_bytes": method.peak_bytes,
                # the first steps less their steady-state time
                "compile_s": max(0.0, method.warmup_s - WARMUP_STEPS[True] * method.step_s) if args.compile else None,
            })
        rows.append(row)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    return {
        "run_info": {"backbone": args.backbone, "weights": args.weights, "device": args.device,
                     "precision": args.precision, "matmul_precision": args.matmul_precision, "compile": args.compile, "batch_size": args.batch_size,
                     "steps": args.steps, "rounds": args.rounds, "warmup_steps": WARMUP_STEPS[args.compile]},
        "meta_info": {"device_name": device_name, "threads": torch.get_num_threads(), "load_average": _load(),
                      "versions": library_versions(), "git": git_state()},
        "methods": rows,
    }


def print_table(data: dict, console: Console) -> None:
    run, meta = data["run_info"], data["meta_info"]
    cuda = run["device"] == "cuda"
    table = Table(title=f"train step cost: {run['backbone']} ({run['weights']}), batch {run['batch_size']}, "
                        f"{run['precision']}{', compiled' if run['compile'] else ''}, {meta['device_name']}")
    table.add_column("method", no_wrap=True)
    table.add_column("img/s ↑", justify="right")
    table.add_column("ms/step ↓", justify="right")
    for header in ("x fwd ↓", "x fwd+in-grad ↓", "x full ↓", "x PEFT ↓"):
        table.add_column(header, justify="right")
    table.add_column("saved MiB ↓", justify="right")
    if cuda:
        table.add_column("peak MiB ↓", justify="right")
    if run["compile"]:
        table.add_column("compile s", justify="right")
    table.add_column("note", overflow="fold")
    for row in data["methods"]:
        label = escape(FLOORS.get(row["name"], row["name"]))
        if row["status"] != "ok":
            blanks = 7 + cuda + bool(run["compile"])  # every column between method and note
            table.add_row(label, *[""] * blanks, f"{row['status']}: {row['note']}")
            continue
        r = row["ratios"]
        cells = [f"{row['images_per_s']:.1f}", f"{row['step_ms']:.1f}",
                 _ratio(r["forward"]), _ratio(r["input_grad"], TARGET_FLOOR_RATIO if not row["floor"] else None),
                 _ratio(r["full"]), _ratio(r["peft"], 1.0), _mib(row["saved_activation_bytes"])]
        if cuda:
            cells.append(_mib(row["peak_step_bytes"]))
        if run["compile"]:
            cells.append(f"{row['compile_s']:.1f}")
        cells.append(f"vs {row['peft_twin']}" if row["peft_twin"] else "")
        table.add_row(label, *cells)
    console.print(table)
    console.print(f"{run['steps']} steps x {run['rounds']} rounds (median), {meta['threads']} threads, "
                  f"torch {meta['versions'].get('torch')}. Ratios are step times (lower is better); "
                  f"red: above the GPU targets ({TARGET_FLOOR_RATIO}x the input-gradient floor, 1.0x PEFT).")
    console.print("saved MiB: tensors one eager step saves for backward (weights excluded)"
                  + ("; peak MiB: CUDA peak of a step above the memory resident before it." if cuda else
                     "; the CPU figure for memory, since peak RSS is per process, not per adapter."))
    for row in data["methods"]:
        if row.get("peft_twin"):
            console.print(f"{row['name']} vs {row['peft_twin']}: targets "
                          f"{_targets(row['name'])} and {_targets(row['peft_twin'])}")


def _targets(name: str) -> str:
    adapter, options = adapter_and_options(name)
    return ", ".join(options.get("targets") or getattr(adapter_class(adapter).config_class(), "targets", ("?",)))


def _load() -> list[float] | None:
    """The machine's 1, 5, 15-minute load averages (a shared machine times worse under load)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _ratio(value: float | None, target: float | None = None) -> str:
    if value is None:
        return "-"
    text = f"{value:.2f}"
    return f"[red]{text}[/red]" if target is not None and value > target else text


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:.1f}"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        names = adapter_names(args.adapters)
    except AdaptbenchError as err:
        raise SystemExit(f"perf.py: {err}") from None
    threads, matmul_precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    torch.set_num_threads(args.threads or threads)
    torch.set_float32_matmul_precision(args.matmul_precision)
    try:
        data = figures(measure(names, args), args)
    finally:  # main() may run inside another process (the smoke test)
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(matmul_precision)
    data["meta_info"]["threads"] = args.threads or threads
    print_table(data, Console(width=None if sys.stdout.isatty() else 150))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2))
    return data


if __name__ == "__main__":
    main()
