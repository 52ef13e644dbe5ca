"""The sam: family: canonical blocks keep SAM's windows and maths; weights come from files only."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial

import pytest
import torch
from segment_anything.modeling.image_encoder import Block, ImageEncoderViT
from torch import nn

from adaptbench.backbones import check_backbone_weights, load_backbone
from adaptbench.backbones.families import sam_names
from adaptbench.backbones.families.sam import SamViT, WindowedAttention, build_image_encoder, sam_vit
from adaptbench.errors import AdaptbenchError
from adaptbench.registry import BACKBONES

# sam_tiny_test's configuration, spelled out here so that the reference does not use sam.py
TINY = dict(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2.0, window_size=3,
            global_attn_indexes=(1, 3), out_chans=16, use_rel_pos=True, qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6))


def plain_sam(seed: int = 0, perturb: bool = False) -> ImageEncoderViT:
    """segment-anything's own encoder with the tiny config, seeded; ``perturb`` also fills the
    zero-initialised positions, relative positions and norms, so that their paths count."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = ImageEncoderViT(**TINY).eval()
        if perturb:
            with torch.no_grad():
                for name, param in encoder.named_parameters():
                    if "pos" in name or "norm" in name or "neck.1" in name or "neck.3" in name:
                        param.add_(torch.randn_like(param) * 0.5)
    return encoder


def images(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(7))


def save_full_sam(tmp_path, encoder: nn.Module, name: str = "sam_tiny.pth"):
    """A checkpoint shaped like the official ones: image_encoder.* plus the other parts."""
    state = {f"image_encoder.{k}": v.clone() for k, v in encoder.state_dict().items()}
    state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.randn(2, 128)
    state["mask_decoder.iou_token.weight"] = torch.randn(1, 256)
    path = tmp_path / name
    torch.save(state, path)
    return path


# -- the maths ------------------------------------------------------------------------------
def test_random_weights_compute_what_the_image_encoder_computes():
    backbone = load_backbone("sam_tiny_test").eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(backbone.forward_dense(x).final, plain_sam()(x), atol=1e-5, rtol=0)


def test_checkpoint_with_every_parameter_nonzero_computes_the_same(tmp_path):
    reference = plain_sam(seed=3, perturb=True)
    path = save_full_sam(tmp_path, reference)
    backbone = load_backbone("sam_tiny_test", weights=str(path)).eval()
    x = images()
    with torch.no_grad():
        expected = reference(x)
        dense = backbone.forward_dense(x, blocks=[-1])
        torch.testing.assert_close(dense.final, expected, atol=1e-5, rtol=0)
        assert dense.blocks[-1].shape == (2, 32, 8, 8)
        torch.testing.assert_close(backbone(x), expected.mean(dim=(2, 3)), atol=1e-5, rtol=0)
        features = backbone.forward_features(x)
    assert features.shape == (2, 8, 8, 16)  # the neck's output, channels last
    assert backbone.weights_source == f"file:{path}"


def test_canonicalising_in_place_keeps_the_output_and_copies_no_weight():
    encoder = plain_sam(seed=1, perturb=True)
    x = images()
    with torch.no_grad():
        before = encoder(x)
    qkv, lin1 = encoder.blocks[0].attn.qkv, encoder.blocks[2].mlp.lin1
    pointers = {p.data_ptr() for p in encoder.parameters()}
    backbone = SamViT("sam_tiny", encoder, "random:1")
    backbone.seal_weights()
    assert backbone.site("qkv", 0) is qkv and backbone.site("mlp_in", 2) is lin1
    assert backbone.site("qkv", 0) is backbone.model.blocks[0].branches.attn.core.attn.qkv
    assert {p.data_ptr() for p in backbone.parameters()} == pointers
    with torch.no_grad():
        torch.testing.assert_close(backbone.forward_dense(x).final, before, atol=1e-5, rtol=0)
        # the library's own forward still runs (over the canonical blocks) and agrees
        torch.testing.assert_close(backbone.model(x), before, atol=1e-5, rtol=0)


