"""The package's layering rules (ARCHITECTURE.md), read from every module's imports."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "pipeline"

RULES = {
    # layer: (pipeline modules it may import, third-party modules it must not import)
    "kernels": ({"backend", "kernels"}, {"dask", "distributed", "zarr", "click", "pydantic"}),
    "engine": (
        {"backend", "errors", "kernels", "naming", "params", "engine"},
        {"zarr", "click", "yaml"},
    ),
    "io": ({"errors", "naming", "io"}, {"click", "numba", "cupy"}),
    "jobs": (
        {"backend", "engine", "errors", "io", "jobs", "naming", "params", "worker"},
        {"click"},
    ),
}


def _imports(path: Path) -> set[str]:
    """Every module a file imports (anywhere in it), as absolute dotted names."""
    package = ["pipeline", *path.relative_to(PACKAGE).parent.parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            found.add(module)
            if node.level:  # ``from . import store``: the names may be modules
                found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "pipeline" and len(parts) > 1 else None


@pytest.mark.parametrize("layer", sorted(RULES))
def test_each_layer_imports_only_what_it_may(layer):
    allowed, forbidden = RULES[layer]
    files = sorted((PACKAGE / layer).glob("*.py"))
    assert files
    for path in files:
        for module in _imports(path):
            top = module.split(".")[0]
            if top == "pipeline":
                assert _layer_of(module) in allowed or module.endswith("__future__"), (
                    f"{path.name} imports {module}"
                )
            else:
                assert top not in forbidden, f"{path.name} imports {module}"


def _private_uses(path: Path) -> list[str]:
    """Private names a file takes from the package: imported, or read off what it imported."""
    tree = ast.parse(path.read_text())
    uses, imported = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or node.module.startswith("pipeline")):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    uses.append(f"imports {alias.name}")
                imported.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pipeline"):
                    imported.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in imported
        ):
            uses.append(f"{node.value.id}.{node.attr}")
    return uses


@pytest.mark.parametrize("folder", ["pipeline", "tests", "benchmarks"])
def test_no_module_reaches_into_another_modules_private_names(folder):
    for path in sorted((PACKAGE.parent / folder).rglob("*.py")):
        assert not _private_uses(path), f"{path}: {_private_uses(path)}"


def test_the_rules_catch_forbidden_imports(tmp_path, monkeypatch):
    """The checker itself: an engine module importing the CLI, a kernel importing Dask."""
    monkeypatch.setattr("tests.test_layout.PACKAGE", tmp_path)
    for layer, code, seen in [
        ("engine", "from ..cli import main\n", "imports pipeline.cli"),
        ("kernels", "def f():\n    import dask.array\n", "imports dask.array"),
    ]:
        (tmp_path / layer).mkdir()
        (tmp_path / layer / "bad.py").write_text(code)
        with pytest.raises(AssertionError, match=seen):
            test_each_layer_imports_only_what_it_may(layer)
    (tmp_path / "user.py").write_text("from pipeline.kernels import gpu\ngpu._fused_kernel(2)\n")
    assert _private_uses(tmp_path / "user.py") == ["gpu._fused_kernel"]


def test_ruff_finds_the_code_clean_and_formatted():
    """pyproject's rules, complexity included (C901 at most 10, PLR0915), and its layout."""
    root = PACKAGE.parent
    folders = ["pipeline", "tests", "benchmarks"]
    for command in (["check", *folders], ["format", "--check", *folders]):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *command], cwd=root, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr


LONG_FUNCTION_LINES = 65


def test_long_functions_say_why_in_their_docstring():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                reason = "Long because" in (ast.get_docstring(node) or "")
                assert length <= LONG_FUNCTION_LINES or reason, f"{path}: {node.name} {length}"


def _resolve(dotted: str) -> object:
    """The object a dotted name of the package names (ImportError/AttributeError if none)."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute)
        return found
    raise ImportError(dotted)


@pytest.mark.parametrize("document", ["README.md", "ARCHITECTURE.md", "docs/gpu.md"])
def test_the_documents_name_code_that_exists(document):
    """Every `pipeline.x.y` (or `engine.x`, `jobs.x`, ... in ARCHITECTURE.md) in backticks."""
    tops = {path.stem for path in PACKAGE.iterdir() if not path.name.startswith("_")}
    text = (PACKAGE.parent / document).read_text()
    names = set(re.findall(r"`((?:pipeline|[a-z]+)(?:\.[A-Za-z_]\w*)+)`", text))
    checked = 0
    for name in sorted(names):
        top = name.split(".")[0]
        if top == "pipeline" or top in tops:
            _resolve(name if top == "pipeline" else f"pipeline.{name}")
            checked += 1
    assert checked, document


def test_gpu_figures_in_the_documents_are_the_recorded_run():
    """docs/gpu.md holds the recorded H200 run's table as the benchmark prints it, and the
    README's GPU figures are that run's."""
    import json

    from benchmarks.gpu import table

    results = json.loads((PACKAGE.parent / "benchmarks/results-gpu.json").read_text())
    assert results["machine"]["gpu"] == "NVIDIA H200" and not results["errors"]
    docs = (PACKAGE.parent / "docs/gpu.md").read_text()
    assert table(results) in docs
    assert results["machine"]["date"] in docs
    b2, b3 = results["B2"], results["B3"]
    readme = " ".join((PACKAGE.parent / "README.md").read_text().split())
    quoted = [
        f"{b2['d2']['fused_pairs_per_s']:.1e} Gaussian pair evaluations".replace("e+", "e"),
        f"in {b3['pipeline_cupy_binned_s']:.3f} s, {b3['speedup_cupy_binned_vs_sklearn']:.0f}x",
        f"{b3['pipeline_cupy_auto_s']:.1f} s, {b3['speedup_cupy_auto_vs_sklearn']:.1f}x",
        f"seed job {results['B1']['engine_ms']:.1f} ms",
        f"on {results['machine']['date']}",
    ]
    assert [text for text in quoted if text not in readme] == []
