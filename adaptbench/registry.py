"""One typed registry for backbones, adapters and tasks.

Entries are registered three ways:

* built-ins: the module that defines an object registers it at its bottom
  (``register_adapter("ssf", SSFConfig, SSF)``, in the manner of timm's ``@register_model``).
  That call is the only declaration: ``adaptbench/_catalogue.py`` finds those calls by
  reading the package's sources (``ast``, no import), so ``adaptbench ls`` and ``--help``
  never import torch, and the import that runs the call fills in the lazy entry;
* plugins: the entry-point groups ``adaptbench.adapters``, ``adaptbench.backbones``,
  ``adaptbench.executors`` and ``adaptbench.tasks`` (read at first use, imported only when an entry is used; in
  ``adaptbench.tasks`` an entry named ``kind.<name>`` adds a task kind, ``head.<name>`` a head
  and ``reader.<format>`` a data reader, any other name a task), and
  ``--plugin path/to/file.py`` (imported at once). ``ADAPTBENCH_NO_PLUGINS=1`` disables
  the entry-point autoload.

A *family* is a name prefix (``peft:``) whose members are made on demand: a cheap lister
(``"module:function"``, which must import nothing heavy) says which members exist, and a
resolver (``"module:function"``, called with the member name on first use) makes the object.
``require("peft:loha")`` consults only the lister; ``get`` calls the resolver. Family
members are not in ``names()`` (the registered names): ``members(family)`` lists them.

Registered names are lowercase (family members keep their library's case:
``clip:ViT-B-16/openai``); registering a name twice raises.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from .errors import AdaptbenchError, closest_names, did_you_mean

T = TypeVar("T")

#: registry kind -> (entry-point group, name prefix of its entries in that group)
ENTRY_POINT_GROUPS = {
    "adapter": ("adaptbench.adapters", ""),
    "backbone": ("adaptbench.backbones", ""),
    "task": ("adaptbench.tasks", ""),
    "task kind": ("adaptbench.tasks", "kind."),
    "head": ("adaptbench.tasks", "head."),
    "reader": ("adaptbench.tasks", "reader."),
    "executor": ("adaptbench.executors", ""),
}
NO_PLUGINS_ENV = "ADAPTBENCH_NO_PLUGINS"
# an entry point named family.<anything> adds a Family (e.g. a backbone family mine:<model>)
FAMILY_ENTRY_PREFIX = "family."
_loading_plugin_file: str | None = None  # set while a --plugin file runs: the source of its entries

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-./:")


@dataclass
class Entry:
    """A registered name: the object itself, or a ``"module:attr"`` string to import on use."""

    name: str
    target: Any
    description: str = ""
    source: str = "builtin"  # "builtin", "entry point <dist>", "plugin <path>", "<module>"

    member: str | None = None  # of a family: the lazy target is a resolver called with it

    @property
    def is_lazy(self) -> bool:
        return isinstance(self.target, str)


@dataclass(frozen=True)
class Family:
    """Names ``<prefix><member>`` made on demand (see the module docstring).

    ``lister() -> (offered, refused)``: ``{member: description}`` of the members that work,
    and ``{member: reason}`` of those that exist upstream but cannot work here. It raises
    :class:`AdaptbenchError` when the family is unavailable (e.g. its library is missing).
    A family too large to list (any timm model) names a ``member_check`` instead,
    ``function(member) -> description``, raising :class:`AdaptbenchError` for a bad member;
    its lister then only describes the family for ``adaptbench ls``. A backbone family names
    a ``weights_check``, ``function(member, weights) -> where the weights come from``, which
    never loads or downloads them (``adaptbench validate``).
    """

    prefix: str  # ends with ":"
    resolver: str  # "module:function", function(member) -> object
    lister: str  # "module:function", importing nothing heavy
    description: str
    source: str = "builtin"
    member_check: str = ""  # "module:function", function(member) -> description
    weights_check: str = ""  # "module:function", function(member, weights) -> description

    def listing(self) -> tuple[dict[str, str], dict[str, str]]:
        return call_target(self.lister)()

    def check_weights(self, member: str, weights: str | None) -> str:
        if not self.weights_check:
            raise AdaptbenchError(f"family {self.prefix!r} cannot check weights")
        return call_target(self.weights_check)(member, weights)


def call_target(target: str) -> Any:
    """The function a ``"module:function"`` string names (imported now); a target that cannot
    be imported is one line naming it, not a traceback."""
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise AdaptbenchError(f"{target!r} cannot be loaded: {type(err).__name__}: {err}") from err


@dataclass
class Registry(Generic[T]):
    """Names -> objects of one kind (``kind`` is "adapter", "backbone" or "task")."""

    kind: str
    _entries: dict[str, Entry] = field(default_factory=dict)
    _families: dict[str, Family] = field(default_factory=dict)
    _family_entries: dict[str, Entry] = field(default_factory=dict)
    _builtins_loaded: bool = False
    _entry_points_loaded: bool = False

    # -- registration -------------------------------------------------------------------
    def register(self, name: str, target: Any, description: str = "", source: str = "") -> None:
        """Register ``target`` (an object or a lazy ``"module:attr"`` string) as ``name``."""
        _check_name(self.kind, name)
        self._load_builtins()  # so that a plugin taking a built-in name is refused at once
        family = self._family_of(name)
        if family is not None:
            raise AdaptbenchError(
                f"{self.kind} name {name!r} is in the {family.prefix!r} family ({family.description}); "
                f"choose a name without that prefix"
            )
        if not description and not isinstance(target, str):
            description = _first_doc_line(target)
        existing = self._entries.get(name)
        if existing is not None and not _same_target(existing, target):
            raise AdaptbenchError(
                f"{self.kind} name {name!r} is already registered (by {existing.source}); "
                f"choose another name"
            )
        if existing is not None:  # the defining module filling in its own lazy entry
            if existing.is_lazy and not isinstance(target, str):
                existing.target = target
            existing.description = existing.description or description
            return
        source = source or (f"plugin {_loading_plugin_file}" if _loading_plugin_file else _source_of(target))
        self._entries[name] = Entry(name, target, description, source)

    # -- lookup -------------------------------------------------------------------------
    def names(self) -> list[str]:
        self._load_known_entries()
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry]:
        self._load_known_entries()
        for name in sorted(self._entries):
            yield self._entries[name]

    def __contains__(self, name: str) -> bool:
        self._load_known_entries()
        if name in self._entries:
            return True
        try:
            return self._family_of(name) is not None and bool(self._family_entry(name))
        except AdaptbenchError:
            return False

    def families(self) -> list[Family]:
        self._load_known_entries()  # plugin families come from entry points
        return list(self._families.values())

    def members(self, family: Family) -> list[Entry]:
        """The entries of a family's offered members (its lister only; nothing imported).
        Raises :class:`AdaptbenchError` when the family is unavailable."""
        offered, _ = family.listing()
        return [self._member_entry(family, member, description)
                for member, description in sorted(offered.items())]

    def require(self, name: str) -> Entry:
        """The entry of ``name`` (nothing imported), or the "unknown name" error."""
        self._load_known_entries()
        entry = self._entries.get(name)
        if entry is None and self._family_of(name) is not None:
            return self._family_entry(name)
        if entry is None:
            raise AdaptbenchError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self._entries)}; "
                f"`adaptbench ls {LS_NAMES.get(self.kind, self.kind + 's')}` lists them"
            )
        return entry

    def get(self, name: str) -> T:
        """The object registered as ``name``, importing its module on first use."""
        entry = self.require(name)
        if entry.is_lazy:
            entry.target = _import_target(entry)
            if entry.source != "builtin":  # a plugin's own docstring beats "plugin (module:attr)"
                entry.description = _first_doc_line(entry.target) or entry.description
        return entry.target

    def load_plugins(self) -> None:
        """Import every plugin entry (for listing), reporting each failure on stderr."""
        for entry in self.entries():
            if entry.is_lazy and entry.source != "builtin":
                try:
                    self.get(entry.name)
                except AdaptbenchError as err:
                    report_plugin_problem(err.message)
                    entry.description = "failed to load (see the warning above)"

    # -- families -----------------------------------------------------------------------
    def add_family(self, family: Family) -> None:
        if not family.prefix.endswith(":"):
            raise AdaptbenchError(f"{self.kind} family prefix {family.prefix!r}: expected it to end with ':'")
        clash = [name for name in self._entries if name.startswith(family.prefix)]
        if family.prefix in self._families or clash:
            raise AdaptbenchError(f"{self.kind} family prefix {family.prefix!r} is already taken")
        self._families[family.prefix] = family

    def family_of(self, name: str) -> Family | None:
        """The family ``name`` belongs to (by its prefix), or None."""
        self._load_known_entries()
        return self._family_of(name)

    def _family_of(self, name: str) -> Family | None:
        prefix, sep, _ = name.partition(":")
        return self._families.get(prefix + sep) if sep else None

    def _family_entry(self, name: str) -> Entry:
        """The entry of family member ``name``: offered, refused with its reason, or unknown."""
        if name in self._family_entries:
            return self._family_entries[name]
        family = self._family_of(name)
        member = name[len(family.prefix):]
        if family.member_check:
            description = call_target(family.member_check)(member)
            return self._member_entry(family, member, description)
        try:
            offered, refused = family.listing()
        except AdaptbenchError as err:
            raise AdaptbenchError(f"{self.kind} {name!r} is unavailable: {err.message}") from None
        if member in refused:
            raise AdaptbenchError(f"{self.kind} {name!r} cannot be used here: {refused[member]}")
        if member not in offered:
            # compare members without the shared prefix, which would make every name look close
            close = [family.prefix + m for m in closest_names(member, offered)]
            raise AdaptbenchError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, close)}; "
                f"`adaptbench ls {self.kind}s` lists the {family.prefix}* names on offer"
            )
        return self._member_entry(family, member, offered[member])

    def _member_entry(self, family: Family, member: str, description: str) -> Entry:
        name = family.prefix + member
        if name not in self._family_entries:
            self._family_entries[name] = Entry(name, family.resolver, description, family.source, member)
        return self._family_entries[name]

    # -- loading ------------------------------------------------------------------------
    def _load_builtins(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            from . import _catalogue

            for family in _catalogue.families(self.kind):
                self.add_family(Family(**family))
            for name, (target, description) in _catalogue.builtins(self.kind).items():
                self.register(name, target, description, source="builtin")

    def _load_known_entries(self) -> None:
        self._load_builtins()
        if not self._entry_points_loaded:
            self._entry_points_loaded = True
            if not os.environ.get(NO_PLUGINS_ENV):
                self._load_entry_points()

    def _load_entry_points(self) -> None:
        from importlib.metadata import entry_points

        group, prefix = ENTRY_POINT_GROUPS[self.kind]
        others = [p for g, p in ENTRY_POINT_GROUPS.values() if g == group and p and p != prefix]
        for ep in entry_points(group=group):
            dist = getattr(ep, "dist", None)
            source = f"entry point of {dist.name} {dist.version}" if dist else "entry point"
            if not ep.name.startswith(prefix) or any(ep.name.startswith(other) for other in others):
                continue  # another registry's entry in a shared group (kind.x, head.x in tasks)
            try:
                if ep.name.startswith(FAMILY_ENTRY_PREFIX):
                    self._add_plugin_family(ep, source)
                    continue
                self.register(ep.name.removeprefix(prefix), ep.value, f"plugin ({ep.value})", source=source)
            except AdaptbenchError as err:  # a bad plugin must not break the rest
                report_plugin_problem(f"plugin {ep.value!r} ({source}) not registered: {err.message}")


    def _add_plugin_family(self, ep: Any, source: str) -> None:
        """An entry point named ``family.<anything>`` whose object is a :class:`Family` (its
        module is imported now, so it must be light: the lister and resolver stay lazy)."""
        try:
            family = ep.load()
        except Exception as err:  # noqa: BLE001 - a plugin may raise anything
            raise AdaptbenchError(f"family {ep.value!r} failed to load: {type(err).__name__}: {err}") from err
        if not isinstance(family, Family):
            raise AdaptbenchError(f"entry point {ep.name!r} = {ep.value!r} is a {type(family).__name__}, "
                                  f"expected an adaptbench.registry.Family")
        fields = {**family.__dict__, "source": source}
        self.add_family(Family(**fields))


def _check_name(kind: str, name: str) -> None:
    if not name or name != name.lower() or not set(name) <= _NAME_CHARS:
        raise AdaptbenchError(
            f"invalid {kind} name {name!r}: expected lowercase letters, digits and '_-./:'"
        )


def _first_doc_line(obj: Any) -> str:
    doc = getattr(obj, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _source_of(target: Any) -> str:
    if isinstance(target, str):
        return target.split(":")[0]
    return getattr(target, "__module__", "") or "python"


def _target_path(target: Any) -> str | None:
    if isinstance(target, str):
        return target
    qualname = getattr(target, "__qualname__", None)  # classes and functions only
    return f"{target.__module__}:{qualname}" if qualname else None


def _same_target(entry: Entry, target: Any) -> bool:
    """Re-registering the very object a lazy entry points at is not a duplicate."""
    if entry.target is target:
        return True
    path = _target_path(target)
    return path is not None and path == _target_path(entry.target)


def _import_target(entry: Entry) -> Any:
    module_name, _, attr = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
        obj = module
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
        if entry.member is not None:  # a family's resolver makes the member
            obj = obj(entry.member)
    except AdaptbenchError:
        raise  # already one line the user can act on (e.g. "install PEFT")
    except Exception as err:  # noqa: BLE001 - any plugin failure becomes one line
        raise AdaptbenchError(
            f"{entry.name!r} ({entry.source}) failed to load from {entry.target!r}: "
            f"{type(err).__name__}: {err}"
        ) from err
    return obj


def report_plugin_problem(message: str) -> None:
    """Say on stderr, in one line, that a plugin could not be loaded (the rest goes on)."""
    print(f"adaptbench: warning: {message}", file=sys.stderr)


def load_plugin_file(path: str | os.PathLike) -> None:
    """Import a user-named Python file so that its ``register_*`` calls take effect."""
    path = Path(path)
    if not path.is_file():
        raise AdaptbenchError(f"plugin file {path} does not exist; expected a .py file")
    module_name = f"adaptbench_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise AdaptbenchError(f"plugin file {path} is not importable; expected a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    global _loading_plugin_file
    _loading_plugin_file = str(path)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - a user's file may raise anything
        sys.modules.pop(module_name, None)
        reason = err.message if isinstance(err, AdaptbenchError) else f"{type(err).__name__}: {err}"
        raise AdaptbenchError(f"plugin file {path}{_line_in_file(err, path)} failed to load: {reason}") from err
    finally:
        _loading_plugin_file = None


def _line_in_file(err: BaseException, path: Path) -> str:
    if isinstance(err, SyntaxError) and err.lineno:
        return f":{err.lineno}"
    tb = err.__traceback__
    line = ""
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).resolve() == path.resolve():
            line = f":{tb.tb_lineno}"
        tb = tb.tb_next
    return line


ADAPTERS: Registry = Registry("adapter")
BACKBONES: Registry = Registry("backbone")
TASKS: Registry = Registry("task")
TASK_KINDS: Registry = Registry("task kind")
HEADS: Registry = Registry("head")
READERS: Registry = Registry("reader")
EXECUTORS: Registry = Registry("executor")
REGISTRIES = {"adapters": ADAPTERS, "backbones": BACKBONES, "tasks": TASKS, "kinds": TASK_KINDS,
              "heads": HEADS, "readers": READERS, "executors": EXECUTORS}
LS_NAMES = {registry.kind: name for name, registry in REGISTRIES.items()}


def register_adapter(name: str, config_class: type, adapter_class: type, description: str = "") -> None:
    """Register an adapter: its config dataclass and the class that attaches it."""
    existing = vars(adapter_class).get("config_class")  # its own, not inherited
    if existing is not None and existing is not config_class:
        raise AdaptbenchError(
            f"adapter {name!r}: {adapter_class.__name__}.config_class is {existing.__name__}, "
            f"but register_adapter was given {config_class.__name__}"
        )
    adapter_class.config_class = config_class
    adapter_class.name = name
    ADAPTERS.register(name, adapter_class, description or _first_doc_line(adapter_class))


def register_backbone(name: str, factory: Callable[..., Any], description: str = "") -> None:
    """Register a backbone factory: ``factory(weights=..., **kwargs) -> Backbone``."""
    BACKBONES.register(name, factory, description)


def register_task(name: str, spec: Any, description: str = "") -> None:
    """Register a task specification (see ``adaptbench.tasks.catalog``)."""
    TASKS.register(name, spec, description)


def register_task_kind(name: str, kind: Any, description: str = "") -> None:
    """Register a task kind (``adaptbench.tasks.kinds.TaskKind``): its module, data and metrics."""
    kind.name = name
    TASK_KINDS.register(name, kind, description or _first_doc_line(kind))


def register_head(name: str, factory: Callable[..., Any], description: str = "") -> None:
    """Register a head factory ``(backbone, task_spec) -> nn.Module`` (``adaptbench.tasks.heads``)."""
    HEADS.register(name, factory, description or _first_doc_line(factory))


def register_reader(name: str, reader: Any, description: str = "") -> None:
    """Register an on-disk format reader (``adaptbench.datasets.readers.Reader``) as format ``name``."""
    READERS.register(name, reader, description or _first_doc_line(reader))


def register_executor(name: str, executor_class: type, description: str = "") -> None:
    """Register an executor (``adaptbench.runner.executors.Executor``): where a matrix's cells run."""
    executor_class.name = name
    EXECUTORS.register(name, executor_class, description or _first_doc_line(executor_class))
