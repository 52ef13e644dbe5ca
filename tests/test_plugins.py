"""Plugins for real: an installed distribution with entry points, and --plugin files.

The example distribution in tests/plugin_pkg is installed once per session with pip into a
folder that the CLI processes get on PYTHONPATH, so importlib.metadata finds its dist-info
as it finds any installed package. Every check runs the CLI in a fresh process, as a user
would: registries, entry points and lazy imports all start from nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
LOCAL_PLUGIN = TESTS / "plugins" / "local_plugin.py"
MALFORMED_PLUGIN = TESTS / "plugins" / "malformed_plugin.py"
DIST = "adaptbench-plugin-example"
PLUGIN_ADAPTER = "scaled_head_bias"  # [project.entry-points."adaptbench.adapters"] in its pyproject
EMBED_DIM = 32  # vit_tiny_test's width
TRAIN = ["--task", "micro/digits", "--backbone", "vit_tiny_test", "--epochs", "1", "--batch-size", "64"]


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """tests/plugin_pkg installed with pip (no index, no build isolation) into its own folder."""
    site = tmp_path_factory.mktemp("plugin-site")
    source = tmp_path_factory.mktemp("plugin-src") / "plugin_pkg"
    shutil.copytree(TESTS / "plugin_pkg", source)  # the build writes into its source folder
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    assert (site / "adaptbench_plugin_example-0.1.0.dist-info" / "entry_points.txt").is_file()
    return site


@dataclass(frozen=True)
class Sandbox:
    """Where the CLI processes run: their own working folder (nothing they write lands in
    the checkout) and the session's data cache (never the home folder)."""

    cwd: Path
    cache: Path

    def env(self, site: Path | None = None, plugins: bool = True) -> dict[str, str]:
        env = {**os.environ, "ADAPTBENCH_CACHE": str(self.cache), "HF_HUB_OFFLINE": "1"}
        env.pop("ADAPTBENCH_NO_PLUGINS", None)
        if site is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
        if not plugins:
            env["ADAPTBENCH_NO_PLUGINS"] = "1"
        return env

    def run(self, argv: list[str], site: Path | None = None, plugins: bool = True):
        return subprocess.run(argv, capture_output=True, text=True, env=self.env(site, plugins),
                              cwd=self.cwd, timeout=600)

    def cli(self, *args: str, site: Path | None = None, plugins: bool = True):
        return self.run([sys.executable, "-m", "adaptbench.cli", *args], site, plugins)

    def python(self, code: str, *args: str, site: Path | None = None, plugins: bool = True):
        return self.run([sys.executable, "-c", code, *args], site, plugins)


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory) -> Sandbox:
    # The same cache folder as conftest's, so micro data generated once serves the session.
    return Sandbox(tmp_path_factory.mktemp("cli-cwd"), tmp_path_factory.getbasetemp() / "adaptbench-cache")


def single_error_line(result) -> str:
    """The one stderr line of a failed command (no traceback, nothing else)."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def listed_row(stdout: str, name: str) -> str:
    """The table row of ``name`` in `adaptbench ls` output."""
    # the name is the row's first cell exactly ("lora" must not match "peft:lora")
    rows = [line for line in stdout.splitlines() if line.count("│") > 2 and line.split("│")[1].strip() == name]
    assert len(rows) == 1, f"{name!r} is not listed once:\n{stdout}"
    return rows[0]


def only_record(out: Path) -> dict:
    [path] = out.glob("*.json")
    return json.loads(path.read_text())


# -- an installed distribution ---------------------------------------------------------


def test_installed_plugin_is_listed_with_its_distribution_and_a_broken_one_is_reported(plugin_site, sandbox):
    result = sandbox.cli("ls", "adapters", site=plugin_site)
    assert result.returncode == 0, result.stderr
    row = listed_row(result.stdout, PLUGIN_ADAPTER)
    assert f"entry point of {DIST} 0.1.0" in row
    assert "Scaled head bias (example plugin)" in row  # the description is its own docstring
    assert "builtin" in listed_row(result.stdout, "lora")  # the built-ins are all still there
    assert "failed to load" in listed_row(result.stdout, "broken_plugin")
    [warning] = result.stderr.strip().splitlines()  # one line for the broken plugin, no traceback
    assert "'broken_plugin'" in warning and DIST in warning and "ImportError" in warning


PARAMETER_COUNTS = """
from adaptbench.adapters import build_adapter
from adaptbench.backbones import load_backbone
for options in ({}, {"scale": "false"}):
    adapter = build_adapter("scaled_head_bias", load_backbone("vit_tiny_test"), options)
    print(sum(p.numel() for p in adapter.trainable_parameters().values()))
