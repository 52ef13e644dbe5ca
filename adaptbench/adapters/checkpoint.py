"""Adapter-only checkpoints: safetensors (never pickles) with metadata.

Keys: ``adapter.<declared name>`` for the adapter's tensors and ``head.<name>`` for the
task head when one is given. Metadata (all strings, as safetensors requires):

=====================  ===========================================================
format                 ``adaptbench.adapter``
format_version         ``1``
adaptbench_version     the package version that wrote the file
adapter                registry name of the adapter
adapter_config         the adapter config as JSON
backbone               backbone name
backbone_weights       the backbone's weights hash (``Backbone.weights_id``)
head                   (with a head) JSON: task name, number of classes, pooling
=====================  ===========================================================

Loading onto a backbone whose name or weights hash differs is refused with a message
naming both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .. import __version__
from ..errors import AdaptbenchError
from ..files import NotSafetensors, atomic_path, safetensors_header, safetensors_metadata
from .base import Adapter  # base imports nothing from here: no cycle

FORMAT = "adaptbench.adapter"
FORMAT_VERSION = "1"


def _metadata(adapter: Adapter) -> dict[str, str]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "adaptbench_version": __version__,
        "adapter": adapter.name,
        "adapter_config": adapter.config.to_json(),
        "backbone": adapter.backbone.name,
        "backbone_weights": adapter.backbone.weights_id,
    }


def _tensors(adapter: Adapter, head: nn.Module | None) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage: store independent copies.
    tensors = {f"adapter.{k}": v.detach().cpu().contiguous().clone() for k, v in adapter.state_tensors().items()}
    if head is not None:
        from ..tasks.heads import head_checkpoint_state

        tensors.update({f"head.{k}": v.detach().cpu().contiguous().clone()
                        for k, v in head_checkpoint_state(head).items()})
    return tensors


def checkpoint_bytes(adapter: Adapter) -> int:
    """Size in bytes of the adapter-only checkpoint file, from the safetensors layout (an
    8-byte header length, the JSON header padded to 8 bytes, then the raw tensor bytes)
    rather than by serialising a second copy of every tensor (344 MB for ``full`` on ViT-B)."""
    tensors = {f"adapter.{name}": tensor for name, tensor in adapter.state_tensors().items()}
    return safetensors_size(tensors, _metadata(adapter))


def safetensors_size(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> int:
    """The size of the file ``safetensors.torch.save(tensors, metadata)`` would write."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    # safetensors lays tensors out by decreasing dtype alignment, then by name
    for name, tensor in sorted(tensors.items(), key=lambda kv: (-kv[1].element_size(), kv[0])):
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return 8 + len(text) + (-len(text) % 8) + offset


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


def save_adapter(adapter: Adapter, path: str | os.PathLike, head: nn.Module | None = None,
                 head_info: dict | None = None) -> Path:
    """Write the adapter (and optionally the head, described by ``head_info``) atomically."""
    path = Path(path)
    metadata = _metadata(adapter)
    if head_info is not None:
        metadata["head"] = json.dumps(head_info, sort_keys=True)
    with atomic_path(path) as temporary:
        save_file(_tensors(adapter, head), temporary, metadata=metadata)
    return path


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of an adapter checkpoint; a bad file is one line naming it.

    The header is checked before any tensor is read (:func:`adaptbench.files.safetensors_header`),
    so a git-lfs pointer, an empty, truncated or pickled file, or another safetensors file is
    named as such, and so is missing or malformed adaptbench metadata.
    """
    path = Path(path)
    if path.is_dir():
        raise AdaptbenchError(f"adapter checkpoint {path} is a directory; expected an .adapter.safetensors "
                              f"file written by adaptbench train")
    if not path.is_file():
        raise AdaptbenchError(f"adapter checkpoint {path} does not exist")
    try:
        header = safetensors_header(path)
    except NotSafetensors as err:
        hint = err.hint
        if "torch.save" in err.reason:  # adapters are never pickled: a pickle is someone else's file
            hint = "expected an .adapter.safetensors file written by adaptbench train"
        raise AdaptbenchError(f"adapter checkpoint {path}: "
                              f"{NotSafetensors(err.reason, err.lfs_pointer, hint).describe()}") from None
    except OSError as err:
        raise AdaptbenchError(f"adapter checkpoint {path} cannot be read: {err.strerror or err}") from None
    metadata = safetensors_metadata(header)
    if metadata.get("format") != FORMAT:
        raise AdaptbenchError(
            f"adapter checkpoint {path}: not an adaptbench adapter checkpoint (metadata 'format' is "
            f"{metadata.get('format')!r}, expected {FORMAT!r}); expected a file written by adaptbench train"
        )
    _check_metadata(metadata, path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise AdaptbenchError(f"adapter checkpoint {path} is not a readable safetensors file: {reason}") from None
    return metadata, tensors


def _check_metadata(metadata: dict[str, str], path: Path) -> None:
    """The metadata :func:`load_adapter` and evaluation read, present and well formed."""
    where = f"adapter checkpoint {path}"
    if metadata.get("format_version") != FORMAT_VERSION:
        raise AdaptbenchError(f"{where} has format_version {metadata.get('format_version')!r}; this adaptbench "
                              f"reads version {FORMAT_VERSION!r} (written by adaptbench "
                              f"{metadata.get('adaptbench_version', '?')})")
    for key in ("adapter", "adapter_config", "backbone", "backbone_weights"):
        if not metadata.get(key):
            raise AdaptbenchError(f"{where} lacks metadata {key!r}; expected a file written by adaptbench train")
    for key in ("adapter_config", "head"):  # head: only with a head, in the form its task kind wrote
        if key not in metadata:
            continue
        try:
            value = json.loads(metadata[key])
        except json.JSONDecodeError as err:
            raise AdaptbenchError(f"{where}: metadata {key!r} is not valid JSON ({err.msg}, column {err.colno}); "
                                  f"expected a JSON object") from None
        if not isinstance(value, dict):
            raise AdaptbenchError(f"{where}: metadata {key!r} is a JSON {type(value).__name__}; expected an object")


def check_backbone(metadata: dict[str, str], backbone, path: str | os.PathLike) -> None:
    """Refuse a checkpoint made on another backbone (name or weights)."""
    made_for = (metadata.get("backbone"), metadata.get("backbone_weights"))
    here = (backbone.name, backbone.weights_id)
    if made_for != here:
        raise AdaptbenchError(
            f"adapter checkpoint {path} was made for backbone {made_for[0]!r} "
            f"(weights {made_for[1]}), not for {here[0]!r} (weights {here[1]})"
        )


def load_adapter(backbone, path: str | os.PathLike) -> tuple[Adapter, dict[str, torch.Tensor]]:
    """Rebuild the adapter a checkpoint describes on ``backbone``; returns it and the head state."""
    from . import build_adapter

    metadata, tensors = read_checkpoint(path)
    check_backbone(metadata, backbone, path)
    try:
        adapter = build_adapter(metadata["adapter"], backbone, json.loads(metadata["adapter_config"]))
    except AdaptbenchError as err:  # an adapter or option this installation does not know
        raise AdaptbenchError(f"adapter checkpoint {path}: {err.message}") from None
    own = {k.removeprefix("adapter."): v for k, v in tensors.items() if k.startswith("adapter.")}
    adapter.load_state_tensors(own, source=str(path))
    head_state = {k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")}
    return adapter, head_state
