"""Matrix specs: a YAML file naming backbones x adapters x tasks x seeds.

A spec is read with ``yaml.safe_load``, merged over the files it ``include:``s, checked key
by key, and turned into a :class:`MatrixSpec` (plain data, no torch). Every error names the
file, the line where the key was written, the key path and what was expected::

    benchmarks/micro.yaml:12: adapters[2].train.lr: expected a positive number, got 'fast'

Keys (all but ``backbones``, ``adapters`` and ``tasks`` optional)::

    name: micro                      # default: the file's stem; names the leaderboard files
    description: ...
    include: base.yaml               # or a list; paths relative to this file; this file wins
    recipe: noah                     # the training recipe's name, written into every record (an
                                     #   adapter entry may name its own); published rows match on it
    backbones: [vit_micro]           # registered names (adaptbench ls backbones), or {name, weights, options}
                                     #   options: img_size, keep_projection, quick_gelu, grad_checkpointing,
                                     #   drop_path, normalization
    backbone_options: {drop_path: 0.1, normalization: imagenet}   # under every backbone entry's options
    tasks: [micro]                   # task names or groups: micro, vtab1k, vtab1k/natural, fgvc
    adapters:                        # names, or mappings:
      - linear
      - {name: lora, label: lora_r4, options: {r: 4}, train: {lr: 5e-3}, grid: {...}}
      - {name: ssf, recipe: ssf, backbone_options: {drop_path: 0.0}}   # over the backbone's
    seeds: [0, 1, 2]                 # or a count: 3 -> [0, 1, 2]
    shots: [1, 4, 16]                # few-shot: one cell per k (k per class); an entry that sets
                                     #   train: {shots: ...} (or epochs: 0, zero-shot) is not repeated
    train: {epochs: 100, batch_size: 64, lr: 1e-3, weight_decay: 1e-4}   # adaptbench.config.TRAIN_FIELDS
    policy: {deterministic: true, matmul_precision: auto, validation: end, compile: false}  # not in cell ids
    grid: {lr: [1e-3, 1e-2], options.r: [4, 8], head_options.alpha: [1, 2]}   # searched on the tune stage
    data_root: ~/data/vtab-1k        # where tasks read their data (the CLI's --data-root wins)
    out: results/micro               # the result store: a folder (default results/<name>) or an
                                     #   fsspec URL (s3://bucket/results/micro) shared with remote workers
    executor: {name: slurm, workers: 8, gpus_per_cell: 1, cpus_per_cell: 8, partition: gpu,
               time_limit_min: 240, options: {slurm_account: vision}}   # adaptbench.config.ExecutorSettings;
                                     #   --executor / --workers override name / workers
    leaderboard: {out: leaderboard, formats: [md, csv, tex, html], wise: false}   # wise: WiSE-FT columns

Mappings merge deeply across ``include``; lists and scalars are replaced. The trainer
settings, backbone options and policy are the fields of ``adaptbench/config.py``, checked by
their types there (one definition for the spec, ``adaptbench train`` and the records).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import (TRAIN_FIELDS, BackboneOptions, ConfigError, ExecutorSettings, RunConfig, RunPolicy, check_model,
                      check_value)
from ..errors import AdaptbenchError, did_you_mean
from ..yaml_files import Where, read_with_includes

TOP_LEVEL_KEYS = ("name", "description", "include", "recipe", "backbones", "backbone_options", "tasks", "adapters",
                  "seeds", "shots", "train", "policy", "grid", "data_root", "out", "executor", "leaderboard")
ADAPTER_KEYS = ("name", "label", "recipe", "options", "backbone_options", "train", "grid")
BACKBONE_KEYS = ("name", "weights", "options")
LEADERBOARD_KEYS = ("out", "name", "formats", "wise")
LEADERBOARD_FORMATS = ("md", "csv", "tex", "html")
GRID_OPTION_PREFIX = "options."
GRID_HEAD_OPTION_PREFIX = "head_options."


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _non_negative_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    weights: str | None = None
    options: BackboneOptions = field(default_factory=BackboneOptions)


@dataclass(frozen=True)
class AdapterEntry:
    name: str
    label: str
    options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    recipe: str = ""  # the named recipe this entry follows, when it is not the spec's
    backbone_options: dict[str, Any] = field(default_factory=dict)  # over the backbone entry's (set keys)

    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination of the grid, in the order written ([{}] when there is no grid)."""
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]


