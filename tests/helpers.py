"""Helpers shared by the adapter test files (imported as ``helpers``: pytest puts tests/ on the path)."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from adaptbench.backbones.geometry import GeometryContext, TokenGeometry


@contextmanager
def raises_one_line(match: str, naming: Path | str):
    """An AdaptbenchError whose message matches ``match``, is one line and names ``naming``."""
    import pytest

    from adaptbench.errors import AdaptbenchError

    with pytest.raises(AdaptbenchError, match=match) as info:
        yield info
    message = str(info.value)
    assert "\n" not in message, message
    assert str(naming) in message, message


def adapter_or_skip(adapter_name: str, backbone, backbone_name: str):
    """The adapter with its defaults on ``backbone``; where the pair is n/a, checks that building
    it says so (``NotApplicable``) and skips the test."""
    import pytest

    from adaptbench.adapters import adapter_class, build_adapter
    from adaptbench.adapters.base import NotApplicable

    cls = adapter_class(adapter_name)
    if cls.unsupported(backbone.anatomy, cls.config_class()) is not None:
        with pytest.raises(NotApplicable):
            build_adapter(adapter_name, backbone, {})
        pytest.skip(f"{adapter_name} is n/a on {backbone_name}")
    return build_adapter(adapter_name, backbone, {})


def images(seed: int = 0, batch: int = 2, size: int | tuple[int, int] = 32) -> torch.Tensor:
    """A seeded batch of RGB inputs, 32x32 by default (the tiny test backbones' input size)."""
    height, width = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


@contextmanager
def published(owner, batch: int, grid: tuple[int, int], prefix: int = 0, layout: str = "BNC"):
    """Publish a token geometry on ``owner`` (a backbone or a :class:`GeometryContext`), so that
    a block or a grid-reading module can be called outside a backbone forward."""
    context = owner if isinstance(owner, GeometryContext) else owner.geometry
    with context.publish(TokenGeometry(batch=batch, grid=tuple(grid), prefix=prefix, layout=layout)) as geometry:
        yield geometry


def randomise(adapter, seed: int = 0) -> None:
    """Seeded non-zero values for every declared tensor, the zero-initialised ones included."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in adapter.trainable_parameters().values():
            param.copy_(0.3 * torch.randn(param.shape, generator=generator))


def declared_under(adapter, prefix: str) -> dict[str, torch.Tensor]:
    """The declared tensors whose names start with ``prefix``, named without it."""
    return {n[len(prefix):]: p.detach() for n, p in adapter.trainable_parameters().items() if n.startswith(prefix)}


# -- hand-built references of the convolutional adapters (plain tensor ops only) ----------------
def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def split_tokens(hidden: torch.Tensor, prefix_count: int, grid: tuple[int, int]):
    """(prefix tokens (B, P, C), patch grid (B, C, H, W)) of a row-major token sequence."""
    batch, tokens, channels = hidden.shape
    assert tokens == prefix_count + grid[0] * grid[1], (tokens, prefix_count, grid)
    patches = hidden[:, prefix_count:].reshape(batch, *grid, channels).permute(0, 3, 1, 2)
    return hidden[:, :prefix_count], patches


def conv_by_taps(grid: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A 3x3 convolution with padding 1, written as a sum over its nine shifted taps."""
    batch, _, height, width = grid.shape
    padded = F.pad(grid, (1, 1, 1, 1))
    out = bias.reshape(1, -1, 1, 1).expand(batch, -1, height, width).clone()
    for i in range(3):
        for j in range(3):
            out = out + torch.einsum("oc,bchw->bohw", weight[:, :, i, j], padded[:, :, i:i + height, j:j + width])
    return out


def convpass_by_hand(z: torch.Tensor, p: dict[str, torch.Tensor], prefix_count: int,
                     grid: tuple[int, int] = (4, 4)) -> torch.Tensor:
    """Convpass(Z) = W_up q(Conv3x3(q(W_down Z + b))) + b_up on an H x W patch grid, each of the
    ``prefix_count`` leading tokens a 1x1 image."""
    hidden = quick_gelu(z @ p["down.weight"].T + p["down.bias"])
    prefix, patches = split_tokens(hidden, prefix_count, grid)
    patches = conv_by_taps(patches, p["conv.weight"], p["conv.bias"]).flatten(2).transpose(1, 2)
    # a 1x1 image with padding 1: only the centre tap of the 3x3 kernel sees the token
    prefix = prefix @ p["conv.weight"][:, :, 1, 1].T + p["conv.bias"]
    hidden = quick_gelu(torch.cat([prefix, patches], dim=1))
    return hidden @ p["up.weight"].T + p["up.bias"]


def depthwise_by_taps(grid: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dilation: int) -> torch.Tensor:
    """A depthwise 3x3 convolution, padding = dilation, as a sum over its nine shifted taps."""
    batch, channels, height, width = grid.shape
    padded = F.pad(grid, (dilation,) * 4)
    out = bias.reshape(1, -1, 1, 1).expand(batch, -1, height, width).clone()
    for i in range(3):
        for j in range(3):
            window = padded[:, :, i * dilation:i * dilation + height, j * dilation:j * dilation + width]
            out = out + weight[:, 0, i, j].reshape(1, -1, 1, 1) * window
    return out


def dd_by_hand(y: torch.Tensor, p: dict[str, torch.Tensor], prefix_count: int, dilations=(1, 3),
               grid: tuple[int, int] = (4, 4)) -> torch.Tensor:
    """GELU(W2 sum_r GELU(DWConv_r(GELU(W1 y + b1))) + b2) on an H x W patch grid, each of the
    ``prefix_count`` leading tokens a 1x1 image."""
    hidden = F.gelu(y @ p["down.weight"].T + p["down.bias"])
    prefix, patches = split_tokens(hidden, prefix_count, grid)
    mixed_grid, mixed_prefix = 0, 0
    for index, rate in enumerate(dilations):
        weight, bias = p[f"branches.{index}.weight"], p[f"branches.{index}.bias"]
        mixed_grid = mixed_grid + F.gelu(depthwise_by_taps(patches, weight, bias, rate))
        # alone in a 1x1 image, a token meets only the centre tap of each dilated kernel
        mixed_prefix = mixed_prefix + F.gelu(prefix * weight[:, 0, 1, 1] + bias)
    mixed = torch.cat([mixed_prefix, mixed_grid.flatten(2).transpose(1, 2)], dim=1)
    return F.gelu(mixed @ p["up.weight"].T + p["up.bias"])


def adaptbench(*args: str, cwd: Path | None = None, check_rc: int | None = 0, env: dict[str, str] | None = None,
               in_process: bool = True) -> subprocess.CompletedProcess:
    """Run the CLI in ``cwd`` with ``env`` added to the environment: its parser, handlers,
    output and exit code; assert the exit code unless ``check_rc`` is None.

    In this process by default: a fresh interpreter would spend ~10 s importing torch and
    Lightning before the first line of the command runs, on every call. ``in_process=False``
    runs ``python -m adaptbench.cli`` as a user does (the entry point itself, a lazy start).
    """
    cwd = cwd or Path.cwd()
    if not in_process:
        result = subprocess.run([sys.executable, "-m", "adaptbench.cli", *args], cwd=cwd, capture_output=True,
                                text=True, timeout=600, env={**os.environ, **(env or {})})
    else:
        with _environment(env or {}):
            result = _cli_in_process(args, cwd)
    if check_rc is not None:
        assert result.returncode == check_rc, result.stdout + result.stderr
    return result


@contextmanager
def _environment(changes: dict[str, str]):
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _cli_in_process(args: tuple[str, ...], cwd: Path) -> subprocess.CompletedProcess:
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from adaptbench.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        with redirect_stdout(stdout), redirect_stderr(stderr), _plugins_forgotten_after():
            try:
                code = main(list(args))
            except SystemExit as exit_:  # argparse's usage errors, --help
                code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    finally:
        os.chdir(previous)
    return subprocess.CompletedProcess(["adaptbench", *args], code, stdout.getvalue(), stderr.getvalue())


@contextmanager
def _plugins_forgotten_after():
    """What a command's ``--plugin`` files register lasts for the command only, as in its own process."""
    from adaptbench import registry

    registries = [value for value in vars(registry).values() if isinstance(value, registry.Registry)]
    for each in registries:
        each.names()  # built-ins and entry points first, so that the copies hold them
    saved = [(each, dict(each._entries), dict(each._family_entries)) for each in registries]
    modules = set(sys.modules)
    try:
        yield
    finally:
        for each, entries, family_entries in saved:
            each._entries, each._family_entries = entries, family_entries
        for name in set(sys.modules) - modules:
            if name.startswith("adaptbench_plugin_"):
                del sys.modules[name]


# -- clips: a backbone with its own temporal branch -------------------------------------------
class TimeAttention(torch.nn.Module):
    """Self-attention over the frames of each clip, token position by token position (the
    temporal half of TimeSformer's divided space-time attention), with its own weights. It
    reads the number of frames from the backbone's published geometry, as temporal adapters do."""

    def __init__(self, width: int, context: GeometryContext, heads: int = 2):
        super().__init__()
        from timm.models.vision_transformer import Attention

        self.attention = Attention(width, num_heads=heads, qkv_bias=True)
        self.context = context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = self.context.current.frames
        batch, tokens, width = x.shape
        clips = x.reshape(batch // frames, frames, tokens, width).transpose(1, 2).reshape(-1, frames, width)
        out = self.attention(clips)
        return out.reshape(batch // frames, tokens, frames, width).transpose(1, 2).reshape(batch, tokens, width)


def divided_space_time_backbone(name: str = "vit_tiny_test", seed: int = 123):
    """A tiny backbone whose every block gets a seeded ``temporal`` branch (its own norm and
    :class:`TimeAttention`) between its attention and MLP branches: a video block whose temporal
    part shares nothing with the spatial one. The anatomy takes the branch as a site as is."""
    from adaptbench.backbones import load_backbone
    from adaptbench.backbones.anatomy import ResidualBranch, TransformerBlock

    backbone = load_backbone(name).eval()
    width = backbone.anatomy.embed_dim
    torch.manual_seed(seed)
    for index, block in enumerate(backbone.blocks):
        temporal = ResidualBranch(torch.nn.LayerNorm(width), TimeAttention(width, backbone.geometry))
        backbone.blocks[index] = TransformerBlock(
            {"attn": block.branches["attn"], "temporal": temporal, "mlp": block.branches["mlp"]})
    backbone.anatomy.branches = ("attn", "temporal", "mlp")
    backbone.seal_weights()
    return backbone.eval()


def clips(seed: int = 0, batch: int = 2, frames: int = 4, size: int = 32) -> torch.Tensor:
    """A seeded batch of clips folded into images, clip-major: (batch * frames, 3, size, size)."""
    return images(seed, batch * frames, size)


def in_order_executor(finish):
    """An executor (the submit / as-completed API) that finishes each job in submission order
    with ``finish(job, on_event) -> CellOutcome``, in this process: the matrix's logic alone.
    It is the test plugin's inline executor (``plugins/inline_executor.py``) with ``finish``."""
    from adaptbench.registry import EXECUTORS, load_plugin_file

    load_plugin_file(Path(__file__).parent / "plugins" / "inline_executor.py")

    class InOrderExecutor(EXECUTORS.get("inline")):
        def finish(self, job, on_event):
            return finish(job, on_event)

    return InOrderExecutor()
