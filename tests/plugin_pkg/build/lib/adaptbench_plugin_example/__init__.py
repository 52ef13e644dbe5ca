"""An example adaptbench plugin (used by the test suite as a real installed package)."""