@dataclass(frozen=True)
class MatrixSpec:
    name: str
    path: Path
    backbones: tuple[BackboneEntry, ...]
    tasks: tuple[str, ...]
    adapters: tuple[AdapterEntry, ...]
    seeds: tuple[int, ...]
    train: dict[str, Any]
    data_root: str | None
    out: Path | str  # a folder, or a storage URL
    leaderboard_out: Path
    leaderboard_name: str
    leaderboard_formats: tuple[str, ...]
    description: str = ""
    policy: RunPolicy = field(default_factory=RunPolicy)
    shots: tuple[int | None, ...] = (None,)  # the few-shot k values (None: all training data)
    leaderboard_wise: bool = False  # WiSE-FT columns (leaderboard: {wise: true})
    recipe: str = ""  # the training recipe's name, written into every record (recipe: noah)
    backbone_options: dict[str, Any] = field(default_factory=dict)  # under every backbone entry's (set keys)
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)  # where the cells run

    def recipe_of(self, adapter: AdapterEntry) -> str:
        """The recipe an adapter entry's cells follow: its own, else the spec's ('' when unnamed)."""
        return adapter.recipe or self.recipe

    def backbone_options_for(self, backbone: BackboneEntry, adapter: AdapterEntry) -> BackboneOptions:
        """The options a cell's backbone is built with: the spec's ``backbone_options``, then the
        backbone entry's, then the adapter entry's (a recipe's drop-path or normalisation)."""
        return BackboneOptions(**{**self.backbone_options, **backbone.options.model_dump(exclude_unset=True),
                                  **adapter.backbone_options})


# -- reading ------------------------------------------------------------------------------
def load_spec(path: str | Path) -> MatrixSpec:
    """Read, merge, check and resolve a spec file (see the module docstring)."""
    path = Path(path)
    raw, sources = read_with_includes(path, chain=())
    return _resolve(raw, Where(path, sources))


# -- checking and resolving ----------------------------------------------------------------
def _resolve(raw: dict[str, Any], where: Where) -> MatrixSpec:
    for key in raw:
        if key in TRAIN_FIELDS and key not in TOP_LEVEL_KEYS:  # a trainer setting written at the top level
            raise where.error((key,), f"unknown key; trainer settings go under train: (train: {{{key}: ...}})")
    _check_known_keys(raw, TOP_LEVEL_KEYS, (), where)
    for required in ("backbones", "adapters", "tasks"):
        if required not in raw:
            raise AdaptbenchError(f"{where.path}: missing key {required!r} (a list)")
    name = raw.get("name", where.path.stem)
    if not isinstance(name, str) or not name or "/" in name:
        raise where.error(("name",), f"expected a file-name-safe string, got {name!r}")
    train = _check_train(raw.get("train") or {}, ("train",), where)
    global_grid = _check_grid(raw.get("grid") or {}, ("grid",), where)
    adapters = tuple(_adapter_entry(item, i, global_grid, where)
                     for i, item in enumerate(_list(raw, "adapters", where)))
    _check_unique_labels(adapters, where)
    for index, entry in enumerate(adapters):
        _check_combinations(train, entry, index, global_grid, where)
        _check_head_options(train, entry, index, global_grid, where)
    leaderboard = _check_leaderboard(raw.get("leaderboard") or {}, where)
    recipe = _check_recipe(raw.get("recipe", ""), ("recipe",), where)
    backbone_options = _set_options(raw.get("backbone_options") or {}, ("backbone_options",), where)
    backbones = tuple(_backbone_entry(item, i, where) for i, item in enumerate(_list(raw, "backbones", where)))
    _check_cell_backbone_options(backbones, adapters, backbone_options, where)
    data_root = raw.get("data_root")
    if data_root is not None and not isinstance(data_root, str):
        raise where.error(("data_root",), f"expected a folder path, got {data_root!r}")
    out = raw.get("out", f"results/{name}")
    if not isinstance(out, str) or not out:
        raise where.error(("out",), f"expected a folder path or a storage URL, got {out!r}")
    return MatrixSpec(
        name=name,
        path=where.path,
        backbones=backbones,
        recipe=recipe,
        backbone_options=backbone_options,
        tasks=_expand_tasks(_list(raw, "tasks", where), where),
        adapters=adapters,
        seeds=_check_seeds(raw.get("seeds", [0]), where),
        train=train,
        shots=_check_shots(raw.get("shots"), train, where),
        data_root=str(Path(data_root).expanduser()) if data_root else None,
        out=out if "://" in out else Path(out).expanduser(),
        leaderboard_out=Path(leaderboard.get("out", "leaderboard")).expanduser(),
        leaderboard_name=leaderboard.get("name", name),
        leaderboard_formats=tuple(leaderboard.get("formats", LEADERBOARD_FORMATS)),
        leaderboard_wise=leaderboard.get("wise", False),
        description=str(raw.get("description", "")),
        policy=_check_section(RunPolicy, raw.get("policy") or {}, ("policy",), where),
        executor=_check_executor(raw.get("executor") or {}, where),
    )


