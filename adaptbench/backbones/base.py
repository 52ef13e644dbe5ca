"""The :class:`Backbone`: a frozen model plus its anatomy (see ``anatomy.py``).

A family subclass supplies three stages of the forward, in its library's own terms:

* ``embed(images)`` -> (tokens, :class:`TokenGeometry`): patch embedding, prefix tokens,
  positions and any pre-norm, with the geometry measured from the real patch-embed output;
* the canonical blocks (at ``blocks_path``), which this class runs while the geometry is
  published on ``self.geometry`` for the wrappers inside them;
* ``finish(tokens)``: what follows the blocks per token (the final norm; SAM's neck).

``forward`` pools and (for CLIP, when kept) projects; ``forward_dense`` returns maps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..errors import AdaptbenchError
from .anatomy import GLOBAL_SITES, QKV_PARTS, Anatomy, _resolve, qkv_rows
from .geometry import GeometryContext, TokenGeometry, tokens_to_grid

POOL_MODES = ("cls", "mean")


@dataclass(frozen=True)
class DataConfig:
    """How images must be prepared for this backbone (stored in every run record)."""

    input_size: tuple[int, int]  # (H, W)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"


@dataclass
class DenseFeatures:
    """``forward_dense``'s output: the final map and the maps after chosen blocks, (B, C, H', W')."""

    final: torch.Tensor
    blocks: dict[int, torch.Tensor]


