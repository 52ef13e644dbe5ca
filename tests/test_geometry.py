"""Token geometry: measured from the patch embedding at every forward, published on the backbone,
updated by prompt wrappers, read by grid adapters and dense features (never guessed from shapes).

Convpass and the DD adapter are checked block by block, during ordinary backbone forwards at
several input sizes of a ``dynamic_img_size`` tiny ViT, against hand-built references written
with plain tensor ops (``helpers.convpass_by_hand`` / ``helpers.dd_by_hand``).

Why these checks fail on the old behaviour (grid frozen at attach time = the anatomy's 4x4 at
the configured 32x32 input; prefix count inferred as N - H*W): at 48x48 the patch embedding
gives a 6x6 grid, so N = 1 + 36 = 37 tokens. The old wrapper would have taken the *last 16*
tokens as a 4x4 grid and the 21 tokens before them (the class token and the first 20 patches)
as 1x1 "prefix" images: neighbouring patches would be mixed across wrong rows and most patches
would see only the centre tap. At 40x24 (a 5x3 grid, N = 16) it would even have taken the class
token for a patch (prefix 16 - 16 = 0). Each size-changing case below also asserts that its
result differs from that old guess, so the reference really tells the two apart.
"""

from __future__ import annotations

import re

import pytest
import torch

from adaptbench.adapters import build_adapter
from adaptbench.backbones import TokenGeometry, load_backbone
from adaptbench.backbones.anatomy import TransformerBlock
from adaptbench.backbones.geometry import GeometryContext, grid_to_tokens, tokens_to_grid
from adaptbench.errors import AdaptbenchError
from helpers import convpass_by_hand, dd_by_hand, declared_under, images, published, randomise

WIDTH = 32
P = 5  # VPT's default number of prompt tokens

# (backbone, input size, patch grid it gives): patch 8, dynamic_img_size=True
SIZES = [
    ("vit_tiny_test", 32, (4, 4)),
    ("vit_tiny_test", 48, (6, 6)),
    ("vit_tiny_test", (40, 24), (5, 3)),  # not square: rows and columns must not be swapped
    ("vit_tiny_test_reg", 32, (4, 4)),  # 2 register tokens, no class token
    ("vit_tiny_test_reg", 48, (6, 6)),
]


def tiny(name: str, **kwargs):
    torch.manual_seed(0)
    return load_backbone(name, dynamic_img_size=True, **kwargs)


def canonical(block) -> TransformerBlock:
    """The canonical block under any block-site wrappers (VPT's PromptedBlock, the DD adapter)."""
    while not isinstance(block, TransformerBlock):
        block = block.base_layer
    return block


def record_calls(modules):
    """Hooks that record (input, output) of each module's calls; returns (records, handles)."""
    records, handles = [], []
    for index, module in enumerate(modules):
        handles.append(module.register_forward_hook(
            lambda m, args, out, i=index: records.append((i, args[0].detach(), out.detach()))))
    return records, handles


def convpass_block_by_hand(block, x, adapter, index, scale, prefix, grid):
    """The paper's block: X' = X + MHSA(LN1 X) + s Convpass(LN1 X), X" = X' + MLP(LN2 X') + s Convpass(LN2 X'),
    with the frozen branches run from the very modules the adapter wrapped."""
    block = canonical(block)
    attn, mlp = block.attn.base_layer, block.mlp.base_layer
    x1 = x + attn(x) + scale * convpass_by_hand(
        attn.norm(x), declared_under(adapter, f"blocks.{index}.attn."), prefix, grid)
    return x1 + mlp(x1) + scale * convpass_by_hand(
        mlp.norm(x1), declared_under(adapter, f"blocks.{index}.mlp."), prefix, grid)


def frozen_block(block, x):
    block = canonical(block)
    x = x + block.attn.base_layer(x)
    return x + block.mlp.base_layer(x)


def old_guess(backbone, tokens: int) -> tuple[int, tuple[int, int]]:
    """What the old wrappers assumed: the attach-time grid and prefix = N - H*W."""
    height, width = backbone.anatomy.grid
    return tokens - height * width, (height, width)


# -- Convpass and the DD adapter at several input sizes -----------------------------------------
def block_calls(backbone_name: str, adapter_name: str, size, grid):
    """One eval forward of a tiny backbone with ``adapter_name`` (randomised, scale 0.5) at
    ``size``: (backbone, adapter, prefix, [(block index, input, output)]), inputs checked to
    hold the ``grid`` of that forward."""
    backbone = tiny(backbone_name)
    prefix = backbone.anatomy.num_prefix_tokens
    adapter = build_adapter(adapter_name, backbone, {"scale": 0.5})
    randomise(adapter)
    backbone.eval()
    records, _ = record_calls(backbone.blocks)
    with torch.no_grad():
        backbone(images(size=size))
    assert [index for index, _, _ in records] == [0, 1]
    for _, x, _ in records:
        assert x.shape == (2, prefix + grid[0] * grid[1], WIDTH)
    return backbone, adapter, prefix, records