def _check_executor(block: Any, where: Where) -> ExecutorSettings:
    """The ``executor:`` block: its fields by type, its name a registered executor."""
    from ..registry import EXECUTORS

    settings = _check_section(ExecutorSettings, block, ("executor",), where)
    try:
        EXECUTORS.require(settings.name)
    except AdaptbenchError as err:
        raise where.error(("executor", "name"), err.message) from None
    return settings


def _check_known_keys(mapping: dict[str, Any], known: tuple[str, ...], keys: tuple[Any, ...], where: Where) -> None:
    for key in mapping:
        if key not in known:
            raise where.error((*keys, key), f"unknown key{did_you_mean(str(key), known)}; expected one of "
                                            f"{', '.join(known)}")


def _list(raw: dict[str, Any], key: str, where: Where) -> list[Any]:
    value = raw[key]
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list) or not value:
        raise where.error((key,), f"expected a non-empty list, got {value!r}")
    return value


def _check_train(train: Any, keys: tuple[Any, ...], where: Where) -> dict[str, Any]:
    """Trainer settings: the ``TRAIN_FIELDS`` of the run config, each checked by its type."""
    if not isinstance(train, dict):
        raise where.error(keys, f"expected a mapping of trainer settings, got {train!r}")
    _check_known_keys(train, TRAIN_FIELDS, keys, where)
    for key, value in train.items():
        _check_field(RunConfig, key, value, (*keys, key), where)
    return dict(train)


def _check_field(model, key: str, value: Any, keys: tuple[Any, ...], where: Where) -> None:
    from ..registry import HEADS

    try:
        check_value(model, key, value)
        if key == "head":  # a registered name, like the adapter's and the backbone's
            HEADS.require(value)
    except ValueError as err:
        raise where.error(keys, str(err)) from None
    except AdaptbenchError as err:
        raise where.error(keys, err.message) from None


def _check_section(model, values: Any, keys: tuple[Any, ...], where: Where):
    """A mapping checked as ``model`` (the policy, backbone options), errors at their key."""
    if not isinstance(values, dict):
        raise where.error(keys, f"expected a mapping of {', '.join(model.model_fields)}, got {values!r}")
    try:
        return check_model(model, values)
    except ConfigError as err:
        raise where.error((*keys, *err.keys), err.problem) from None


def _check_grid(grid: Any, keys: tuple[Any, ...], where: Where) -> dict[str, list[Any]]:
    """A grid maps trainer keys (lr, ...) or ``options.<adapter option>`` to lists of values."""
    if not isinstance(grid, dict):
        raise where.error(keys, f"expected a mapping of key: [values], got {grid!r}")
    checked = {}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise where.error((*keys, key), f"expected a non-empty list of values, got {values!r}")
        if str(key).startswith((GRID_OPTION_PREFIX, GRID_HEAD_OPTION_PREFIX)):
            checked[key] = values  # checked against the adapter's / head's options (_check_*_options)
            continue
        if key not in TRAIN_FIELDS:
            raise where.error((*keys, key), f"unknown grid key{did_you_mean(str(key), TRAIN_FIELDS)}; expected "
                                            f"a trainer setting ({', '.join(TRAIN_FIELDS)}), options.<name> or "
                                            f"head_options.<name>")
        for i, value in enumerate(values):
            _check_field(RunConfig, key, value, (*keys, key, i), where)
        checked[key] = values
    return checked