class Backbone(nn.Module):
    """A frozen feature extractor whose every adaptable place is a named *site*.

    ``forward(images)`` returns pooled features (B, anatomy.feature_dim);
    ``forward_features`` the token sequence after ``finish``; ``forward_dense`` maps for
    dense heads. Families subclass it (see the module docstring).
    """

    def __init__(self, name: str, anatomy: Anatomy, data_config: DataConfig, weights_source: str,
                 blocks_path: str, default_pool: str = "cls"):
        super().__init__()
        self.name = name
        self.anatomy = anatomy
        self.data_config = data_config
        self.weights_source = weights_source
        self.default_pool = default_pool
        # The blocks are registered once, where the family's model keeps them; the
        # backbone only knows their path (state_dict and weights hash see one copy).
        self.blocks_path = blocks_path
        self.geometry = GeometryContext()
        self.grad_checkpointing = False  # BackboneOptions.grad_checkpointing (see _run_block)
        # Parameters an adapter owns outside any site (e.g. tensors shared across
        # blocks) live here so that .to(device) and state handling see them.
        self.adapter_modules = nn.ModuleDict()
        self._weights_id: str | None = None
        self._sealed: tuple[nn.Parameter, ...] = ()

    # -- the family's stages ------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, TokenGeometry]:
        raise NotImplementedError

    def finish(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """What follows pooling (CLIP's kept projection); the identity by default."""
        return pooled

    def global_site_path(self, site: str) -> str:
        """Attribute path (from ``self``) of a backbone-wide site."""
        raise NotImplementedError

    def companion_state(self, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Tensors the backbone's checkpoint holds for other parts of its model (SAM's mask
        decoder: ``mask_decoder.``, ``prompt_encoder.``), keys kept; empty when there are none
        (random weights, or a family whose checkpoints hold only the encoder). Heads that
        have a pretrained form read them (``sam_decoder``)."""
        return {}

    def text_tower(self):
        """The text encoder paired with this image tower (CLIP families), built on request as a
        frozen :class:`~adaptbench.backbones.text.TextTower`. A backbone without one makes any
        text head ``n/a`` on it (a result with its reason, not a failure)."""
        from ..adapters.base import NotApplicable

        raise NotApplicable(f"backbone {self.name!r} has no text tower (text heads need a CLIP backbone: "
                            f"clip:<model>/<tag>, clip_micro)", reason="no text tower (not a CLIP backbone)")

    # -- the forward --------------------------------------------------------------------
    def run(self, images: torch.Tensor, keep: Sequence[int] = (), frames: int = 1
            ) -> tuple[torch.Tensor, dict[int, torch.Tensor], TokenGeometry]:
        """(final tokens, {block index: tokens after it}, geometry after the blocks).

        ``frames``: the images are clips of that many frames folded into the batch, clip-major
        (image ``c * frames + t`` is frame t of clip c); published as ``geometry.frames`` so
        that temporal adapters can unfold them. Image tasks pass 1.
        """
        tokens, geometry = self.embed(images)
        if frames != 1:
            geometry = replace(geometry, frames=_clip_frames(frames, geometry.batch))
        kept: dict[int, torch.Tensor] = {}
        with self.geometry.publish(geometry):
            for index, block in enumerate(self.blocks):
                tokens = self._run_block(block, tokens)
                if index in keep:
                    kept[index] = self.to_map(tokens)
            final_geometry = self.geometry.current
            return self.finish(tokens), kept, final_geometry

    def _run_block(self, block: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """One block; under gradient checkpointing its activations are recomputed in the
        backward pass, where no forward is in progress: the block then runs again inside the
        geometry it started with, and a geometry change it makes (a prompt wrapper) is
        carried to the rest of the forward."""
        if not (self.grad_checkpointing and self.training and torch.is_grad_enabled()):
            return block(tokens)
        from torch.utils.checkpoint import checkpoint

        start, after = self.geometry.current, []

        def in_geometry(x: torch.Tensor) -> torch.Tensor:
            with self.geometry.publish(start):
                out = block(x)
                after.append(self.geometry.current)
            return out

        tokens = checkpoint(in_geometry, tokens, use_reentrant=False)
        self.geometry.update(prefix=after[0].prefix, grid=after[0].grid)
        return tokens

    def forward_features(self, images: torch.Tensor, frames: int = 1) -> torch.Tensor:
        return self.run(images, frames=frames)[0]

    def forward(self, images: torch.Tensor, pool: str | None = None, frames: int = 1) -> torch.Tensor:
        """Pooled (and projected) features per image; ``frames`` as in :meth:`run`."""
        return self.project(self.pool(self.forward_features(images, frames), pool))

    def forward_dense(self, images: torch.Tensor, blocks: Sequence[int] = (), frames: int = 1) -> DenseFeatures:
        """The final feature map and the maps after ``blocks`` (negative: from the end), each
        (B, C, H', W') with prefix and prompt tokens removed (read from this forward's geometry)."""
        total = self.anatomy.num_blocks
        for index in blocks:
            if not -total <= index < total:
                raise AdaptbenchError(f"block {index} out of range; backbone {self.name!r} has {total} blocks")
        wanted = [index % total for index in blocks]
        tokens, kept, geometry = self.run(images, wanted, frames)
        return DenseFeatures(self.dense_map(tokens, geometry), {index: kept[index % self.anatomy.num_blocks]
                                                                for index in blocks})

    def to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens in the current forward's geometry -> the patch map (B, C, H', W')."""
        return tokens_to_grid(tokens, self.geometry.current)[1]

    def dense_map(self, tokens: torch.Tensor, geometry: TokenGeometry) -> torch.Tensor:
        return tokens_to_grid(tokens, geometry)[1]

    # -- pooling ------------------------------------------------------------------------
    def pool(self, tokens: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        """Tokens -> (B, C): the class token ("cls") or the mean of the patch tokens."""
        mode = mode or self.default_pool
        if mode == "cls":
            if not self.anatomy.has_class_token:
                raise AdaptbenchError(f"backbone {self.name!r} has no class token; use pool 'mean'")
            return tokens[:, 0]
        if mode == "mean":
            if tokens.dim() == 4:  # (B, H, W, C) layouts
                return tokens.mean(dim=(1, 2))
            return tokens[:, self.anatomy.num_prefix_tokens :].mean(dim=1)
        raise AdaptbenchError(f"unknown pool mode {mode!r}; expected one of {POOL_MODES}")

    # -- sites --------------------------------------------------------------------------
    @property
    def blocks(self) -> nn.Module:
        """The canonical blocks (an ``nn.Sequential`` or ``nn.ModuleList``), in order."""
        return self.get_submodule(self.blocks_path)

    def _site_location(self, site: str, block: int | None) -> tuple[nn.Module, str]:
        anatomy = self.anatomy
        if block is None:
            if site not in anatomy.global_sites:
                other = "" if site not in GLOBAL_SITES else f" ({site!r} is not part of this backbone)"
                raise AdaptbenchError(f"backbone {self.name!r} has no backbone-wide site {site!r}{other}; "
                                      f"expected one of {anatomy.global_sites}")
            return _resolve(self, self.global_site_path(site))
        if site not in anatomy.block_sites:
            raise AdaptbenchError(f"backbone {self.name!r} has no block site {site!r}; "
                                  f"expected one of {anatomy.block_sites}")
        if not 0 <= block < anatomy.num_blocks:
            raise AdaptbenchError(f"block {block} out of range; backbone {self.name!r} has "
                                  f"{anatomy.num_blocks} blocks")
        blocks = self.blocks
        if site == "block":
            return blocks, str(block)
        return _resolve(blocks[block], anatomy.path_of(site))

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

    def target_rows(self, target: str, block: int) -> tuple[str, slice]:
        """(linear site, output rows) of an adapter target: ``q``, ``k``, ``v`` are the
        sub-sites of the fused ``qkv`` (its thirds), any other linear site is all its rows."""
        if target in QKV_PARTS:
            return "qkv", qkv_rows(target, _out_features(self.site("qkv", block)))
        return target, slice(0, _out_features(self.site(target, block)))

    # -- identity and freezing of the weights ------------------------------------------
    @property
    def weights_id(self) -> str:
        """A short content hash of the pretrained weights (taken before any adaptation).

        Adapter checkpoints record it, and refuse to load onto other weights.
        """
        if self._weights_id is None:
            raise RuntimeError("weights_id is set by the backbone factory after loading")
        return self._weights_id

    def seal_weights(self) -> None:
        """Freeze every parameter, remember them as the backbone's own and record the
        weights hash; factories call this last."""
        for param in self.parameters():
            param.requires_grad_(False)
        self._sealed = tuple(self.parameters())
        self._weights_id = state_hash(self.state_dict())

    def sealed_parameters(self) -> tuple[nn.Parameter, ...]:
        """The frozen backbone's own parameters (not those adapters added since)."""
        return self._sealed

    def named_sealed_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        # ids are taken now, not stored: a deep copy of the backbone has new parameters
        sealed = {id(p) for p in self._sealed}
        for name, param in self.named_parameters():
            if id(param) in sealed:
                yield name, param

    def is_sealed(self, param: nn.Parameter) -> bool:
        return any(param is own for own in self._sealed)


def _clip_frames(frames: int, batch: int) -> int:
    if frames < 1 or batch % frames:
        raise AdaptbenchError(f"a batch of {batch} images cannot be clips of {frames} frames each")
    return frames


def _out_features(module: nn.Module) -> int:
    while not hasattr(module, "out_features") and hasattr(module, "base_layer"):
        module = module.base_layer
    return module.out_features


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes, dtypes and bytes of every tensor, in name order ("meta" for a
    backbone built on the meta device, which has shapes but no weights)."""
    if any(tensor.is_meta for tensor in state.values()):
        return "meta"
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]
