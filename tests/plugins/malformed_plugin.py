"""A plugin file with a mistake in it (used to test the error message)."""

from adaptbench.registry import register_adapter

register_adapter("malformed", MissingConfig, MissingAdapter)  # noqa: F821 - the mistake
