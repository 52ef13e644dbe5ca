"""The ``adaptbench`` command line.

Starting it must stay cheap: ``--help`` and ``ls`` import no torch. Each subcommand
imports what it needs inside its handler.

Errors a user can fix (:class:`AdaptbenchError`) print one line on stderr and exit 2;
any other failure prints one line and exits 1. ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .errors import AdaptbenchError, one_line

EXIT_USER_ERROR = 2
EXIT_FAILURE = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaptbench",
        description="Benchmark parameter-efficient adaptation of frozen vision foundation models.",
    )
    parser.add_argument("--version", action="version", version=f"adaptbench {__version__}")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                        help="import a local plugin file that registers adapters, backbones or tasks (repeatable)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    _add_ls(commands)
    _add_train(commands)
    _add_run(commands)
    _add_validate(commands)
    _add_eval(commands)
    _add_pretrain_micro(commands)
    _add_leaderboard(commands)
    _add_compare(commands)
    return parser


def _add_ls(commands) -> None:
    ls = commands.add_parser("ls", help="list registered adapters, backbones, tasks, task kinds, heads or data readers")
    ls.add_argument("kind", choices=["adapters", "backbones", "tasks", "kinds", "heads", "readers", "executors"])
    ls.set_defaults(handler=cmd_ls)


def _add_train(commands) -> None:
    from .config import RunConfig, RunPlaceOptions, RunPolicy, cli_fields

    train = commands.add_parser(
        "train", help="train and evaluate one backbone x adapter x task x seed; writes a run record",
        description="Train one run and write its record (JSON) and adapter checkpoint (safetensors). "
                    "The options are the fields of adaptbench/config.py (RunConfig, RunPolicy, RunPlaceOptions).",
    )
    train.add_argument("--adapter-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="adapter option, e.g. r=4 or targets=q,v (repeatable)")
    train.add_argument("--head-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="head option, e.g. n_ctx=4 for --head coop (repeatable)")
    for model in (RunConfig, RunPolicy, RunPlaceOptions):
        for option in cli_fields(model, skip=("adapter_options", "head_options")):
            _add_generated_flag(train, option)
    train.set_defaults(handler=cmd_train)


def _add_generated_flag(parser: argparse.ArgumentParser, option) -> None:
    """One flag of a config field: values stay text here and are checked by the field's type in
    ``cmd_train`` (so every bad value reads ``--flag value: expected ...``)."""
    required = option.model.model_fields[option.name].is_required()
    help_text = option.help + (f"; one of {', '.join(option.choices)}" if option.choices else "")
    if option.is_bool:
        parser.add_argument(option.flag, dest=option.name, action=argparse.BooleanOptionalAction,
                            default=None, help=help_text)
    else:
        parser.add_argument(option.flag, dest=option.name, default=None, required=required, help=help_text,
                            metavar=option.name.upper())


def _add_run(commands) -> None:
    from .config import MatrixRunOptions, cli_fields

    run = commands.add_parser(
        "run", help="run a benchmark matrix spec (backbones x adapters x tasks x seeds); resumable",
        description="Run every cell of a matrix spec (YAML), skipping cells whose record says success, "
                    "then print and write the leaderboard.",
    )
    run.add_argument("spec", help="a matrix spec, e.g. benchmarks/micro.yaml")
    for option in cli_fields(MatrixRunOptions):
        _add_generated_flag(run, option)
    run.set_defaults(handler=cmd_run)


def _add_validate(commands) -> None:
    validate = commands.add_parser(
        "validate", help="check a matrix spec, its adapters' options, weights and data; run nothing",
    )
    validate.add_argument("spec", help="a matrix spec, e.g. benchmarks/vtab1k.yaml")
    validate.add_argument("--data-root", default=None, help="data folder (default: the spec's data_root)")
    validate.set_defaults(handler=cmd_validate)


def _add_eval(commands) -> None:
    from .config import EvalOptions, cli_fields

    evaluate = commands.add_parser("eval", help="evaluate a saved adapter checkpoint on a task split",
                                   description="The options are the fields of adaptbench/config.py's EvalOptions.")
    for option in cli_fields(EvalOptions, skip=("as_json",)):
        _add_generated_flag(evaluate, option)
    evaluate.add_argument("--json", dest="as_json", action="store_true", help="print the metrics as JSON")
    evaluate.set_defaults(handler=cmd_eval)


def _add_leaderboard(commands) -> None:
    board = commands.add_parser(
        "leaderboard", help="tables and a Pareto plot from run records (md, csv, tex, html)",
        description="Aggregate run records into one leaderboard per benchmark. Without --out: a table "
                    "in the terminal, or the --format text on stdout. With --out: files "
                    "<out>/<name>.md|.tex|.html, .csv and .png (per benchmark when several).",
    )
    board.add_argument("results", nargs="+", help="run records (.json) or folders searched recursively")
    board.add_argument("--format", action="append", default=[], metavar="FORMAT",
                       help="md, csv, tex or html; repeatable or a comma list "
                            "(default: all four with --out, else the terminal table)")
    board.add_argument("--out", default=None, metavar="DIR", help="folder to write the files into")
    board.add_argument("--name", default="leaderboard", help="file name stem (default: leaderboard)")
    board.add_argument("--wise", action="store_true",
                       help="add a column per WiSE-FT interpolation the records evaluated (α=0, α=0.5, ...)")
    board.set_defaults(handler=cmd_leaderboard)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .leaderboard.text import render_leaderboards
    from .leaderboard import FORMATS, build_leaderboards, load_records, render_terminal, write_leaderboards

    formats = [f.strip() for given in args.format for f in given.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise AdaptbenchError(f"--format {unknown[0]!r}: expected one of {', '.join(FORMATS)}")
    if not args.name or "/" in args.name or args.name.startswith("."):
        raise AdaptbenchError(f"--name {args.name!r}: expected a plain file name stem, e.g. leaderboard")
    boards = build_leaderboards(load_records(args.results), wise=args.wise)
    if not boards:
        raise AdaptbenchError(f"no final run records in {', '.join(args.results)}: only tune records were found")
    if args.out is not None:
        paths = write_leaderboards(boards, args.out, args.name, formats or FORMATS)
        Console(width=200).print(render_terminal(boards))
        for path in paths:
            print(f"wrote {path}")
        return 0
    if not formats:
        Console(width=200).print(render_terminal(boards))
        return 0
    for fmt in formats:  # text to stdout, e.g. `adaptbench leaderboard results --format md > table.md`
        print(render_leaderboards(boards, fmt), end="")
    return 0


def _add_compare(commands) -> None:
    from .config import CompareOptions, cli_fields

    compare = commands.add_parser(
        "compare", help="two leaderboard rows compared paired: per-task means, the difference, its 95%% CI, a p-value",
        description="Find rows A and B (the labels the leaderboard shows) on one board of the run records and "
                    "compare them: per task the two means and A - B; for the mean over tasks the difference, "
                    "its 95% paired-bootstrap interval, a two-sided p-value and a verdict at 0.05.",
    )
    compare.add_argument("a", metavar="A", help="a row's label, as the leaderboard shows it")
    compare.add_argument("b", metavar="B", help="the other row's label")
    compare.add_argument("results", nargs="+", help="run records (.json) or folders searched recursively")
    for option in cli_fields(CompareOptions):
        _add_generated_flag(compare, option)
    compare.set_defaults(handler=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .api import compare
    from .config import CompareOptions
    from .leaderboard.compare import render_comparison

    options = _config_from_flags(CompareOptions, args)
    comparison = compare(args.results, args.a, args.b, benchmark=options.benchmark)
    Console(width=160).print(render_comparison(comparison))
    return 0


MICRO_MODELS = ("vit_micro", "sam_micro", "clip_micro")


def _add_pretrain_micro(commands) -> None:
    pretrain = commands.add_parser(
        "pretrain-micro", help="pretrain a micro backbone (vit_micro, sam_micro, clip_micro) on its procedural "
                               "source domain; writes its weights",
        description="Reproduce the shipped micro weights: vit_micro by supervised pretraining on procedural "
                    "glyphs, sam_micro (image encoder + SAM's mask decoder) by segmenting procedural colour-region "
                    "scenes, clip_micro (open_clip's CLIP: image and text towers) contrastively on procedural scenes "
                    "with generated captions. Left out, --epochs, --images and --seed take the settings of the "
                    "shipped file.",
    )
    pretrain.add_argument("--model", default="vit_micro", choices=MICRO_MODELS,
                          help="which micro backbone (default: vit_micro)")
    pretrain.add_argument("--out", default=None,
                          help="weights file to write (default: <model>.safetensors)")
    pretrain.add_argument("--epochs", type=int, default=None, help="default: the shipped file's")
    pretrain.add_argument("--images", type=int, default=None,
                          help="fresh source images per epoch (default: the shipped file's)")
    pretrain.add_argument("--seed", type=int, default=None, help="default: the shipped file's (0)")
    pretrain.set_defaults(handler=cmd_pretrain_micro)


def cmd_pretrain_micro(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .files import sha256_of

    if args.model == "sam_micro":
        from .pretrain.micro_sam import pretrain_micro_sam as pretrain
        from .pretrain.micro_sam import sam_shipping_note as shipping_note
    elif args.model == "clip_micro":
        from .pretrain.micro_clip import clip_shipping_note as shipping_note
        from .pretrain.micro_clip import pretrain_micro_clip as pretrain
    else:
        from .pretrain.micro import pretrain_micro as pretrain
        from .pretrain.micro import shipping_note

    # Only the flags given override the defaults (torch-free parsing cannot import them).
    given = {key: getattr(args, key) for key in ("epochs", "images", "seed") if getattr(args, key) is not None}
    out = pretrain(Path(args.out or f"{args.model}.safetensors"), **given)
    print(f"sha256 {sha256_of(out)}")
    print(shipping_note(out))
    return 0


def parse_adapter_args(pairs: Sequence[str], flag: str = "--adapter-arg") -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise AdaptbenchError(f"{flag} {pair!r}: expected KEY=VALUE, e.g. r=4")
        options[key.strip()] = value.strip()
    return options


def cmd_ls(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from .registry import REGISTRIES

    def add_row(*cells: str) -> None:  # descriptions may hold brackets, e.g. "adaptbench[peft]"
        table.add_row(*(escape(cell) for cell in cells))

    table = Table(title=f"adaptbench {args.kind}", show_lines=False)
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("source", style="dim")
    registry = REGISTRIES[args.kind]
    registry.load_plugins()  # built-ins stay lazy; plugins are imported to describe them
    for entry in registry.entries():
        add_row(entry.name, entry.description, entry.source)
    for family in registry.families():  # e.g. peft:<method>, listed without importing PEFT
        try:
            members = registry.members(family)
        except AdaptbenchError as err:  # the family's library is missing: say how to get it
            add_row(f"{family.prefix}<method>", err.message, family.source)
            continue
        for entry in members:
            add_row(entry.name, entry.description, entry.source)
    Console(width=160).print(table)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .api import run_checked, run_place
    from .config import RunConfig, RunPlaceOptions, RunPolicy

    config = _config_from_flags(RunConfig, args, adapter_options=parse_adapter_args(args.adapter_arg),
                                head_options=parse_adapter_args(args.head_arg, "--head-arg"))
    policy = _config_from_flags(RunPolicy, args)
    where = _config_from_flags(RunPlaceOptions, args)
    print_run_summary(run_checked(config, run_place(where, policy)))
    return 0


def _config_from_flags(model, args: argparse.Namespace, **extra):
    """``model`` from the flags given (its fields' defaults for the rest), checked field by field;
    a bad value is one line naming its flag."""
    from .config import ConfigError, check_model, cli_fields

    values: dict = dict(extra)
    for option in cli_fields(model, skip=tuple(extra)):
        value = getattr(args, option.name, None)
        if value is None:
            continue
        nested = option.model is not model  # a field of a nested model (backbone options)
        target = values.setdefault(_nested_key(model, option.model), {}) if nested else values
        target[option.name] = value
    try:
        return check_model(model, values, from_text=True)
    except ConfigError as err:
        flag = "--" + str(err.keys[-1]).replace("_", "-")
        given = getattr(args, str(err.keys[-1]), None)
        raise AdaptbenchError(f"{flag} {given}: {err.problem.split(', got ')[0]}"
                              if given is not None else f"{flag}: {err.problem}") from None


def _nested_key(model, nested_model) -> str:
    return next(name for name, field in model.model_fields.items() if field.annotation is nested_model)


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from .config import EvalOptions
    from .runner.evaluate import evaluate_checkpoint
    from .runner.train import quiet_lightning

    options = _config_from_flags(EvalOptions, args)
    quiet_lightning()
    metrics = evaluate_checkpoint(
        options.checkpoint, options.task, options.backbone, weights=options.weights, split=options.split,
        data_root=options.data_root, batch_size=options.batch_size, num_workers=options.num_workers,
        accelerator=options.accelerator,
    )
    if options.as_json:
        print(json.dumps(metrics, indent=2, sort_keys=True))
    else:
        for split, values in metrics.items():
            print(split, " ".join(f"{k}={v:.4f}" for k, v in sorted(values.items())))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .api import MatrixProblems, check_matrix, plan_matrix
    from .config import MatrixRunOptions
    from .runner.matrix import dry_run_table

    options = _config_from_flags(MatrixRunOptions, args)
    console = Console() if sys.stdout.isatty() else Console(width=160)  # logs: wide enough for the tables
    matrix = plan_matrix(args.spec, out=options.out, data_root=options.data_root, workers=options.workers,
                         retry_failed=options.retry_failed, accelerator=options.accelerator,
                         leaderboard=options.leaderboard, plugin_files=args.plugin, executor=options.executor,
                         console=console)
    if options.dry_run:
        console.print(dry_run_table(matrix))
        return 0
    try:
        check_matrix(matrix, args.spec)
    except MatrixProblems as err:  # every problem on its own line, then the usual one-line error
        for problem in err.problems[:-1]:
            print(f"adaptbench: error: {problem}", file=sys.stderr)
        raise AdaptbenchError(err.problems[-1]) from None
    summary = matrix.run()
    console.print(
        f"{matrix.spec.name}: {summary.cells} cells | {summary.succeeded} succeeded, {summary.failed} failed, "
        f"{summary.not_applicable} n/a | {summary.ran} run now, {summary.skipped} found done | "
        f"{summary.wall_time_s:.0f} s | {matrix.settings.name} executor | records in {matrix.out}"
    )
    for path in summary.leaderboard_files:
        console.print(f"leaderboard: {path}")
    if summary.failed:
        print(f"adaptbench: {summary.failed} of {summary.cells} cells failed; their records hold the errors; "
              f"re-run with --retry-failed to try them again", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from .runner.capabilities import Capabilities
    from .runner.cells import search_groups
    from .runner.spec import load_spec
    from .runner.validate import not_applicable_cells, problems, search_budget_warning, validate_spec

    spec = load_spec(args.spec)
    capabilities = Capabilities()
    checks = validate_spec(spec, args.data_root, capabilities)
    table = Table(title=f"{args.spec}: {spec.name}")
    for column in ("kind", "name", "ok", "detail"):
        table.add_column(column)
    for check in checks:
        verdict = "[yellow]n/a[/]" if check.not_applicable else "[green]ok[/]" if check.ok else "[red]no[/]"
        table.add_row(check.kind, escape(check.subject), verdict, escape(check.detail))
    console = Console(width=160)
    console.print(table)
    groups = search_groups(spec)
    tune = sum(len(group.tune_cells()) for group in groups)
    skipped = not_applicable_cells(spec, capabilities)
    console.print(f"{tune} tune cells + {len(groups) * len(spec.seeds)} final cells"
                  + (f"; {skipped} n/a (recorded, not run)" if skipped else ""))
    budget = search_budget_warning(spec)
    if budget:
        console.print(f"[yellow]warning:[/] {escape(budget)}")
    found = problems(checks)
    if found:  # the table shows them all; n/a pairs are not problems
        judged = [check for check in checks if not check.not_applicable]
        raise AdaptbenchError(f"{args.spec}: {len(found)} of {len(judged)} checks failed; the first: {found[0]}")
    return 0


PER_CLASS_PREFIX = "iou."  # segmentation's per-class IoUs


def print_run_summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    info = result.record.train_info
    config = result.record.config
    table = Table(title=f"{config['task']} | {config['backbone']} | {config['adapter']} | seed {config['seed']}")
    table.add_column("split")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for split, metrics in info.metrics.items():
        per_class = [name for name in metrics if name.startswith(PER_CLASS_PREFIX)]
        for name, value in sorted(metrics.items()):
            if name not in per_class:
                table.add_row(split, name, f"{value:.4f}")
        if per_class:  # a class per line would drown the table (ADE20K has 150): the record has them
            table.add_row(split, f"{PER_CLASS_PREFIX}<class>", f"{len(per_class)} classes in the record")
    params = info.params or {}
    console = Console(width=140)
    console.print(table)
    img_s = info.train_images_per_s
    console.print(
        f"trainable params: {params['trainable']:,} (+{params['head']:,} head) | "
        f"extra inference params: {params['extra_inference']:,} "
        f"({params['extra_inference_merged']:,} after merge) | "
        f"checkpoint: {params['checkpoint_bytes']:,} B | "
        f"train img/s: {img_s:.1f} | wall: {info.wall_time_s:.1f} s"
        if img_s is not None else f"trainable params: {params['trainable']:,}"
    )
    console.print(f"record: {result.record_path}")
    if result.checkpoint_path:
        console.print(f"adapter: {result.checkpoint_path}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _load_plugins(args.plugin)
        return args.handler(args)
    except AdaptbenchError as err:
        return _fail(err, args.debug, EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("adaptbench: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        return _fail(err, args.debug, EXIT_FAILURE)


def _load_plugins(paths: Sequence[str]) -> None:
    from .registry import load_plugin_file

    for path in paths:
        load_plugin_file(path)


def _fail(err: BaseException, debug: bool, code: int) -> int:
    if debug:
        import traceback

        traceback.print_exception(err)
    print(f"adaptbench: error: {one_line(err)}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
