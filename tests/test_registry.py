"""The registry: names, duplicates, lazy entries, entry points and their failures.

Fresh ``Registry("adapter")`` instances throughout (the global ones are for the package);
``importlib.metadata.entry_points`` is replaced by a fake, so no installed package matters.
"""

from __future__ import annotations

import re
import sys
import types
from importlib.metadata import EntryPoint

import pytest

from adaptbench import registry as registry_module
from adaptbench.errors import AdaptbenchError
from adaptbench.registry import Registry

GROUP = "adaptbench.adapters"


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


@pytest.fixture
def plugins_enabled(monkeypatch):
    monkeypatch.delenv("ADAPTBENCH_NO_PLUGINS", raising=False)


def with_entry_points(monkeypatch, *points) -> list[str]:
    """Make ``importlib.metadata.entry_points(group=...)`` return ``points``; returns the
    list of groups it is asked for (to see when, and how often, the registry reads them)."""
    asked = []

    def entry_points(group=None):
        asked.append(group)
        return [p for p in points if p.group == group]

    monkeypatch.setattr("importlib.metadata.entry_points", entry_points)
    return asked


def without_builtins() -> Registry:
    reg = Registry("adapter")
    reg._builtins_loaded = True
    return reg


# -- names and duplicates ----------------------------------------------------------------


@pytest.mark.parametrize("bad", ["LoRA", "Lora", "", "lo ra", "lora!"])
def test_names_must_be_lowercase_identifiers(fresh, bad):
    with pytest.raises(AdaptbenchError, match=f"invalid adapter name {bad!r}: expected lowercase"):
        fresh.register(bad, Thing)
    assert fresh.names() == []


def test_names_may_hold_digits_and_separators(fresh):
    fresh.register("micro/digits-2.x_y:z", Thing)
    assert fresh.get("micro/digits-2.x_y:z") is Thing


def test_a_different_object_under_a_taken_name_raises(fresh):
    fresh.register("thing", Thing)
    taken = rf"adapter name 'thing' is already registered \(by {re.escape(__name__)}\); choose another name"
    with pytest.raises(AdaptbenchError, match=taken):
        fresh.register("thing", Other)
    with pytest.raises(AdaptbenchError, match="already registered"):
        fresh.register("thing", f"{__name__}:Other")  # a lazy entry pointing elsewhere too
    assert fresh.get("thing") is Thing


def test_registering_the_object_a_lazy_entry_points_at_fills_it_in(fresh):
    fresh.register("thing", f"{__name__}:Thing", "lazy description", source="builtin")
    fresh.register("thing", Thing)  # what the defining module does at its bottom
    fresh.register("thing", Thing)  # and again (a module imported twice): still fine
    [entry] = fresh.entries()
    assert entry.target is Thing and not entry.is_lazy
    assert entry.description == "lazy description" and entry.source == "builtin"
    with pytest.raises(AdaptbenchError, match="already registered"):
        fresh.register("thing", Other)


def test_description_defaults_to_the_first_docstring_line(fresh):
    fresh.register("thing", Thing)
    assert [e.description for e in fresh.entries()] == ["A registered thing."]


# -- lazy entries ------------------------------------------------------------------------


def test_lazy_entries_import_on_get_only(fresh, monkeypatch):
    module = types.ModuleType("lazy_target_module")
    module.Target = Thing
    imported = []
    real_import = registry_module.importlib.import_module

    def spy(name, *args):
        imported.append(name)
        return module if name == "lazy_target_module" else real_import(name, *args)

    monkeypatch.setattr(registry_module.importlib, "import_module", spy)
    fresh.register("target", "lazy_target_module:Target", "described without importing")
    assert fresh.names() == ["target"] and "target" in fresh
    assert [e.description for e in fresh.entries()] == ["described without importing"]
    assert imported == []  # listing, membership and descriptions import nothing
    assert fresh.get("target") is Thing
    assert fresh.get("target") is Thing
    assert imported == ["lazy_target_module"]  # once, on first use