def _check_adapter_options(name: str, options: dict[str, Any], grid: dict[str, list[Any]],
                           grid_keys: tuple[Any, ...], keys: tuple[Any, ...], where: Where) -> None:
    """Every option (written, or searched by the grid) is one the adapter has, with a value its
    config accepts; the error points at the line where the option or grid key is written."""
    from ..adapters import adapter_class

    config_class = adapter_class(name).config_class
    known = config_class.help()
    located = [((*keys, "options", option), option, [value]) for option, value in options.items()]
    located += [((*grid_keys, key), key.removeprefix(GRID_OPTION_PREFIX), values)
                for key, values in grid.items() if key.startswith(GRID_OPTION_PREFIX)]
    for at, option, values in located:
        if option not in known:
            raise where.error(at, f"adapter {name!r} has no option {option!r}"
                                  f"{did_you_mean(option, known)}; expected one of {', '.join(known)}")
        for value in values:
            try:
                config_class.from_dict({option: value}, adapter=name)
            except AdaptbenchError as err:
                raise where.error(at, err.message) from None


def _adapter_entry(item: Any, index: int, global_grid: dict[str, list[Any]], where: Where) -> AdapterEntry:
    from ..registry import ADAPTERS

    keys: tuple[Any, ...] = ("adapters", index)
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise where.error(keys, f"expected an adapter name or a mapping with 'name', got {item!r}")
    _check_known_keys(item, ADAPTER_KEYS, keys, where)
    if item["name"] not in ADAPTERS:
        raise where.error((*keys, "name"), f"unknown adapter {item['name']!r}"
                                           f"{did_you_mean(item['name'], ADAPTERS.names())}")
    options = item.get("options") or {}
    if not isinstance(options, dict):
        raise where.error((*keys, "options"), f"expected a mapping of adapter options, got {options!r}")
    label = item.get("label", item["name"])
    if not isinstance(label, str) or not label:
        raise where.error((*keys, "label"), f"expected a non-empty string, got {label!r}")
    # An adapter's own grid replaces the spec's (``grid: {}`` turns the search off for it).
    grid = global_grid if "grid" not in item else _check_grid(item["grid"] or {}, (*keys, "grid"), where)
    grid_keys = ("grid",) if "grid" not in item else (*keys, "grid")
    _check_adapter_options(item["name"], options, grid, grid_keys, keys, where)
    train = _check_train(item.get("train") or {}, (*keys, "train"), where)
    recipe = _check_recipe(item.get("recipe", ""), (*keys, "recipe"), where)
    backbone_options = _set_options(item.get("backbone_options") or {}, (*keys, "backbone_options"), where)
    return AdapterEntry(item["name"], label, dict(options), train, grid, recipe, backbone_options)


def _check_recipe(recipe: Any, keys: tuple[Any, ...], where: Where) -> str:
    if not isinstance(recipe, str) or not (recipe == "" or recipe.replace("-", "").replace("_", "").isalnum()):
        raise where.error(keys, f"expected a recipe name (letters, digits, - or _), got {recipe!r}")
    return recipe


def _set_options(values: Any, keys: tuple[Any, ...], where: Where) -> dict[str, Any]:
    """Backbone options checked as :class:`BackboneOptions`; only the keys written are kept, so
    they can be layered over a backbone entry's."""
    checked = _check_section(BackboneOptions, values, keys, where)
    return checked.model_dump(exclude_unset=True)


