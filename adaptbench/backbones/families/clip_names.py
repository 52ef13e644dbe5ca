"""The names of the ``clip:`` family, read from open_clip's files without importing it.

``adaptbench ls backbones`` and ``BACKBONES.require("clip:...")`` must not import torch, and
importing open_clip does (and takes many seconds). So this module finds open_clip's package
folder with :func:`importlib.util.find_spec` (which does not run the package) and reads

* ``model_configs/*.json``: the model names, and what their image towers are (a plain
  open_clip ViT is offered; timm towers, ResNets and ViT variants the canonical blocks do not
  reproduce are refused with the reason);
* ``pretrained.py`` (parsed with :mod:`ast`, never run): the pretrained tags of each model,
  only to describe it. The weights themselves are checked by ``clip.check_clip_weights``.

A member is ``<model>/<pretrained tag or local file>`` (split at the first ``/``, so a file
may be an absolute path: ``ViT-B-16//data/ckpt.bin``) or ``<model>`` alone, whose weights
then come from ``--weights``.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
from pathlib import Path

from ...errors import AdaptbenchError, did_you_mean

INSTALL_HINT = 'open_clip is not installed; install it with: pip install "adaptbench[clip]"'
TAG_PLACEHOLDER = "<tag or file>"
_SHOWN_TAGS = 4  # tags named in a listing line; the rest are counted
# vision_cfg options that make open_clip build its CustomResidualAttentionBlock
_CUSTOM_BLOCK_OPTIONS = ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc")


def open_clip_dir() -> Path:
    """open_clip's package folder (found, not imported)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise AdaptbenchError(INSTALL_HINT)
    return Path(list(spec.submodule_search_locations)[0])


@functools.lru_cache(maxsize=None)
def _configs_in(folder: Path) -> dict[str, dict]:
    configs = {}
    for path in sorted(folder.glob("*.json")):
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        # open_clip registers only the files that hold all three (factory._rescan_model_configs)
        if isinstance(config, dict) and all(key in config for key in ("embed_dim", "vision_cfg", "text_cfg")):
            configs[path.stem] = config
    return configs


def model_configs() -> dict[str, dict]:
    """open_clip's built-in model configurations, by model name (case-sensitive)."""
    return _configs_in(open_clip_dir() / "model_configs")


def split_member(member: str) -> tuple[str, str]:
    """``"<model>/<tag or file>"`` -> (model, tag or file); ``"<model>"`` -> (model, "")."""
    model, _, source = member.partition("/")
    return model, source


def refusal(config: dict) -> str:
    """Why a model's image tower cannot be canonicalised ("" when it can)."""
    vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
    if vision.get("timm_model_name"):
        return f"its image tower is timm's {vision['timm_model_name']!r}, not open_clip's VisionTransformer"
    if isinstance(vision.get("layers"), (list, tuple)):
        return "its image tower is a ResNet, not a ViT"
    if vision.get("attentional_pool"):
        return "its image tower pools with attention (attentional_pool), which is not supported"
    if vision.get("final_ln_after_pool"):
        return "its image tower applies the final LayerNorm after pooling (final_ln_after_pool), which is not supported"
    if vision.get("pool_type", "tok") != "tok":
        return (f"its image tower pools with pool_type {vision['pool_type']!r}; only class-token pooling ('tok') "
                f"is supported")
    custom = [option for option in _CUSTOM_BLOCK_OPTIONS if vision.get(option)]
    if custom or vision.get("block_type") == "custom":
        return (f"its image tower uses custom attention blocks ({', '.join(custom) or 'block_type custom'}), "
                f"which are not reproduced")
    if text.get("hf_model_name"):
        return (f"its text tower is the Hugging Face model {text['hf_model_name']!r}, which open_clip fetches from "
                f"the hub to build the model")
    return ""


