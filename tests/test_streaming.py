"""Streaming compression of safetensors checkpoints: the same bytes as the in-memory path, for
any number of workers, one tensor at a time."""

import concurrent.futures
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import lscjax
from lscjax._src import compressed as compressed_module
from lscjax._src import parallel
from lscjax._src.cli import main
from lscjax._src.compressed import from_bytes, to_bytes
from lscjax._src.quant import kmeans as kmeans_module
from lscjax._src.streaming import SafetensorsSource, compress_file, global_threshold
from lscjax._src.tree import nest


def _flat(rng, ties: bool) -> dict:
    """A small transformer-like checkpoint, dotted names; `ties`: weights from {-3..3} / 10, so
    that the global threshold falls inside a run of equal magnitudes."""

    def draw(*shape):
        if ties:
            return (rng.integers(-3, 4, shape) / 10).astype(np.float32)
        return rng.normal(size=shape).astype(np.float32)

    flat = {"embed.embedding": draw(40, 32)}
    for i in range(2):
        flat[f"layers_{i}.attention.kernel"] = draw(32, 48)
        flat[f"layers_{i}.attention.bias"] = draw(48)
        flat[f"layers_{i}.mlp.kernel"] = draw(48, 80)
        flat[f"layers_{i}.norm.scale"] = np.ones(48, np.float32)
    return flat


def _write_multi_file(folder, flat: dict) -> None:
    """Hugging Face's layout: two shards and model.safetensors.index.json."""
    names = sorted(flat)
    shards = {"model-00001-of-00002.safetensors": names[::2]}
    shards["model-00002-of-00002.safetensors"] = names[1::2]
    for file, keys in shards.items():
        save_file({k: flat[k] for k in keys}, str(folder / file))
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = {}
    for kind in ("normal", "ties"):
        folder = tmp_path_factory.mktemp(kind)
        out[kind] = folder, _flat(np.random.default_rng(0), kind == "ties")
        _write_multi_file(folder, out[kind][1])
    return out


@pytest.fixture(scope="module")
def checkpoint(checkpoints):
    return checkpoints["normal"]


RECIPES = {
    "lsc": lscjax.recipe("lsc"),
    "deep_compression": lscjax.recipe("deep_compression"),
    "per_layer_float": lscjax.recipe(
        "lsc",
        sparsity={
            f"layers_{i}/{n}/kernel": 0.5 + 0.2 * i for i in range(2) for n in ("attention", "mlp")
        },
        bits=0,
        format="sri",
    ),
    "lsc_block4": lscjax.recipe("lsc", sparsity=0.6, format="lsc", format_options={"block": 4}),
}


@pytest.mark.parametrize(
    "kind,name",
    [
        ("normal", "lsc"),
        ("ties", "lsc"),
        ("normal", "deep_compression"),
        ("ties", "per_layer_float"),
    ],
)
def test_streaming_file_equals_in_memory_for_1_and_n_workers(checkpoints, tmp_path, kind, name):
    folder, flat = checkpoints[kind]
    expected = to_bytes(lscjax.compress(nest(flat, "."), RECIPES[name]))
    for workers in (1, 3):
        out = tmp_path / f"{workers}.lsc"
        compress_file(folder, out, RECIPES[name], workers=workers)
        assert out.read_bytes() == expected, workers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.lsc", "3.lsc"]  # no parts left


@pytest.mark.parametrize(
    "kind,name", [("normal", "lsc"), ("ties", "deep_compression"), ("normal", "lsc_block4")]
)
def test_tensors_cut_in_slices_give_the_same_file(checkpoints, tmp_path, monkeypatch, kind, name):
    """With slices of 100 elements every stage that works per slice (masks, pruning, k-means
    assignment, counts, LSC block planning, SRI entries, rANS ranks) runs on many slices,
    shared by 1 or 3 threads: the file equals the one made with every tensor in one slice."""
    monkeypatch.setattr(kmeans_module, "SAMPLE_POINTS", 500)  # the sliced host k-means
    folder, flat = checkpoints[kind]
    whole = to_bytes(lscjax.compress(nest(flat, "."), RECIPES[name]))
    monkeypatch.setattr(parallel, "SLICE_ELEMENTS", 100)
    assert len(parallel.row_spans(48 * 80, 1)) == 39
    assert to_bytes(lscjax.compress(nest(flat, "."), RECIPES[name])) == whole
    for workers in (1, 3):
        out = tmp_path / f"{workers}.lsc"
        compress_file(folder, out, RECIPES[name], workers=workers)
        assert out.read_bytes() == whole, workers