@pytest.mark.parametrize("backbone_name,size,grid", SIZES)
def test_convpass_follows_the_grid_of_each_forward(backbone_name, size, grid):
    backbone, adapter, prefix, records = block_calls(backbone_name, "convpass", size, grid)
    with torch.no_grad():
        for index, x, got in records:
            block = backbone.blocks[index]
            expected = convpass_block_by_hand(block, x, adapter, index, 0.5, prefix, grid)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
            assert (got - frozen_block(block, x)).abs().max() > 1e-2  # the bypasses really act
            if grid != backbone.anatomy.grid:  # the old guess gives something else here
                wrong = convpass_block_by_hand(block, x, adapter, index, 0.5, *old_guess(backbone, x.shape[1]))
                assert (got - wrong).abs().max() > 1e-3
    assert not backbone.geometry.active  # the forward's geometry is gone with it


@pytest.mark.parametrize("backbone_name,size,grid", SIZES)
def test_dd_adapter_follows_the_grid_of_each_forward(backbone_name, size, grid):
    backbone, adapter, prefix, records = block_calls(backbone_name, "dd_adapter", size, grid)
    with torch.no_grad():
        for index, x, got in records:
            y = backbone.blocks[index].base_layer(x)
            params = declared_under(adapter, f"blocks.{index}.block.")
            expected = y + 0.5 * dd_by_hand(y, params, prefix, grid=grid)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
            assert (got - y).abs().max() > 1e-2  # the adapter really acts
            if grid != backbone.anatomy.grid:
                wrong_prefix, wrong_grid = old_guess(backbone, x.shape[1])
                wrong = y + 0.5 * dd_by_hand(y, params, wrong_prefix, grid=wrong_grid)
                assert (got - wrong).abs().max() > 1e-3


# -- composition with prompts -------------------------------------------------------------------
@pytest.mark.parametrize("order", ["vpt_first", "convpass_first"])
@pytest.mark.parametrize("vpt", ["vpt_deep", "vpt_shallow"])
@pytest.mark.parametrize("size,grid", [(32, (4, 4)), (48, (6, 6))])
def test_convpass_with_prompts_treats_them_as_prefix_tokens(vpt, order, size, grid):
    """Inside the blocks the sequence is [cls, P prompts, patches]: the bypass of every block
    (a shallow middle block too, which no VPT wrapper touches) convolves the patch grid only and
    takes each of the 1 + P leading tokens as its own 1x1 image; the prompt wrappers put that
    prefix count on the geometry and take it back off after the last block."""
    backbone = tiny("vit_tiny_test", depth=3)
    names = [vpt, "convpass"] if order == "vpt_first" else ["convpass", vpt]
    adapters = {name: build_adapter(name, backbone, {"scale": 0.5} if name == "convpass" else None)
                for name in names}
    convpass = adapters["convpass"]
    randomise(convpass)
    backbone.eval()
    if vpt == "vpt_shallow":
        assert isinstance(backbone.blocks[1], TransformerBlock)  # the middle block is not wrapped by VPT
    seen_inside, seen_after = [], []
    for block in backbone.blocks:
        canonical(block).register_forward_pre_hook(lambda m, args: seen_inside.append(backbone.geometry.current))
    backbone.blocks[-1].register_forward_hook(lambda m, args, out: seen_after.append(backbone.geometry.current))
    records, _ = record_calls([canonical(block) for block in backbone.blocks])
    with torch.no_grad():
        features = backbone.forward_features(images(size=size))
        assert features.shape == (2, 1 + grid[0] * grid[1], WIDTH)  # no prompt leaves the backbone
        assert [g.prefix for g in seen_inside] == [1 + P] * 3 and {g.grid for g in seen_inside} == {grid}
        assert [g.prefix for g in seen_after] == [1]  # stripped with the prompts
        assert [index for index, _, _ in records] == [0, 1, 2]
        for index, x, got in records:
            assert x.shape[1] == 1 + P + grid[0] * grid[1]
            expected = convpass_block_by_hand(backbone.blocks[index], x, convpass, index, 0.5, 1 + P, grid)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
            assert (got - frozen_block(backbone.blocks[index], x)).abs().max() > 1e-2
            if grid != backbone.anatomy.grid:  # old guess at 48: prefix 1 + 5 + 36 - 16 = 26, 4x4 grid
                wrong = convpass_block_by_hand(backbone.blocks[index], x, convpass, index, 0.5,
                                               *old_guess(backbone, x.shape[1]))
                assert (got - wrong).abs().max() > 1e-3


