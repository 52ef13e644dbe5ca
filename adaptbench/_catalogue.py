"""The built-in names, as lazy ``"module:attr"`` entries with one-line descriptions.

Listing names (``adaptbench ls``) reads only this file: nothing here imports torch.
The module named by each entry registers the real object at its bottom, which fills in
the lazy entry (see ``adaptbench.registry``).
"""

from __future__ import annotations

from . import _peft_methods
from .tasks import catalog as _tasks

ADAPTERS = {
    "linear": ("adaptbench.adapters.linear:LinearProbe", "Linear probe: frozen backbone, train the task head only"),
    "full": ("adaptbench.adapters.full:FullFineTune", "Full fine-tuning: every backbone parameter is trained"),
    "bitfit": ("adaptbench.adapters.bitfit:BitFit", "BitFit (Ben Zaken et al. 2022): train only the bias terms"),
    "ln": ("adaptbench.adapters.layernorm:LayerNormTuning", "LayerNorm tuning: train only the LayerNorm scales and shifts"),
    "lora": ("adaptbench.adapters.lora:LoRA", "LoRA (Hu et al. 2022): W + (alpha/r) B A on q/k/v/out/mlp sites"),
    "ssf": ("adaptbench.adapters.ssf:SSF", "SSF (Lian et al. 2022): scale-and-shift of features, merged into the linears"),
    "adaptformer": ("adaptbench.adapters.adaptformer:AdaptFormer", "AdaptFormer (Chen et al. 2022): scaled bottleneck parallel to the MLP"),
    "bi_adaptformer": ("adaptbench.adapters.bi_adaptformer:BiAdaptFormer", "Bi-AdaptFormer (Jie et al. 2023): 1-bit AdaptFormer, stored as packed bits"),
    "convpass": ("adaptbench.adapters.convpass:Convpass", "Convpass (Jie & Deng 2022): 3x3 convolutional bypasses beside attention and MLP"),
    "dd_adapter": ("adaptbench.adapters.dd_adapter:DDAdapter", "DD adapter (DD-SAM2): multi-dilation depthwise conv bottleneck on the patch grid"),
    "spatial_lora": ("adaptbench.adapters.spatial_lora:SpatialLoRA", "Spatial LoRA (ToonComposer): LoRA on spatial attention only, per-site ranks"),
    "dora": ("adaptbench.adapters.dora:DoRA", "DoRA (Liu et al. 2024): magnitude times direction of W + (alpha/r) B A"),
    "mask_tuning": ("adaptbench.adapters.mask_tuning:MaskTuning", "Regularized Mask Tuning (Zheng et al. 2023): binary masks on frozen weights"),
    "vpt_shallow": ("adaptbench.adapters.vpt:VPTShallow", "VPT-Shallow (Jia et al. 2022): learnable prompt tokens before the first block"),
    "vpt_deep": ("adaptbench.adapters.vpt:VPTDeep", "VPT-Deep (Jia et al. 2022): new learnable prompt tokens before every block"),
    "adapter": ("adaptbench.adapters.bottleneck_adapter:BottleneckAdapter", "Bottleneck adapter (Houlsby et al. 2019 / Pfeiffer et al. 2021) after attention and/or MLP"),
    "fact": ("adaptbench.adapters.fact:FacT", "FacT-TT (Jie & Deng 2023): weight updates factorised with U, V shared across blocks"),
    "repadapter": ("adaptbench.adapters.repadapter:RepAdapter", "RepAdapter (Luo et al. 2023): linear adapter merged into the next linear"),
    "mosa": ("adaptbench.adapters.mosa:MoSA", "MoSA (Zhang et al. 2023): adapter split into sparse modules, one active per step"),
}

BACKBONES = {
    "vit_tiny_test": ("adaptbench.backbones.timm_vit:vit_tiny_test", "Tiny random-init timm ViT for tests (d=32, 2 blocks, class token)"),
    "vit_tiny_test_reg": ("adaptbench.backbones.timm_vit:vit_tiny_test_reg", "Tiny random-init timm ViT for tests (d=32, 2 blocks, 2 register tokens, LayerScale, no qkv bias)"),
    "vit_micro": ("adaptbench.backbones.timm_vit:vit_micro", "Micro ViT (d=96, 4 blocks, 32x32, patch 4) pretrained on procedural glyphs for the micro tasks"),
    "timm": ("adaptbench.backbones.timm_vit:timm_vit", "Any timm ViT by name: --backbone timm:<name>, e.g. timm:vit_base_patch16_224.augreg_in21k"),
}


def families(kind: str) -> list:
    """Name families (``peft:<method>``) of one registry kind."""
    from .registry import Family

    if kind != "adapter":
        return []
    return [Family(
        prefix="peft:",
        resolver="adaptbench.adapters.peft_bridge:bridged_adapter",
        lister="adaptbench._peft_methods:installed_peft_methods",
        description="any HF PEFT method on the anatomy's linear sites: peft:<method>",
        source=_peft_methods.peft_version(),
    )]


def builtins(kind: str) -> dict[str, tuple[object, str]]:
    """name -> (lazy target or object, description) for one registry kind."""
    if kind == "adapter":
        return ADAPTERS
    if kind == "backbone":
        return BACKBONES
    return {spec.name: (spec, spec.description) for spec in _tasks.builtin_task_specs()}
