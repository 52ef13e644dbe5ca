"""A plugin module that fails on import, to prove one bad plugin breaks nothing else."""

raise ImportError("adaptbench_plugin_example.broken needs a library that is not installed")
