"""Where a backbone's weights come from: a timm name (local cache first), a file, or random.

timm's own download path retries for about a minute when there is no network. Users of
this benchmark are often offline, so we look in the caches ourselves and, when the weights
are not there and the hub cannot be reached within a few seconds, fail at once with one
line saying where to put the file.

A local weights file (``--weights``, or one found in a cache) is checked before timm reads it
(:func:`check_weights_file`: the safetensors header, or the pickle through ``torch.load``'s
``weights_only`` unpickler), and timm's reading of it is watched (:func:`loading_weights_file`):
every problem is one line that starts ``weights file <path>``. A file whose tensors do not fit
the model is refused, where timm would only log the keys it could not fill and leave them
random.
"""

from __future__ import annotations

import logging
import os
import pickle
import pickletools
import re
import socket
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..errors import AdaptbenchError
from ..files import GIT_LFS_POINTER, NotSafetensors, describe_start, lfs_pointer_reason, safetensors_header

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
    file: Path | None = None  # the local file timm reads, when there is one


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
    check_weights_file(path)
    overlay = {"file": str(path), "custom_load": path.suffix == ".npz"}
    return WeightsPlan(f"file:{path}", {"pretrained": True, "pretrained_cfg_overlay": overlay}, file=path)


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
        check_weights_file(cached)
        overlay = {"file": str(cached), "custom_load": cached.suffix == ".npz"}
        return WeightsPlan(f"cache:{cached}", {"pretrained": True, "pretrained_cfg_overlay": overlay}, file=cached)
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
    check_weights_file(cached)
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


# -- local weights files: checked before timm reads them, and timm's reading watched --------
_TORCH_SUFFIXES = (".pth", ".pt", ".bin")
_STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")  # timm's load_state_dict order


def check_weights_file(path: str | os.PathLike) -> None:
    """Refuse, with one line naming the file, a weights file timm could not read: a folder, an
    empty file, a git-lfs pointer, a safetensors file that is not one or is truncated, a
    pickle that imports anything but tensors, a file that is no checkpoint at all.

    Reads only what it must: the safetensors header; a zip checkpoint's pickle, its tensors
    memory-mapped (an old-style pickle is read whole).
    """
    path = Path(path)
    _check_is_file(path)
    if path.suffix == ".safetensors":
        header = _safetensors_header(path)
        if not any(name != "__metadata__" for name in header):
            raise AdaptbenchError(f"weights file {path}: holds no tensors; expected a backbone's state dict")
    elif path.suffix in _TORCH_SUFFIXES:
        state_dict_of(read_torch_file(path, mmap=True), path)
    elif path.suffix == ".npz":
        _check_npz(path)


def read_weights_file(path: str | os.PathLike) -> dict[str, Any]:
    """All tensors of a ``.safetensors`` file, or of a file ``torch.save`` wrote (``.pth``,
    ``.pt``, ``.bin``: a bare state dict, or the one a checkpoint holds under timm's keys),
    every error one line naming the file."""
    path = Path(path)
    _check_is_file(path)
    if path.suffix == ".safetensors":
        _safetensors_header(path)
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise AdaptbenchError(f"weights file {path}: not a readable safetensors file "
                                  f"({_first_line(err)})") from None
    return state_dict_of(read_torch_file(path), path)  # .pth, .pt, .bin, or what torch.save wrote


