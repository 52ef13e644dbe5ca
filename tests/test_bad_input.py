"""Bad input, class by class: every reader error and every weights-file error is one line
naming the file (and the line, key or flag) and what was expected; nothing half-done.

Most cases call the readers directly (fast); two run the ``adaptbench`` command end to end
to check the whole promise: one line on stderr, exit status 2 and no record (a command that
gets as far as the backbone pays seconds of imports, so adapter checkpoints are read directly).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from adaptbench.adapters import build_adapter
from adaptbench.adapters.checkpoint import load_adapter, read_checkpoint, save_adapter
from adaptbench.backbones import load_backbone
from adaptbench.backbones.families.micro import MICRO_WEIGHTS, vit_micro
from adaptbench.backbones.timm_weights import check_weights_file, read_weights_file
from adaptbench.datasets.fgvc import read_annotations
from adaptbench.datasets.decoded import ImageField, LabelField, decoded_split
from adaptbench.datasets.vtab import read_split_file, vtab_samples
from adaptbench.errors import AdaptbenchError
from adaptbench.files import atomic_write, plain_file_mode
from helpers import adaptbench

LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\n"
               "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 1834512\n")


def one_line_error(call, *fragments: str) -> str:
    """Run ``call``; it must raise an AdaptbenchError of one line holding every fragment."""
    with pytest.raises(AdaptbenchError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def write_image(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), value, dtype=np.uint8)).save(path)


def vtab_task(root: Path, task: str = "eurosat", per_split: int = 4) -> Path:
    """A small task in NOAH's VTAB-1k layout (labels 0..per_split-1)."""
    folder = root / task
    for split in ("train800", "val200", "train800val200", "test"):
        lines = []
        for index in range(per_split):
            name = f"images/{split}/{index:06d}.png"
            write_image(folder / name, 30 * index)
            lines.append(f"{name} {index}")
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return folder


# -- VTAB-1k split files ---------------------------------------------------------------------
@pytest.mark.parametrize("content", ["", "\n", "  \n\n"])
def test_an_empty_split_is_refused_naming_the_file_and_the_line_format(tmp_path, content):
    split_file = vtab_task(tmp_path) / "train800val200.txt"
    split_file.write_text(content)
    one_line_error(lambda: vtab_samples(tmp_path, "eurosat", "train800val200", 10),
                   f"split file {split_file} ", "expected one line", "'images/train800val200/000123.jpg 4'")


@pytest.mark.parametrize("line,fragments", [
    ("images/test/000000.png", ["got 'images/test/000000.png'", "e.g. 'images/test/000123.jpg 4'"]),
    ("images/test/000000.png 1 extra", ["got 'images/test/000000.png 1 extra'", "'<image path> <int label>'"]),
    ("images/test/000000.png one", ["label 'one' is not an integer"]),
    ("images/test/000000.png 1_0", ["label '1_0' is not an integer"]),
    ("images/test/000000.png +1", ["label '+1' is not an integer"]),
    ("images/test/000000.png 10", ["label 10 out of range; expected 0..9 (10 classes)"]),
    ("images/test/000000.png -1", ["label -1 out of range"]),
    ("", ["blank line between samples"]),
    ("images/test/000001.png 1", ["image 'images/test/000001.png' is listed again (first at line 2)"]),
    ("images/test/./000001.png 1", ["is listed again (first at line 2)"]),
])
def test_a_bad_line_names_file_and_line(tmp_path, line, fragments):
    split_file = vtab_task(tmp_path) / "test.txt"
    split_file.write_text(f"images/test/000000.png 0\nimages/test/000001.png 1\n{line}\nimages/test/000002.png 2\n")
    message = one_line_error(lambda: read_split_file(split_file, 10), *fragments)
    assert message.startswith(f"{split_file}:3: ")


def test_a_negative_label_is_refused_without_a_class_count(tmp_path):
    split_file = vtab_task(tmp_path) / "test.txt"
    split_file.write_text("images/test/000000.png -3\n")
    one_line_error(lambda: read_split_file(split_file), f"{split_file}:1: label -3 out of range")