def _check_cell_backbone_options(backbones: tuple[BackboneEntry, ...], adapters: tuple[AdapterEntry, ...],
                                 spec_options: dict[str, Any], where: Where) -> None:
    """Every backbone's family honours the options its cells are built with (the spec's and
    the adapters' layered over its own), the error at the line that sets the refused one."""
    from ..backbones import refused_backbone_options

    for backbone in backbones:
        for index, adapter in enumerate(adapters):
            merged = BackboneOptions(**{**spec_options, **backbone.options.model_dump(exclude_unset=True),
                                        **adapter.backbone_options})
            for option in refused_backbone_options(backbone.name, merged):
                at = (("adapters", index, "backbone_options", option) if option in adapter.backbone_options
                      else ("backbone_options", option))
                _check_backbone_options(backbone.name, BackboneOptions(**{option: getattr(merged, option)}),
                                        at[:-1], where)


def _check_unique_labels(adapters: tuple[AdapterEntry, ...], where: Where) -> None:
    """Labels name rows, and cells are named by their config: both must be unique."""
    labels: dict[str, int] = {}
    configs: dict[str, int] = {}
    for index, entry in enumerate(adapters):
        if entry.label in labels:
            raise where.error(("adapters", index), f"label {entry.label!r} is used twice (also adapters"
                                                   f"[{labels[entry.label]}]); give each variant its own label")
        labels[entry.label] = index
        config = repr((entry.name, sorted(entry.options.items()), sorted(entry.train.items())))
        if config in configs:
            other = adapters[configs[config]]
            raise where.error(("adapters", index), f"{entry.label!r} has the same adapter, options and train "
                                                   f"settings as {other.label!r} (adapters[{configs[config]}]): "
                                                   f"their runs would be the same cells; change one or drop it")
        configs[config] = index


def _backbone_entry(item: Any, index: int, where: Where) -> BackboneEntry:
    from ..registry import BACKBONES

    keys: tuple[Any, ...] = ("backbones", index)
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise where.error(keys, f"expected a backbone name or a mapping with 'name', got {item!r}")
    _check_known_keys(item, BACKBONE_KEYS, keys, where)
    name = item["name"]
    try:
        BACKBONES.require(name)  # the one check: registered names and family members alike
    except AdaptbenchError as err:
        raise where.error((*keys, "name"), err.message) from None
    weights = item.get("weights")
    if weights is not None and not isinstance(weights, str):
        raise where.error((*keys, "weights"), f"expected 'pretrained', 'random[:seed]' or a file path, got {weights!r}")
    if weights and not (weights in ("pretrained", "random") or weights.startswith("random:")):
        weights = str(Path(weights).expanduser())
    options = _check_section(BackboneOptions, item.get("options") or {}, (*keys, "options"), where)
    _check_backbone_options(name, options, (*keys, "options"), where)
    return BackboneEntry(name, weights, options)


def _check_backbone_options(name: str, options: BackboneOptions, keys: tuple[Any, ...], where: Where) -> None:
    """The options the backbone's family can honour, the error at the option's line."""
    from ..backbones import check_backbone_options, refused_backbone_options

    refused = refused_backbone_options(name, options)
    if refused:
        try:
            check_backbone_options(name, options)
        except AdaptbenchError as err:
            raise where.error((*keys, refused[0]), err.message) from None


def _check_combinations(train: dict[str, Any], entry: AdapterEntry, index: int,
                        global_grid: dict[str, list[Any]], where: Where) -> None:
    """Rules across settings (warm-up within the epochs) at every grid point, reported where
    the value that breaks them is written."""
    for point in entry.grid_points():
        settings = {**train, **entry.train, **{k: v for k, v in point.items() if k in TRAIN_FIELDS}}
        warmup, epochs = settings.get("warmup_epochs"), settings.get("epochs")
        if warmup is None or not epochs or warmup <= epochs:  # epochs 0: nothing trains, no warm-up
            continue
        if "warmup_epochs" in point:
            at = ("grid", "warmup_epochs") if entry.grid is global_grid else ("adapters", index, "grid", "warmup_epochs")
        elif "warmup_epochs" in entry.train:
            at = ("adapters", index, "train", "warmup_epochs")
        else:
            at = ("train", "warmup_epochs")
        raise where.error(at, f"expected at most the epochs ({epochs}), got {warmup}")


