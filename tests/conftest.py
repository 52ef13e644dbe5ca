"""Shared fixtures: tiny backbones, an isolated data cache, no network."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Generated micro data goes to one per-session folder, never the user's home."""
    cache = tmp_path_factory.getbasetemp() / "adaptbench-cache"
    monkeypatch.setenv("ADAPTBENCH_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def faulty_plugin(monkeypatch) -> str:
    """The test plugin's ``fault`` adapter (``plugins/faulty_plugin.py``) registered in this
    process for one test only; its path, for jobs whose workers load it themselves."""
    import sys
    from pathlib import Path

    from adaptbench.registry import ADAPTERS, load_plugin_file

    path = Path(__file__).parent / "plugins" / "faulty_plugin.py"
    ADAPTERS.names()  # built-ins and entry points loaded first, so the copy below holds them
    monkeypatch.setattr(ADAPTERS, "_entries", dict(ADAPTERS._entries))
    monkeypatch.setitem(sys.modules, "adaptbench_plugin_faulty_plugin", None)
    load_plugin_file(path)
    return str(path)