def test_prompted_blocks_update_the_published_prefix_count():
    """Called directly (inside a published geometry), each prompt wrapper says how many tokens now
    precede the patches: block 0 adds P, a deep middle block replaces P by P, the last strips P."""
    backbone = tiny("vit_tiny_test", depth=3)
    build_adapter("vpt_deep", backbone)
    backbone.eval()
    x = torch.randn(2, 1 + 16, WIDTH)
    with torch.no_grad(), published(backbone, batch=2, grid=(4, 4), prefix=1) as outer:
        counts = [backbone.geometry.current.prefix]
        for block in backbone.blocks:
            x = block(x)
            counts.append(backbone.geometry.current.prefix)
            assert x.shape[1] == backbone.geometry.current.num_tokens
        assert counts == [1, 1 + P, 1 + P, 1]
        assert backbone.geometry.current.grid == (4, 4)
        assert outer.prefix == 1  # TokenGeometry is immutable: an update replaces it on the stack


# -- forward_dense --------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone_name", ["vit_tiny_test", "vit_tiny_test_reg"])
@pytest.mark.parametrize("size,grid", [(32, (4, 4)), (48, (6, 6))])
def test_forward_dense_with_prompts_gives_patch_maps(backbone_name, size, grid):
    backbone = tiny(backbone_name, depth=3)
    prefix = backbone.anatomy.num_prefix_tokens
    build_adapter("vpt_deep", backbone)
    backbone.eval()
    height, width = grid

    def as_map(tokens):
        return tokens.reshape(2, height, width, WIDTH).permute(0, 3, 1, 2)

    records, handles = record_calls(backbone.blocks)
    with torch.no_grad():
        dense = backbone.forward_dense(images(size=size), blocks=(0, 1, -1))
        for handle in handles:
            handle.remove()
        features = backbone.forward_features(images(size=size))
    outputs = {index: out for index, _, out in records}
    assert set(dense.blocks) == {0, 1, -1}  # keyed as asked, negative indices included
    for index in (0, 1):  # inside the prompted stretch: [prefix, P prompts, patches]
        tokens = outputs[index]
        assert tokens.shape == (2, prefix + P + height * width, WIDTH)
        assert dense.blocks[index].shape == (2, WIDTH, height, width)
        torch.testing.assert_close(dense.blocks[index], as_map(tokens[:, prefix + P:]), atol=0, rtol=0)
    # the last block strips its prompts: its map is the patches after the prefix tokens
    assert outputs[2].shape == (2, prefix + height * width, WIDTH)
    torch.testing.assert_close(dense.blocks[-1], as_map(outputs[2][:, prefix:]), atol=0, rtol=0)
    # the final map: the normed patch tokens, neither prefix nor prompt tokens
    assert dense.final.shape == (2, WIDTH, height, width)
    assert features.shape == (2, prefix + height * width, WIDTH)
    torch.testing.assert_close(dense.final, as_map(features[:, prefix:]), atol=0, rtol=0)
    torch.testing.assert_close(dense.final, as_map(backbone.model.norm(outputs[2])[:, prefix:]), atol=0, rtol=0)


def test_forward_dense_without_adapters_matches_forward_features():
    backbone = tiny("vit_tiny_test").eval()
    with torch.no_grad():
        dense = backbone.forward_dense(images(size=(40, 24)))
        features = backbone.forward_features(images(size=(40, 24)))
    assert dense.blocks == {}
    torch.testing.assert_close(dense.final, features[:, 1:].reshape(2, 5, 3, WIDTH).permute(0, 3, 1, 2),
                               atol=0, rtol=0)


# -- tokens_to_grid and the context ---------------------------------------------------------------
def test_tokens_to_grid_splits_by_the_geometry():
    tokens = torch.randn(2, 3 + 2 * 5, WIDTH)
    geometry = TokenGeometry(batch=2, grid=(2, 5), prefix=3)
    prefix, grid = tokens_to_grid(tokens, geometry)
    torch.testing.assert_close(prefix, tokens[:, :3], atol=0, rtol=0)
    assert grid.shape == (2, WIDTH, 2, 5)
    torch.testing.assert_close(grid[:, :, 1, 4], tokens[:, 3 + 1 * 5 + 4], atol=0, rtol=0)  # row-major
    torch.testing.assert_close(grid_to_tokens(prefix, grid), tokens, atol=0, rtol=0)