def describe(model: str, config: dict) -> str:
    """A short description of a model's image tower, e.g. for ``adaptbench ls``."""
    vision = config["vision_cfg"]
    size = vision.get("image_size", 224)
    size = f"{size[0]}x{size[1]}" if isinstance(size, (list, tuple)) else f"{size}px"
    act = ", QuickGELU" if config.get("quick_gelu") else ""
    text = (f"open_clip {model} image tower: ViT width {vision.get('width', 768)}, {vision.get('layers', 12)} layers, "
            f"patch {vision.get('patch_size', 16)}, {size}{act}, projection to {config['embed_dim']}")
    tags = list(pretrained_tags().get(model, {}))
    if tags:
        more = f" +{len(tags) - _SHOWN_TAGS} more" if len(tags) > _SHOWN_TAGS else ""
        text += f"; tags: {', '.join(tags[:_SHOWN_TAGS])}{more}"
    return text


def list_clip_family() -> tuple[dict[str, str], dict[str, str]]:
    """The lister of the ``clip:`` family: ``<model>/<tag or file>`` for each open_clip model
    whose image tower is a plain ViT; the other models with the reason they are refused."""
    offered, refused = {}, {}
    for model, config in model_configs().items():
        reason = refusal(config)
        if reason:
            refused[model] = reason
        else:
            offered[f"{model}/{TAG_PLACEHOLDER}"] = describe(model, config)
    return offered, refused


def check_clip_member(member: str) -> str:
    """The member check of the ``clip:`` family: the model part must be an open_clip model
    whose image tower is a plain ViT. Returns its description; raises :class:`AdaptbenchError`."""
    model, source = split_member(member)
    configs = model_configs()
    if model not in configs:
        same_but_case = [name for name in configs if name.lower() == model.lower()]
        hint = did_you_mean(model, same_but_case or configs)
        raise AdaptbenchError(f"unknown open_clip model {model!r} in backbone 'clip:{member}'{hint}; "
                              f"`adaptbench ls backbones` lists the clip: models (names are case-sensitive)")
    reason = refusal(configs[model])
    if reason:
        raise AdaptbenchError(f"backbone 'clip:{member}' cannot be used here: {reason}")
    if member.endswith("/") and not source.strip("/"):
        raise AdaptbenchError(f"backbone 'clip:{member}': expected a pretrained tag or a weights file after "
                              f"'{model}/', e.g. clip:{model}/openai")
    return describe(model, configs[model]) + (f" (weights {source})" if source else "")


# -- pretrained tags, read from open_clip/pretrained.py with ast ------------------------------
def pretrained_tags() -> dict[str, dict[str, bool]]:
    """{model: {tag: trained with QuickGELU}} as open_clip's ``_PRETRAINED`` holds it, or {}
    when the file cannot be read (only descriptions depend on it)."""
    try:
        return _tags_in(open_clip_dir() / "pretrained.py")
    except (AdaptbenchError, OSError, SyntaxError, ValueError):
        return {}


@functools.lru_cache(maxsize=None)
def _tags_in(path: Path) -> dict[str, dict[str, bool]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    named: dict[str, ast.expr] = {}
    table: ast.Dict | None = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            named[node.targets[0].id] = node.value
            if node.targets[0].id == "_PRETRAINED" and isinstance(node.value, ast.Dict):
                table = node.value
    if table is None:
        return {}
    tags: dict[str, dict[str, bool]] = {}
    for key, value in zip(table.keys, table.values):
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            tags[key.value] = _tags_of(value, named)
    # open_clip adds "<model>-quickgelu" entries holding the tags trained with QuickGELU
    for model, model_tags in list(tags.items()):
        quick = {tag: True for tag, quick_gelu in model_tags.items() if quick_gelu}
        if quick:
            tags.setdefault(f"{model}-quickgelu", quick)
    return tags


def _tags_of(node: ast.expr, named: dict[str, ast.expr]) -> dict[str, bool]:
    if isinstance(node, ast.Name):
        node = named.get(node.id)
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict"):
        return {}
    return {keyword.arg: _quick_gelu(keyword.value) for keyword in node.keywords if keyword.arg}


def _quick_gelu(node: ast.expr) -> bool:
    if not isinstance(node, ast.Call):
        return False
    return any(keyword.arg == "quick_gelu" and isinstance(keyword.value, ast.Constant) and keyword.value.value is True
               for keyword in node.keywords)
