"""The built-in names, found without importing them.

Each built-in is declared once, by the ``register_adapter(...)`` / ``register_backbone(...)``
call at the bottom of the module that defines it. This module reads those calls from the
package's source files with ``ast`` (nothing is imported, so ``adaptbench ls`` stays free of
torch) and returns lazy ``"module:attr"`` entries described by the first line of the
target's docstring. Name families (``peft:``, ``timm:``, ``clip:``, ``sam:``) are declared
here, as plain field dicts that ``registry.Family`` is built from.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from . import _peft_methods
from .tasks import catalog as _tasks

PACKAGE = Path(__file__).resolve().parent
# where the built-ins of each kind are defined, and the call that registers them
_SOURCES = {
    "adapter": ("adapters", "register_adapter", 2),  # register_adapter(name, Config, Class)
    "backbone": ("backbones/families", "register_backbone", 1),  # register_backbone(name, factory)
    "task kind": ("tasks", "register_task_kind", 1),  # register_task_kind(name, KindClass)
    "head": ("tasks", "register_head", 1),  # register_head(name, factory)
    "reader": ("datasets", "register_reader", 1),  # register_reader(format, ReaderClass)
    "executor": ("runner/executors", "register_executor", 1),  # register_executor(name, ExecutorClass)
}

_FAMILIES = {
    "adapter": [dict(
        prefix="peft:",
        resolver="adaptbench.adapters.peft_bridge:bridged_adapter",
        lister="adaptbench._peft_methods:installed_peft_methods",
        description="any HF PEFT method on the anatomy's linear sites: peft:<method>",
    )],
    "backbone": [
        dict(prefix="timm:", resolver="adaptbench.backbones.families.timm:timm_member",
             lister="adaptbench.backbones.families.timm_names:list_timm_family",
             member_check="adaptbench.backbones.families.timm:check_timm_name",
             weights_check="adaptbench.backbones.families.timm:check_timm_family_weights",
             description="any timm ViT by name: timm:<name>, e.g. timm:vit_base_patch16_224.augreg_in21k"),
        dict(prefix="clip:", resolver="adaptbench.backbones.families.clip:clip_member",
             lister="adaptbench.backbones.families.clip_names:list_clip_family",
             member_check="adaptbench.backbones.families.clip_names:check_clip_member",
             weights_check="adaptbench.backbones.families.clip:check_clip_weights",
             description="an open_clip image tower: clip:<model>/<pretrained tag or local file>, e.g. clip:ViT-B-16/openai"),
        dict(prefix="sam:", resolver="adaptbench.backbones.families.sam:sam_member",
             lister="adaptbench.backbones.families.sam_names:list_sam_family",
             weights_check="adaptbench.backbones.families.sam:check_sam_weights",
             description="a segment-anything image encoder: sam:vit_b|vit_l|vit_h (checkpoint via --weights)"),
    ],
}


def families(kind: str) -> list[dict[str, str]]:
    """The fields of each name family of one registry kind."""
    found = [dict(family) for family in _FAMILIES.get(kind, [])]
    for family in found:
        if family["prefix"] == "peft:":
            family["source"] = _peft_methods.peft_version()
    return found


def builtins(kind: str) -> dict[str, tuple[object, str]]:
    """name -> (lazy target or object, description) for one registry kind."""
    if kind == "task":
        return {spec.name: (spec, spec.description) for spec in _tasks.builtin_task_specs()}
    return dict(_scan(kind))


@functools.lru_cache(maxsize=None)
def _scan(kind: str) -> tuple[tuple[str, tuple[str, str]], ...]:
    folder, function, target_index = _SOURCES[kind]
    found = []
    for path in sorted((PACKAGE / folder).glob("*.py")):
        module = "adaptbench." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = _docstrings(tree)
        for call in _top_level_calls(tree, function):
            name = ast.literal_eval(call.args[0])
            target = call.args[target_index].id
            description = _keyword(call, "description") or docstrings.get(target, "")
            found.append((name, (f"{module}:{target}", description)))
    return tuple(found)


def _top_level_calls(tree: ast.Module, function: str) -> list[ast.Call]:
    return [node.value for node in tree.body
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name) and node.value.func.id == function]


def _docstrings(tree: ast.Module) -> dict[str, str]:
    """First docstring line of every top-level class and function."""
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            doc = ast.get_docstring(node) or ""
            found[node.name] = doc.strip().splitlines()[0].rstrip(".") if doc.strip() else ""
    return found


def _keyword(call: ast.Call, name: str) -> str:
    for keyword in call.keywords:
        if keyword.arg == name:
            return ast.literal_eval(keyword.value)
    return ""
