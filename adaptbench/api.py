"""The Python API: what ``adaptbench train``, ``adaptbench run`` and ``adaptbench leaderboard`` do,
as functions (the CLI is a thin layer over them)::

    import adaptbench

    record = adaptbench.train({"task": "micro/digits", "backbone": "vit_micro", "adapter": "linear",
                               "epochs": 1}, out="results")
    frame = adaptbench.load_records("results")              # pandas.DataFrame, one row per run
    print(adaptbench.leaderboard(["results"], format="md"))

Every function here imports torch, Lightning or pandas only when called (``import adaptbench``
stays cheap). Bad input raises :class:`~adaptbench.errors.AdaptbenchError` with one line naming
the key, name, file or value at fault, before anything is trained.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import AdaptbenchError

if TYPE_CHECKING:  # pragma: no cover - annotations only
    import pandas as pd

    from .config import RunConfig, RunPlaceOptions, RunPolicy
    from .runner.matrix import MatrixRun, MatrixSpec, MatrixSummary
    from .records import RunRecord
    from .runner.train import RunPlace, RunResult

__all__ = ["MatrixProblems", "check_matrix", "compare", "load_records", "make_leaderboard", "plan_matrix",
           "run_checked", "run_matrix", "run_place", "train"]



# -- one run ----------------------------------------------------------------------------------
def train(
    config: RunConfig | Mapping[str, Any],
    *,
    out: str | os.PathLike = "results",
    data_root: str | os.PathLike | None = None,
    accelerator: str = "auto",
    num_workers: int | None = None,
    save_adapter: bool = True,
    progress: bool = False,
    policy: RunPolicy | Mapping[str, Any] | None = None,
) -> RunRecord:
    """Train and evaluate one backbone x adapter x task x seed; write its record; return it.

    ``config``: a :class:`~adaptbench.config.RunConfig`, or a dict of its fields (``task``,
    ``backbone`` and ``adapter`` required; ``epochs: 0`` evaluates without training). The other
    arguments say where and how it runs (the fields of :class:`~adaptbench.config.RunPlaceOptions`
    and :class:`~adaptbench.config.RunPolicy`, as ``adaptbench train``'s options): records go to
    ``out`` as ``<run id>.json``, the adapter checkpoint beside it unless ``save_adapter`` is false.

    Names, the task's data and the adapter's options are checked before any backbone is built;
    bad input raises :class:`~adaptbench.errors.AdaptbenchError` (``key: problem``) and writes
    no record. A run that starts and then fails is recorded ``failed`` and its error raised; an
    adapter that cannot run on the backbone is recorded ``n/a`` and raises AdaptbenchError.
    """
    from .config import RunConfig, RunPlaceOptions, RunPolicy

    run_config = _checked(RunConfig, config, "config")
    where = _checked(RunPlaceOptions, {
        "out": os.fspath(out), "data_root": None if data_root is None else os.fspath(data_root),
        "accelerator": accelerator, "num_workers": num_workers, "save_adapter": save_adapter,
        "progress": progress,
    }, "")
    run_policy = _checked(RunPolicy, {} if policy is None else policy, "policy")
    return run_checked(run_config, run_place(where, run_policy)).record


def _checked(model, values, what: str):
    """``values`` (a ``model`` or a mapping of its fields) as a ``model``; a bad value is one
    AdaptbenchError line, ``[what.]key: problem``."""
    from .config import ConfigError, check_model

    if isinstance(values, model):
        return values
    if not isinstance(values, Mapping):
        raise AdaptbenchError(f"{what or 'options'}: expected a {model.__name__} or a dict of its fields "
                              f"({', '.join(model.model_fields)}), got {type(values).__name__}")
    try:
        return check_model(model, dict(values))
    except ConfigError as err:
        where = ".".join(map(str, err.keys))
        if what and what != "config":
            where = f"{what}.{where}"
        raise AdaptbenchError(f"{where}: {err.problem}") from None


def run_place(where: RunPlaceOptions, policy: RunPolicy) -> RunPlace:
    """The :class:`~adaptbench.runner.train.RunPlace` of checked place options and a policy."""
    from .runner.train import RunPlace

    return RunPlace(out_dir=Path(where.out), data_root=where.data_root, accelerator=where.accelerator,
                    num_workers=where.num_workers, progress=where.progress, save_adapter=where.save_adapter,
                    policy=policy)


def run_checked(config: RunConfig, place: RunPlace) -> RunResult:
    """Check a run's names, data, adapter options and machine, then run it (``adaptbench train``).

    Names and data come first: a typo or a wrong data root must not wait for a backbone. An
    n/a adapter raises AdaptbenchError saying where its n/a record is.
    """
    from .registry import ADAPTERS, BACKBONES, HEADS, TASKS
    from .runner.train import check_environment, check_splits, is_not_applicable, quiet_lightning, run

    ADAPTERS.require(config.adapter)
    TASKS.require(config.task)
    if config.head is not None:
        HEADS.require(config.head)
    check_splits(config, place.data_root)  # split lists only: no torch yet
    BACKBONES.require(config.backbone)  # a family member check may import its library (timm)
    from .adapters import adapter_class

    adapter_class(config.adapter).config_class.from_dict(config.adapter_options, adapter=config.adapter)
    from .adapters.base import check_precision
    from .backbones import check_backbone_options, check_backbone_weights

    check_precision(config.adapter, config.precision)
    check_backbone_options(config.backbone, config.backbone_options)
    check_backbone_weights(config.backbone, config.weights)  # where the weights come from, before Lightning
    config = config.for_accelerator(place.accelerator)  # "auto" precision: the id holds the real one
    quiet_lightning()
    check_environment(place.accelerator, config.precision)
    try:
        return run(config, place)
    except AdaptbenchError as err:
        if not is_not_applicable(err):
            raise
        from .runner.train import cell_id, record_path_for

        # not a failure but still no result: say so, and where the n/a record is
        raise AdaptbenchError(f"{err.message}; recorded as n/a in "
                              f"{record_path_for(place.out_dir, cell_id(config))}") from err


# -- a matrix ---------------------------------------------------------------------------------
class MatrixProblems(AdaptbenchError):
    """A spec that cannot run: ``problems`` holds each problem as one line (``<spec>: ...``);
    the message is all of them on one line."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        super().__init__(message)
        self.problems = list(problems) or [message]

    def __reduce__(self):  # keep both arguments across pickling
        return type(self), (self.message, self.problems)


def plan_matrix(
    spec: str | os.PathLike | MatrixSpec,
    *,
    out: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    workers: int | None = None,
    retry_failed: bool = False,
    accelerator: str = "auto",
    leaderboard: bool = True,
    plugin_files: Sequence[str] = (),
    executor: str | None = None,
    console: Any = None,
) -> MatrixRun:
    """A :class:`~adaptbench.runner.matrix.MatrixRun` of ``spec`` (a spec file, or one loaded by
    ``adaptbench.runner.spec.load_spec``), planned but neither checked nor run. ``executor`` and
    ``workers`` override the spec's ``executor:`` block (default: local, 1 worker)."""
    from .runner.matrix import MatrixOptions, MatrixRun
    from .runner.spec import MatrixSpec, load_spec

    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise AdaptbenchError(f"workers {workers!r}: expected an integer >= 1")
    if executor is not None:
        from .registry import EXECUTORS

        EXECUTORS.require(executor)
    loaded = spec if isinstance(spec, MatrixSpec) else load_spec(spec)
    location = None if not out else os.fspath(out)
    options = MatrixOptions(out=location, data_root=None if data_root is None else os.fspath(data_root),
                            workers=workers, retry_failed=retry_failed, accelerator=accelerator,
                            plugin_files=tuple(plugin_files), leaderboard=leaderboard, executor=executor)
    return MatrixRun(loaded, options, console=console)


def check_matrix(matrix: MatrixRun, source: str | os.PathLike | None = None) -> None:
    """Refuse a matrix that cannot run, before any cell: its spec, adapter options, weights and
    data (``adaptbench validate``'s checks), and every precision it uses on its accelerator.

    Raises :class:`MatrixProblems` (each problem prefixed with ``source``, default the spec's path).
    """
    from .config import auto_precision
    from .runner.train import check_environment
    from .runner.validate import problems, spec_precisions, validate_spec

    source = str(source if source is not None else matrix.spec.path)
    found = problems(validate_spec(matrix.spec, matrix.options.data_root, matrix.capabilities))  # anatomies built once
    if found:
        lines = [f"{source}: {problem}" for problem in found]
        message = lines[0] if len(lines) == 1 else f"{source}: {len(found)} problems: " + "; ".join(found)
        raise MatrixProblems(message, lines)
    for precision in spec_precisions(matrix.spec):  # before any cell: a machine problem poisons no record
        check_environment(matrix.options.accelerator, auto_precision(matrix.options.accelerator)
                          if precision == "auto" else precision)
    matrix.executor  # built now: its engine is installed and its settings fit, or one line says why


def run_matrix(spec: str | os.PathLike | MatrixSpec, **options: Any) -> MatrixSummary:
    """Run every cell of a matrix spec, as ``adaptbench run`` does; return its summary.

    ``spec``: a spec file (YAML) or a loaded :class:`~adaptbench.runner.spec.MatrixSpec`;
    ``options`` are :func:`plan_matrix`'s (``out``, ``data_root``, ``workers``, ``retry_failed``,
    ``accelerator``, ``leaderboard``, ``plugin_files``, ``executor``). ``out`` / ``data_root``
    override the spec's; ``workers`` cells run at the same time on ``executor`` (``plugin_files``
    are imported by each worker); cells whose record says success are skipped
    (failed ones too, unless ``retry_failed``). With ``leaderboard`` the spec's leaderboard
    files are written (``summary.leaderboard_files``). The spec is checked first: problems
    raise :class:`MatrixProblems` (an AdaptbenchError) and nothing runs. A failed cell does not
    raise: ``summary.failed`` counts them and their records hold the errors.
    """
    matrix = plan_matrix(spec, **options)
    check_matrix(matrix, spec if isinstance(spec, (str, os.PathLike)) else None)
    return matrix.run()


# -- records and leaderboards -----------------------------------------------------------------
def _paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str | os.PathLike]:
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