def test_trailing_blank_lines_and_a_byte_order_mark_are_accepted(tmp_path):
    split_file = vtab_task(tmp_path) / "test.txt"
    split_file.write_bytes(b"\xef\xbb\xbfimages/test/000000.png 0\r\nimages/test/000001.png 1\r\n\r\n\n")
    assert [label for _, label in read_split_file(split_file, 10)] == [0, 1]
    assert read_split_file(split_file, 10)[0][0] == split_file.parent / "images/test/000000.png"


def test_a_split_file_that_is_a_folder_or_not_utf8_is_named(tmp_path):
    folder = vtab_task(tmp_path)
    (folder / "val200.txt").unlink()
    (folder / "val200.txt").mkdir()
    one_line_error(lambda: vtab_samples(tmp_path, "eurosat", "val200", 10),
                   f"split file {folder / 'val200.txt'} is a directory; expected the VTAB-1k layout")
    (folder / "test.txt").write_bytes(b"images/test/000000.png 0\nimages/test/\xff\xfe.png 1\n")
    one_line_error(lambda: vtab_samples(tmp_path, "eurosat", "test", 10),
                   f"{folder / 'test.txt'}:2: not UTF-8 text (byte 0xff")


def test_a_missing_image_names_the_image_and_the_split_file_line(tmp_path):
    folder = vtab_task(tmp_path)
    (folder / "images/test/000002.png").unlink()
    one_line_error(lambda: vtab_samples(tmp_path, "eurosat", "test", 10),
                   f"image {folder / 'images/test/000002.png'} listed in {folder / 'test.txt'} does not exist",
                   f"{folder / 'test.txt'}:3")
    (folder / "images/test/000002.png").mkdir()
    one_line_error(lambda: vtab_samples(tmp_path, "eurosat", "test", 10),
                   f"image {folder / 'images/test/000002.png'}", "is a directory, not an image file",
                   f"{folder / 'test.txt'}:3")


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n", b"GIF89a" + b"\x00" * 10, b"BM" + b"\x00" * 30])
def test_an_undecodable_image_is_named_when_read(tmp_path, content):
    folder = vtab_task(tmp_path)
    bad = folder / "images/test/000001.png"
    bad.write_bytes(content)
    samples = vtab_samples(tmp_path, "eurosat", "test", 10)
    fields = {"images": ImageField((8, 8), "bicubic"), "labels": LabelField()}
    one_line_error(lambda: decoded_split(samples, fields, task="t", split="test", source=samples.source),
                   f"cannot read image {bad} (listed in {folder / 'test.txt'})", "expected a readable image file")


# -- FGVC annotation files ---------------------------------------------------------------------
@pytest.mark.parametrize("content,fragment", [
    ("", "is empty; expected a JSON object"),
    ("  \n", "is empty; expected a JSON object"),
    ("{}", "holds an empty JSON object (no images)"),
    ("[]", "holds a JSON list; expected an object"),
    ('"a.jpg"', "holds a JSON string; expected an object"),
    ("3", "holds a JSON number; expected an object"),
    ("null", "holds a JSON null; expected an object"),
    ('{"a.jpg": 1.0}', "class id of 'a.jpg' is 1.0; expected an integer"),
    ('{"a.jpg": null}', "class id of 'a.jpg' is None; expected an integer"),
    ('{"a.jpg": [1]}', "class id of 'a.jpg' is [1]; expected an integer"),
    ('{"a.jpg": -2}', "class id of 'a.jpg' is -2; expected an integer >= 0"),
    ('{"a.jpg": 1, "a.jpg": 2}', "image 'a.jpg' is listed twice"),
    ('{"": 1}', "image path '' is empty"),
    ('{"a.jpg": 1,}', "invalid JSON"),
    ('{"a.jpg": "1', "invalid JSON (Unterminated string starting, column 11)"),
])
def test_a_bad_annotation_file_is_named(tmp_path, content, fragment):
    path = tmp_path / "val.json"
    path.write_text(content)
    message = one_line_error(lambda: read_annotations(path), str(path), fragment)
    assert " at at " not in message and "at," not in message