def test_state_dict_holds_each_tensor_once():
    backbone = load_backbone("sam_tiny_test")
    state = backbone.state_dict()
    assert len({t.data_ptr() for t in state.values()}) == len(state) == len(plain_sam().state_dict())
    assert all(key.startswith("model.") for key in state)


def test_other_image_sizes_resample_the_positions():
    backbone = load_backbone("sam_tiny_test").eval()
    with torch.no_grad():
        dense = backbone.forward_dense(images(size=40)).final
    assert dense.shape == (2, 16, 10, 10) and torch.isfinite(dense).all()


# -- windows and sites ----------------------------------------------------------------------
def _record_input(module: nn.Module, seen: list, backbone=None):
    def hook(_, args):
        geometry = backbone.geometry.current if backbone is not None else None
        seen.append((tuple(args[0].shape), geometry))

    return module.register_forward_pre_hook(hook)


def test_windowed_blocks_keep_their_windows():
    backbone = load_backbone("sam_tiny_test").eval()
    seen = {name: [] for name in ("qkv0", "out0", "qkv1", "attn0", "mlp0", "block3")}
    _record_input(backbone.site("qkv", 0), seen["qkv0"], backbone)
    _record_input(backbone.site("attn_out", 0), seen["out0"])
    _record_input(backbone.site("qkv", 1), seen["qkv1"], backbone)
    _record_input(backbone.site("attn", 0), seen["attn0"], backbone)
    _record_input(backbone.site("mlp", 0), seen["mlp0"])
    _record_input(backbone.site("block", 3), seen["block3"])
    with torch.no_grad():
        backbone(images())
    # 8x8 grid padded to 9x9: 3x3 windows of 3x3 tokens per image
    shape, geometry = seen["qkv0"][0]
    assert shape == (2 * 9, 3, 3, 32) and geometry.grid == (3, 3) and geometry.batch == 18
    assert seen["out0"][0][0] == (2 * 9, 3, 3, 32)
    shape, geometry = seen["qkv1"][0]  # block 1 is global
    assert shape == (2, 8, 8, 32) and geometry.grid == (8, 8) and geometry.batch == 2
    shape, geometry = seen["attn0"][0]
    assert shape == (2, 8, 8, 32) and geometry.grid == (8, 8) and geometry.layout == "BHWC"
    assert seen["mlp0"][0][0] == seen["block3"][0][0] == (2, 8, 8, 32)
    windows = [backbone.model.blocks[i].branches.attn.core for i in range(4)]
    assert all(isinstance(w, WindowedAttention) for w in windows)
    assert [w.window_size for w in windows] == [3, 0, 3, 0]


def test_anatomy_and_sites():
    backbone = load_backbone("sam_tiny_test")
    anatomy = backbone.anatomy
    assert (anatomy.embed_dim, anatomy.num_blocks, anatomy.grid, anatomy.patch_size) == (32, 4, (8, 8), (4, 4))
    assert (anatomy.mlp_dim, anatomy.feature_dim, anatomy.num_prefix_tokens) == (64, 16, 0)
    assert anatomy.token_layout == "BHWC" and not anatomy.has_class_token and anatomy.family == "sam"
    assert anatomy.global_sites == ("patch_embed", "neck")
    assert anatomy.extra == {"window_size": 3, "global_blocks": (1, 3)}
    assert backbone.default_pool == "mean"
    assert backbone(images()).shape == (2, 16)
    for site in anatomy.block_sites:
        assert len(list(backbone.iter_sites(site))) == 4
    assert backbone.site("qkv", 1).out_features == 96
    assert backbone.site("norm2", 3) is backbone.model.blocks[3].branches.mlp.norm
    assert backbone.site("patch_embed") is backbone.model.patch_embed
    assert backbone.site("neck") is backbone.model.neck
    for site in ("final_norm", "tokens"):
        with pytest.raises(AdaptbenchError, match="not part of this backbone"):
            backbone.site(site)
    config = backbone.data_config
    assert config.input_size == (32, 32) and config.interpolation == "bilinear"
    assert config.mean == pytest.approx((0.485, 0.456, 0.406)) and config.std == pytest.approx((0.229, 0.224, 0.225))
    assert not any(p.requires_grad for p in backbone.parameters())