def _check_head_options(train: dict[str, Any], entry: AdapterEntry, index: int,
                        global_grid: dict[str, list[Any]], where: Where) -> None:
    """Every head option (written under train, or searched by the grid) is one the entry's head
    has, with a value its config accepts; the error points where it is written."""
    from ..registry import HEADS
    from ..tasks.heads import check_head_options

    in_entry = "head_options" in entry.train
    written = entry.train.get("head_options", train.get("head_options")) or {}
    written_at = ("adapters", index, "train", "head_options") if in_entry else ("train", "head_options")
    grid_at = ("grid",) if entry.grid is global_grid else ("adapters", index, "grid")
    located = [((*written_at, option), option, [value]) for option, value in written.items()]
    located += [((*grid_at, key), key.removeprefix(GRID_HEAD_OPTION_PREFIX), values)
                for key, values in entry.grid.items() if key.startswith(GRID_HEAD_OPTION_PREFIX)]
    if not located:
        return
    head = entry.train.get("head", train.get("head"))
    if head is None:
        raise where.error(located[0][0], "head options need a head: set train.head (e.g. head: coop)")
    for at, option, values in located:
        for value in values:
            try:
                check_head_options(head, HEADS.get(head), {option: value})
            except AdaptbenchError as err:
                raise where.error(at, err.message) from None


def _expand_tasks(items: list[Any], where: Where) -> tuple[str, ...]:
    from ..registry import TASKS

    from ..tasks.groups import task_groups

    groups = task_groups()
    tasks: list[str] = []
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise where.error(("tasks", index), f"expected a task name or group, got {item!r}")
        if item in TASKS:
            names = [item]
        elif item in groups:
            names = groups[item]
        else:
            raise where.error(("tasks", index), f"unknown task or group {item!r}"
                                                f"{did_you_mean(item, [*TASKS.names(), *groups])}")
        tasks.extend(name for name in names if name not in tasks)
    return tuple(tasks)


def _check_shots(shots: Any, train: dict[str, Any], where: Where) -> tuple[int | None, ...]:
    """``shots: [1, 4, 16]`` (k per class, one cell each) or absent (all training data)."""
    if shots is None:
        return (None,)
    if "shots" in train:
        raise where.error(("shots",), "set either the top-level shots list or train.shots, not both")
    if _positive_int(shots):
        shots = [shots]
    if (not isinstance(shots, list) or not shots or not all(_positive_int(k) for k in shots)
            or len(set(shots)) != len(shots)):
        raise where.error(("shots",), f"expected a list of distinct integers >= 1 (k per class), got {shots!r}")
    return tuple(shots)


def _check_seeds(seeds: Any, where: Where) -> tuple[int, ...]:
    if _positive_int(seeds):
        return tuple(range(seeds))
    if (not isinstance(seeds, list) or not seeds
            or not all(_non_negative_int(s) for s in seeds) or len(set(seeds)) != len(seeds)):
        raise where.error(("seeds",), f"expected a count or a list of distinct integers >= 0, got {seeds!r}")
    return tuple(seeds)


def _check_leaderboard(leaderboard: Any, where: Where) -> dict[str, Any]:
    if not isinstance(leaderboard, dict):
        raise where.error(("leaderboard",), f"expected a mapping (out, name, formats, wise), got {leaderboard!r}")
    _check_known_keys(leaderboard, LEADERBOARD_KEYS, ("leaderboard",), where)
    formats = leaderboard.get("formats", list(LEADERBOARD_FORMATS))
    if not isinstance(formats, list) or not all(f in LEADERBOARD_FORMATS for f in formats):
        raise where.error(("leaderboard", "formats"), f"expected a list of {', '.join(LEADERBOARD_FORMATS)}, "
                                                      f"got {formats!r}")
    for key in ("out", "name"):
        if key in leaderboard and not isinstance(leaderboard[key], str):
            raise where.error(("leaderboard", key), f"expected a string, got {leaderboard[key]!r}")
    if "wise" in leaderboard and not isinstance(leaderboard["wise"], bool):
        raise where.error(("leaderboard", "wise"), f"expected true or false, got {leaderboard['wise']!r}")
    return leaderboard
