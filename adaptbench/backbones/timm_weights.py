"""Where a backbone's weights come from: a timm name (local cache first), a file, or random.

timm's own download path retries for about a minute when there is no network. Users of
this benchmark are often offline, so we look in the caches ourselves and, when the weights
are not there and the hub cannot be reached within a few seconds, fail at once with one
line saying where to put the file.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..errors import AdaptbenchError

WEIGHT_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")
HUB_PROBE_TIMEOUT_S = 3.0
# The files a timm repository on the HF hub holds, in the order timm prefers them.
_HUB_FILENAMES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin")


@dataclass
class WeightsPlan:
    """What to pass to ``timm.create_model`` and how to describe it in run records."""

    source: str  # "random:0", "file:<path>", "hf-cache:<path>", "download:<repo or url>"
    create_kwargs: dict[str, Any] = field(default_factory=dict)
    init_seed: int | None = None  # random init under this seed (reproducible weights)


def resolve_timm_weights(model_name: str, weights: str | None) -> WeightsPlan:
    """Turn ``--weights`` (None/"pretrained", "random[:seed]" or a path) into a load plan."""
    weights = weights or "pretrained"
    if weights == "random" or weights.startswith("random:"):
        return random_plan(weights)
    if weights == "pretrained":
        return _pretrained_plan(model_name)
    return _file_plan(Path(weights).expanduser())


def random_plan(weights: str) -> WeightsPlan:
    seed_text = weights.partition(":")[2] or "0"
    if not seed_text.isdigit():
        raise AdaptbenchError(f"--weights {weights!r}: expected 'random' or 'random:<int seed>'")
    # A fixed seed makes "random" weights reproducible, so adapter checkpoints made on
    # them can be reloaded in another process (their weights hash matches).
    return WeightsPlan(f"random:{seed_text}", {"pretrained": False}, init_seed=int(seed_text))


def _file_plan(path: Path) -> WeightsPlan:
    if path.suffix not in WEIGHT_FILE_SUFFIXES:
        raise AdaptbenchError(
            f"--weights {str(path)!r}: expected 'pretrained', 'random' or a weights file "
            f"ending in {', '.join(WEIGHT_FILE_SUFFIXES)}"
        )
    if not path.is_file():
        raise AdaptbenchError(f"weights file {path} does not exist")
    overlay = {"file": str(path), "custom_load": path.suffix == ".npz"}
    return WeightsPlan(f"file:{path}", {"pretrained": True, "pretrained_cfg_overlay": overlay})


def _pretrained_plan(model_name: str) -> WeightsPlan:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    if cfg is None:
        raise AdaptbenchError(
            f"timm model {model_name!r} has no pretrained weights; pass --weights random "
            f"or --weights /path/to/weights.safetensors"
        )
    cached = _cached_hub_file(cfg.hf_hub_id) or _cached_url_file(cfg.url)
    if cached is not None:
        overlay = {"file": str(cached), "custom_load": cached.suffix == ".npz"}
        return WeightsPlan(f"cache:{cached}", {"pretrained": True, "pretrained_cfg_overlay": overlay})
    if hub_reachable():
        return WeightsPlan(f"download:{cfg.hf_hub_id or cfg.url}", {"pretrained": True})
    raise AdaptbenchError(_missing_weights_message(model_name, cfg))


def check_timm_weights(model_name: str, weights: str | None) -> str:
    """Where a timm model's weights would come from, without loading or downloading them.

    Returns a description ("random:0", "file:<path>", "cache:<path>"); raises
    :class:`AdaptbenchError` when they are missing (``adaptbench validate`` reports it).
    Unlike :func:`resolve_timm_weights` it never probes the hub: validation is offline.
    """
    weights = weights or "pretrained"
    if weights != "pretrained":
        return resolve_timm_weights(model_name, weights).source
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    if cfg is None:
        raise AdaptbenchError(f"timm model {model_name!r} has no pretrained weights")
    cached = _cached_hub_file(cfg.hf_hub_id) or _cached_url_file(cfg.url)
    if cached is None:
        raise AdaptbenchError(_missing_weights_message(model_name, cfg).replace(
            "are not cached and the hub is unreachable", "are not cached"))
    return f"cache:{cached}"


def _cached_hub_file(repo_id: str | None) -> Path | None:
    if not repo_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in _HUB_FILENAMES:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def _cached_url_file(url: str | None) -> Path | None:
    if not url:
        return None
    import torch.hub

    candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    return candidate if candidate.is_file() else None


def hub_reachable() -> bool:
    """False at once when offline is declared, else whether the hub answers in seconds."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("ADAPTBENCH_OFFLINE"):
        return False
    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _missing_weights_message(model_name: str, cfg: Any) -> str:
    from huggingface_hub import constants

    if cfg.hf_hub_id:
        cache = Path(constants.HF_HUB_CACHE) / f"models--{cfg.hf_hub_id.replace('/', '--')}"
        where = (f"download model.safetensors of the HF repository {cfg.hf_hub_id} and pass "
                 f"--weights /path/to/model.safetensors (or place it in the HF cache at {cache})")
    else:
        import torch.hub

        where = (f"download {cfg.url} into {Path(torch.hub.get_dir()) / 'checkpoints'} "
                 f"or pass --weights /path/to/that/file")
    return f"pretrained weights for {model_name!r} are not cached and the hub is unreachable: {where}"
