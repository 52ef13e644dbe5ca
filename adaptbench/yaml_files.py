"""YAML files read safely, merged over the files they ``include:``, with every error located.

``read_with_includes(path)`` returns the merged mapping and the files it came from; a
:class:`Where` turns a key path into ``file:line: key.path`` for messages, looking in the
including file first (it wins a merge), then in its includes. Used by matrix specs
(``runner/spec.py``); nothing here knows what a spec holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import AdaptbenchError


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise AdaptbenchError(f"spec file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise AdaptbenchError(f"{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AdaptbenchError(f"{path}: expected a mapping of keys (backbones, adapters, tasks, ...), "
                              f"got a {type(data).__name__}")
    return data


def read_with_includes(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], list[Path]]:
    """The file's keys merged over its includes'; ``sources`` lists the files, this one first."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise AdaptbenchError(f"{path}: include cycle {cycle}")
    data = read_yaml(path)
    includes = data.pop("include", None) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise AdaptbenchError(f"{path}: include: expected a file name or a list of file names")
    merged: dict[str, Any] = {}
    sources = [path]
    for include in includes:
        included, included_sources = read_with_includes(path.parent / include, (*chain, resolved))
        merged = _deep_merge(merged, included)
        sources.extend(included_sources)
    return _deep_merge(merged, data), sources


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class Where:
    """Turns a key path into ``file:line: key.path`` for error messages."""

    def __init__(self, path: Path, sources: list[Path]):
        self.path = path
        self.sources = sources

    def error(self, keys: tuple[Any, ...], message: str) -> AdaptbenchError:
        return AdaptbenchError(f"{self._location(keys)}: {_key_text(keys)}: {message}")

    def _location(self, keys: tuple[Any, ...]) -> str:
        # The including file wins a merge, so look there first, then in the includes.
        for source in self.sources:
            line = _line_of(source, keys)
            if line is not None:
                return f"{source}:{line}"
        return str(self.path)


def _key_text(keys: tuple[Any, ...]) -> str:
    text = ""
    for key in keys:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text or "(top level)"


def _line_of(path: Path, keys: tuple[Any, ...]) -> int | None:
    """The 1-based line where ``keys`` is written in a YAML file (or as deep as it goes), or None.

    A short form stops the walk early: ``adapters: [lora]`` has no ``name`` key under
    ``adapters[0]``, so an error about ``adapters[0].name`` points at ``lora``'s line.
    """
    try:
        node = yaml.compose(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    mark = None
    for key in keys:
        if isinstance(node, yaml.MappingNode):
            matches = [(k, v) for k, v in node.value if k.value == str(key)]
            if not matches:
                break
            key_node, node = matches[-1]
            mark = key_node.start_mark
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            mark = node.start_mark
        else:
            break
    return None if mark is None else mark.line + 1
