"""adaptbench: benchmark parameter-efficient adaptation of frozen vision foundation models.

Importing the package is cheap (no torch): the heavy parts load when used.
"""

__version__ = "0.1.0"
