"""The public modules follow the house rule: lscjax/*.py only re-export names from lscjax._src
(explicitly, ``import x as x``), list exactly those names in __all__, and document each one."""

import ast
import importlib
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p for p in (ROOT / "src" / "lscjax").glob("*.py"))


def module_name(path: Path) -> str:
    return "lscjax" if path.stem == "__init__" else f"lscjax.{path.stem}"


def test_the_public_modules_are_found():
    names = {module_name(p) for p in MODULES}
    assert {"lscjax", "lscjax.prune", "lscjax.quant", "lscjax.sparse", "lscjax.flax"} <= names


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_module_only_reexports_from_src(path):
    """Every statement is a docstring, an explicit re-export ``from lscjax... import x as y``,
    an assignment to __all__ (or ``+=``) or __version__: no code of its own."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            assert node.module.startswith("lscjax"), ast.unparse(node)
            for alias in node.names:
                assert alias.asname is not None, f"{path.name}: {ast.unparse(node)}"
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            assert names in (["__all__"], ["__version__"]), ast.unparse(node)
        else:
            is_docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            assert is_docstring, f"{path.name}: {ast.unparse(node)[:80]}"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_all_lists_exactly_the_reexported_names(path):
    module = importlib.import_module(module_name(path))
    assert len(module.__all__) == len(set(module.__all__)), "duplicate names in __all__"
    imported = {
        alias.asname
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert set(module.__all__) == imported
    for name in module.__all__:
        obj = getattr(module, name)  # raises if __all__ names something missing
        if inspect.ismodule(obj):
            assert obj.__name__ == f"lscjax.{name}"
            continue
        assert inspect.getdoc(obj), f"{module.__name__}.{name} has no docstring"
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__.startswith("lscjax._src."), (name, obj.__module__)
