"""The layering of lscjax/_src (docs/architecture.md), checked on the imports of every module.

An AST walk collects every import of every module (also those inside functions) and checks it
against the forbidden edges; the checker itself is tested on a synthetic tree with one violating
import per rule.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "lscjax" / "_src"
STAGES = ("prune", "quant", "coding", "sparse", "kernels", "train", "flax")
APP = ("loop", "models", "demo", "cli", "compress", "compressed")
# (importing package or module of lscjax._src, forbidden targets): a target is a module of
# lscjax._src ("flax" is the Flax integration) or, with "lib:", a third-party package.
RULES = (
    ("kernels", ("flax", "coding", "lib:flax")),
    ("coding", ("sparse", "flax", "lib:flax")),
    ("prune", ("coding", "flax", "lib:flax")),
    ("quant", ("coding", "flax", "lib:flax")),
    ("tree", (*STAGES, *APP, "lib:flax")),
    ("errors", (*STAGES, *APP, "lib:flax")),
    ("ans_model", (*STAGES, *APP, "lib:flax")),
    ("parallel", (*STAGES, *APP, "lib:flax")),
    ("train", (*APP, "flax", "lib:flax")),
)


def _module(path: Path, root: Path) -> str:
    """'lscjax/_src/prune/block.py' -> 'prune.block' (relative to `root`, lscjax/_src)."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path) -> set[str]:
    """Every module `path` imports, as absolute dotted names (relative imports resolved)."""
    package = _module(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(["lscjax", "_src", *package[: len(package) - node.level + 1]])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def _forbidden(target: str, rule: str) -> bool:
    if rule.startswith("lib:"):
        lib = rule[4:]
        return target == lib or target.startswith(lib + ".")
    name = f"lscjax._src.{rule}"
    return target == name or target.startswith(name + ".")


def violations(root: Path) -> list[tuple[str, str]]:
    """(module, imported module) for every import of a module under `root` that a rule forbids."""
    found = []
    for path in sorted(root.rglob("*.py")):
        module = _module(path, root)
        for source, targets in RULES:
            if module != source and not module.startswith(source + "."):
                continue
            for target in sorted(imports(path, root)):
                if any(_forbidden(target, rule) for rule in targets):
                    found.append((module, target))
    return found


def test_lscjax_keeps_its_layers():
    assert violations(SRC) == []


def _edges():
    for source, targets in RULES:
        for rule in targets:
            yield source, rule


@pytest.mark.parametrize("source, rule", list(_edges()), ids=lambda v: str(v))
@pytest.mark.parametrize("where", ["top", "function", "relative"])
def test_checker_finds_each_forbidden_edge(tmp_path, source, rule, where):
    """A synthetic tree with one forbidden import (at module level, inside a function, or
    relative) is reported, and the same tree without it is not."""
    root = tmp_path / "lscjax" / "_src"
    module = root / (f"{source}/bad.py" if source not in ("tree", "errors") else f"{source}.py")
    module.parent.mkdir(parents=True, exist_ok=True)
    (root / "__init__.py").write_text("")
    if module.parent != root:
        (module.parent / "__init__.py").write_text("")
    if rule.startswith("lib:"):
        target = f"{rule[4:]}.linen"
        statement = f"import {target}"
    elif where == "relative":
        dots = "." if module.parent == root else ".."
        target = f"lscjax._src.{rule}"
        statement = f"from {dots} import {rule}"
    else:
        target = f"lscjax._src.{rule}"
        statement = f"from {target} import thing"
    if where == "function":
        statement = f"def f():\n    {statement}\n"
    module.write_text("import numpy as np\n")
    assert violations(root) == []
    module.write_text(f"import numpy as np\n{statement}\n")
    found = violations(root)
    assert found and all(m == _module(module, root) for m, _ in found)
    assert any(t == target or t.startswith(target + ".") for _, t in found), found