def test_cli_compress_streams_safetensors(checkpoint, tmp_path, capsys):
    folder, flat = checkpoint
    out = tmp_path / "cli.lsc"
    index = folder / "model.safetensors.index.json"
    assert main(["compress", str(index), "-o", str(out), "--workers", "2", "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert out.read_bytes() == to_bytes(lscjax.compress(nest(flat, "."), "lsc"))
    back = lscjax.load(out)
    np.testing.assert_array_equal(back["embed"]["embedding"], flat["embed.embedding"])


def test_global_threshold_matches_global_magnitude_with_ties():
    rng = np.random.default_rng(1)
    leaves = {f"l{i}": (rng.integers(0, 5, (30, 20 + i)) / 4).astype(np.float32) for i in range(4)}
    paths = sorted(leaves)
    for sparsity in (0.0, 0.37, 0.9, 0.999):
        masks = lscjax.prune.magnitude(
            {p: {"kernel": leaves[p]} for p in paths}, sparsity, scope="global"
        )

        # each leaf read in pieces of 7 elements, histogrammed by two threads
        def pieces(p):
            flat = leaves[p].reshape(-1)
            return [lambda s=s: flat[s : s + 7] for s in range(0, flat.size, 7)]

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            rule = global_threshold(pieces, paths, sparsity, pool, 2)
        for p in paths:
            np.testing.assert_array_equal(rule.mask(p, leaves[p]), np.asarray(masks[p]["kernel"]))


def test_source_reads_what_safetensors_wrote(tmp_path):
    rng = np.random.default_rng(3)
    flat = {
        "params/Dense_0/kernel": rng.normal(size=(3, 4)).astype(np.float32),
        "params/Dense_0/bias": rng.normal(size=4),  # float64
        "params/Embed_0/embedding": rng.normal(size=(5, 2)).astype(np.float16),
        "params/count": np.arange(3, dtype=np.int64),
    }
    save_file(flat, str(tmp_path / "one.safetensors"))
    for where in (tmp_path, tmp_path / "one.safetensors"):
        source = SafetensorsSource(where)
        assert list(source.paths) == [
            "Dense_0/bias",
            "Dense_0/kernel",
            "Embed_0/embedding",
            "count",
        ]
        for path in source.paths:
            expected = flat["params/" + path]
            got = source.read(path)
            assert got.dtype == expected.dtype
            np.testing.assert_array_equal(got, expected)
            pieces = [read() for read in source.pieces(path, 5)]
            assert all(p.size <= 5 and p.dtype == expected.dtype for p in pieces)
            np.testing.assert_array_equal(np.concatenate(pieces), expected.reshape(-1))


def test_source_refuses_a_bad_header(tmp_path):
    save_file({"a.kernel": np.ones((2, 2), np.float32)}, str(tmp_path / "x.safetensors"))
    data = (tmp_path / "x.safetensors").read_bytes()
    (tmp_path / "x.safetensors").write_bytes(data[:-4])  # the tensor runs past the end
    with pytest.raises(lscjax.FormatError, match="'a.kernel'"):
        SafetensorsSource(tmp_path / "x.safetensors")
    (tmp_path / "x.safetensors").write_bytes((10**6).to_bytes(8, "little") + b"{}")
    with pytest.raises(lscjax.FormatError, match="does not fit"):
        SafetensorsSource(tmp_path / "x.safetensors")


def test_bad_inputs_are_clear_errors(checkpoint, tmp_path):
    folder, _ = checkpoint
    with pytest.raises(lscjax.LscError, match="workers"):
        compress_file(folder, tmp_path / "x.lsc", "lsc", workers=0)
    with pytest.raises(lscjax.LscError, match="admm"):
        compress_file(folder, tmp_path / "x.lsc", lscjax.recipe("lsc", prune="admm"))
    with pytest.raises(lscjax.LscError, match="quant='rdq'"):
        compress_file(folder, tmp_path / "x.lsc", lscjax.recipe("lsc", quant="rdq", target_bits=3))
    bad = {"a.kernel": np.ones((3, 4), np.float32), "b.kernel": np.ones((4, 2), np.float32)}
    bad["b.kernel"][1, 1] = np.nan
    save_file(bad, str(tmp_path / "nan.safetensors"))
    with pytest.raises(lscjax.LscError, match="'b/kernel'.*NaN"):
        compress_file(tmp_path / "nan.safetensors", tmp_path / "x.lsc", "lsc")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a.kernel": "missing.safetensors"}})
    )
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        SafetensorsSource(broken)
    (broken / "model.safetensors.index.json").write_text("[]")
    with pytest.raises(lscjax.FormatError, match="index"):
        SafetensorsSource(broken)


def test_sampled_kmeans_assigns_every_weight_its_nearest_centroid(monkeypatch):
    monkeypatch.setattr(kmeans_module, "SAMPLE_POINTS", 500)
    rng = np.random.default_rng(2)
    w = rng.normal(size=(60, 70)).astype(np.float32)
    w[rng.random(w.shape) < 0.3] = 0.0
    key = jax.random.key(0)
    q = kmeans_module.kmeans_leaf(w, 4, init="linear", iters=20, key=key)
    again = kmeans_module.kmeans_leaf(w, 4, init="linear", iters=20, key=key)
    codes, book = np.asarray(q.codes), np.asarray(q.codebook)
    np.testing.assert_array_equal(codes, np.asarray(again.codes))  # deterministic sample
    assert book[0] == 0.0 and np.all(codes[w == 0] == 0) and np.all(codes[w != 0] > 0)
    distance = np.abs(w[w != 0][:, None] - book[None, 1:])
    np.testing.assert_array_equal(codes[w != 0] - 1, np.argmin(distance, axis=1))
    assert book[1:].min() >= w.min() and book[1:].max() <= w.max()


def test_load_streams_each_layout_equal_to_the_in_memory_read(checkpoint, tmp_path):
    folder, _ = checkpoint
    out = tmp_path / "m.lsc"
    compress_file(folder, out, "lsc", workers=1)
    data = out.read_bytes()
    model = from_bytes(data)
    for layout, want in (("quantized", model.quantized_params()), ("dense", model.params())):
        got = lscjax.load(out, layout=layout)
        assert jax.tree.structure(got) == jax.tree.structure(want), layout
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert type(a) is type(b) and a.dtype == b.dtype
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    broken = bytearray(data)
    broken[-1] ^= 1  # the last section's payload
    (tmp_path / "broken.lsc").write_bytes(bytes(broken))
    with pytest.raises(lscjax.FormatError, match="CRC32 mismatch"):
        lscjax.load(tmp_path / "broken.lsc", layout="quantized")
    (tmp_path / "short.lsc").write_bytes(data[:-1])
    with pytest.raises(lscjax.FormatError, match="sections declare"):
        lscjax.load(tmp_path / "short.lsc")


def test_hugging_face_checkpoint_streams_to_the_in_memory_bytes(tmp_path):
    fixture = Path(__file__).parent / "fixtures" / "tiny_bert" / "model.safetensors"
    ckpt = lscjax.read_checkpoint(fixture)
    assert ckpt.layout is not None  # PyTorch layout, converted
    expected = to_bytes(lscjax.compress(ckpt.params, "lsc", layout=ckpt.layout))
    _write_multi_file(tmp_path, load_file(str(fixture)))  # and as two shards with an index
    for source, workers in ((fixture, 1), (tmp_path, 2)):
        out = tmp_path / f"{workers}.lsc"
        compress_file(source, out, "lsc", workers=workers)
        assert out.read_bytes() == expected, source
    back = lscjax.load(tmp_path / "1.lsc", layout="model")
    assert back.meta["layout"] == ckpt.layout
    up = "encoder/layer/0/intermediate/dense/kernel"  # nn.Linear [64, 32] -> kernel [32, 64]
    assert back.encoded[up].quantized.shape == (32, 64)
    dense = SafetensorsSource(tmp_path).read(up)
    np.testing.assert_array_equal(dense, load_file(str(fixture))[ckpt.layout[up]["source"]].T)
    source = SafetensorsSource(fixture, layout="flax")  # names read as they are
    assert source.layout is None and "encoder/layer/0/attention/self/query/weight" in source.paths
    with pytest.raises(lscjax.LscError, match="layout must be one of"):
        SafetensorsSource(fixture, layout="pytorch")


def test_block_sparse_load_serves_each_tensor_as_it_is_parsed(checkpoint, tmp_path, monkeypatch):
    """`load(layout="block_sparse")` equals `CompressedModel.block_sparse_params`, and each
    encoded leaf is served before the next section is parsed (one decoded tensor at a time)."""
    folder, _ = checkpoint
    out = tmp_path / "m.lsc"
    compress_file(folder, out, lscjax.recipe("lsc", format_options={"block": 8}), workers=1)
    model = from_bytes(out.read_bytes())
    events = []
    parse, server = compressed_module.parse, compressed_module.server

    def logged_parse(data, budget):
        events.append("parse")
        return parse(data, budget)

    def logged_server(*args, **kwargs):
        serve = server(*args, **kwargs)
        return lambda path, enc: events.append("serve") or serve(path, enc)

    monkeypatch.setattr(compressed_module, "parse", logged_parse)
    monkeypatch.setattr(compressed_module, "server", logged_server)
    for options in ({"max_density": 1.0}, {"where": lambda p, _: "layers_0" in p}):
        events.clear()
        got = lscjax.load(out, layout="block_sparse", **options)
        assert events == ["parse", "serve"] * len(model.encoded)
        want = model.block_sparse_params(**options)
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