def test_lazy_entry_may_name_a_nested_attribute(fresh, monkeypatch):
    nested = types.SimpleNamespace(Outer=types.SimpleNamespace(Inner=Thing))
    monkeypatch.setitem(sys.modules, "lazy_nested_module", nested)
    fresh.register("nested", "lazy_nested_module:Outer.Inner")
    assert fresh.get("nested") is Thing


def test_a_lazy_entry_that_cannot_import_is_one_clear_error(fresh):
    fresh.register("ghost", "no_such_module_for_adaptbench:Ghost", source="entry point of ghost-dist 1.0")
    with pytest.raises(AdaptbenchError) as err:
        fresh.get("ghost")
    message = err.value.message
    assert "'ghost'" in message and "ghost-dist" in message and "no_such_module_for_adaptbench:Ghost" in message
    assert "ModuleNotFoundError" in message and "\n" not in message


def test_unknown_name_suggests_close_ones(fresh):
    fresh.register("lora", Thing)
    fresh.register("ssf", Other)
    hint = r"unknown adapter 'lorra' \(did you mean 'lora'\?\); `adaptbench ls adapters` lists them"
    with pytest.raises(AdaptbenchError, match=hint):
        fresh.get("lorra")
    with pytest.raises(AdaptbenchError) as err:
        fresh.get("prompt")
    assert "did you mean" not in err.value.message  # nothing close: no misleading hint


# -- entry points --------------------------------------------------------------------------


def test_entry_points_are_read_once_at_first_use(monkeypatch, plugins_enabled):
    asked = with_entry_points(monkeypatch, EntryPoint("good", f"{__name__}:Thing", GROUP))
    reg = without_builtins()
    assert asked == []  # constructing a registry reads nothing
    assert reg.names() == ["good"]
    assert "good" in reg and reg.get("good") is Thing
    assert asked == [GROUP]


def test_entry_points_register_lazily_and_a_failing_one_is_isolated(monkeypatch, plugins_enabled, capsys):
    monkeypatch.setitem(sys.modules, "good_plugin_mod", types.SimpleNamespace(Good=Thing))
    with_entry_points(monkeypatch,
        EntryPoint("good", "good_plugin_mod:Good", GROUP),
        EntryPoint("bad", "no_such_plugin_module:Bad", GROUP),
        EntryPoint("Bad-Name", "x:y", GROUP),
        EntryPoint("elsewhere", "x:y", "adaptbench.tasks"),
    )
    reg = without_builtins()
    assert reg.names() == ["bad", "good"]  # the invalid name is reported, not registered
    [warning] = capsys.readouterr().err.strip().splitlines()
    assert warning.startswith("adaptbench: warning:") and "'Bad-Name'" in warning
    assert reg.get("good") is Thing
    with pytest.raises(AdaptbenchError, match="'bad' .*failed to load from 'no_such_plugin_module:Bad'"):
        reg.get("bad")
    assert reg.get("good") is Thing  # still fine after the failure


def test_load_plugins_reports_each_failure_in_one_line_and_keeps_the_rest(monkeypatch, plugins_enabled, capsys):
    monkeypatch.setitem(sys.modules, "good_plugin_mod", types.SimpleNamespace(Good=Thing))
    with_entry_points(monkeypatch,
        EntryPoint("bad", "no_such_plugin_module:Bad", GROUP),
        EntryPoint("good", "good_plugin_mod:Good", GROUP),
    )
    reg = without_builtins()
    reg.load_plugins()
    [warning] = capsys.readouterr().err.strip().splitlines()
    assert "'bad'" in warning and "ModuleNotFoundError" in warning
    described = {e.name: e.description for e in reg.entries()}
    assert described == {"bad": "failed to load (see the warning above)", "good": "A registered thing."}


def test_entry_point_source_names_its_distribution(monkeypatch, plugins_enabled):
    dist = types.SimpleNamespace(name="adaptbench-plugin-fake", version="9.9")
    point = types.SimpleNamespace(name="faked", value=f"{__name__}:Other", group=GROUP, dist=dist)
    with_entry_points(monkeypatch, point)
    [entry] = without_builtins().entries()
    assert entry.source == "entry point of adaptbench-plugin-fake 9.9" and entry.is_lazy


