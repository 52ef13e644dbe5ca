"""The ``peft:`` adapter family: which HF PEFT methods the installed PEFT offers, without
importing it.

``adaptbench ls adapters`` must stay cheap (no torch), and importing peft imports torch and
transformers, so the method list is read from the installed ``peft/utils/peft_types.py``
(its ``PeftType`` enum) with ``ast``. The bridge itself is ``adaptbench.adapters.peft_bridge``.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path

from .errors import AdaptbenchError

PEFT_INSTALL_HINT = 'HF PEFT is not installed; install it with: pip install "adaptbench[peft]"'

# Methods adaptbench has checked on its anatomy (flags in adapters/peft_bridge.py:METHOD_FACTS;
# tests: test_adapter_conformance.py and test_peft_bridge.py). Descriptions cite the paper
# where PEFT's docs name it; the others name PEFT's method only.
PEFT_METHODS = {
    "lora": "LoRA (Hu et al. 2022) via HF PEFT: W + (alpha/r) B A",
    "loha": "LoHa (Hyeon-Woo et al. 2022) via HF PEFT: Hadamard product of two low-rank updates",
    "lokr": "LoKr (Yeh et al. 2024) via HF PEFT: Kronecker product of a small and a low-rank factor",
    "oft": "OFT (Qiu et al. 2023) via HF PEFT: block-diagonal orthogonal rotation of W",
    "boft": "BOFT (Liu et al. 2024) via HF PEFT: butterfly-factorised orthogonal rotation of W",
    "vera": "VeRA (Kopiczko et al. 2024) via HF PEFT: scaling vectors on shared frozen random A, B",
    "fourierft": "FourierFT (Gao et al. 2024) via HF PEFT: W update from n trained spectral coefficients",
    "hra": "HRA (Yuan et al. 2024) via HF PEFT: W times r Householder reflections",
    "ia3": "(IA)^3 (Liu et al. 2022) via HF PEFT: learned rescaling of qkv outputs and the MLP hidden",
    "vblora": "VB-LoRA (Li et al. 2024) via HF PEFT: LoRA factors composed from a shared vector bank",
    "randlora": "RandLoRA (Albert et al. 2025) via HF PEFT: full-rank update from scaled random bases",
    "shira": "SHiRA (Bhardwaj et al. 2024) via HF PEFT: sparse high-rank update on a fixed mask",
    "c3a": "C3A (Chen et al. 2025) via HF PEFT: block-circular convolution update",
    "road": "RoAd (Liao et al. 2025) via HF PEFT: learned 2D rotations of output pairs",
    "waveft": "WaveFT (Bilican et al. 2025) via HF PEFT: sparse trained wavelet coefficients of the update",
    "miss": "MiSS (Kang 2025) via HF PEFT: shard-shared update of W",
    "hira": "HiRA (Huang et al. 2025) via HF PEFT: W0 * (A B), a Hadamard high-rank update",
    "delora": "DeLoRA (Bini et al. 2025) via HF PEFT: normalised, scaled low-rank update",
    "gralora": "GraLoRA (Jung et al. 2025) via HF PEFT: LoRA split into granular sub-blocks",
    "glora": "GLoRA (Chavan et al. 2023) via HF PEFT: generalised weight and bias scaling and shifts",
    "lily": "Lily (Zhong et al. 2024) via HF PEFT: low-rank interconnected adapters with routed B experts",
    "adalora": "AdaLoRA (Zhang et al. 2023) via HF PEFT: SVD-form update B (A * E) whose rank budget is "
               "reallocated by importance during training",
    **{m: f"HF PEFT's {m!r} method on linear sites" for m in (
        "adamss", "beft", "deft", "frod", "osf", "peanut", "psoft", "pvera", "supertuning", "tinylora", "unilora")},
}

# Members of PEFT's PeftType that cannot act on a vision backbone's linear sites, and why.
_PROMPT_LEARNING = "prompt learning on a language model's token inputs; vision prompts: vpt_shallow, vpt_deep"
PEFT_REFUSED = {
    "prompt_tuning": _PROMPT_LEARNING,
    "multitask_prompt_tuning": _PROMPT_LEARNING,
    "p_tuning": _PROMPT_LEARNING,
    "prefix_tuning": _PROMPT_LEARNING,
    "cpt": _PROMPT_LEARNING,
    "cartridge": "a trained KV-cache prefix of a language model; vision prompts: vpt_deep",
    "adaption_prompt": "LLaMA-Adapter gates prompts inside a LLaMA attention module, not a linear site",
    "trainable_tokens": "trains rows of a token-embedding matrix; a ViT has no vocabulary",
    "ln_tuning": "targets LayerNorms, not linear sites; use the native 'ln' adapter",
    "xlora": "mixes LoRA adapters loaded from checkpoints through a transformers model's classifier",
    "poly": "routes between LoRA skills by per-example task ids, which adaptbench's tasks do not pass",
    "shadow": "a parallel shadow network riding a transformers decoder loop (needs model.config)",
}


def installed_peft_methods() -> tuple[dict[str, str], dict[str, str]]:
    """(offered, refused) members of the ``peft:`` family for the installed PEFT.

    Read from the ``PeftType`` enum of the installed ``peft/utils/peft_types.py`` with
    ``ast``, never by importing peft (that imports torch and transformers: seconds).
    Methods of a newer PEFT that adaptbench has not checked are offered, marked so.
    """
    offered, refused = {}, {}
    for member in _peft_type_members():
        if member in PEFT_REFUSED:
            refused[member] = PEFT_REFUSED[member]
        else:
            offered[member] = PEFT_METHODS.get(member, f"HF PEFT method {member!r} on linear sites (not checked by adaptbench)")
    return offered, refused


@functools.cache
def _peft_type_members() -> tuple[str, ...]:
    path = _peft_types_file()
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError) as err:
        raise AdaptbenchError(f"cannot read HF PEFT's method list from {path}: {err}") from None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "PeftType":
            return tuple(target.id.lower() for stmt in node.body if isinstance(stmt, ast.Assign)
                         for target in stmt.targets if isinstance(target, ast.Name))
    raise AdaptbenchError(f"cannot read HF PEFT's method list: no PeftType enum in {path}")


def _peft_types_file() -> Path:
    try:  # find_spec of a top-level name locates the package without importing it
        spec = importlib.util.find_spec("peft")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise AdaptbenchError(PEFT_INSTALL_HINT)
    return Path(next(iter(spec.submodule_search_locations))) / "utils" / "peft_types.py"


def peft_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        _peft_types_file()  # installed and importable, not only its metadata left behind
        return f"HF PEFT {version('peft')}"
    except (AdaptbenchError, PackageNotFoundError):
        return "HF PEFT"
