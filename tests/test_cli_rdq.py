"""`lscjax compress --target-bits / --target-distortion / --target-size`: rdq at the lam that meets
the target;
`--per-channel`: a k-means codebook per output channel, in memory and streamed."""

import numpy as np
import pytest

import lscjax
from lscjax._src.cli import main


def test_compress_to_a_target_with_rdq(tmp_path, capsys):
    """--target-bits: the quantized layers' encoded bits per weight just within the target;
    --target-distortion: their relative MSE just within it."""
    rng = np.random.default_rng(0)
    flat = {
        "Dense_0.kernel": rng.normal(size=(64, 48)).astype(np.float32),
        "Dense_0.bias": np.zeros(48, np.float32),
        "Dense_1.kernel": rng.laplace(size=(48, 16)).astype(np.float32),
    }
    np.savez(tmp_path / "p.npz", **flat)
    out = tmp_path / "p.lsc"
    args = ["compress", str(tmp_path / "p.npz"), "-o", str(out), "--quiet", "--sparsity", "0"]
    args += ["--format", "dense", "--bits", "4"]
    kernels = {p: flat[p.replace("/", ".")] for p in ("Dense_0/kernel", "Dense_1/kernel")}
    weights = sum(w.size for w in kernels.values())
    assert main([*args, "--target-bits", "2.5"]) == 0
    model = lscjax.load(out, layout="model")
    assert model.meta["recipe"]["quant"] == "rdq"
    bits = 8 * sum(len(model.encoded[p].to_bytes()) for p in kernels) / weights
    assert 2.3 < bits <= 2.5
    assert main([*args, "--target-distortion", "0.05"]) == 0
    params = lscjax.load(out)
    error = sum(
        np.sum((np.asarray(params[p.split("/")[0]]["kernel"]) - w) ** 2) for p, w in kernels.items()
    )
    spread = sum(w.size * np.var(w) for w in kernels.values())
    assert 0.04 < error / spread <= 0.05
    capsys.readouterr()


def test_compress_per_channel_codebooks(tmp_path, capsys):
    """--per-channel: every kernel's channel takes at most 2**bits values of its own codebook,
    from an .npz (in memory) and from safetensors (streamed), with the same bytes."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    w = (rng.normal(size=(40, 12)) * np.geomspace(0.01, 1, 12)).astype(np.float32)
    np.savez(tmp_path / "p.npz", **{"Dense_0.kernel": w})
    save_file({"Dense_0.kernel": w}, str(tmp_path / "p.safetensors"))
    loaded = {}
    for source in ("p.npz", "p.safetensors"):
        out = tmp_path / f"{source}.lsc"
        args = ["compress", str(tmp_path / source), "-o", str(out), "--quiet", "--sparsity", "0"]
        assert main([*args, "--bits", "2", "--per-channel"]) == 0
        model = lscjax.load(out, layout="model")
        assert model.encoded["Dense_0/kernel"].quantized.codebook.shape == (12, 4)
        loaded[source] = np.asarray(lscjax.load(out)["Dense_0"]["kernel"])
    np.testing.assert_array_equal(loaded["p.npz"], loaded["p.safetensors"])
    got = loaded["p.npz"]
    assert max(len(np.unique(got[:, c])) for c in range(12)) <= 4
    # per-channel codebooks follow each channel's scale: the small channels are not flattened
    relative = np.sum((got - w) ** 2, axis=0) / np.sum(w**2, axis=0)
    assert relative.max() < 0.2
    capsys.readouterr()


def test_compress_to_a_file_size_with_rdq(tmp_path, capsys):
    """--target-size: the whole file fits the bytes asked for and uses most of them; a larger
    size gives less error; a size below the unquantized leaves is refused, naming them."""
    rng = np.random.default_rng(2)
    flat = {
        "Dense_0.kernel": rng.normal(size=(96, 64)).astype(np.float32),
        "Dense_0.bias": rng.normal(size=64).astype(np.float32),
        "Dense_1.kernel": rng.laplace(size=(64, 32)).astype(np.float32),
    }
    np.savez(tmp_path / "p.npz", **flat)
    out = tmp_path / "p.lsc"
    args = ["compress", str(tmp_path / "p.npz"), "-o", str(out), "--quiet", "--sparsity", "0"]
    args += ["--format", "dense", "--bits", "6"]
    errors = []
    for size in (1500, 3000):
        assert main([*args, "--target-size", str(size)]) == 0
        assert 0.85 * size < out.stat().st_size <= size
        params = lscjax.load(out)
        errors.append(
            sum(
                np.sum((np.asarray(params[k.split(".")[0]]["kernel"]) - w) ** 2)
                for k, w in flat.items()
                if k.endswith("kernel")
            )
        )
        np.testing.assert_array_equal(params["Dense_0"]["bias"], flat["Dense_0.bias"])
    assert errors[1] < errors[0]
    assert main([*args, "--target-size", "300"]) == 1
    assert "target_size 300 bytes" in capsys.readouterr().err


def test_relative_to_selection_meets_the_distortion_in_fewer_bytes(tmp_path, capsys):
    """--relative-to selection: the same --target-distortion (over all quantized layers) in a
    smaller file than each layer relative to itself, on layers whose scales differ 10x; the
    choice is recorded in the file's recipe; a recipe with it but without rdq is refused."""
    rng = np.random.default_rng(3)
    flat = {
        "Dense_0.kernel": rng.normal(size=(96, 64)).astype(np.float32),
        "Dense_1.kernel": (0.1 * rng.normal(size=(64, 64))).astype(np.float32),
    }
    np.savez(tmp_path / "p.npz", **flat)
    spread = sum(w.size * np.var(w) for w in flat.values())
    args = ["compress", str(tmp_path / "p.npz"), "--quiet", "--sparsity", "0"]
    args += ["--format", "dense", "--bits", "8", "--target-distortion", "0.002"]
    sizes = {}
    for relative_to in ("layer", "selection"):
        out = tmp_path / f"{relative_to}.lsc"
        assert main([*args, "-o", str(out), "--relative-to", relative_to]) == 0
        assert lscjax.load(out, layout="model").meta["recipe"]["relative_to"] == relative_to
        params = lscjax.load(out)
        error = sum(
            np.sum((np.asarray(params[k.split(".")[0]]["kernel"]) - w) ** 2)
            for k, w in flat.items()
        )
        assert error / spread <= 0.002
        sizes[relative_to] = out.stat().st_size
    assert sizes["selection"] < 0.9 * sizes["layer"], sizes
    with pytest.raises(lscjax.LscError, match="relative_to applies to quant='rdq'"):
        lscjax.Recipe("r", sparsity=0.0, relative_to="selection")
    with pytest.raises(lscjax.LscError, match="relative_to must be one of"):
        lscjax.Recipe("r", sparsity=0.0, quant="rdq", target_bits=3.0, relative_to="model")
    capsys.readouterr()