def test_an_entry_point_cannot_take_a_builtin_name(monkeypatch, plugins_enabled, capsys):
    with_entry_points(monkeypatch, EntryPoint("lora", f"{__name__}:Other", GROUP))
    reg = Registry("adapter")  # with the real built-in catalogue
    assert "lora" in reg
    [entry] = [e for e in reg.entries() if e.name == "lora"]
    assert entry.source == "builtin" and entry.target == "adaptbench.adapters.lora:LoRA"
    [warning] = capsys.readouterr().err.strip().splitlines()
    assert f"'{__name__}:Other'" in warning and "'lora' is already registered (by builtin)" in warning


def test_no_plugins_env_disables_entry_points(monkeypatch):
    monkeypatch.setenv("ADAPTBENCH_NO_PLUGINS", "1")
    asked = with_entry_points(monkeypatch, EntryPoint("good", f"{__name__}:Thing", GROUP))
    reg = without_builtins()
    assert reg.names() == [] and "good" not in reg
    with pytest.raises(AdaptbenchError, match="unknown adapter 'good'"):
        reg.get("good")
    assert asked == []  # not even read


def test_a_name_taken_by_a_builtin_is_refused_when_registered():
    reg = Registry("adapter")
    reg._entry_points_loaded = True
    with pytest.raises(AdaptbenchError, match=r"'lora' is already registered \(by builtin\)"):
        reg.register("lora", Other)


# -- the built-in catalogue -----------------------------------------------------------------


def test_builtin_catalogue_points_at_real_objects():
    from adaptbench._catalogue import builtins
    from adaptbench.adapters import Adapter
    from adaptbench.registry import ADAPTERS, BACKBONES

    catalogue = builtins("adapter")
    assert {"lora", "ssf", "vpt_deep", "mosa"} <= set(catalogue)
    for name, (_, description) in catalogue.items():
        cls = ADAPTERS.get(name)
        assert issubclass(cls, Adapter) and cls.name == name
        # the listing (read without importing) says what the class itself says
        assert cls.__doc__.strip().splitlines()[0].rstrip(".") == description
    for name in BACKBONES.names():
        assert callable(BACKBONES.get(name))


# -- name families (``peft:<method>``) ----------------------------------------------------------

FAMILY_CALLS: list[str] = []


def fake_lister():
    FAMILY_CALLS.append("list")
    return {"loha": "LoHa via Fake", "lora": "LoRA via Fake"}, {"prefix_tuning": "prompt learning"}


def fake_resolver(member):
    FAMILY_CALLS.append(f"resolve {member}")
    return type(f"Fake{member}", (), {"__doc__": f"{member} made on demand"})


def missing_lister():
    raise AdaptbenchError('Fake is not installed; install it with: pip install "adaptbench[fake]"')


def with_family(reg: Registry, lister: str = "fake_lister") -> registry_module.Family:
    family = registry_module.Family("fake:", f"{__name__}:fake_resolver", f"{__name__}:{lister}", "fake methods")
    reg.add_family(family)
    FAMILY_CALLS.clear()
    return family


def test_family_members_resolve_on_use_only(fresh):
    with_family(fresh)
    entry = fresh.require("fake:loha")
    assert entry.description == "LoHa via Fake" and entry.is_lazy
    assert FAMILY_CALLS == ["list"]  # knowing the name asks the lister, never the resolver
    made = fresh.get("fake:loha")
    assert made.__name__ == "Fakeloha" and fresh.get("fake:loha") is made
    assert FAMILY_CALLS == ["list", "resolve loha"]  # resolved once
    assert "fake:lora" in fresh and "fake:nope" not in fresh
    assert fresh.names() == []  # members are listed by members(), not among the registered names


def test_family_listing_and_its_errors(fresh):
    family = with_family(fresh)
    assert [e.name for e in fresh.members(family)] == ["fake:loha", "fake:lora"]
    with pytest.raises(AdaptbenchError, match=r"unknown adapter 'fake:lorra' \(did you mean 'fake:lora'"):
        fresh.require("fake:lorra")
    with pytest.raises(AdaptbenchError, match=r"adapter 'fake:prefix_tuning' cannot be used here: prompt learning"):
        fresh.require("fake:prefix_tuning")


