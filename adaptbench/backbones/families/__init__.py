"""Backbone families: one module per family (timm, open_clip, segment-anything, the micro ViT),
each canonicalising its library's blocks into the anatomy (``backbones/anatomy.py``) and
registering itself at its bottom."""
