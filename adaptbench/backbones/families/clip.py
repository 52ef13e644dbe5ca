"""open_clip image towers behind the canonical anatomy (the ``clip:<model>/<tag or file>`` family).

Accepted: the ``.visual`` of an open_clip CLIP model when it is open_clip's own
``transformer.VisionTransformer`` built from ``ResidualAttentionBlock`` (OpenAI CLIP, LAION,
DataComp, MetaCLIP, DFN ... ViTs), with class-token pooling and the LayerNorm before pooling.
The text tower is dropped. At load, without copying a weight, we canonicalise:

* each ``ResidualAttentionBlock`` -> ``TransformerBlock({"attn": ResidualBranch(ln_1,
  CLIPAttention, ls_1), "mlp": ResidualBranch(ln_2, Mlp(c_fc, gelu, c_proj), ls_2)})``.
  ``nn.MultiheadAttention`` hides its fused input projection in two bare Parameters, which no
  adapter can wrap; :class:`CLIPAttention` gives it a site: ``qkv`` is an ``nn.Linear`` whose
  ``weight``/``bias`` *are* ``in_proj_weight``/``in_proj_bias`` (rows [q; k; v], as in timm),
  ``proj`` is the MHA's own ``out_proj``, and the attention runs through
  ``scaled_dot_product_attention``. OpenAI towers keep their QuickGELU (the re-homed ``gelu``);
* ``conv1`` -> :class:`CLIPPatchEmbed` (the conv as ``proj``, tokens out channels-last, so SSF
  folds into the conv); the class token, positions, patch dropout and ``ln_pre`` stay open_clip's
  and are applied by :meth:`OpenClipViT.embed`. Global sites: ``patch_embed``, ``tokens``
  (``ln_pre``), ``final_norm`` (``ln_post``, per token).

So ``forward`` = project(pool(ln_post(blocks(embed(x))))) is open_clip's ``encode_image``; the
projection is the very ``visual.proj`` Parameter (kept by default: zero-shot heads need it).
Any other block class or variant (custom blocks with qk-norm or scale_attn/scale_fc, cross
attention, sequence-first blocks, attention pooling, ``final_ln_after_pool``, pool types other
than the class token) is refused with one line, never half-reproduced.

Weights resolve offline first (as ``timm_weights`` does for timm): a pretrained tag is looked
up in the HF cache and open_clip's download folder and the file passed to open_clip directly;
when it is not there and the hub cannot be reached in seconds, we fail at once with one line
saying which file to fetch and where to put it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import AdaptbenchError, did_you_mean
from ...registry import register_backbone
from ..anatomy import Anatomy, Mlp, ResidualBranch, TransformerBlock, require_block_class
from ..base import Backbone, DataConfig
from ..geometry import TokenGeometry
from ..timm_weights import WEIGHT_FILE_SUFFIXES, check_weights_file, hub_reachable, random_plan
from .clip_names import check_clip_member, pretrained_tags, split_member

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip.constants.OPENAI_DATASET_MEAN
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_HF_WEIGHTS_NAME = "open_clip_pytorch_model.bin"  # open_clip.constants.HF_WEIGHTS_NAME
_HF_SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"  # open_clip.constants.HF_SAFE_WEIGHTS_NAME


def accepted_block_classes() -> tuple[type, ...]:
    """The open_clip block classes whose forward is exactly ``x + ls_1(attn(ln_1(x)))`` then
    ``x + ls_2(mlp(ln_2(x)))``: the only ones rebuilt canonically (``CustomResidualAttentionBlock``,
    with its extra norms and scaled attention, is not)."""
    from open_clip.transformer import ResidualAttentionBlock

    return (ResidualAttentionBlock,)


# -- canonical modules ----------------------------------------------------------------------
class CLIPAttention(nn.Module):
    """Multi-head self-attention over (B, N, C) with a fused ``qkv`` linear and ``proj``, made of
    an ``nn.MultiheadAttention``'s own parameters (see the module docstring)."""

    def __init__(self, qkv: nn.Linear, proj: nn.Linear, num_heads: int, attn_drop: float = 0.0,
                 causal: bool = False):
        super().__init__()
        self.qkv = qkv
        self.proj = proj
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        # the text tower's blocks: open_clip's causal mask (-inf above the diagonal) is
        # exactly scaled_dot_product_attention's is_causal
        self.causal = causal

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention, causal: bool = False) -> CLIPAttention:
        dim = mha.embed_dim
        qkv = nn.Linear(dim, 3 * dim, bias=mha.in_proj_bias is not None, device="meta")
        qkv.weight = mha.in_proj_weight  # the same Parameter objects: nothing is copied
        if mha.in_proj_bias is not None:
            qkv.bias = mha.in_proj_bias
        return cls(qkv, mha.out_proj, mha.num_heads, mha.dropout, causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(x)
        width = qkv.shape[-1] // 3
        q, k, v = qkv.reshape(batch, tokens, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0,
                                           is_causal=self.causal)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, width))


