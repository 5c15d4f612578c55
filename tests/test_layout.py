"""The package's layering rules (ARCHITECTURE.md), read from every module's imports."""

from __future__ import annotations

import ast
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


def test_no_module_reaches_into_another_modules_private_names():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or node.module == "pipeline"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path} imports {private} from {node.module}"


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
