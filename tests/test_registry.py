"""The registry: names, duplicates, lazy entries, entry points and their failures."""

from __future__ import annotations

import sys
import types
from importlib.metadata import EntryPoint

import pytest

from adaptbench import registry as registry_module
from adaptbench.errors import AdaptbenchError
from adaptbench.registry import Registry


class Thing:
    """A registered thing."""


class Other:
    """Another thing."""


@pytest.fixture
def fresh():
    """A registry of kind "adapter" with no built-ins and no installed plugins."""
    reg = Registry("adapter")
    reg._builtins_loaded = True
    reg._entry_points_loaded = True
    return reg


def test_names_must_be_lowercase(fresh):
    with pytest.raises(AdaptbenchError, match="invalid adapter name 'LoRA'"):
        fresh.register("LoRA", Thing)
    fresh.register("micro/digits-2.x_y", Thing)


def test_duplicates_raise_but_the_same_object_may_fill_its_lazy_entry(fresh):
    fresh.register("thing", f"{__name__}:Thing", "lazy description")
    fresh.register("thing", Thing)  # the defining module registering itself: fine
    assert fresh.get("thing") is Thing
    with pytest.raises(AdaptbenchError, match="already registered"):
        fresh.register("thing", Other)


def test_lazy_entries_import_on_get_only(fresh, monkeypatch):
    module = types.ModuleType("lazy_target_module")
    module.Target = Thing
    imported = []
    real_import = registry_module.importlib.import_module

    def spy(name):
        imported.append(name)
        return module if name == "lazy_target_module" else real_import(name)

    monkeypatch.setattr(registry_module.importlib, "import_module", spy)
    fresh.register("target", "lazy_target_module:Target", "described without importing")
    assert [e.description for e in fresh.entries()] == ["described without importing"]
    assert imported == []
    assert fresh.get("target") is Thing and imported == ["lazy_target_module"]


def test_unknown_name_suggests_close_ones(fresh):
    fresh.register("lora", Thing)
    with pytest.raises(AdaptbenchError, match=r"unknown adapter 'lorra' \(did you mean 'lora'\?\)"):
        fresh.get("lorra")


def fake_entry_points(*points: EntryPoint):
    return lambda group=None: [p for p in points if p.group == group]


def test_entry_points_register_lazily_and_a_failing_one_is_isolated(monkeypatch):
    monkeypatch.delenv("ADAPTBENCH_NO_PLUGINS", raising=False)
    sys.modules["good_plugin_mod"] = types.SimpleNamespace(Good=Thing)
    monkeypatch.setattr("importlib.metadata.entry_points", fake_entry_points(
        EntryPoint("good", "good_plugin_mod:Good", "adaptbench.adapters"),
        EntryPoint("bad", "no_such_plugin_module:Bad", "adaptbench.adapters"),
        EntryPoint("Bad-Name", "x:y", "adaptbench.adapters"),
        EntryPoint("elsewhere", "x:y", "adaptbench.tasks"),
    ))
    reg = Registry("adapter")
    reg._builtins_loaded = True
    assert reg.names() == ["bad", "good"]  # the invalid name is reported, not registered
    assert reg.get("good") is Thing
    with pytest.raises(AdaptbenchError, match="'bad' .*failed to load from 'no_such_plugin_module:Bad'"):
        reg.get("bad")
    del sys.modules["good_plugin_mod"]


def test_no_plugins_env_disables_entry_points(monkeypatch):
    monkeypatch.setenv("ADAPTBENCH_NO_PLUGINS", "1")
    monkeypatch.setattr("importlib.metadata.entry_points", fake_entry_points(
        EntryPoint("good", "good_plugin_mod:Good", "adaptbench.adapters")))
    reg = Registry("adapter")
    reg._builtins_loaded = True
    assert reg.names() == []


def test_builtin_catalogue_points_at_real_objects():
    from adaptbench.adapters import Adapter
    from adaptbench.registry import ADAPTERS, BACKBONES

    from adaptbench._catalogue import ADAPTERS as CATALOGUE

    for name, (_, description) in CATALOGUE.items():
        cls = ADAPTERS.get(name)
        assert issubclass(cls, Adapter) and cls.name == name
        # the listing (read without importing) says what the class itself says
        assert cls.__doc__.strip().splitlines()[0].rstrip(".") == description
    for name in BACKBONES.names():
        assert callable(BACKBONES.get(name))