class CLIPPatchEmbed(nn.Module):
    """open_clip's patch convolution as a canonical patch embedding: images -> (B, H'W', C)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.proj = conv

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


# -- the backbone ---------------------------------------------------------------------------
class OpenClipViT(Backbone):
    """An open_clip ``VisionTransformer`` (a CLIP image tower) with canonical sites."""

    def __init__(self, name: str, visual: nn.Module, weights_source: str, data_config: DataConfig | None = None,
                 keep_projection: bool = True,
                 text_loader: Callable[[], tuple[nn.Module, Callable[[Sequence[str]], torch.Tensor]]] | None = None):
        _check_visual(name, visual)
        blocks = [_canonical_block(name, index, block) for index, block in enumerate(visual.transformer.resblocks)]
        visual.transformer.resblocks = nn.Sequential(*blocks)
        visual.patch_embed = CLIPPatchEmbed(visual.conv1)
        del visual.conv1  # re-homed: registered once, as patch_embed.proj
        if not keep_projection:
            visual.proj = None
        width = visual.class_embedding.shape[-1]
        super().__init__(
            name=name,
            anatomy=Anatomy(
                embed_dim=width,
                num_blocks=len(blocks),
                num_prefix_tokens=1,
                grid=tuple(visual.grid_size),
                patch_size=tuple(visual.patch_size),
                mlp_dim=blocks[0].branches.mlp.core.fc1.out_features,
                has_class_token=True,
                feature_dim=visual.proj.shape[1] if visual.proj is not None else width,
                family="clip",
            ),
            data_config=data_config or _data_config(visual),
            weights_source=weights_source,
            blocks_path="visual.transformer.resblocks",
            default_pool="cls",
        )
        self.visual = visual
        # () -> (the whole open_clip CLIP with its weights, its tokenizer), for the text tower
        self._text_loader = text_loader

    def text_tower(self):
        """The text encoder of the same CLIP weights, canonical and frozen (``backbones/text.py``),
        built on request: only a method that trains through it keeps one in its process."""
        if self._text_loader is None:
            return super().text_tower()
        from ..text import TextTower

        model, tokenizer = self._text_loader()
        return TextTower.from_open_clip(self.name, model, tokenizer)

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, TokenGeometry]:
        # open_clip's VisionTransformer._embeds, with the patch embedding as a site
        visual = self.visual
        grid = (images.shape[-2] // self.anatomy.patch_size[0], images.shape[-1] // self.anatomy.patch_size[1])
        if grid != self.anatomy.grid:
            raise AdaptbenchError(f"backbone {self.name!r} takes {self.data_config.input_size[0]}x"
                                  f"{self.data_config.input_size[1]} images (its positions are learnt for a "
                                  f"{self.anatomy.grid[0]}x{self.anatomy.grid[1]} grid), "
                                  f"got {tuple(images.shape[-2:])}")
        x = visual.patch_embed(images)
        cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.ln_pre(visual.patch_dropout(x))
        geometry = TokenGeometry(batch=x.shape[0], grid=grid, prefix=1)
        if x.shape[1] != geometry.num_tokens:
            raise AdaptbenchError(f"backbone {self.name!r}: the embedding gave {x.shape[1]} tokens, expected "
                                  f"{geometry.num_tokens} for a {grid[0]}x{grid[1]} grid (patch dropout in "
                                  f"training mode drops tokens; build with patch_dropout=0)")
        return x, geometry

    def finish(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.visual.ln_post(tokens)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        proj = self.visual.proj
        return pooled if proj is None else pooled @ proj

    def global_site_path(self, site: str) -> str:
        return {"patch_embed": "visual.patch_embed", "tokens": "visual.ln_pre", "final_norm": "visual.ln_post"}[site]


def _refuse(name: str, what: str) -> AdaptbenchError:
    return AdaptbenchError(f"open_clip model {name!r}: {what} is not supported by the clip: family")


def _check_visual(name: str, visual: nn.Module) -> None:
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise AdaptbenchError(f"open_clip model {name!r}: its image tower is a {type(visual).__name__}, not "
                              f"open_clip's VisionTransformer; the clip: family takes open_clip ViTs")
    if getattr(visual, "attn_pool", None) is not None:
        raise _refuse(name, "attention pooling (attentional_pool)")
    if getattr(visual, "final_ln_after_pool", False):
        raise _refuse(name, "the final LayerNorm after pooling (final_ln_after_pool=True)")
    pool_type = getattr(visual, "pool_type", "avg" if getattr(visual, "global_average_pool", False) else "tok")
    if pool_type != "tok":
        raise _refuse(name, f"pool_type {pool_type!r} (only class-token pooling, 'tok')")
    if not getattr(visual.transformer, "batch_first", True):
        raise _refuse(name, "a sequence-first transformer (batch_first=False)")


def _canonical_block(name: str, index: int, block: nn.Module, causal: bool = False) -> TransformerBlock:
    require_block_class(block, accepted_block_classes(), f"open_clip model {name!r}", index, " (custom blocks with qk_norm, scaled cosine attention or scale_attn/scale_fc are not supported)")
    for extra in ("ln_attn", "ln_inner"):  # older open_clip: scale_attn / scale_fc on this class
        if not isinstance(getattr(block, extra, nn.Identity()), nn.Identity):
            raise _refuse(name, f"block {index}'s extra norm {extra} (scale_attn/scale_fc)")
    if hasattr(block, "ln_1_kv"):
        raise _refuse(name, f"block {index}'s cross attention")
    attention = _canonical_attention(name, index, block.attn, causal)
    mlp = block.mlp
    parts = [key for key, _ in mlp.named_children()]
    if parts != ["c_fc", "gelu", "c_proj"]:
        raise _refuse(name, f"block {index}'s MLP {parts} (expected c_fc, gelu, c_proj)")
    return TransformerBlock({
        "attn": ResidualBranch(block.ln_1, attention, block.ls_1),
        "mlp": ResidualBranch(block.ln_2, Mlp(mlp.c_fc, mlp.gelu, mlp.c_proj), block.ls_2),
    })


def _canonical_attention(name: str, index: int, mha: nn.Module, causal: bool = False) -> CLIPAttention:
    if type(mha) is not nn.MultiheadAttention:
        raise _refuse(name, f"block {index}'s attention {type(mha).__name__} (expected nn.MultiheadAttention)")
    if not mha.batch_first:
        raise _refuse(name, f"block {index}'s sequence-first attention (batch_first=False)")
    if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
        raise _refuse(name, f"block {index}'s attention with kdim/vdim, add_bias_kv or add_zero_attn")
    return CLIPAttention.from_mha(mha, causal)


def _data_config(visual: nn.Module, preprocess: dict | None = None) -> DataConfig:
    """Input size from the tower; mean, std and interpolation from ``preprocess`` (a pretrained
    tag's config), else the tower's ``preprocess_cfg`` (set by create_model), else OpenAI's."""
    cfg = {"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic"}
    cfg.update({k: v for k, v in (getattr(visual, "preprocess_cfg", None) or {}).items() if k in cfg and v})
    cfg.update({k: v for k, v in (preprocess or {}).items() if k in cfg and v})
    return DataConfig(input_size=tuple(visual.image_size), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                      interpolation=cfg["interpolation"])


# -- weights --------------------------------------------------------------------------------
@dataclass
class ClipWeightsPlan:
    """What to pass to ``open_clip.create_model`` and how to describe it in run records."""

    source: str  # "random:0", "file:<path>", "cache:<path>", "download:<repo or url>"
    pretrained: str | None = None  # create_model's pretrained: a file path or a tag, None for random
    init_seed: int | None = None
    quick_gelu: bool = False  # the weights were trained with QuickGELU (open_clip's tag says so)
    preprocess: dict[str, Any] = field(default_factory=dict)


def resolve_clip_weights(model: str, pretrained: str | None, weights: str | None,
                         probe_hub: bool = True) -> ClipWeightsPlan:
    """``--weights`` (None/"pretrained", "random[:seed]" or a file) over the member's tag or file."""
    tag = pretrained if pretrained and not _is_path(pretrained) else None
    tag_cfg = _tag_cfg(model, tag) if tag else {}
    # what the tag says about its weights holds for --weights too (a file of those weights,
    # or random weights in the same architecture)
    quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    preprocess = {k: tag_cfg[k] for k in ("mean", "std", "interpolation") if k in tag_cfg}
    if weights and weights != "pretrained":
        if weights == "random" or weights.startswith("random:"):
            random = random_plan(weights)
            return ClipWeightsPlan(random.source, init_seed=random.init_seed, quick_gelu=quick_gelu,
                                   preprocess=preprocess)
        return _file_plan(Path(weights).expanduser(), quick_gelu, preprocess)
    if not pretrained:
        raise AdaptbenchError(f"backbone 'clip:{model}' names no weights: use clip:{model}/<pretrained tag>"
                              f"{_tags_hint(model)}, clip:{model}/<path to a file>, or --weights random|/path/to/file")
    if tag is None:
        return _file_plan(Path(pretrained).expanduser())
    cached = _cached_tag_file(tag_cfg)
    if cached is not None:
        return ClipWeightsPlan(f"cache:{cached}", str(cached), quick_gelu=quick_gelu, preprocess=preprocess)
    if probe_hub and not _offline() and hub_reachable():
        where = tag_cfg.get("hf_hub") or tag_cfg.get("url")
        return ClipWeightsPlan(f"download:{where}", tag, quick_gelu=quick_gelu, preprocess=preprocess)
    reason = "are not cached and the hub is unreachable" if probe_hub else "are not cached"
    raise AdaptbenchError(f"pretrained weights for 'clip:{model}/{tag}' {reason}: {_where_to_put(tag_cfg)}")


def check_clip_weights(member: str, weights: str | None) -> str:
    """The weights check of the ``clip:`` family: where the weights would come from, without
    loading or downloading them (and without probing the hub); raises :class:`AdaptbenchError`."""
    check_clip_member(member)
    model, source = split_member(member)
    return resolve_clip_weights(model, source or None, weights, probe_hub=False).source


def _is_path(text: str) -> bool:
    """A member's part after the model is a file when it looks like one (tags are identifiers)."""
    return "/" in text or os.sep in text or text.startswith(("~", ".")) or text.endswith(WEIGHT_FILE_SUFFIXES)


def _file_plan(path: Path, quick_gelu: bool = False, preprocess: dict | None = None) -> ClipWeightsPlan:
    if path.suffix not in WEIGHT_FILE_SUFFIXES:
        raise AdaptbenchError(f"weights {str(path)!r}: expected 'pretrained', 'random[:seed]' or a weights file "
                              f"ending in {', '.join(WEIGHT_FILE_SUFFIXES)}")
    if not path.is_file():
        raise AdaptbenchError(f"weights file {path} does not exist")
    return ClipWeightsPlan(f"file:{path}", str(path), quick_gelu=quick_gelu, preprocess=preprocess or {})


def _tag_cfg(model: str, tag: str) -> dict[str, Any]:
    from open_clip import get_pretrained_cfg, list_pretrained_tags_by_model

    cfg = get_pretrained_cfg(model, tag)
    if not cfg:
        tags = list_pretrained_tags_by_model(model)
        if not tags:
            raise AdaptbenchError(f"open_clip has no pretrained weights for {model!r} (tag {tag!r}); pass "
                                  f"--weights random or a weights file, e.g. clip:{model}//path/to/weights.bin")
        raise AdaptbenchError(f"unknown pretrained tag {tag!r} for open_clip model {model!r}"
                              f"{did_you_mean(tag, tags)}; its tags: {', '.join(tags)}")
    return cfg


def _tags_hint(model: str) -> str:
    tags = list(pretrained_tags().get(model, {}))
    return f" (one of {', '.join(tags[:6])}{', ...' if len(tags) > 6 else ''})" if tags else ""


def _hf_candidates(cfg: dict[str, Any]) -> tuple[str, list[str]]:
    """(HF repository, file names open_clip would fetch, preferred first) of a tag's config."""
    repo, filename = os.path.split(cfg["hf_hub"])  # "org/repo/" (default file) or "org/repo/file.bin"
    if not filename:
        return repo, [_HF_SAFE_WEIGHTS_NAME, _HF_WEIGHTS_NAME]
    stem, suffix = os.path.splitext(filename)
    safe = [stem + ".safetensors"] if suffix in (".bin", ".pth") else []
    return repo, [*safe, filename]


def _url_cache_dir() -> Path:
    return Path(os.path.expanduser("~/.cache/clip"))  # open_clip's download_pretrained_from_url default


def _cached_tag_file(cfg: dict[str, Any]) -> Path | None:
    if cfg.get("file") and Path(cfg["file"]).is_file():
        return Path(cfg["file"])
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, names = _hf_candidates(cfg)
        for filename in names:
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    if cfg.get("url"):
        candidate = _url_cache_dir() / os.path.basename(urlparse(cfg["url"]).path)
        if candidate.is_file():
            return candidate
    return None


def _offline() -> bool:
    # read at call time: huggingface_hub reads HF_HUB_OFFLINE once, when it is imported
    declared = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return declared or bool(os.environ.get("ADAPTBENCH_OFFLINE"))


def _where_to_put(cfg: dict[str, Any]) -> str:
    if cfg.get("hf_hub"):
        from huggingface_hub import constants

        repo, names = _hf_candidates(cfg)
        cache = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
        return (f"download {names[0]} (or {names[-1]}) of the HF repository {repo} and pass --weights "
                f"/path/to/{names[0]} (or place it in the HF cache at {cache})")
    name = os.path.basename(urlparse(cfg["url"]).path)
    return f"download {cfg['url']} into {_url_cache_dir()} or pass --weights /path/to/{name}"


# -- factories ------------------------------------------------------------------------------
def clip_vit(
    model_name: str,
    pretrained: str | None = None,
    weights: str | None = None,
    keep_projection: bool = True,
    display_name: str | None = None,
    quick_gelu: bool | None = None,
    **model_kwargs: Any,
) -> OpenClipViT:
    """Build an open_clip model's image tower by name with canonical sites.

    ``pretrained``: an open_clip tag (``openai``, ``laion2b_s34b_b88k`` ...) or a local file;
    ``weights`` (``--weights``) overrides it: ``"random[:seed]"`` or a file. A tag trained with
    QuickGELU builds the tower with QuickGELU (``quick_gelu`` overrides what the tag says).
    ``model_kwargs`` go to ``open_clip.create_model``.
    """
    import open_clip

    plan = resolve_clip_weights(model_name, pretrained, weights)
    if plan.source.startswith("file:"):  # before open_clip reads it: a folder, an empty file, a git-lfs
        check_weights_file(plan.source[len("file:"):])  # pointer, a refused pickle ...: one line naming it
    name = display_name or f"clip:{model_name}" + (f"/{pretrained}" if pretrained else "")
    with torch.random.fork_rng(devices=[]):
        if plan.init_seed is not None:
            torch.manual_seed(plan.init_seed)
        try:
            model = open_clip.create_model(
                model_name, pretrained=plan.pretrained,
                force_quick_gelu=plan.quick_gelu if quick_gelu is None else quick_gelu,
                require_pretrained=plan.pretrained is not None, **{"device": _default_device(), **model_kwargs})
        except (RuntimeError, ValueError, OSError, KeyError) as err:
            raise AdaptbenchError(f"open_clip could not build {name!r} from {plan.source}: {_brief(err)}") from err
    visual = model.visual
    del model  # the text tower is not kept: text_tower() builds it again from the same weights
    loader = functools.partial(_load_full_model, model_name, plan, quick_gelu, model_kwargs)
    backbone = OpenClipViT(name, visual, plan.source, _data_config(visual, plan.preprocess), keep_projection,
                           text_loader=loader)
    backbone.seal_weights()
    return backbone


def _load_full_model(model_name: str, plan: ClipWeightsPlan, quick_gelu: bool | None,
                     model_kwargs: dict[str, Any]) -> tuple[nn.Module, Any]:
    """The whole open_clip model (both towers) with the weights the image tower came from, and
    the model's tokenizer (open_clip's BPE ships in its wheel: no network)."""
    import open_clip

    with torch.random.fork_rng(devices=[]):
        if plan.init_seed is not None:
            torch.manual_seed(plan.init_seed)
        model = open_clip.create_model(model_name, pretrained=plan.pretrained,
                                       force_quick_gelu=plan.quick_gelu if quick_gelu is None else quick_gelu,
                                       require_pretrained=plan.pretrained is not None,
                                       **{**model_kwargs, "device": "cpu"})
    return model, open_clip.get_tokenizer(model_name)


def _default_device() -> torch.device:
    """Where new tensors go now: "meta" inside ``backbone_anatomy`` (create_model would otherwise
    move the model to its own default, the CPU, which a meta model cannot do)."""
    return torch.empty(0).device


def _brief(err: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (open_clip's state-dict errors span many)."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip_member(member: str):
    """The resolver of the ``clip:`` family: a factory ``(weights=..., **options) -> OpenClipViT``."""
    check_clip_member(member)
    model, source = split_member(member)

    def factory(weights: str | None = None, img_size: int | None = None, quick_gelu: bool | None = None,
                **options: Any) -> OpenClipViT:
        if img_size is not None:
            options["force_image_size"] = img_size  # open_clip resamples the position embedding
        return clip_vit(model, pretrained=source or None, weights=weights, display_name=f"clip:{member}",
                        quick_gelu=quick_gelu, **options)

    factory.accepted_options = ("img_size", "keep_projection", "quick_gelu")
    return factory


# Tiny open_clip towers (open_clip's own VisionTransformer) for CPU tests: random weights, 32x32.
TINY_CONFIG = dict(image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_ratio=2.0, output_dim=16)


def tiny_visual(quick_gelu: bool = False, seed: int = 0) -> nn.Module:
    """The plain open_clip tower behind ``clip_tiny_test`` (``quick_gelu``: ``clip_tiny_test_quickgelu``).

    Biases, norms and LayerScale are drawn at random too (open_clip starts them at 0 or 1), so
    that a test comparing against this tower sees every parameter at work.
    """
    from open_clip.transformer import QuickGELU, VisionTransformer

    variant = dict(act_layer=QuickGELU, ls_init_value=0.5) if quick_gelu else dict(act_layer=nn.GELU)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        visual = VisionTransformer(**TINY_CONFIG, **variant)
        with torch.no_grad():
            for param in visual.parameters():
                if param.dim() == 1:
                    param.add_(0.1 * torch.randn_like(param))
    return visual


# Its text tower (open_clip's BPE vocabulary, so the real tokenizer runs): width 32, 2 blocks.
TINY_TEXT_CONFIG = dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=2)


def tiny_clip_model(quick_gelu: bool = False, seed: int = 0) -> tuple[nn.Module, Any]:
    """A whole tiny open_clip ``CLIP`` (image tower = :func:`tiny_visual`) and its tokenizer."""
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        model = CLIP(TINY_CONFIG["output_dim"], vision_cfg={"layers": 1, "width": 64, "patch_size": 8, "image_size": 16},
                     text_cfg=TINY_TEXT_CONFIG, quick_gelu=quick_gelu)
    model.visual = tiny_visual(quick_gelu, seed)
    return model, SimpleTokenizer(context_length=TINY_TEXT_CONFIG["context_length"])


def _tiny(name: str, quick_gelu: bool, weights: str | None, keep_projection: bool) -> OpenClipViT:
    weights = weights or "random"
    if not (weights == "random" or weights.startswith("random:")):
        raise AdaptbenchError(f"backbone {name!r} has random weights only: pass --weights random or random:<seed>")
    plan = random_plan(weights)
    backbone = OpenClipViT(name, tiny_visual(quick_gelu, plan.init_seed), plan.source, keep_projection=keep_projection,
                           text_loader=functools.partial(tiny_clip_model, quick_gelu, plan.init_seed))
    backbone.seal_weights()
    return backbone


def clip_tiny_test(weights: str | None = "random", keep_projection: bool = True) -> OpenClipViT:
    """Tiny random-init open_clip ViT for tests: width 32, 2 blocks, GELU, projection to 16."""
    return _tiny("clip_tiny_test", False, weights, keep_projection)


def clip_tiny_test_quickgelu(weights: str | None = "random", keep_projection: bool = True) -> OpenClipViT:
    """Tiny random-init open_clip ViT for tests: QuickGELU and LayerScale, projection to 16."""
    return _tiny("clip_tiny_test_quickgelu", True, weights, keep_projection)


register_backbone("clip_tiny_test", clip_tiny_test)
clip_tiny_test.accepted_options = clip_tiny_test_quickgelu.accepted_options = ("keep_projection",)
register_backbone("clip_tiny_test_quickgelu", clip_tiny_test_quickgelu)
