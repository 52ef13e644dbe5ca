"""An example adaptbench plugin distribution (the test suite installs it with pip).

It registers its adapter through the ``adaptbench.adapters`` entry-point group only (see
``pyproject.toml``): nothing in adaptbench names it.
"""
