"""The ``sam:`` family's names and weight sources, known without importing torch.

``adaptbench ls backbones`` and ``BACKBONES.require("sam:vit_b")`` read this module only: it
imports neither torch nor segment-anything (whose presence is checked with ``find_spec``).
It holds the official image-encoder configurations of ``build_sam.py`` and the names of the
official checkpoints, which this package never downloads: users pass them with ``--weights``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ...errors import AdaptbenchError

INSTALL_HINT = 'segment-anything is not installed; install it with: pip install "adaptbench[sam]"'
CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/segment_anything/"

# What the three official encoders share (segment_anything/build_sam.py, _build_sam); the
# LayerNorms there use eps=1e-6, which sam.py adds (it needs torch).
COMMON_CONFIG = dict(img_size=1024, patch_size=16, mlp_ratio=4.0, out_chans=256, qkv_bias=True,
                     use_rel_pos=True, window_size=14)


@dataclass(frozen=True)
class SamVariant:
    """One official SAM image encoder: what differs between vit_b, vit_l and vit_h."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    checkpoint: str  # the official file name

    def encoder_config(self) -> dict:
        """Keyword arguments of segment-anything's ``ImageEncoderViT`` (norm layer aside)."""
        return dict(COMMON_CONFIG, embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads,
                    global_attn_indexes=self.global_attn_indexes)

    def describe(self) -> str:
        blocks = ", ".join(str(i) for i in self.global_attn_indexes)
        return (f"SAM image encoder: width {self.embed_dim}, {self.depth} blocks, global attention in blocks "
                f"{blocks} ({COMMON_CONFIG['window_size']}x{COMMON_CONFIG['window_size']} windows elsewhere); "
                f"checkpoint {self.checkpoint} via --weights")


SAM_VARIANTS = {
    "vit_b": SamVariant(768, 12, 12, (2, 5, 8, 11), "sam_vit_b_01ec64.pth"),
    "vit_l": SamVariant(1024, 24, 16, (5, 11, 17, 23), "sam_vit_l_0b3195.pth"),
    "vit_h": SamVariant(1280, 32, 16, (7, 15, 23, 31), "sam_vit_h_4b8939.pth"),
}


def list_sam_family() -> tuple[dict[str, str], dict[str, str]]:
    """The lister of the ``sam:`` family: (offered, refused); raises when segment-anything is missing."""
    if importlib.util.find_spec("segment_anything") is None:
        raise AdaptbenchError(INSTALL_HINT)
    return {name: variant.describe() for name, variant in SAM_VARIANTS.items()}, {}


def sam_variant(member: str) -> SamVariant:
    """The official configuration of ``sam:<member>``."""
    variant = SAM_VARIANTS.get(member)
    if variant is None:
        raise AdaptbenchError(f"unknown SAM image encoder {member!r}; expected one of {sorted(SAM_VARIANTS)}")
    return variant


def random_seed(weights: str) -> int | None:
    """The seed of ``"random[:seed]"`` (0 by default), or None for anything else."""
    if weights != "random" and not weights.startswith("random:"):
        return None
    seed_text = weights.partition(":")[2] or "0"
    if not seed_text.isdigit():
        raise AdaptbenchError(f"--weights {weights!r}: expected 'random' or 'random:<int seed>'")
    return int(seed_text)


def missing_checkpoint_message(checkpoint: str, member: str) -> str:
    """The one line for SAM weights that are not on disk (this package never downloads them)."""
    return (f"SAM weights cannot be downloaded by adaptbench: download the official checkpoint {checkpoint} "
            f"of sam:{member} ({CHECKPOINT_URL}{checkpoint}) and pass --weights /path/to/{checkpoint}")


def weights_source(weights: str | None, member: str, checkpoint: str = "") -> str:
    """Where the weights come from ("random:N" or "file:<path>"), checked without reading them.

    ``checkpoint`` is the official file name of ``sam:<member>``, quoted when weights are missing.
    """
    if weights in (None, "", "pretrained"):
        if not checkpoint:
            raise AdaptbenchError(f"SAM encoder {member!r} has no pretrained weights; pass --weights "
                                  f"random or --weights /path/to/checkpoint.pth")
        raise AdaptbenchError(missing_checkpoint_message(checkpoint, member))
    seed = random_seed(weights)
    if seed is not None:
        return f"random:{seed}"
    path = Path(weights).expanduser()
    if path.is_dir():
        raise AdaptbenchError(f"weights file {path} is a directory; expected 'random[:seed]' or a SAM checkpoint file")
    if not path.is_file():
        official = f" such as the official {checkpoint} ({CHECKPOINT_URL}{checkpoint})" if checkpoint else ""
        raise AdaptbenchError(f"weights file {path} does not exist; expected 'random[:seed]' or a SAM "
                              f"checkpoint file{official}")
    return f"file:{path}"
