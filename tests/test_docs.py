"""The documentation runs: every fenced Python block of README.md and docs/, in order per page,
and every example in the public docstrings.

A page's blocks share one namespace, like a notebook, seeded with the small fixtures the pages
name without defining: a Linen CNN `net` with LeNet-5's layer names, its `params`, a batch `x` of
28 x 28 images, and `loss_fn` / `batches` for retraining. A block whose fence reads
```` ```python notest ```` is shown but not run; there are none, and the test fails if one appears
without being listed in NOT_RUN.
"""

import doctest
import functools
import importlib
import inspect
import re
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lscjax

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(
    str(p.relative_to(ROOT))
    for p in [ROOT / "README.md", *ROOT.glob("docs/**/*.md")]
    if "_build" not in p.parts
)
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
NOT_RUN: set[tuple[str, int]] = set()  # (page, block index) shown but deliberately not run


def python_blocks(page: str) -> list[tuple[str, str]]:
    """(info string after 'python', code) of each fenced Python block of `page`."""
    return [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer((ROOT / page).read_text())]


class Net(nn.Module):
    """LeNet-5's layer names (Conv_0, Conv_1, Dense_0, Dense_1) at a fraction of its size."""

    @nn.compact
    def __call__(self, x):
        x = nn.max_pool(nn.relu(nn.Conv(8, (5, 5), padding="VALID")(x)), (2, 2), (2, 2))
        x = nn.max_pool(nn.relu(nn.Conv(16, (5, 5), padding="VALID")(x)), (2, 2), (2, 2))
        x = nn.relu(nn.Dense(64)(x.reshape((x.shape[0], -1))))
        return nn.Dense(10)(x)


def fixtures() -> dict:
    """The names the pages use without defining them."""
    net = Net()
    x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1), jnp.float32)
    params = net.init(jax.random.key(0), x)["params"]
    labels = jnp.arange(4) % 10

    def loss_fn(params, batch):
        images, labels = batch
        logits = net.apply({"params": params}, images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return {"net": net, "params": params, "x": x, "loss_fn": loss_fn, "batches": [(x, labels)]}


def test_pages_with_code_are_found():
    """README and the quickstart have blocks, so the runner below cannot pass on an empty list."""
    assert len(python_blocks("README.md")) >= 1
    assert len(python_blocks("docs/quickstart.md")) >= 4
    assert FENCE.search("```python\nprint(1)\n```\n")


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)])
def test_python_blocks_run(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # blocks may write files (model.lsc)
    namespace = fixtures()
    for index, (info, code) in enumerate(python_blocks(page)):
        if info:
            assert info == "notest" and (page, index) in NOT_RUN, (
                f"{page} block {index}: fence 'python {info}' is neither run nor listed in NOT_RUN"
            )
            continue
        exec(compile(code, f"{page}[block {index}]", "exec"), namespace)
    if page in ("README.md", "docs/quickstart.md"):
        assert namespace["logits"].shape == (4, 10)
    if page == "docs/quickstart.md":  # the NNX block: the swapped model computes the pruned one
        mlp, x = namespace["mlp"], namespace["x"]
        np.testing.assert_allclose(namespace["logits"], mlp(x), rtol=1e-5, atol=1e-5)


PUBLIC_MODULES = sorted(
    "lscjax" if p.stem == "__init__" else f"lscjax.{p.stem}"
    for p in (ROOT / "src" / "lscjax").glob("*.py")
)


def public_objects() -> dict[str, object]:
    """Every name in the public modules' __all__ (modules themselves excluded), by full name."""
    objects = {}
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        for attr in module.__all__:
            obj = getattr(module, attr)
            if not inspect.ismodule(obj):
                objects[f"{name}.{attr}"] = obj
    return objects


def docstring_examples() -> list[doctest.DocTest]:
    """The doctests of the public objects' docstrings (methods of public classes included)."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = {}
    for name, obj in public_objects().items():
        for test in finder.find(obj, name, globs={}):
            if test.examples:
                tests[test.name] = test
    return [tests[name] for name in sorted(tests)]


@functools.cache
def example_globals() -> dict:
    """The names the docstring examples use without defining them (the Net of the pages)."""
    images = jax.random.randint(jax.random.key(2), (256, 28, 28), 0, 256).astype(jnp.uint8)
    net = Net()
    variables = net.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1), jnp.float32))
    kernel = np.array(jax.random.normal(jax.random.key(3), (96, 64)), np.float32)
    kernel[:32] = 0.0  # a zero block row, so the BlockSparse keeps fewer blocks than dense
    return {
        "lscjax": lscjax,
        "jax": jax,
        "jnp": jnp,
        "np": np,
        "optax": optax,
        "model": net,
        "variables": variables,
        "params": variables["params"],
        "apply_fn": lambda p, x: net.apply({"params": p}, x),
        "x": images,
        "y": jnp.arange(256, dtype=jnp.int32) % 10,
        "images": lscjax.models.prepare(images[:4]),
        "kernel": jnp.asarray(kernel),
        "input_ids": jnp.array([[2, 17, 43, 3], [2, 9, 3, 0]], jnp.int32),  # token ids [B, T]
        "attention_mask": jnp.array([[1, 1, 1, 1], [1, 1, 1, 0]], jnp.int32),
    }


def test_docstring_examples_are_found():
    names = [test.name for test in docstring_examples()]
    assert "lscjax.sparse.matmul" in names and "lscjax.quant.kmeans" in names, names


@pytest.mark.slow
@pytest.mark.parametrize("test", docstring_examples(), ids=lambda test: test.name)
def test_docstring_example_runs(test, tmp_path, monkeypatch):
    """Each example runs as written (a line marked ``# doctest: +SKIP`` is shown, not run).

    It runs in a folder holding the files the examples name: "all-MiniLM-L6-v2" is the tiny BERT
    fixture in Hugging Face's layout.
    """
    (tmp_path / "all-MiniLM-L6-v2").symlink_to(ROOT / "tests" / "fixtures" / "tiny_bert")
    monkeypatch.chdir(tmp_path)
    test.globs = dict(example_globals())  # each example rebinds names in its own copy
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    result = runner.run(test, out=lambda text: pytest.fail(text, pytrace=False))
    assert result.attempted > 0 and result.failed == 0
