"""Readers for the real on-disk formats (VTAB-1k, FGVC) and the generated micro tasks.

Submodules import torch / numpy only when used: import what you need from
``adaptbench.datasets.vtab``, ``.fgvc``, ``.images`` or ``.micro``.
"""
