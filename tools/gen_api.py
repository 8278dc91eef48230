"""Generate docs/api.md from the public modules' __all__ and docstrings.

python tools/gen_api.py          # rewrite docs/api.md
python tools/gen_api.py --check  # exit 1 if docs/api.md is out of date
"""

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

MODULES = [
    "lscjax",
    "lscjax.prune",
    "lscjax.train",
    "lscjax.quant",
    "lscjax.coding",
    "lscjax.sparse",
    "lscjax.flax",
    "lscjax.data",
    "lscjax.models",
]
OUT = Path(__file__).resolve().parents[1] / "docs" / "api.md"
# Types whose repr names a private module that moves between versions (JAX 0.10 / 0.11, Python
# 3.11 / 3.13), written by their public name so the reference reads the same everywhere.
PUBLIC_NAMES = {"jax.jaxlib._jax.Array": "jax.Array", "pathlib._local.Path": "pathlib.Path"}


def describe(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    lines = [f"## `{module_name}`", "", inspect.cleandoc(module.__doc__ or ""), ""]
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.ismodule(obj):
            continue
        kind = "class" if inspect.isclass(obj) else "function" if callable(obj) else "value"
        try:
            signature = str(inspect.signature(obj)) if callable(obj) else ""
            signature = re.sub(r" at 0x[0-9a-f]+", "", signature)  # reprs of default objects
            for private, public in PUBLIC_NAMES.items():
                signature = signature.replace(private, public)
        except (TypeError, ValueError):
            signature = "(...)"
        lines += [f"### `{module_name}.{name}{signature}`", "", f"*{kind}*", ""]
        doc = inspect.getdoc(obj)
        if doc:
            lines += ["```text", doc, "```", ""]
    return lines


def render() -> str:
    header = [
        "# API reference",
        "",
        "Generated from the docstrings by `python tools/gen_api.py`; do not edit by hand.",
        "",
    ]
    body = [line for name in MODULES for line in describe(name)]
    return "\n".join(header + body).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = render()
    if args.check:
        if OUT.read_text() != text:
            print("docs/api.md is out of date: run python tools/gen_api.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
