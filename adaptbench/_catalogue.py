"""The built-in names, as lazy ``"module:attr"`` entries with one-line descriptions.

Listing names (``adaptbench ls``) reads only this file: nothing here imports torch.
The module named by each entry registers the real object at its bottom, which fills in
the lazy entry (see ``adaptbench.registry``).
"""

from __future__ import annotations

from .tasks import catalog as _tasks

ADAPTERS = {
    "linear": ("adaptbench.adapters.linear:LinearProbe", "Linear probe: frozen backbone, train the task head only"),
    "full": ("adaptbench.adapters.full:FullFineTune", "Full fine-tuning: every backbone parameter is trained"),
    "bitfit": ("adaptbench.adapters.bitfit:BitFit", "BitFit (Ben Zaken et al. 2022): train only the bias terms"),
    "ln": ("adaptbench.adapters.layernorm:LayerNormTuning", "LayerNorm tuning: train only the LayerNorm scales and shifts"),
    "lora": ("adaptbench.adapters.lora:LoRA", "LoRA (Hu et al. 2022): W + (alpha/r) B A on q/k/v/out/mlp sites"),
    "ssf": ("adaptbench.adapters.ssf:SSF", "SSF (Lian et al. 2022): scale-and-shift of features, merged into the linears"),
}

BACKBONES = {
    "vit_tiny_test": ("adaptbench.backbones.timm_vit:vit_tiny_test", "Tiny random-init timm ViT for tests (d=32, 2 blocks, class token)"),
    "vit_tiny_test_reg": ("adaptbench.backbones.timm_vit:vit_tiny_test_reg", "Tiny random-init timm ViT for tests (d=32, 2 blocks, 2 register tokens, LayerScale, no qkv bias)"),
    "vit_micro": ("adaptbench.backbones.timm_vit:vit_micro", "Micro ViT (d=96, 4 blocks, 32x32 input, patch 4) for the embedded micro tasks"),
    "timm": ("adaptbench.backbones.timm_vit:timm_vit", "Any timm ViT by name: --backbone timm:<name>, e.g. timm:vit_base_patch16_224.augreg_in21k"),
}



def builtins(kind: str) -> dict[str, tuple[object, str]]:
    """name -> (lazy target or object, description) for one registry kind."""
    if kind == "adapter":
        return ADAPTERS
    if kind == "backbone":
        return BACKBONES
    return {spec.name: (spec, spec.description) for spec in _tasks.builtin_task_specs()}