"""


@pytest.fixture(scope="session")
def plugin_parameter_counts(plugin_site, sandbox) -> list[int]:
    """The plugin adapter's own count of its tensors on vit_tiny_test (default, scale=false),
    built through the registry in a process that has the plugin installed."""
    result = sandbox.python(PARAMETER_COUNTS, site=plugin_site)
    assert result.returncode == 0, result.stderr
    return [int(line) for line in result.stdout.split()]


def test_plugin_adapter_counts_its_declared_tensors(plugin_parameter_counts):
    # (1 + s) * final_norm(x) + b: s and b per channel; scale=false trains b only.
    assert plugin_parameter_counts == [2 * EMBED_DIM, EMBED_DIM]


def test_installed_plugin_adapter_trains_end_to_end(plugin_site, sandbox, tmp_path, plugin_parameter_counts):
    result = sandbox.cli("train", "--adapter", PLUGIN_ADAPTER, *TRAIN, "--out", str(tmp_path), site=plugin_site)
    assert result.returncode == 0, result.stderr
    record = only_record(tmp_path)
    info = record["train_info"]
    assert info["status"] == "success", info["error"]
    assert record["run_info"]["config"]["adapter"] == PLUGIN_ADAPTER
    assert info["params"]["trainable"] == plugin_parameter_counts[0]
    assert info["params"]["extra_inference"] == plugin_parameter_counts[0]  # unmerged: it runs them
    assert len(list(tmp_path.glob("*.adapter.safetensors"))) == 1
    # (reloading that checkpoint by name through the registry: the conformance suite below)


def test_installed_plugin_passes_the_adapter_conformance_suite(plugin_site, sandbox, tmp_path):
    """Registering is enough to be tested (STYLE.md item 3): the shared suite, run in a
    process that has the plugin installed, picks the entry point up like a built-in."""
    result = sandbox.run(
        [sys.executable, "-m", "pytest", str(TESTS / "test_adapter_conformance.py"), "-q",
         "-k", PLUGIN_ADAPTER, "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'inner'}"],
        site=plugin_site,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 10 and "failed" not in summary, summary


def test_using_the_broken_plugin_fails_with_one_line(plugin_site, sandbox, tmp_path):
    out = tmp_path / "out"
    result = sandbox.cli("train", "--adapter", "broken_plugin", *TRAIN, "--out", str(out), site=plugin_site)
    line = single_error_line(result)
    assert "'broken_plugin'" in line and DIST in line and "ImportError" in line
    assert not out.exists() or not any(out.iterdir())  # no record of a run that never started


def test_no_plugins_env_disables_entry_points(plugin_site, sandbox, tmp_path):
    result = sandbox.cli("train", "--adapter", PLUGIN_ADAPTER, *TRAIN, "--out", str(tmp_path),
                         site=plugin_site, plugins=False)
    assert f"unknown adapter '{PLUGIN_ADAPTER}'" in single_error_line(result)
    listing = sandbox.cli("ls", "adapters", site=plugin_site, plugins=False)
    assert listing.returncode == 0 and listing.stderr == "", listing.stderr
    assert PLUGIN_ADAPTER not in listing.stdout and "broken_plugin" not in listing.stdout


# -- --plugin files ----------------------------------------------------------------------


def test_local_plugin_file_is_listed_beside_installed_plugins(plugin_site, sandbox):
    result = sandbox.cli("--plugin", str(LOCAL_PLUGIN), "ls", "adapters", site=plugin_site)
    assert result.returncode == 0, result.stderr
    assert "local_plugin" in listed_row(result.stdout, "local_bias")  # its source names the file
    listed_row(result.stdout, PLUGIN_ADAPTER)


def test_local_plugin_file_adapter_trains(sandbox, tmp_path):
    result = sandbox.cli("--plugin", str(LOCAL_PLUGIN), "train", "--adapter", "local_bias", *TRAIN,
                         "--out", str(tmp_path), plugins=False)
    assert result.returncode == 0, result.stderr
    info = only_record(tmp_path)["train_info"]
    assert info["status"] == "success", info["error"]
    assert info["params"]["trainable"] == 2 * EMBED_DIM  # one bias per block, 2 blocks


def test_malformed_plugin_file_is_named_with_its_line(sandbox):
    [line_number] = [i for i, text in enumerate(MALFORMED_PLUGIN.read_text().splitlines(), 1)
                     if "MissingConfig" in text]
    line = single_error_line(sandbox.cli("--plugin", str(MALFORMED_PLUGIN), "ls", "adapters", plugins=False))
    assert f"{MALFORMED_PLUGIN}:{line_number}" in line and "NameError" in line and "MissingConfig" in line


def test_missing_plugin_file_is_named(sandbox):
    line = single_error_line(sandbox.cli("--plugin", "missing.py", "ls", "adapters", plugins=False))
    assert "missing.py does not exist" in line


# -- laziness: the CLI starts without torch, and built-ins stay lazy next to plugins -----------

IMPORTED_AFTER_MAIN = """
import contextlib, io, sys
from adaptbench.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(sys.argv[1:])
    except SystemExit:  # --help
        pass