def _check_is_file(path: Path) -> None:
    if path.is_dir():
        raise AdaptbenchError(f"weights file {path} is a directory; expected a file ending in "
                              f"{', '.join(WEIGHT_FILE_SUFFIXES)}")
    if not path.exists():
        raise AdaptbenchError(f"weights file {path} does not exist")
    if not path.is_file():
        raise AdaptbenchError(f"weights file {path} is not a regular file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError as err:
        raise AdaptbenchError(f"weights file {path} cannot be read: {err.strerror or err}") from None
    if not head:
        raise AdaptbenchError(f"weights file {path}: not {_expected(path)} (the file is empty); "
                              f"an interrupted download? fetch the real file")
    if head.startswith(GIT_LFS_POINTER):
        reason = lfs_pointer_reason(head, path.stat().st_size)
        raise AdaptbenchError(f"weights file {path}: not {_expected(path)} ({reason}); "
                              f"fetch the real file (`git lfs pull`)")


def _expected(path: Path) -> str:
    if path.suffix == ".safetensors":
        return "a safetensors file"
    if path.suffix == ".npz":
        return "a numpy .npz archive"
    return "a PyTorch checkpoint"


def _safetensors_header(path: Path) -> dict:
    try:
        return safetensors_header(path)
    except NotSafetensors as err:
        raise AdaptbenchError(f"weights file {path}: {err.describe()}") from None
    except OSError as err:
        raise AdaptbenchError(f"weights file {path} cannot be read: {err.strerror or err}") from None


def read_torch_file(path: str | os.PathLike, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors naming the file; a pickle
    that imports anything but tensors is refused naming the global it wants (``mmap``: map
    the tensors of a zip checkpoint rather than read them)."""
    import torch

    path = Path(path)
    _check_is_file(path)
    with open(path, "rb") as handle:
        head = handle.read(16)
    is_zip = zipfile.is_zipfile(path)
    if not is_zip and head.startswith(b"PK\x03\x04"):
        raise AdaptbenchError(f"weights file {path}: not a readable PyTorch checkpoint (a truncated or damaged "
                              f"zip archive: its central directory is missing); fetch the real file")
    if not is_zip and head[:1] != b"\x80":
        what = describe_start(head)
        reason = f"it is {what}" if what else f"neither a zip archive nor a pickle: it starts with {head[:8]!r}"
        raise AdaptbenchError(f"weights file {path}: not a PyTorch checkpoint ({reason}); expected a file "
                              f"written by torch.save, or a .safetensors file")
    try:
        with warnings.catch_warnings():  # torch warns before refusing a TorchScript archive
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as err:
        wanted = _refused_global(err, path if is_zip else None)
        if wanted:
            raise AdaptbenchError(f"weights file {path}: refused: its pickle imports {wanted} (only tensors "
                                  f"are loaded; convert it to safetensors)") from None
        raise AdaptbenchError(f"weights file {path}: not a readable PyTorch checkpoint "
                              f"({_torch_reason(err)})") from None
    except Exception as err:  # noqa: BLE001 - a damaged file raises anything from zip, pickle or torch
        if "TorchScript" in str(err):
            raise AdaptbenchError(f"weights file {path}: refused: it is a TorchScript archive (torch.jit.save), "
                                  f"whose code is not run (only tensors are loaded; convert its state_dict to "
                                  f"safetensors)") from None
        raise AdaptbenchError(f"weights file {path}: not a readable PyTorch checkpoint "
                              f"({type(err).__name__}: {_torch_reason(err)})") from None


def state_dict_of(checkpoint: Any, path: Path) -> dict[str, Any]:
    """The state dict a loaded checkpoint holds (itself, or under timm's keys), checked to
    map names to tensors."""
    import torch

    if isinstance(checkpoint, dict):
        for key in _STATE_DICT_KEYS:
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict):
        raise AdaptbenchError(f"weights file {path}: holds a {type(checkpoint).__name__}; expected a state dict "
                              f"(a mapping of names to tensors)")
    if not checkpoint:
        raise AdaptbenchError(f"weights file {path}: holds an empty state dict; expected a backbone's tensors")
    for name, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            raise AdaptbenchError(f"weights file {path}: entry {str(name)!r} is a {type(value).__name__}; "
                                  f"expected a state dict of tensors")
    return checkpoint


_GLOBAL_IN_MESSAGE = (re.compile(r"GLOBAL ([\w.]+)"), re.compile(r"Unsupported globals?: ([\w.]+)"),
                      re.compile(r"Unsupported class ([\w.]+)"))
_HARMLESS_MODULES = ("torch", "collections", "builtins", "__builtin__", "_codecs", "numpy")


def _refused_global(err: BaseException, zip_path: Path | None) -> str | None:
    """The global a pickle wanted that torch's weights-only unpickler refused."""
    for pattern in _GLOBAL_IN_MESSAGE:
        found = pattern.search(str(err))
        if found:
            return found.group(1)
    if zip_path is None:
        return None
    try:  # torch phrased it otherwise: look in the pickle for a global that is not torch's
        with zipfile.ZipFile(zip_path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            for opcode, arg, _ in pickletools.genops(archive.read(name)):
                if opcode.name == "GLOBAL":
                    wanted = str(arg).replace(" ", ".", 1)
                    if not wanted.startswith(_HARMLESS_MODULES):
                        return wanted
    except Exception:  # noqa: BLE001 - only a better message was at stake
        return None
    return None


_ADVICE = ("weights_only", "Weights only load failed", "Check the documentation", "arbitrary code", "trusted source",
           "pytorch.org/docs")


def _torch_reason(err: BaseException) -> str:
    """The sentence of torch's message that says what is wrong, not its advice to load with
    ``weights_only=False`` (which adaptbench never does)."""
    sentences = [part.strip() for line in str(err).splitlines() for part in re.split(r"(?<=\.)\s+", line)
                 if part.strip()]
    useful = [part for part in sentences if not any(word in part for word in _ADVICE)]
    return useful[0].rstrip(".") if useful else type(err).__name__


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _check_npz(path: Path) -> None:
    import numpy as np

    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            head = handle.read(16)
        what = describe_start(head)
        reason = f"it is {what}" if what else f"not a zip archive: it starts with {head[:8]!r}"
        raise AdaptbenchError(f"weights file {path}: not a numpy .npz archive ({reason}); "
                              f"expected the .npz of a JAX/big_vision ViT")
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(getattr(archive, "files", []))
    except Exception as err:  # noqa: BLE001 - numpy raises many kinds for a bad archive
        raise AdaptbenchError(f"weights file {path}: not a numpy .npz archive ({_first_line(err)}); "
                              f"expected the .npz of a JAX/big_vision ViT") from None
    if not names:
        raise AdaptbenchError(f"weights file {path}: the .npz archive holds no arrays")


@contextmanager
def loading_weights_file(path: Path | None, model_name: str, display_name: str | None = None) -> Iterator[None]:
    """Around ``timm.create_model``: what goes wrong while timm reads or applies ``path`` is
    one line naming the file (and the first offending key), and so are keys timm could not
    fill from it or did not use, which timm itself only logs."""
    if path is None:
        yield
        return
    model = (f"backbone {display_name!r} (timm model {model_name})" if display_name and display_name != model_name
             else f"timm model {model_name!r}")
    logger = logging.getLogger("timm.models._builder")
    level = logger.level
    logged = _TimmKeyLog(logger.getEffectiveLevel())
    logger.addFilter(logged)
    logger.setLevel(logging.INFO)  # timm logs missing keys at INFO; the filter drops what was off
    try:
        yield
    except AdaptbenchError:
        raise
    except Exception as err:  # noqa: BLE001 - checked: only errors raised while loading weights
        if not _raised_while_loading(err):
            raise
        raise AdaptbenchError(f"weights file {path} does not fit {model}: {_mismatch(err)}") from None
    finally:
        logger.removeFilter(logged)
        logger.setLevel(level)
    for kind, keys in logged.keys.items():
        if keys:
            count = f"{len(keys)} tensor{'s' if len(keys) > 1 else ''}"
            what = (f"the file lacks {count} of the model's" if kind == "missing"
                    else f"the file holds {count} the model does not have")
            raise AdaptbenchError(f"weights file {path} does not fit {model}: {what} (first: {keys[0]}); "
                                  f"expected the state dict of this model")


class _TimmKeyLog(logging.Filter):
    """Collects (and drops) the keys timm's ``load_pretrained`` logs as missing or unexpected,
    and lets through only the other records the logger would have emitted at ``level``."""

    _PATTERN = re.compile(r"^(Missing|Unexpected) keys \((.*?)\) (?:discovered|found)")

    def __init__(self, level: int):
        super().__init__()
        self.level = level
        self.keys: dict[str, list[str]] = {"missing": [], "unexpected": []}

    def filter(self, record: logging.LogRecord) -> bool:
        found = self._PATTERN.match(record.getMessage())
        if found:  # raised as the error instead (a warning too would make two lines)
            self.keys[found.group(1).lower()] += [key.strip() for key in found.group(2).split(",") if key.strip()]
            return False
        return record.levelno >= self.level


_LOADING_FRAMES = {"load_pretrained", "load_state_dict", "_load_weights", "load_checkpoint", "_torch_load",
                   "load_file", "filter_fn", "checkpoint_filter_fn"}


def _raised_while_loading(err: BaseException) -> bool:
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name in _LOADING_FRAMES:
            return True
        tb = tb.tb_next
    return False


def _mismatch(err: BaseException) -> str:
    """The first offending key of a state-dict error, or the error's first line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("size mismatch for"):
            return re.sub(r"torch\.Size\((\[.*?\])\)", r"\1", line).rstrip(".")
    for line in lines:
        found = re.match(r"(Missing|Unexpected) key\(s\) in state_dict: \"([^\"]+)\"", line)
        if found:
            return f"{found.group(1).lower()} key {found.group(2)!r}"
    if isinstance(err, KeyError):
        return f"the file holds no tensor {err.args[0]!r}" if err.args else "a tensor the model needs is missing"
    return f"{type(err).__name__}: {_torch_reason(err)}"