def test_vit_b_anatomy_follows_the_official_config():
    with torch.device("meta"):  # the layout only: no memory, no init
        encoder = build_image_encoder(sam_names.SAM_VARIANTS["vit_b"].encoder_config())
    anatomy = SamViT("sam:vit_b", encoder, "random:0").anatomy
    assert (anatomy.embed_dim, anatomy.num_blocks, anatomy.grid, anatomy.patch_size) == (768, 12, (64, 64), (16, 16))
    assert (anatomy.mlp_dim, anatomy.feature_dim) == (3072, 256)
    assert anatomy.extra == {"window_size": 14, "global_blocks": (2, 5, 8, 11)}
    assert encoder.blocks[0].branches.attn.norm.eps == 1e-6


def test_other_block_classes_are_refused():
    class MyBlock(Block):
        pass

    encoder = plain_sam()
    encoder.blocks[1].__class__ = MyBlock
    with pytest.raises(AdaptbenchError, match=r"block 1 is a .*MyBlock.*not supported"):
        SamViT("odd", encoder, "random:0")
    with pytest.raises(AdaptbenchError, match="not a segment-anything ImageEncoderViT"):
        SamViT("odd", nn.Linear(2, 2), "random:0")


# -- weights --------------------------------------------------------------------------------
def test_random_weights_are_reproducible():
    a, b, c = (load_backbone("sam_tiny_test"), load_backbone("sam_tiny_test", weights="random:0"),
               load_backbone("sam_tiny_test", weights="random:1"))
    assert a.weights_id == b.weights_id != c.weights_id
    assert a.weights_source == "random:0" and c.weights_source == "random:1"
    with pytest.raises(AdaptbenchError, match="random:<int seed>"):
        load_backbone("sam_tiny_test", weights="random:x")


def test_bare_encoder_state_dict_loads_through_sam_vit(tmp_path):
    reference = plain_sam(seed=4, perturb=True)
    path = tmp_path / "encoder.pth"
    torch.save(reference.state_dict(), path)
    config = {k: v for k, v in TINY.items() if k != "norm_layer"}
    backbone = sam_vit("vit_b", weights=str(path), display_name="tiny", **config).eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(backbone.forward_dense(x).final, reference(x), atol=1e-5, rtol=0)
    assert backbone.name == "tiny" and not any(p.is_meta for p in backbone.parameters())


def test_checkpoint_errors_are_one_line_naming_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(AdaptbenchError) as err:
        load_backbone("sam_tiny_test", weights=str(corrupt))
    assert str(corrupt) in err.value.message and "\n" not in err.value.message

    state = plain_sam().state_dict()
    state.pop("neck.0.weight")
    state["extra.weight"] = torch.zeros(1)
    partial_file = tmp_path / "partial.pth"
    torch.save(state, partial_file)
    with pytest.raises(AdaptbenchError, match=r"partial\.pth.*missing keys \(neck\.0\.weight\).*unexpected keys"):
        load_backbone("sam_tiny_test", weights=str(partial_file))

    wider = tmp_path / "wider.pth"
    torch.save(plain_sam().state_dict(), wider)
    with pytest.raises(AdaptbenchError) as err:
        load_backbone("sam_tiny_test", weights=str(wider), embed_dim=48)
    assert "wider.pth" in err.value.message and "size mismatch" in err.value.message
    assert "\n" not in err.value.message

    with pytest.raises(AdaptbenchError, match="does not exist"):
        load_backbone("sam_tiny_test", weights=str(tmp_path / "absent.pth"))