watched = ("torch", "timm", "lightning", "adaptbench.adapters.lora", "adaptbench.adapters.ssf")
print(",".join(name for name in watched if name in sys.modules))
"""


@pytest.mark.parametrize("args", [["--help"], ["ls", "adapters"], ["ls", "backbones"], ["ls", "tasks"]])
def test_cli_start_imports_no_torch(args, sandbox):
    result = sandbox.python(IMPORTED_AFTER_MAIN, *args, plugins=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"imported by `adaptbench {' '.join(args)}`: {result.stdout.strip()}"


def test_builtins_stay_lazy_with_plugins_installed(plugin_site, sandbox):
    # Listing imports the plugins to describe them (and so torch), but never a built-in.
    result = sandbox.python(IMPORTED_AFTER_MAIN, "ls", "adapters", site=plugin_site)
    assert result.returncode == 0, result.stderr
    imported = result.stdout.strip().split(",")
    assert "adaptbench.adapters.lora" not in imported and "adaptbench.adapters.ssf" not in imported


def test_a_plugin_file_cannot_take_a_builtin_name(sandbox, tmp_path):
    plugin = tmp_path / "clash.py"
    plugin.write_text(
        "from adaptbench.adapters.linear import LinearProbe, LinearProbeConfig\n"
        "from adaptbench.registry import register_adapter\n"
        "class Mine(LinearProbe):\n"
        "    '''Mine.'''\n"
        "register_adapter('lora', LinearProbeConfig, Mine)\n"
    )
    line = single_error_line(sandbox.cli("--plugin", str(plugin), "ls", "adapters", plugins=False))
    assert f"plugin file {plugin}:5" in line and "'lora' is already registered (by builtin)" in line


def test_an_installed_plugin_adds_a_task_kind_with_its_head_and_task(plugin_site, sandbox, tmp_path):
    """A new kind (digit value regression, lower is better) runs through `train` with nothing
    in adaptbench edited: the runner dispatches on the task's kind."""
    listed = sandbox.cli("ls", "kinds", site=plugin_site)
    assert listed.returncode == 0 and "digit_value" in listed.stdout and "classification" in listed.stdout
    out = tmp_path / "results"
    result = sandbox.cli("train", "--task", "plugin/digit_value", "--head", "scalar", "--adapter", "linear",
                         "--backbone", "vit_tiny_test", "--batch-size", "250", "--out", str(out), site=plugin_site)
    assert result.returncode == 0, result.stderr
    [path] = out.glob("*.json")
    record = json.loads(path.read_text())
    info = record["train_info"]
    assert record["run_info"]["task_info"]["kind"] == "digit_value"
    assert info["primary_metric"] == "mae" and info["higher_is_better"] is False
    assert info["metrics"]["test"]["mae"] >= 0 and info["params"]["head"] == EMBED_DIM + 1
    # without the plugin the kind is unknown, and the error says so in one line
    result = sandbox.cli("train", "--task", "plugin/digit_value", "--adapter", "linear", "--backbone",
                         "vit_tiny_test", "--out", str(out), site=plugin_site, plugins=False)
    assert result.returncode == 2 and "plugin/digit_value" in single_error_line(result)
