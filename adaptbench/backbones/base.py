"""The :class:`Backbone`: a frozen model plus its anatomy (see ``anatomy.py``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import AdaptbenchError
from .anatomy import BLOCK_SITES, GLOBAL_SITES, Anatomy, TransformerBlock, _resolve, site_path

POOL_MODES = ("cls", "mean")


@dataclass(frozen=True)
class DataConfig:
    """How images must be prepared for this backbone (stored in every run record)."""

    input_size: tuple[int, int]  # (H, W)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"


class Backbone(nn.Module):
    """A frozen feature extractor whose every adaptable place is a named *site*.

    ``forward(images)`` returns pooled features (B, embed_dim); ``forward_features``
    returns the token sequence after the final norm. Subclasses (one per model family)
    build ``blocks`` as :class:`TransformerBlock` and say where the global sites live.
    """

    def __init__(
        self,
        name: str,
        blocks: nn.ModuleList | nn.Sequential,
        anatomy: Anatomy,
        data_config: DataConfig,
        weights_source: str,
        default_pool: str = "cls",
    ):
        super().__init__()
        self.name = name
        self.anatomy = anatomy
        self.data_config = data_config
        self.weights_source = weights_source
        self.default_pool = default_pool
        # Parameters an adapter owns outside any site (e.g. tensors shared across
        # blocks) live here so that .to(device) and state handling see them.
        self.adapter_modules = nn.ModuleDict()
        self._blocks = blocks
        self._weights_id: str | None = None

    # -- the token stream (subclasses) -------------------------------------------------
    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def global_site_path(self, site: str) -> str:
        """Attribute path (from ``self``) of a backbone-wide site."""
        raise NotImplementedError

    # -- pooling ------------------------------------------------------------------------
    def pool(self, tokens: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        """(B, N, C) tokens -> (B, C): the class token ("cls") or the mean of patch tokens."""
        mode = mode or self.default_pool
        if mode == "cls":
            if not self.anatomy.has_class_token:
                raise AdaptbenchError(
                    f"backbone {self.name!r} has no class token; use pool 'mean'"
                )
            return tokens[:, 0]
        if mode == "mean":
            if tokens.dim() == 4:  # (B, H, W, C) layouts
                return tokens.mean(dim=(1, 2))
            return tokens[:, self.anatomy.num_prefix_tokens :].mean(dim=1)
        raise AdaptbenchError(f"unknown pool mode {mode!r}; expected one of {POOL_MODES}")

    def forward(self, images: torch.Tensor, pool: str | None = None) -> torch.Tensor:
        return self.pool(self.forward_features(images), pool)

    # -- sites --------------------------------------------------------------------------
    @property
    def blocks(self) -> list[TransformerBlock]:
        return list(self._blocks)

    def _site_location(self, site: str, block: int | None) -> tuple[nn.Module, str]:
        if block is None:
            if site not in GLOBAL_SITES:
                raise AdaptbenchError(
                    f"unknown backbone-wide site {site!r}; expected one of {GLOBAL_SITES}"
                )
            return _resolve(self, self.global_site_path(site))
        if site not in BLOCK_SITES:
            raise AdaptbenchError(f"unknown block site {site!r}; expected one of {BLOCK_SITES}")
        if not 0 <= block < self.anatomy.num_blocks:
            raise AdaptbenchError(
                f"block {block} out of range; backbone {self.name!r} has "
                f"{self.anatomy.num_blocks} blocks"
            )
        if site == "block":
            return self._blocks, str(block)
        return _resolve(self._blocks[block], site_path(site))

    def site(self, site: str, block: int | None = None) -> nn.Module:
        """The module now at ``site`` (of ``block``, or backbone-wide when block is None)."""
        parent, attr = self._site_location(site, block)
        return getattr(parent, attr)

    def replace_site(self, site: str, block: int | None, module: nn.Module) -> nn.Module:
        """Put ``module`` at ``site``; returns what was there (wrappers keep it as base_layer)."""
        parent, attr = self._site_location(site, block)
        old = getattr(parent, attr)
        if isinstance(parent, (nn.Sequential, nn.ModuleList)):
            parent[int(attr)] = module
        else:
            setattr(parent, attr, module)
        return old

    def iter_sites(self, site: str) -> Iterator[tuple[int, nn.Module]]:
        """(block index, module) for ``site`` in every block."""
        for index in range(self.anatomy.num_blocks):
            yield index, self.site(site, index)

    # -- identity of the weights -------------------------------------------------------
    @property
    def weights_id(self) -> str:
        """A short content hash of the pretrained weights (taken before any adaptation).

        Adapter checkpoints record it, and refuse to load onto other weights.
        """
        if self._weights_id is None:
            raise RuntimeError("weights_id is set by the backbone factory after loading")
        return self._weights_id

    def seal_weights(self) -> None:
        """Freeze every parameter and record the weights hash; factories call this last."""
        for param in self.parameters():
            param.requires_grad_(False)
        self._weights_id = state_hash(self.state_dict())


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes, dtypes and bytes of every tensor, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]
