"""The package's layers import one way: tasks -> datasets, pretrain -> backbones and datasets.

A reverse import is a cycle waiting to happen, and makes the lower layer pay for the upper
one (loading a backbone must not import the code that trained it). The sources are read with
``ast``, so an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import adaptbench

PACKAGE = Path(adaptbench.__file__).parent


def imports_under(subpackage: str) -> dict[str, set[str]]:
    """Module -> the absolute names of the modules it imports, for every file under it."""
    found = {}
    for path in sorted((PACKAGE / subpackage).rglob("*.py")):
        parts = ("adaptbench", *path.relative_to(PACKAGE).with_suffix("").parts)
        package = parts[:-1]  # __init__.py's parts end with "__init__", so this is right for both
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found[".".join(parts)] = {name for node in ast.walk(tree) for name in imported(node, package)}
    return found


def imported(node: ast.AST, package: tuple[str, ...]) -> list[str]:
    """The modules (and, for ``from x import y``, the candidates ``x.y``) one node imports."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        base = ".".join((*package[: len(package) - node.level + 1], *([node.module] if node.module else [])))
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


@pytest.mark.parametrize("lower,upper", [("backbones", "pretrain"), ("datasets", "tasks")])
def test_a_lower_layer_never_imports_an_upper_one(lower, upper):
    offenders = {module: sorted(name for name in names if name == f"adaptbench.{upper}"
                                or name.startswith(f"adaptbench.{upper}."))
                 for module, names in imports_under(lower).items()}
    reversed_imports = {module: names for module, names in offenders.items() if names}
    assert not reversed_imports, f"adaptbench.{lower} must not import adaptbench.{upper}: {reversed_imports}"


def test_the_reader_follows_relative_imports():
    # the checker above is only as good as this: each spelling resolves to the same module
    package = ("adaptbench", "backbones", "families")
    for source in ("from ...pretrain import micro", "from ... import pretrain", "import adaptbench.pretrain"):
        assert "adaptbench.pretrain" in imported(ast.parse(source).body[0], package), source


@pytest.mark.parametrize("module", ["adaptbench.datasets.formats", "adaptbench.tasks.catalog"])
def test_format_facts_and_task_specs_import_without_torch(module):
    # `adaptbench ls` and spec parsing read them; torch would cost seconds per command
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_validating_a_spec_never_imports_lightning_or_torchmetrics():
    # validate and the matrix driver read every task kind (heads, versions, fields) and check the
    # machine; the kinds' LightningModules and metrics load only in the process that trains
    # (seconds per driver)
    code = ("import sys\nfrom adaptbench.runner.spec import load_spec\nfrom adaptbench.runner.validate import validate_spec\n"
            "from adaptbench.tasks.kinds import task_kind\n"
            "from adaptbench.runner.train import check_environment\n"
            "spec = load_spec('benchmarks/micro_seg.yaml')\nvalidate_spec(spec, None)\n"
            "check_environment('auto', '32-true'); check_environment('cpu', '32-true')\n"
            "for name in ('classification', 'segmentation', 'video_classification'):\n"
            "    kind = task_kind(name); kind.version, kind.head_input, kind.default_head\n"
            "print(sorted(m for m in ('lightning', 'torchmetrics') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_plugin_kinds_still_find_the_module_base_under_its_old_name():
    from adaptbench.tasks import kinds
    from adaptbench.tasks.modules.base import TaskModule

    assert kinds.TaskModule is TaskModule
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        kinds.Nothing  # noqa: B018