@pytest.mark.parametrize("count,geometry", [
    (1 + P + 16, TokenGeometry(batch=2, grid=(4, 4), prefix=1)),  # prompts the geometry was not told of
    (1 + 36, TokenGeometry(batch=2, grid=(4, 4), prefix=1)),  # a 6x6 forward read with a 4x4 grid
    (16, TokenGeometry(batch=2, grid=(4, 4), prefix=1)),  # fewer tokens than the geometry holds
])
def test_tokens_to_grid_refuses_a_count_that_disagrees(count, geometry):
    with pytest.raises(AdaptbenchError) as raised:
        tokens_to_grid(torch.randn(2, count, WIDTH), geometry)
    message = str(raised.value)
    assert "\n" not in message
    assert message == (f"{count} tokens, but this forward has 1 prefix tokens and a 4x4 patch grid "
                       f"({geometry.num_tokens} tokens)")


def test_tokens_to_grid_refuses_a_bhwc_grid_of_another_size():
    geometry = TokenGeometry(batch=1, grid=(4, 4), layout="BHWC")
    prefix, grid = tokens_to_grid(torch.randn(1, 4, 4, WIDTH), geometry)
    assert prefix.shape == (1, 0, WIDTH) and grid.shape == (1, WIDTH, 4, 4)
    with pytest.raises(AdaptbenchError, match=re.escape("tokens of shape (1, 6, 5, 32) do not hold the 4x4 grid")):
        tokens_to_grid(torch.randn(1, 6, 5, WIDTH), geometry)


def test_a_bypass_refuses_tokens_that_disagree_with_the_geometry():
    """With prompts the geometry was not told of, the bypass refuses instead of guessing a prefix."""
    backbone = tiny("vit_tiny_test")
    build_adapter("convpass", backbone)
    with published(backbone, batch=2, grid=(4, 4), prefix=1):
        with pytest.raises(AdaptbenchError, match="22 tokens, but this forward has 1 prefix tokens"):
            backbone.blocks[0](torch.randn(2, 1 + P + 16, WIDTH))


def test_geometry_is_unknown_outside_a_forward():
    backbone = tiny("vit_tiny_test")
    build_adapter("convpass", backbone)
    message = "no backbone forward is in progress: token geometry is only known during one"
    assert not backbone.geometry.active
    with pytest.raises(AdaptbenchError, match=re.escape(message)):
        backbone.geometry.current
    with pytest.raises(AdaptbenchError, match=re.escape(message)):  # a block called on its own
        backbone.blocks[0](torch.randn(2, 17, WIDTH))
    with torch.no_grad():
        backbone(images())
    assert not backbone.geometry.active  # published during the forward only

    def fail(module, args):
        raise RuntimeError("boom")

    handle = backbone.blocks[1].register_forward_pre_hook(fail)
    with torch.no_grad(), pytest.raises(RuntimeError, match="boom"):
        backbone(images())
    handle.remove()
    assert not backbone.geometry.active  # a failed forward leaves none behind
    with pytest.raises(AdaptbenchError, match=re.escape(message)):
        backbone.blocks[0](torch.randn(2, 17, WIDTH))


def test_nested_publishes_restore_the_outer_geometry():
    context = GeometryContext()
    outer = TokenGeometry(batch=2, grid=(4, 4), prefix=1)
    inner = TokenGeometry(batch=8, grid=(6, 6), prefix=3, frames=4)
    with context.publish(outer):
        with context.publish(inner) as published_inner:
            assert published_inner is inner and context.current == inner
            context.update(prefix=8)  # a prompt wrapper inside the inner forward
            assert context.current == TokenGeometry(batch=8, grid=(6, 6), prefix=8, frames=4)
        assert context.current == outer  # the inner update did not leak out
        with pytest.raises(RuntimeError, match="boom"):
            with context.publish(inner):
                raise RuntimeError("boom")
        assert context.current == outer  # restored on the way out of a failure too
    assert not context.active


def test_a_forward_inside_a_published_geometry_leaves_it_as_it_was():
    """A forward run inside another (mask tuning's gradient probe) publishes its own geometry,
    sees only that one, and leaves the outer one untouched, prompts and all."""
    backbone = tiny("vit_tiny_test")
    build_adapter("vpt_shallow", backbone)
    build_adapter("convpass", backbone)
    backbone.eval()
    inside = []
    canonical(backbone.blocks[0]).register_forward_pre_hook(lambda m, args: inside.append(backbone.geometry.current))
    with torch.no_grad(), published(backbone, batch=5, grid=(9, 9), prefix=7) as outer:
        backbone(images(size=48))
        assert backbone.geometry.current is outer
    assert inside == [TokenGeometry(batch=2, grid=(6, 6), prefix=1 + P)]
    assert not backbone.geometry.active


def test_dense_blocks_out_of_range_are_refused():
    backbone = load_backbone("vit_tiny_test")
    with pytest.raises(AdaptbenchError, match="block 5 out of range"):
        backbone.forward_dense(torch.randn(1, 3, 32, 32), blocks=(5,))
