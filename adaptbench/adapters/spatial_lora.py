"""Spatial LoRA: the spatial low-rank adapter (SLRA) of ToonComposer, as LoRA on the spatial
attention projections with one rank per projection.

Li, Wang, Zhang, Li, Li, Dou, Gu, Xue, Shan, "ToonComposer: Streamlining Cartoon Production
with Generative Post-Keyframing", 2025 (arXiv:2508.10881; ICLR 2026).

ToonComposer adapts a video DiT to the cartoon domain with low-rank updates on the *spatial*
attention only, so that the temporal modelling learned by the foundation model (its "temporal
prior") is kept. Here, for every chosen projection ``p`` of the spatial self-attention
(``q``, ``k``, ``v`` — thirds of the fused qkv linear — and ``attn_out``):

    W_p' = W_p + (alpha / r_p) B_p A_p,      A_p: r_p x d,  B_p: d_p x r_p

with ``A_p`` Kaiming-uniform (a = sqrt(5)) and ``B_p = 0`` (identity at initialisation), and
merged exactly. Ranks are per projection (``ranks=q=4,v=8`` on the command line); a projection
not listed is not adapted. The scaling is ``alpha / r_p`` per projection, as PEFT's
``rank_pattern`` does with one ``lora_alpha``.

Temporal sites: a video backbone adds a ``temporal`` branch to its blocks (anatomy.py). This
adapter reaches modules only through the spatial sites ``qkv`` and ``attn_out`` (the
``attn`` branch), so temporal modules are never wrapped, declared or trained: the temporal prior
stays bit-for-bit the frozen one. On image backbones it is per-site-rank LoRA on attention.

Defaults: ``q``, ``k``, ``v``, ``attn_out`` at rank 8, ``alpha = 8`` (scale 1). We found no
rank in what we could read of the paper, and the official code (TencentARC/ToonComposer) reads
``dera_rank`` from the released model's config (default None); a ``# (18)`` comment beside
``dera_d = dera_rank // 4`` in ``model/dit.py`` hints at rank 72 on Wan2.1-14B (d = 5120),
which has no ViT-B counterpart. So rank 8 (LoRA's default here) is our choice, and scale 1
matches the official code, which adds its branch unscaled.

Its relation to the official code: the released implementation (``model/dera.py``, class
``DeRA``, added to the self-attention output in ``WanAttentionBlock``) is not LoRA on the
projections but a *parallel branch* beside the spatial self-attention, which is registered here
as ``dera`` (``adapters/dera.py``). This adapter is the benchmark's other reading of the method
("LoRA restricted to the spatial attention and projection sites, per-site ranks"): it keeps
SLRA's defining property (only spatial attention adapted, temporal prior intact, low rank,
identity at init) on the LoRA machinery, so it merges and compares directly with ``lora``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..registry import register_adapter
from .base import AdapterConfig, require
from .lora import LoRA

SPATIAL_SITES = ("q", "k", "v", "attn_out")


@dataclass
class SpatialLoRAConfig(AdapterConfig):
    ranks: tuple[str, ...] = field(
        default=("q=8", "k=8", "v=8", "attn_out=8"),
        metadata={"help": f"site=rank for each adapted spatial attention site, sites among "
                          f"{', '.join(SPATIAL_SITES)} (CLI: ranks=q=4,v=8)"},
    )
    alpha: float = field(default=8.0, metadata={"help": "scaling numerator: site p's update is (alpha/r_p) B_p A_p"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA branch input"})
    blocks: tuple[int, ...] | None = field(
        default=None, metadata={"help": "block indices to adapt (default: every block)"}
    )

    def validate(self) -> None:
        require(len(self.ranks) > 0, "spatial_lora option ranks: expected at least one site=rank, e.g. q=8,v=8")
        seen = set()
        for entry in self.ranks:
            site, rank = _parse_rank(entry)
            require(site in SPATIAL_SITES,
                    f"spatial_lora ranks entry {entry!r}: site {site!r} is not a spatial attention site; "
                    f"expected one of {SPATIAL_SITES}")
            require(site not in seen, f"spatial_lora ranks entry {entry!r}: site {site!r} is given twice")
            require(rank is not None and rank >= 1,
                    f"spatial_lora ranks entry {entry!r}: expected site=rank with an integer rank >= 1")
            seen.add(site)
        require(self.alpha > 0, f"spatial_lora option alpha={self.alpha}: expected > 0")
        require(0.0 <= self.dropout < 1.0, f"spatial_lora option dropout={self.dropout}: expected 0 <= dropout < 1")

    def rank_map(self) -> dict[str, int]:
        return {site: rank for site, rank in map(_parse_rank, self.ranks)}

    @property
    def targets(self) -> tuple[str, ...]:
        """The adapted sites, in LoRA's target vocabulary."""
        return tuple(self.rank_map())

    def rank_of(self, part: str) -> int:
        return self.rank_map()[part]


def _parse_rank(entry: str) -> tuple[str, int | None]:
    """``"q=8"`` -> ``("q", 8)``; the rank is None when it is missing or not an integer."""
    site, _, rank = str(entry).partition("=")
    try:
        return site.strip(), int(rank)
    except ValueError:
        return site.strip(), None


class SpatialLoRA(LoRA):
    """Spatial LoRA (ToonComposer): LoRA on spatial attention only, per-site ranks"""


register_adapter("spatial_lora", SpatialLoRAConfig, SpatialLoRA)
