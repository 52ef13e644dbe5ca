"""Adapters: one module per method, each registered at its bottom.

``build_adapter(name, backbone, options)`` is the one way to make and attach one.
"""

from __future__ import annotations

from typing import Any

from ..errors import AdaptbenchError
from ..registry import ADAPTERS
from .base import Adapter, AdapterConfig, InPlaceAdapter, Needs, NotApplicable, ParameterReport, SiteWrapper

__all__ = ["Adapter", "AdapterConfig", "InPlaceAdapter", "Needs", "NotApplicable", "ParameterReport", "SiteWrapper", "adapter_class", "build_adapter"]


def adapter_class(name: str) -> type[Adapter]:
    cls = ADAPTERS.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise AdaptbenchError(
            f"adapter {name!r} resolves to {cls!r}, expected a subclass of adaptbench.adapters.Adapter"
        )
    return cls


def build_adapter(name: str, backbone, options: dict[str, Any] | None = None) -> Adapter:
    """Make adapter ``name`` with ``options`` (validated by its config) and attach it."""
    cls = adapter_class(name)
    config = cls.config_class.from_dict(dict(options or {}), adapter=name)
    adapter = cls(config)
    adapter.name = name  # plugins resolved from entry points carry the name they were given
    return adapter.attach(backbone)
