"""End to end: train a tiny model, compress, save, load, serve from BlockSparse; file checks."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lscjax
from lscjax import FormatError, LscError
from lscjax._src.checkpoints import flatten
from lscjax._src.cli import main as cli_main
from lscjax._src.compressed import from_bytes, to_bytes
from lscjax._src.container import PREFIX_BYTES
from lscjax._src.sparse.random import random_block_kernel
from lscjax.models import LeNet300
from lscjax.sparse import BlockSparse

pytestmark = pytest.mark.slow  # the module's fixtures train LeNet models


@pytest.fixture(scope="module")
def trained():
    """LeNet-300-100 trained briefly on the first 3,000 training images (real, non-random weights)."""
    x, y = lscjax.data.fashion_mnist("train")
    x, y = x[:3000], y[:3000]
    model = LeNet300()
    apply_fn = lambda p, xb: model.apply({"params": p}, xb)  # noqa: E731
    params = model.init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))["params"]
    params, _ = lscjax.models.fit(apply_fn, params, optax.adam(1e-3), x, y, steps=150)
    return model, apply_fn, params, x, y


@pytest.fixture(scope="module")
def compressed(trained):
    model, apply_fn, params, x, y = trained
    batches = [(lscjax.models.prepare(x[i : i + 100]), y[i : i + 100]) for i in range(0, 3000, 100)]
    retrain = lscjax.Retrain(lscjax.models.classifier_loss(apply_fn), batches, steps=30)
    return lscjax.compress(params, "lsc", retrain=retrain)


def test_serve_from_file_matches_decoded_dense(trained, compressed, tmp_path):
    model, apply_fn, params, x, y = trained
    size = lscjax.save(tmp_path / "m.lsc", compressed)
    assert size == (tmp_path / "m.lsc").stat().st_size
    dense = lscjax.load(tmp_path / "m.lsc")
    sparse = lscjax.load(tmp_path / "m.lsc", layout="block_sparse", max_density=1.0)
    serve = jax.jit(lscjax.flax.compressed_apply(model.apply))
    xb = lscjax.models.prepare(x[:256])
    logits_sparse = serve({"params": sparse}, xb)
    logits_dense = model.apply({"params": dense}, xb)
    np.testing.assert_allclose(logits_sparse, logits_dense, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(jnp.argmax(logits_sparse, -1), jnp.argmax(logits_dense, -1))
    # the recipe really compressed: 95% zeros over all kernels (one global threshold), and
    # at most 2**5 distinct non-zero values per 2-D kernel
    kernels = [np.asarray(dense[f"Dense_{i}"]["kernel"]) for i in range(3)]
    assert sum(int(np.count_nonzero(k)) for k in kernels) == round(0.05 * 266_200)
    assert all(len(np.unique(k[k != 0])) <= 32 for k in kernels)
    np.testing.assert_array_equal(dense["Dense_0"]["bias"], compressed.raw["Dense_0/bias"])


def test_unselected_leaves_stored_losslessly_without_retrain(trained):
    _, _, params, _, _ = trained
    model = lscjax.compress(params, lscjax.recipe("deep_compression", sparsity=0.9))
    restored = from_bytes(to_bytes(model)).params()
    for i in range(3):
        bias = np.asarray(params[f"Dense_{i}"]["bias"])
        assert restored[f"Dense_{i}"]["bias"].dtype == bias.dtype
        np.testing.assert_array_equal(restored[f"Dense_{i}"]["bias"], bias)
    assert {e.format for e in model.encoded.values()} == {"ri"}


def test_file_size_is_accounting_plus_headers(compressed):
    data = to_bytes(compressed)
    header_len = int.from_bytes(data[12:16], "little")
    sections = sum(len(e.to_bytes()) for e in compressed.encoded.values())
    raw = sum(a.nbytes for a in compressed.raw.values())
    assert len(data) == PREFIX_BYTES + header_len + sections + raw
    # each Encoded section is its accounted bits plus a fixed 6-byte header, rounded up to bytes
    for enc in compressed.encoded.values():
        assert len(enc.to_bytes()) == 6 + -(-enc.total_bits // 8)


def test_round_trip_bit_exact(compressed):
    again = from_bytes(to_bytes(compressed))
    assert to_bytes(again) == to_bytes(compressed)
    for path in compressed.encoded:
        a, b = compressed.leaf(path), again.leaf(path)
        np.testing.assert_array_equal(a.codes, b.codes)
        np.testing.assert_array_equal(a.codebook, b.codebook)


@pytest.fixture(scope="module")
def saved(compressed):
    return to_bytes(compressed)


def test_every_truncation_point_raises_format_error(saved):
    for cut in range(0, len(saved)):
        with pytest.raises(FormatError):
            from_bytes(saved[:cut])


@settings(max_examples=1000)
@given(st.data())
def test_random_byte_flips_raise_format_error(saved, data):
    corrupted = bytearray(saved)
    positions = data.draw(st.sets(st.integers(0, len(saved) - 1), min_size=1, max_size=3))
    for pos in positions:
        corrupted[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(FormatError):
        from_bytes(bytes(corrupted))


def test_cli_compress_and_report(trained, tmp_path, capsys):
    _, _, params, _, _ = trained
    np.savez(tmp_path / "p.npz", **flatten(params))
    assert (
        cli_main(["compress", str(tmp_path / "p.npz"), "-o", str(tmp_path / "p.lsc"), "--quiet"])
        == 0
    )
    capsys.readouterr()
    assert cli_main(["report", str(tmp_path / "p.lsc"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in report["layers"]] == [
        "Dense_0/kernel",
        "Dense_1/kernel",
        "Dense_2/kernel",
    ]
    assert report["total"]["file_bytes"] == (tmp_path / "p.lsc").stat().st_size
    assert report["total"]["kept"] == sum(r["kept"] for r in report["layers"])
    kept = sum(
        int(np.count_nonzero(w))
        for p, w in flatten(lscjax.load(tmp_path / "p.lsc")).items()
        if p.endswith("kernel")
    )
    assert report["total"]["kept"] == kept
    assert cli_main(["report", str(tmp_path / "p.lsc"), "--plot", str(tmp_path / "r.png")]) == 0
    text = capsys.readouterr().out
    assert "Dense_0/kernel" in text and "total" in text
    pytest.importorskip("matplotlib")
    png = (tmp_path / "r.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_cli_bad_input_one_line_error(tmp_path, capsys):
    (tmp_path / "bad.lsc").write_bytes(b"garbage file " * 4)
    assert cli_main(["report", str(tmp_path / "bad.lsc")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not an lscjax file" in err


@pytest.mark.parametrize("stored, serve, expect", [(16, None, 16), (16, 8, 8), (None, None, None)])
def test_block_sparse_layout_direct_or_reblocked(stored, serve, expect):
    rng = np.random.default_rng(0)
    params = {
        "Dense_0": {"kernel": rng.normal(size=(96, 40)).astype(np.float32)},
        "Dense_1": {"kernel": rng.normal(size=(40, 10)).astype(np.float32)},
    }
    options = {} if stored is None else {"block": stored}
    model = lscjax.compress(params, lscjax.recipe("lsc", sparsity=0.8, format_options=options))
    served = model.block_sparse_params(serve, max_density=1.0)
    dense = model.params()
    for name in params:
        kernel = served[name]["kernel"]
        stored_block = model.encoded[f"{name}/kernel"].options["block"]
        want = expect or (stored_block if stored_block <= 64 else 32)
        assert kernel.block == (want, want)
        np.testing.assert_array_equal(
            np.asarray(kernel.todense()), np.asarray(dense[name]["kernel"])
        )


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"path": "b", "kind": "raw", "dtype": "float32", "shape": [5]}, "needs 20 bytes"),
        ({"path": "b", "kind": "raw", "dtype": "object", "shape": [4]}, "unknown raw dtype"),
        ({"path": "b", "kind": "raw", "dtype": "float32", "shape": [-4]}, "dimension must be in"),
        ({"path": "b", "kind": "pickle"}, "unknown kind"),
    ],
)
def test_sections_with_valid_crcs_but_bad_contents(entry, message):
    from lscjax._src import container

    data = container.pack({}, [(entry, b"\x00" * 16)])  # CRCs are right: the checks behind them run
    with pytest.raises(FormatError, match=message):
        from_bytes(data)


@pytest.mark.parametrize("stored", [8, None])  # decoded straight to blocks, or re-blocked
def test_block_sparse_layout_max_density(stored, tmp_path):
    """Kernels storing more than `max_density` of their blocks are served dense (dequantized)."""
    rng = np.random.default_rng(1)
    params = {
        "Dense_0": {"kernel": random_block_kernel(rng, (96, 40), 8, 0.25)},
        "Dense_1": {"kernel": rng.normal(size=(40, 10)).astype(np.float32)},
    }
    options = {} if stored is None else {"block": stored}
    model = lscjax.compress(params, lscjax.recipe("lsc", sparsity=0.5, format_options=options))
    lscjax.save(tmp_path / "m.lsc", model)
    served = lscjax.load(tmp_path / "m.lsc", layout="block_sparse", block=8, max_density=0.5)
    dense = model.params()
    assert isinstance(served["Dense_0"]["kernel"], BlockSparse)
    assert served["Dense_0"]["kernel"].block_density <= 0.25
    assert not isinstance(served["Dense_1"]["kernel"], BlockSparse)  # all 10 blocks non-zero
    np.testing.assert_array_equal(served["Dense_1"]["kernel"], dense["Dense_1"]["kernel"])
    everything = model.block_sparse_params(8, max_density=1.0)
    assert isinstance(everything["Dense_1"]["kernel"], BlockSparse)
    with pytest.raises(LscError, match="max_density"):
        model.block_sparse_params(8, max_density=2)