def load_records(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> pd.DataFrame:
    """The run records in ``paths`` (a record file or folder, or a list of them; folders are
    searched recursively) as a pandas DataFrame, one typed row per record: ``task``, ``backbone``,
    ``adapter``, ``label``, ``seed``, ``status``, ``score`` (100 x the primary metric), parameter
    counts, costs and every ``config.<key>`` (``adaptbench.leaderboard.records.records_frame``)."""
    from .leaderboard.records import load_records as read_records
    from .leaderboard.records import records_frame

    return records_frame(read_records(_paths(paths)))


def make_leaderboard(records, format: str = "md") -> str:  # noqa: A002 - the CLI's --format
    """The leaderboard of ``records`` (RunRecords, record files or folders) as ``md``, ``csv``,
    ``tex`` or ``html`` text; also ``adaptbench.leaderboard(records, format=...)``
    (:func:`adaptbench.leaderboard.text.make_leaderboard`)."""
    from .leaderboard.text import make_leaderboard as render

    return render(records, format)


def compare(records, a: str, b: str, *, benchmark: str | None = None):
    """Rows ``a`` and ``b`` (the labels the leaderboard shows) of the leaderboard of ``records``
    (RunRecords, record files or folders) compared paired, as ``adaptbench compare A B``: a
    :class:`~adaptbench.leaderboard.stats.Comparison` with per-task means (``cells``), the
    difference of the means over tasks, its 95 % paired-bootstrap interval (``low``, ``high``),
    a two-sided p-value and ``verdict()``. ``benchmark`` picks the board when there are several.
    A label that names no row raises AdaptbenchError listing the board's labels."""
    from .leaderboard.compare import compare as compare_rows

    return compare_rows(records, a, b, benchmark=benchmark)
