"""CLIP's text encoder behind the same canonical blocks as the image towers.

:class:`TextTower` is open_clip's text side (``CLIP.encode_text``, or a ``TextTransformer``)
re-homed without copying a weight: token embedding, positions, the residual blocks rebuilt as
canonical :class:`~adaptbench.backbones.anatomy.TransformerBlock` s (attention with a fused
``qkv`` linear, causal as open_clip's mask), ``ln_final``, pooling at the end-of-text token and
the projection. So an adapter's layer (LoRA on ``qkv``) wraps a text block exactly as it
wraps an image block, and a prompt learner (CoOp) can feed its own token embeddings
(:meth:`TextTower.encode_embedded`).

A tower is built on request from the backbone's weights (``Backbone.text_tower``): only a
method that trains through the text side keeps one in its process; zero-shot class
embeddings are computed once and cached (``tasks/text_heads.py``). Every parameter is frozen
when it is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import AdaptbenchError


class TextTower(nn.Module):
    """open_clip's text encoder with canonical blocks (see the module docstring)."""

    def __init__(self, name: str, token_embedding: nn.Embedding, positional_embedding: torch.Tensor,
                 blocks: nn.Sequential, ln_final: nn.Module, text_projection: Any, pool_type: str,
                 eos_id: int | None, logit_scale: float, logit_bias: float | None,
                 tokenizer: Callable[[Sequence[str]], torch.Tensor]):
        super().__init__()
        self.name = name
        self.token_embedding = token_embedding
        self.positional_embedding = positional_embedding
        self.blocks = blocks
        self.ln_final = ln_final
        self.text_projection = text_projection
        self.pool_type = pool_type
        self.eos_id = eos_id
        self.logit_scale = logit_scale
        self.logit_bias = logit_bias
        self._tokenizer = tokenizer
        self.requires_grad_(False)

    # -- building -----------------------------------------------------------------------------
    @classmethod
    def from_open_clip(cls, name: str, model: nn.Module, tokenizer) -> TextTower:
        """The text side of an open_clip ``CLIP`` (or ``CustomTextCLIP`` with open_clip's own
        ``TextTransformer``); anything else is refused in one line."""
        from open_clip.transformer import TextTransformer

        from .families.clip import _canonical_block

        text = getattr(model, "text", None)
        if text is not None and not isinstance(text, TextTransformer):
            raise AdaptbenchError(f"backbone {name!r}: its text tower is a {type(text).__name__}, not open_clip's "
                                  f"TextTransformer; text heads need open_clip's own text encoder")
        side = text if text is not None else model
        if getattr(side, "cls_emb", None) is not None:
            raise AdaptbenchError(f"backbone {name!r}: a text tower with a class token is not supported")
        transformer = side.transformer
        if not getattr(transformer, "batch_first", True):
            raise AdaptbenchError(f"backbone {name!r}: a sequence-first text transformer is not supported")
        causal = side.attn_mask is not None
        blocks = nn.Sequential(*[_canonical_block(name + " (text)", index, block, causal)
                                 for index, block in enumerate(transformer.resblocks)])
        pool_type = getattr(side, "text_pool_type", None) or getattr(side, "pool_type", "argmax")
        eos_id = getattr(side, "text_eos_id", None) or getattr(side, "eos_id", None)
        logit_bias = getattr(model, "logit_bias", None)
        return cls(name, side.token_embedding, side.positional_embedding, blocks, side.ln_final,
                   side.text_projection, pool_type, eos_id, float(model.logit_scale.detach().exp()),
                   None if logit_bias is None else float(logit_bias.detach()), tokenizer)

    # -- facts ------------------------------------------------------------------------------
    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    @property
    def width(self) -> int:
        return self.token_embedding.embedding_dim

    @property
    def embed_dim(self) -> int:
        projection = self.text_projection
        if projection is None:
            return self.width
        return projection.out_features if isinstance(projection, nn.Linear) else projection.shape[1]

    # -- the forward --------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids (N, context_length) on the tower's device."""
        tokens = self._tokenizer(list(texts))
        return tokens.to(self.token_embedding.weight.device)

    def encode_embedded(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Text features from token embeddings (N, L, W): positions, causal blocks, final norm,
        the end-of-text position (found in ``tokens``), projection: ``CLIP.encode_text`` after
        its embedding lookup, which prompt learners replace."""
        from open_clip.transformer import text_global_pool

        x = embeddings + self.positional_embedding.to(embeddings.dtype)
        x = self.ln_final(self.blocks(x))
        x = text_global_pool(x, tokens, self.pool_type, eos_token_id=self.eos_id)
        projection = self.text_projection
        if projection is None:
            return x
        return projection(x) if isinstance(projection, nn.Linear) else x @ projection

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """open_clip's ``encode_text`` (unnormalised)."""
        return self.encode_embedded(self.token_embedding(tokens), tokens)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Unnormalised features of ``texts``, in chunks of ``batch_size``."""
        chunks = [self.encode(self.tokenize(texts[start:start + batch_size]))
                  for start in range(0, len(texts), batch_size)]
        return torch.cat(chunks)
