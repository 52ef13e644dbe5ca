"""Plugins for real: an installed distribution with entry points, and --plugin files.

The example distribution in tests/plugin_pkg is installed with pip into a folder put on
PYTHONPATH of the CLI processes, so importlib.metadata finds it as any installed package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
TRAIN = ["--task", "micro/faces", "--backbone", "vit_tiny_test", "--epochs", "1"]


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("plugin-site")
    source = tmp_path_factory.mktemp("plugin-src") / "plugin_pkg"
    shutil.copytree(TESTS / "plugin_pkg", source)  # pip builds in the source folder: not ours
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    assert (site / "adaptbench_plugin_example-0.1.0.dist-info" / "entry_points.txt").is_file()
    return site


def cli(*args: str, site: Path | None = None, plugins: bool = True, cwd: Path | None = None):
    env = {**os.environ}
    env.pop("ADAPTBENCH_NO_PLUGINS", None)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    if not plugins:
        env["ADAPTBENCH_NO_PLUGINS"] = "1"
    return subprocess.run([sys.executable, "-m", "adaptbench.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)


def single_error_line(result) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_installed_plugin_is_listed_and_a_broken_one_is_reported(plugin_site):
    result = cli("ls", "adapters", site=plugin_site)
    assert result.returncode == 0, result.stderr
    assert "final_shift" in result.stdout and "adaptbench-plugin-example" in result.stdout
    assert "Final shift (example plugin)" in result.stdout  # its own docstring
    assert "lora" in result.stdout  # everything else still works
    [warning] = result.stderr.strip().splitlines()
    assert "'broken_plugin'" in warning and "ImportError" in warning


def test_installed_plugin_adapter_trains_end_to_end(plugin_site, tmp_path):
    result = cli("train", "--adapter", "final_shift", *TRAIN, "--out", str(tmp_path), site=plugin_site)
    assert result.returncode == 0, result.stderr
    [record_path] = tmp_path.glob("*.json")
    info = json.loads(record_path.read_text())["train_info"]
    assert info["status"] == "success"
    assert info["params"]["trainable"] == 32  # one shift per channel of the d=32 backbone
    assert (tmp_path / f"{record_path.stem}.adapter.safetensors").is_file()


def test_using_the_broken_plugin_fails_with_one_line(plugin_site, tmp_path):
    line = single_error_line(cli("train", "--adapter", "broken_plugin", *TRAIN, "--out", str(tmp_path), site=plugin_site))
    assert "'broken_plugin'" in line and "adaptbench-plugin-example" in line
    assert not any(tmp_path.iterdir())


def test_no_plugins_env_disables_entry_points(plugin_site, tmp_path):
    line = single_error_line(cli("train", "--adapter", "final_shift", *TRAIN, "--out", str(tmp_path),
                                 site=plugin_site, plugins=False))
    assert "unknown adapter 'final_shift'" in line


def test_local_plugin_file(tmp_path):
    plugin = str(TESTS / "plugins" / "local_plugin.py")
    listing = cli("--plugin", plugin, "ls", "adapters", plugins=False)
    assert listing.returncode == 0 and "local_bias" in listing.stdout
    result = cli("--plugin", plugin, "train", "--adapter", "local_bias", *TRAIN, "--out", str(tmp_path), plugins=False)
    assert result.returncode == 0, result.stderr
    [record_path] = tmp_path.glob("*.json")
    assert json.loads(record_path.read_text())["train_info"]["params"]["trainable"] == 2 * 32


def test_malformed_and_missing_plugin_files_are_named():
    malformed = TESTS / "plugins" / "malformed_plugin.py"
    line = single_error_line(cli("--plugin", str(malformed), "ls", "adapters", plugins=False))
    assert f"{malformed}:5" in line and "NameError" in line
    line = single_error_line(cli("--plugin", "no/such/plugin.py", "ls", "adapters", plugins=False))
    assert "no/such/plugin.py does not exist" in line


LAZY_CHECK = (
    "import sys, contextlib, io\n"
    "from adaptbench.cli import main\n"
    "with contextlib.redirect_stdout(io.StringIO()):\n"
    "    try:\n"
    "        main(sys.argv[1:])\n"
    "    except SystemExit:\n"
    "        pass\n"
    "heavy = [m for m in ('torch', 'timm', 'lightning', 'adaptbench.adapters.lora', 'adaptbench.adapters.ssf') if m in sys.modules]\n"
    "print(','.join(heavy))\n"
)


@pytest.mark.parametrize("args", [["--help"], ["ls", "adapters"], ["ls", "backbones"], ["ls", "tasks"]])
def test_cli_start_imports_no_torch(args):
    env = {**os.environ, "ADAPTBENCH_NO_PLUGINS": "1"}
    result = subprocess.run([sys.executable, "-c", LAZY_CHECK, *args], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"imported at start: {result.stdout.strip()}"


def test_builtins_stay_lazy_with_plugins_installed(plugin_site):
    env = {**os.environ, "PYTHONPATH": str(plugin_site)}
    env.pop("ADAPTBENCH_NO_PLUGINS", None)
    result = subprocess.run([sys.executable, "-c", LAZY_CHECK, "ls", "adapters"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "adaptbench.adapters.lora" not in result.stdout and "adaptbench.adapters.ssf" not in result.stdout