def test_an_annotation_file_that_is_a_folder_or_not_utf8_is_named(tmp_path):
    (tmp_path / "train.json").mkdir()
    one_line_error(lambda: read_annotations(tmp_path / "train.json"),
                   f"annotation file {tmp_path / 'train.json'} is a directory; expected the FGVC layout")
    (tmp_path / "val.json").write_bytes(b'{"a.jpg": 1,\n "\xe9.jpg": 2}')
    one_line_error(lambda: read_annotations(tmp_path / "val.json"), f"{tmp_path / 'val.json'}:2: not UTF-8 text")


# -- backbone weights files (--weights) -----------------------------------------------------------
@pytest.fixture(scope="module")
def micro_state():
    return load_file(str(MICRO_WEIGHTS))


class _Shell:
    def __reduce__(self):
        return (os.system, ("echo hi",))


FITS = "does not fit backbone 'vit_micro' (timm model vit_tiny_patch16_224)"


def _weights_cases(folder: Path, state: dict) -> dict[str, tuple[Path, list[str]]]:
    """name -> (file, fragments its error must hold)."""
    cases = {}

    def case(name, fragments, text=None, data=None, tensors=None, obj=None):
        path = folder / name
        if text is not None:
            path.write_text(text)
        elif data is not None:
            path.write_bytes(data)
        elif tensors is not None:
            save_file(tensors, str(path))
        elif obj is not None:
            torch.save(obj, path)
        cases[name] = (path, fragments)

    whole = MICRO_WEIGHTS.read_bytes()
    case("pointer.safetensors", ["not a safetensors file (it is a git-lfs pointer", "fetch the real file"],
         text=LFS_POINTER)
    case("pointer.pth", ["not a PyTorch checkpoint (it is a git-lfs pointer", "fetch the real file"], text=LFS_POINTER)
    case("truncated.safetensors", ["not a safetensors file (truncated", "fetch the real file"],
         data=whole[: len(whole) // 2])
    case("header-only.safetensors", ["not a safetensors file"], data=whole[:5])
    case("empty.safetensors", ["not a safetensors file (the file is empty)"], data=b"")
    case("empty.pth", ["not a PyTorch checkpoint (the file is empty)"], data=b"")
    case("huge-header.safetensors", ["not a safetensors file (its header length field says"],
         data=struct.pack("<Q", 1 << 40) + b"{}")
    case("not-json.safetensors", ["not a safetensors file (its header is not JSON"],
         data=struct.pack("<Q", 4) + b"abcd")
    case("missing-key.safetensors", [FITS, "lacks 1 tensor", "(first: blocks.0.norm1.weight)"],
         tensors={k: v for k, v in state.items() if k != "blocks.0.norm1.weight"})
    case("extra-key.safetensors", [FITS, "holds 1 tensor the model does not have",
                                   "(first: decoder.weight)"], tensors={**state, "decoder.weight": torch.zeros(2)})
    case("wrong-shape.safetensors", [FITS, "size mismatch for blocks.1.mlp.fc1.weight"],
         tensors={**state, "blocks.1.mlp.fc1.weight": torch.zeros(5, 96)})
    case("no-tensors.safetensors", ["holds no tensors"], tensors={})
    case("shell.pth", ["refused: its pickle imports posix.system (only tensors are loaded; convert it to safetensors)"],
         obj={"weight": _Shell()})
    case("namespace.pth", ["refused: its pickle imports argparse.Namespace"],  # an old training checkpoint
         obj={"model": state, "args": argparse.Namespace(lr=0.1)})
    case("garbage.pth", ["not a PyTorch checkpoint", "expected a file written by torch.save"],
         data=b"hello, not a pickle at all")
    case("cut.pth", ["not a readable PyTorch checkpoint"], data=b"PK\x03\x04" + b"\x00" * 40)
    case("list.pth", ["holds a list; expected a state dict"], obj=[torch.zeros(1)])
    case("pickle.safetensors", ["not a safetensors file (it is a zip archive", "name it .pth"],
         obj={"weight": torch.zeros(1)})
    case("bad.npz", ["not a numpy .npz archive"], data=b"not a zip")
    (folder / "folder.safetensors").mkdir()
    cases["folder.safetensors"] = (folder / "folder.safetensors", ["is a directory"])
    case("weights.ckpt", ["--weights", "expected 'pretrained', 'random' or a weights file ending in .safetensors"],
         data=b"x")
    return cases


def test_every_bad_weights_file_is_one_line_naming_it(tmp_path, micro_state, capsys):
    for name, (path, fragments) in _weights_cases(tmp_path, micro_state).items():
        message = one_line_error(lambda p=path: vit_micro(weights=str(p)), str(path), *fragments)
        assert "weights_only" not in message and "SafetensorError" not in message, (name, message)
    assert "keys" not in capsys.readouterr().err  # timm's key warnings became the errors, not a second line


def test_a_good_weights_file_still_loads_in_every_form(tmp_path, micro_state):
    torch.save({"model": micro_state, "epoch": 3}, tmp_path / "checkpoint.pth")
    torch.save({f"module.{k}": v for k, v in micro_state.items()}, tmp_path / "ddp.pt")
    shipped = vit_micro()
    for path in (MICRO_WEIGHTS, tmp_path / "checkpoint.pth", tmp_path / "ddp.pt"):
        check_weights_file(path)
        assert vit_micro(weights=str(path)).weights_id == shipped.weights_id


def test_the_shared_readers_name_the_file_for_sam_and_clip(tmp_path):
    from adaptbench.backbones.families.clip import clip_vit
    from adaptbench.backbones.families.sam import _read_encoder_state

    shell = tmp_path / "sam_vit_b.pth"
    torch.save({"image_encoder.x": _Shell()}, shell)
    one_line_error(lambda: _read_encoder_state(shell),
                   f"weights file {shell}: refused: its pickle imports posix.system")
    pointer = tmp_path / "open_clip_model.safetensors"
    pointer.write_text(LFS_POINTER)
    one_line_error(lambda: clip_vit("ViT-B-32", weights=str(pointer)), f"weights file {pointer}: ",
                   "git-lfs pointer")
    one_line_error(lambda: read_weights_file(tmp_path), f"weights file {tmp_path} is a directory")


# -- adapter checkpoints (eval --checkpoint) --------------------------------------------------------
@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory):
    backbone = load_backbone("vit_tiny_test")
    adapter = build_adapter("lora", backbone)
    path = save_adapter(adapter, tmp_path_factory.mktemp("ckpt") / "run.adapter.safetensors",
                        head=torch.nn.Linear(32, 10), head_info={"task": "micro/digits", "num_classes": 10})
    return backbone, path


def _rewritten(path: Path, target: Path, **metadata: str) -> Path:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        found = handle.metadata()
    save_file(load_file(str(path)), str(target), metadata={**found, **metadata})
    return target


def test_every_bad_adapter_checkpoint_is_one_line_naming_it(tmp_path, saved_adapter, micro_state):
    backbone, good = saved_adapter
    data = good.read_bytes()
    cases = {
        "pointer": (LFS_POINTER.encode(), "git-lfs pointer"),
        "truncated": (data[:-9], "not a safetensors file (truncated"),
        "empty": (b"", "not a safetensors file (the file is empty)"),
        "garbage": (b"garbage" * 20, "not a safetensors file"),
    }
    for name, (content, fragment) in cases.items():
        path = tmp_path / f"{name}.adapter.safetensors"
        path.write_bytes(content)
        one_line_error(lambda p=path: read_checkpoint(p), f"adapter checkpoint {path}", fragment)
    pickled = tmp_path / "pickled.adapter.safetensors"
    torch.save({"adapter.x": torch.zeros(1)}, pickled)
    one_line_error(lambda: read_checkpoint(pickled), f"adapter checkpoint {pickled}", "not a safetensors file",
                   "expected an .adapter.safetensors file written by adaptbench train")
    weights = tmp_path / "backbone.safetensors"
    save_file(micro_state, str(weights))
    one_line_error(lambda: read_checkpoint(weights), f"adapter checkpoint {weights}: not an adaptbench adapter")
    one_line_error(lambda: read_checkpoint(tmp_path), f"adapter checkpoint {tmp_path} is a directory")
    wrong = {"newer.safetensors": ({"format_version": "9"}, "format_version '9'"),
             "config.safetensors": ({"adapter_config": "{r: 4"}, "metadata 'adapter_config' is not valid JSON"),
             "head.safetensors": ({"head": "[10]"}, "metadata 'head' is a JSON list"),
             "no-adapter.safetensors": ({"adapter": ""}, "lacks metadata 'adapter'")}
    for name, (metadata, fragment) in wrong.items():
        path = _rewritten(good, tmp_path / name, **metadata)
        one_line_error(lambda p=path: read_checkpoint(p), f"adapter checkpoint {path}", fragment)
    unknown = _rewritten(good, tmp_path / "unknown.safetensors", adapter="no_such_adapter")
    one_line_error(lambda: load_adapter(load_backbone("vit_tiny_test"), unknown),
                   f"adapter checkpoint {unknown}: ", "no_such_adapter")
    adapter, head_state = load_adapter(load_backbone("vit_tiny_test"), good)  # the good one still loads
    assert set(head_state) == {"weight", "bias"}


# -- written files keep the umask's mode --------------------------------------------------------------
def test_atomic_writes_get_the_mode_a_plain_open_would(tmp_path):
    backbone = load_backbone("vit_tiny_test")
    old = os.umask(0o027)
    try:
        with open(tmp_path / "plain.json", "w"):
            pass
        plain = os.stat(tmp_path / "plain.json").st_mode & 0o777
        record = atomic_write(tmp_path / "record.json", json.dumps({"run_info": {}}))
        checkpoint = save_adapter(build_adapter("lora", backbone), tmp_path / "run.adapter.safetensors")
        assert plain == 0o640 == plain_file_mode()
        assert os.stat(record).st_mode & 0o777 == plain
        assert os.stat(checkpoint).st_mode & 0o777 == plain
        os.chmod(record, 0o600)  # like open(path, "w"), a rewrite keeps an existing file's mode
        atomic_write(record, "{}")
        assert os.stat(record).st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    assert not list(tmp_path.glob(".*.tmp"))


# -- leaderboard: a corrupt record -------------------------------------------------------------------
@pytest.mark.parametrize("content", ['{"run_info": {"task": "unterminated\n', '{"run_info": 1,\n}', "{\n\n  nope"])
def test_a_corrupt_record_names_file_line_and_column_once(tmp_path, content):
    from adaptbench.leaderboard.records import load_records

    path = tmp_path / "run.json"
    path.write_text(content)
    message = one_line_error(lambda: load_records([tmp_path]), str(path), "line ", "column ")
    assert " at at " not in message and message.count("line ") == 1 and message.count("column ") == 1


# -- end to end --------------------------------------------------------------------------------------
TINY = ["--backbone", "vit_tiny_test", "--adapter", "linear", "--epochs", "1", "--batch-size", "8"]


def assert_cli_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("adaptbench: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_cli_refuses_an_empty_test_split_and_writes_no_record(tmp_path):
    folder = vtab_task(tmp_path / "data")
    (folder / "test.txt").write_text("")
    out = tmp_path / "out"
    result = adaptbench("train", "--task", "vtab1k/eurosat", *TINY, "--data-root", str(tmp_path / "data"),
                        "--out", str(out), cwd=tmp_path, check_rc=None)
    assert_cli_error(result, f"split file {folder / 'test.txt'} is empty", "'images/test/000123.jpg 4'")
    assert not out.exists() or not any(out.iterdir())


def test_cli_names_a_git_lfs_pointer_given_as_weights(tmp_path):
    pointer = tmp_path / "x.safetensors"
    pointer.write_text(LFS_POINTER)
    out = tmp_path / "out"
    result = adaptbench("train", "--task", "vtab1k/eurosat", "--data-root", str(vtab_task(tmp_path / "data").parent),
                        *TINY, "--weights", str(pointer), "--out", str(out), cwd=tmp_path, check_rc=None)
    assert_cli_error(result, f"weights file {pointer}: not a safetensors file (it is a git-lfs pointer",
                     "fetch the real file")
    assert not out.exists() or not any(out.iterdir())