@pytest.fixture
def nothing_built(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an image encoder was built")

    monkeypatch.setattr(ImageEncoderViT, "__init__", refuse)


@pytest.mark.parametrize("weights", [None, "pretrained"])
def test_vit_b_without_a_checkpoint_fails_at_once(nothing_built, weights):
    with pytest.raises(AdaptbenchError, match=r"sam_vit_b_01ec64\.pth.*--weights /path/to/sam_vit_b_01ec64\.pth"):
        load_backbone("sam:vit_b", weights=weights)


def test_check_weights_never_builds(nothing_built, tmp_path):
    assert check_backbone_weights("sam:vit_b", "random") == "random:0"
    assert check_backbone_weights("sam:vit_l", "random:5") == "random:5"
    path = tmp_path / "sam_vit_h_4b8939.pth"
    path.write_bytes(b"")
    assert check_backbone_weights("sam:vit_h", str(path)) == f"file:{path}"
    with pytest.raises(AdaptbenchError, match=r"sam_vit_b_01ec64\.pth"):
        check_backbone_weights("sam:vit_b")
    with pytest.raises(AdaptbenchError, match=r"does not exist.*sam_vit_l_0b3195\.pth"):
        check_backbone_weights("sam:vit_l", str(tmp_path / "absent.pth"))


# -- names ----------------------------------------------------------------------------------
def test_family_lists_the_official_encoders():
    family = BACKBONES.family_of("sam:vit_b")
    offered, refused = family.listing()
    assert sorted(offered) == ["vit_b", "vit_h", "vit_l"] and refused == {}
    assert "sam_vit_h_4b8939.pth" in offered["vit_h"] and "width 1280" in offered["vit_h"]
    with pytest.raises(AdaptbenchError, match="unknown backbone 'sam:vit_x'"):
        BACKBONES.require("sam:vit_x")
    assert "sam_tiny_test" in BACKBONES.names()


def test_missing_segment_anything_says_how_to_install(monkeypatch):
    real = sam_names.importlib.util.find_spec
    monkeypatch.setattr(sam_names.importlib.util, "find_spec",
                        lambda name, *a: None if name == "segment_anything" else real(name, *a))
    with pytest.raises(AdaptbenchError, match=r'pip install "adaptbench\[sam\]"'):
        sam_names.list_sam_family()


_HEAVY_CHECK = ("heavy = [m for m in ('torch', 'segment_anything') if m in sys.modules]; "
                "assert not heavy, 'imported ' + ', '.join(heavy)")
# the backbone packages as bare namespaces (their __init__ not run): what the sam: lister costs
_BARE_PACKAGES = ("import sys, types, pathlib, adaptbench; "
                  "root = pathlib.Path(adaptbench.__file__).parent / 'backbones'; "
                  "[sys.modules.setdefault(n, types.ModuleType(n)).__setattr__('__path__', [str(p)]) "
                  "for n, p in (('adaptbench.backbones', root), ('adaptbench.backbones.families', root / 'families'))]; ")


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADAPTBENCH_NO_PLUGINS": "1"}  # this family only, not installed plugins
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_the_sam_lister_imports_neither_torch_nor_segment_anything():
    result = _python(_BARE_PACKAGES + "import sys; from adaptbench.registry import BACKBONES; "
                     "BACKBONES.require('sam:vit_b'); BACKBONES.members(BACKBONES.family_of('sam:vit_b')); "
                     + _HEAVY_CHECK)
    assert result.returncode == 0, result.stderr


def test_requiring_a_member_imports_neither_torch_nor_segment_anything():
    result = _python("import sys; from adaptbench.registry import BACKBONES; BACKBONES.require('sam:vit_b'); "
                     + _HEAVY_CHECK)
    if result.returncode and _python("import sys, adaptbench.backbones; " + _HEAVY_CHECK).returncode:
        pytest.xfail("adaptbench/backbones/__init__.py imports torch (its eager re-exports), so no lister "
                     "under adaptbench.backbones.families can avoid it; the sam: lister alone does (see above)")
    assert result.returncode == 0, result.stderr