def test_an_unavailable_family_says_how_to_get_it(fresh):
    family = with_family(fresh, "missing_lister")
    with pytest.raises(AdaptbenchError) as err:
        fresh.get("fake:loha")
    assert err.value.message == ("adapter 'fake:loha' is unavailable: Fake is not installed; "
                                 'install it with: pip install "adaptbench[fake]"')
    with pytest.raises(AdaptbenchError, match="not installed"):
        fresh.members(family)
    assert "fake:loha" not in fresh


def test_a_family_prefix_is_reserved(fresh):
    with_family(fresh)
    with pytest.raises(AdaptbenchError, match=r"'fake:mine' is in the 'fake:' family"):
        fresh.register("fake:mine", Thing)
    with pytest.raises(AdaptbenchError, match="already taken"):
        with_family(fresh)


def test_the_peft_family_is_builtin_for_adapters_only():
    assert [f.prefix for f in Registry("adapter").families()] == ["peft:"]
    assert [f.prefix for f in Registry("backbone").families()] == ["timm:", "clip:", "sam:"]
    assert Registry("task").families() == []


# -- a backbone family from a plugin ------------------------------------------------------------


def plugin_family_lister():
    return {"small": "a small member", "large": "a large member"}, {"huge": "too big for this test"}


def plugin_family_resolver(member):
    return lambda weights=None, **options: ("built", member, weights)


def plugin_family_weights(member, weights):
    return f"{member} weights {weights or 'pretrained'} (checked, not loaded)"


PLUGIN_FAMILY = registry_module.Family(
    prefix="mine:", resolver=f"{__name__}:plugin_family_resolver", lister=f"{__name__}:plugin_family_lister",
    weights_check=f"{__name__}:plugin_family_weights", description="a plugin's backbone family")


def test_a_plugin_adds_a_backbone_family_through_its_entry_point(monkeypatch, plugins_enabled):
    with_entry_points(monkeypatch, EntryPoint("family.mine", f"{__name__}:PLUGIN_FAMILY", "adaptbench.backbones"))
    reg = Registry("backbone")
    monkeypatch.setattr(registry_module, "BACKBONES", reg)
    [family] = [f for f in reg.families() if f.prefix == "mine:"]
    assert family.source.startswith("entry point") and "mine:small" in reg
    assert reg.get("mine:small")(weights="random") == ("built", "small", "random")
    with pytest.raises(AdaptbenchError, match="'mine:huge' cannot be used here: too big"):
        reg.require("mine:huge")
    with pytest.raises(AdaptbenchError, match=r"did you mean 'mine:small'"):
        reg.require("mine:smal")
    assert family.check_weights("large", None) == "large weights pretrained (checked, not loaded)"
    # the built-in families are still there, once each
    assert [f.prefix for f in reg.families()].count("timm:") == 1


def test_a_family_entry_point_must_name_a_family(monkeypatch, plugins_enabled, capsys):
    with_entry_points(monkeypatch, EntryPoint("family.bad", f"{__name__}:plugin_family_lister", "adaptbench.backbones"))
    reg = Registry("backbone")
    reg.names()
    [warning] = capsys.readouterr().err.strip().splitlines()
    assert "is a function, expected an adaptbench.registry.Family" in warning


def test_backbone_family_members_resolve_through_load_backbone():
    from adaptbench.backbones import check_backbone_weights, load_backbone

    assert check_backbone_weights("timm:vit_tiny_patch16_224", "random") == "random:0"
    assert load_backbone("timm:vit_tiny_patch16_224", weights="random", img_size=32, patch_size=8,
                         embed_dim=32, depth=1, num_heads=2).anatomy.num_blocks == 1
    with pytest.raises(AdaptbenchError, match="unknown timm model 'not_a_model'"):
        check_backbone_weights("timm:not_a_model")
