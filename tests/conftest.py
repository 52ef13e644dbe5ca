"""Shared fixtures: tiny backbones, an isolated data cache, no network."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Generated micro data goes to one per-session folder, never the user's home."""
    cache = tmp_path_factory.getbasetemp() / "adaptbench-cache"
    monkeypatch.setenv("ADAPTBENCH_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
