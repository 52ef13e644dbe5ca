"""Recipes that make shipped backbone weights (``micro.py``: the micro ViT on procedural glyphs).

Pretraining sits above the backbones and datasets it uses: it imports ``adaptbench.backbones``
and ``adaptbench.datasets``, and nothing in those imports it, so loading a backbone never
pays for (or depends on) the training code that made its weights.
"""
