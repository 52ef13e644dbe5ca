"""The micro backbones, small enough for CPUs and shipped with their weights as package data:

* ``vit_micro``: a timm ViT pretrained by ``adaptbench pretrain-micro``
  (``adaptbench/pretrain/micro.py``) on procedural glyphs;
* ``sam_micro``: a segment-anything image encoder pretrained with SAM's mask decoder by
  ``adaptbench pretrain-micro --model sam_micro`` (``adaptbench/pretrain/micro_sam.py``) on
  procedural colour-region scenes; its file also holds the decoder (SAM's checkpoint keys), which
  the ``sam_decoder`` head loads;
* ``clip_micro``: the image tower of an open_clip CLIP (open_clip's own ``CLIP`` class) pretrained
  contrastively by ``adaptbench pretrain-micro --model clip_micro`` (``adaptbench/pretrain/micro_clip.py``)
  on procedural scenes with generated captions (``adaptbench/datasets/captions.py``); its file holds
  the whole CLIP and its compact vocabulary (:class:`MicroTokenizer`), so that the text tower can be
  rebuilt for zero-shot heads.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ...errors import AdaptbenchError
from ...files import sha256_of
from ...registry import register_backbone
from ..base import DataConfig
from ..timm_weights import check_weights_file, random_plan
from .clip import OpenClipViT
from .sam import SamViT, _sam_backbone
from .timm import TimmViT, timm_vit

# The micro ViT's architecture; adaptbench/pretrain/micro.py trains exactly this.
MICRO_TIMM_MODEL = "vit_tiny_patch16_224"
MICRO_CONFIG = {"img_size": 32, "patch_size": 4, "embed_dim": 96, "depth": 4, "num_heads": 3, "mlp_ratio": 4.0}
# Its shipped weights, made by `adaptbench pretrain-micro` with its default settings.
MICRO_WEIGHTS = Path(str(resources.files("adaptbench.backbones") / "_data" / "vit_micro.safetensors"))
MICRO_WEIGHTS_SHA256 = "ba36ad83e518b7943ca06c1ea8a85073aabe4f6ea1614437b6f55e4b3e477a55"


# The micro SAM's image encoder (segment-anything's ImageEncoderViT arguments); its decoder
# is adaptbench.tasks.sam_decoder.SamDecoderHead on the neck's 64 channels (decoder MLP 512).
SAM_MICRO_CONFIG = {"img_size": 64, "patch_size": 4, "embed_dim": 96, "depth": 4, "num_heads": 3, "mlp_ratio": 4.0,
                    "window_size": 4, "global_attn_indexes": (1, 3), "out_chans": 64, "use_rel_pos": True,
                    "qkv_bias": True}
SAM_MICRO_WEIGHTS = Path(str(resources.files("adaptbench.backbones") / "_data" / "sam_micro.safetensors"))
SAM_MICRO_WEIGHTS_SHA256 = "3bcc6715c2a86dbf49a166ced88cf4525bed80ec4862a5f057a4d6393d87a2d0"

# The micro CLIP: open_clip's CLIP(embed_dim, vision_cfg, text_cfg) with these settings; the text
# tower's vocab_size is its tokenizer's (the file's token table). adaptbench/pretrain/micro_clip.py
# trains exactly this.
CLIP_MICRO_EMBED_DIM = 64
CLIP_MICRO_VISION = {"image_size": 32, "patch_size": 4, "width": 96, "layers": 4, "head_width": 32, "mlp_ratio": 4.0}
CLIP_MICRO_TEXT = {"context_length": 20, "width": 64, "heads": 2, "layers": 3, "mlp_ratio": 4.0}
CLIP_MICRO_MEAN = CLIP_MICRO_STD = (0.5, 0.5, 0.5)  # the gray micro images map to [-1, 1], as for vit_micro
CLIP_MICRO_WEIGHTS = Path(str(resources.files("adaptbench.backbones") / "_data" / "clip_micro.safetensors"))
CLIP_MICRO_WEIGHTS_SHA256 = "b742ccc80f469f361c4bc4f8e6bcb873807673f481e39e0808c83c2c8aa3902e"
# The safetensors metadata key of a micro CLIP file: one JSON value (the recipe, and the token
# table and context length that the tokenizer is rebuilt from).
CLIP_MICRO_METADATA_KEY = "adaptbench.pretrain_micro_clip"


def vit_micro(weights: str | None = None, **kwargs: Any) -> TimmViT:
    """Micro ViT (d=96, 4 blocks, 32x32, patch 4) pretrained on procedural glyphs for the micro tasks.

    ``weights``: None or ``"pretrained"`` (the shipped file, checked against its sha256),
    ``"random[:seed]"``, or a ``.safetensors`` file written by ``adaptbench pretrain-micro``.
    """
    if weights in (None, "pretrained"):
        weights = str(_shipped_micro_weights())
    return timm_vit(MICRO_TIMM_MODEL, weights=weights, display_name="vit_micro", **{**MICRO_CONFIG, **kwargs})


def _shipped_micro_weights() -> Path:
    return _checked_shipped_file("vit_micro", MICRO_WEIGHTS, MICRO_WEIGHTS_SHA256, "")


def _checked_shipped_file(name: str, path: Path, expected: str, model_flag: str) -> Path:
    # A rerun writes the same bytes only on the same CPU and library versions; elsewhere
    # its weights differ in the last bits, so it is passed as a file rather than shipped.
    regenerate = (f"reinstall adaptbench, or regenerate the weights with `adaptbench pretrain-micro "
                  f"{model_flag}--out {name}.safetensors` and pass --weights {name}.safetensors")
    if not path.is_file():
        raise AdaptbenchError(f"{name}'s weights file {path} is missing; {regenerate}")
    found = sha256_of(path)
    if found != expected:
        raise AdaptbenchError(f"{name}'s weights file {path} is corrupt (sha256 {found}, expected {expected}); "
                              f"{regenerate}")
    return path


def sam_micro(weights: str | None = None, **kwargs: Any) -> SamViT:
    """Micro SAM encoder (d=96, 4 blocks, 64x64, patch 4) + decoder, pretrained on procedural colour regions.

    segment-anything's ``ImageEncoderViT`` (``SAM_MICRO_CONFIG``: 4x4 windows, global
    attention in blocks 1 and 3, neck 64), trained with SAM's mask decoder (the
    ``sam_decoder`` head) by ``adaptbench pretrain-micro --model sam_micro``.

    ``weights``: None or ``"pretrained"`` (the shipped file, checked against its sha256: the
    encoder, and the prompt encoder and mask decoder that the ``sam_decoder`` head loads),
    ``"random[:seed]"``, or a file written by ``adaptbench pretrain-micro --model sam_micro``.
    """
    if weights in (None, "pretrained"):
        weights = str(_checked_shipped_file("sam_micro", SAM_MICRO_WEIGHTS, SAM_MICRO_WEIGHTS_SHA256,
                                            "--model sam_micro "))
    return _sam_backbone("sam_micro", {**SAM_MICRO_CONFIG, **kwargs}, weights, "sam_micro")


# -- the micro CLIP ---------------------------------------------------------------------------
class MicroTokenizer:
    """open_clip's BPE tokenizer (``SimpleTokenizer``, shipped in its wheel) over a compact vocabulary.

    The 49,408 BPE tokens would cost the micro text tower ~3M embedding parameters for the few
    dozen words its captions use. ``table`` lists the BPE ids kept; the compact ids are 0 padding,
    1 ``<unk>`` (any BPE token not in the table), ``2 + i`` for ``table[i]``, then the start- and
    end-of-text tokens, end-of-text last: the largest id, so open_clip's text pooling
    (``pool_type='argmax'``, which finds the end of the text as the largest id in the row) works
    unchanged. Calls return what open_clip's tokenizers return: a LongTensor (N, context_length)
    of start, tokens, end, zero padding; a text too long is cut and still ends with end-of-text.
    """

    PAD, UNK = 0, 1

    def __init__(self, table: Sequence[int], context_length: int):
        bpe_size = _bpe().vocab_size
        if (not all(isinstance(token, int) and 0 <= token < bpe_size for token in table)
                or len(set(table)) != len(table)):
            raise AdaptbenchError(f"micro CLIP token table: expected distinct BPE ids in 0..{bpe_size - 1}")
        table = tuple(table)
        if context_length < 2:
            raise AdaptbenchError(f"micro CLIP tokenizer: context_length={context_length}; expected >= 2")
        self.table = table
        self.context_length = context_length
        self._compact = {token: index + 2 for index, token in enumerate(table)}
        self.sot_token_id = len(table) + 2
        self.eot_token_id = len(table) + 3
        self.vocab_size = len(table) + 4

    @classmethod
    def from_texts(cls, texts: Sequence[str], context_length: int) -> MicroTokenizer:
        """The tokenizer whose table holds every BPE token of ``texts``, in BPE id order."""
        return cls(sorted({token for text in texts for token in _bpe().encode(text)}), context_length)

    def encode(self, text: str) -> list[int]:
        """The compact ids of ``text``'s tokens (no start or end, no padding)."""
        return [self._compact.get(token, self.UNK) for token in _bpe().encode(text)]

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None):
        import torch

        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        result = torch.zeros(len(texts), length, dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(tokens) > length:
                tokens = tokens[:length]
                tokens[-1] = self.eot_token_id
            result[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return result


@functools.lru_cache(maxsize=1)
def _bpe():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def micro_clip_model(vocab_size: int, context_length: int = CLIP_MICRO_TEXT["context_length"]):
    """open_clip's ``CLIP`` at micro scale (random weights): the image tower ``CLIP_MICRO_VISION``
    (3 heads of 32), the text tower ``CLIP_MICRO_TEXT`` with ``vocab_size`` tokens, both to 64."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    text = CLIPTextCfg(**{**CLIP_MICRO_TEXT, "context_length": context_length, "vocab_size": vocab_size})
    return CLIP(CLIP_MICRO_EMBED_DIM, CLIPVisionCfg(**CLIP_MICRO_VISION), text)


def default_micro_tokenizer() -> MicroTokenizer:
    """The tokenizer a new micro CLIP gets: the caption world's words and the micro tasks' prompts."""
    from ...datasets.captions import caption_texts

    return MicroTokenizer.from_texts(caption_texts(), CLIP_MICRO_TEXT["context_length"])


def read_micro_clip(path: Path):
    """The micro CLIP in ``path`` (a file of ``pretrain-micro --model clip_micro``), with its tokenizer
    and recipe: ``(model, tokenizer, recipe)``; one line naming the file when it is not one."""
    from safetensors import SafetensorError, safe_open

    check_weights_file(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            recorded = (handle.metadata() or {}).get(CLIP_MICRO_METADATA_KEY)
            state = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise AdaptbenchError(f"weights file {path}: not a readable safetensors file ({err})") from None
    try:
        recipe = json.loads(recorded)
        table, context_length = recipe["token_table"], recipe["context_length"]
    except (TypeError, ValueError, KeyError):
        raise AdaptbenchError(f"{path}: no {CLIP_MICRO_METADATA_KEY!r} metadata with a token table; expected a "
                              f"file written by `adaptbench pretrain-micro --model clip_micro`") from None
    try:
        tokenizer = MicroTokenizer(table, context_length)
    except (AdaptbenchError, TypeError) as err:
        raise AdaptbenchError(f"{path}: {err}") from None
    model = micro_clip_model(tokenizer.vocab_size, tokenizer.context_length)
    expected = model.state_dict()
    wrong = sorted(set(expected) ^ set(state)) or [k for k in expected if expected[k].shape != state[k].shape]
    if wrong:
        raise AdaptbenchError(f"{path}: its tensors do not fit the micro CLIP (first mismatch: {wrong[0]!r}); "
                              f"expected a file written by `adaptbench pretrain-micro --model clip_micro`")
    model.load_state_dict(state, strict=True)
    return model.eval(), tokenizer, recipe


def _micro_clip_loader(weights: str) -> tuple[str, Callable]:
    """(weights source, a function building the whole CLIP and its tokenizer) for ``--weights``."""
    import torch

    if weights == "random" or weights.startswith("random:"):
        seed = random_plan(weights).init_seed

        def random_clip():
            tokenizer = default_micro_tokenizer()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = micro_clip_model(tokenizer.vocab_size, tokenizer.context_length)
            return model.eval(), tokenizer

        return f"random:{seed}", random_clip
    path = Path(weights).expanduser()
    if path.suffix != ".safetensors":
        raise AdaptbenchError(f"clip_micro weights {weights!r}: expected 'pretrained', 'random[:seed]' or a "
                              f".safetensors file written by `adaptbench pretrain-micro --model clip_micro`")
    return f"file:{path}", lambda: read_micro_clip(path)[:2]


def clip_micro(weights: str | None = None, keep_projection: bool = True, **kwargs: Any) -> OpenClipViT:
    """Micro CLIP image tower (d=96, 4 blocks, 32x32, patch 4) pretrained contrastively on captioned micro scenes.

    open_clip's own ``CLIP`` (``CLIP_MICRO_VISION``, ``CLIP_MICRO_TEXT``, embedding 64) trained by
    ``adaptbench pretrain-micro --model clip_micro``; the backbone is its image tower, and
    ``text_tower()`` rebuilds the text encoder and its :class:`MicroTokenizer` from the same file.

    ``weights``: None or ``"pretrained"`` (the shipped file, checked against its sha256),
    ``"random[:seed]"``, or a ``.safetensors`` file written by ``adaptbench pretrain-micro --model clip_micro``.
    """
    if kwargs:
        raise AdaptbenchError(f"clip_micro: option {next(iter(kwargs))!r} does not apply (its architecture is "
                              f"fixed by its weights); it accepts keep_projection")
    if weights in (None, "pretrained"):
        weights = str(_checked_shipped_file("clip_micro", CLIP_MICRO_WEIGHTS, CLIP_MICRO_WEIGHTS_SHA256,
                                            "--model clip_micro "))
    source, load = _micro_clip_loader(weights)
    model, _ = load()
    data_config = DataConfig(input_size=(CLIP_MICRO_VISION["image_size"],) * 2, mean=CLIP_MICRO_MEAN,
                             std=CLIP_MICRO_STD, interpolation="bicubic")
    backbone = OpenClipViT("clip_micro", model.visual, source, data_config, keep_projection, text_loader=load)
    backbone.seal_weights()
    return backbone


vit_micro.accepted_options = ("img_size",)
clip_micro.accepted_options = ("keep_projection",)
register_backbone("vit_micro", vit_micro)
register_backbone("sam_micro", sam_micro)
register_backbone("clip_micro", clip_micro)
