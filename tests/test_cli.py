"""The `lscjax` command: exit codes, one-line errors, checkpoints in PyTorch layout, recipe files."""

import json
import subprocess

import flax.linen as nn
import jax
import numpy as np
import pytest

import lscjax
from lscjax._src.cli import main
from lscjax.flax import DEFAULT_MAX_DENSITY

save_file = pytest.importorskip("safetensors.numpy").save_file


def test_bad_data_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["demo", "--quiet", "--data", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith("lscjax demo: error:") and "train-images-idx3-ubyte" in err


def test_demo_help_says_the_default_output_is_temporary(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "temporary file, deleted when the demo ends" in " ".join(capsys.readouterr().out.split())


def test_square_torch_weight_serves_x_times_w_transposed(tmp_path, capsys):
    """nn.Linear(16, 16) in a safetensors file -> compress -> .lsc -> served by nn.Dense."""
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(16, 16)).astype(np.float32), rng.normal(size=16).astype(np.float32)
    save_file({"fc.weight": w, "fc.bias": b}, tmp_path / "m.safetensors")
    args = ["compress", str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "m.lsc")]
    assert main([*args, "--sparsity", "0.5", "--bits", "0", "--quiet"]) == 0
    magnitude = np.abs(w)
    pruned = np.where(magnitude >= np.sort(magnitude, axis=None)[128], w, 0)  # larger half
    x = rng.normal(size=(3, 16)).astype(np.float32)
    expected = x @ pruned.T + b  # what PyTorch's Linear computes with the pruned weight
    served = lscjax.load(tmp_path / "m.lsc", layout="block_sparse", max_density=1.0)
    assert isinstance(served["fc"]["kernel"], lscjax.sparse.BlockSparse)
    serve = jax.jit(lscjax.flax.compressed_apply(nn.Dense(16).apply))
    y = np.asarray(serve({"params": served["fc"]}, x))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(y, x @ pruned + b, atol=1e-2)  # the untransposed product differs
    model = lscjax.load(tmp_path / "m.lsc", layout="model")
    assert model.meta["layout"]["fc/kernel"]["transform"] == "transpose"


def tiny_bert_state_dict(rng):
    """A BERT-shaped PyTorch state dict (2 layers, hidden 32, vocabulary 300)."""
    f32 = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    sd = {
        "embeddings.position_ids": np.arange(16, dtype=np.int64)[None],
        "embeddings.word_embeddings.weight": f32(300, 32),
        "embeddings.position_embeddings.weight": f32(16, 32),
        "embeddings.LayerNorm.weight": f32(32),
        "embeddings.LayerNorm.bias": f32(32),
    }
    for i in range(2):
        pre = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value"):
            sd |= {pre + name + ".weight": f32(32, 32), pre + name + ".bias": f32(32)}
        sd |= {
            pre + "attention.output.dense.weight": f32(32, 32),
            pre + "attention.output.LayerNorm.weight": f32(32),
            pre + "intermediate.dense.weight": f32(64, 32),
            pre + "intermediate.dense.bias": f32(64),
            pre + "output.dense.weight": f32(32, 64),
        }
    return sd


RECIPE = """
recipe = "lsc"
where = ["kernel$", "embedding$"]
sparsity = 0.5
bits = 5

[[rules]]
pattern = "word_embeddings"
sparsity = 0.0
bits = 4

[[rules]]
pattern = "position_embeddings"
keep_dense = true

[[rules]]
pattern = "attention/.*/kernel$"
sparsity = 0.75
bits = 4
"""


ATTENTION_QUERY = "encoder/layer/1/attention/self/query/kernel"
WORDS = "embeddings/word_embeddings/embedding"


def test_hf_checkpoint_with_recipe_file_and_report(tmp_path, capsys):
    sd = tiny_bert_state_dict(np.random.default_rng(0))
    save_file(sd, tmp_path / "model.safetensors")
    (tmp_path / "recipe.toml").write_text(RECIPE)
    out = tmp_path / "m.lsc"
    args = ["compress", str(tmp_path / "model.safetensors"), "-o", str(out), "--quiet"]
    assert main([*args, "--recipe-file", str(tmp_path / "recipe.toml")]) == 0
    capsys.readouterr()
    assert (tmp_path / "model.safetensors").stat().st_size > 4 * out.stat().st_size
    dense = lscjax.load(out)
    words = np.asarray(dense["embeddings"]["word_embeddings"]["embedding"])
    assert np.count_nonzero(words) == words.size and len(np.unique(words)) <= 16
    query = np.asarray(dense["encoder"]["layer"]["1"]["attention"]["self"]["query"]["kernel"])
    source = sd["encoder.layer.1.attention.self.query.weight"]
    kept = np.abs(source.T) >= np.sort(np.abs(source), axis=None)[768]  # largest 25%
    np.testing.assert_array_equal(query != 0, kept)  # the pruned positions, transposed
    ffn = np.asarray(dense["encoder"]["layer"]["0"]["intermediate"]["dense"]["kernel"])
    assert ffn.shape == (32, 64) and np.count_nonzero(ffn) == 1024
    np.testing.assert_array_equal(
        dense["embeddings"]["position_embeddings"]["embedding"],
        sd["embeddings.position_embeddings.weight"],
    )
    assert main(["report", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    skipped = {r["path"]: r for r in report["skipped"]}
    assert skipped["embeddings/position_embeddings/embedding"]["reason"] == (
        "kept dense (rule 'position_embeddings')"
    )
    assert skipped["embeddings/LayerNorm/scale"] == {
        "path": "embeddings/LayerNorm/scale",
        "shape": [32],
        "dtype": "float32",
        "bytes": 128,
        "reason": "not selected",
    }
    assert len(report["layers"]) + len(skipped) == len(sd)
    assert report["layout"]["encoder/layer/0/output/dense/kernel"] == {
        "source": "encoder.layer.0.output.dense.weight",
        "transform": "transpose",
        "source_shape": [32, 64],
    }
    # served as lscjax.load(..., layout="block_sparse") serves them: every 32x32 kernel of
    # this tiny model is a single block, non-zero, so dense by default and block-sparse when
    # the density bound is lifted; the quantized word table is looked up from its codes
    serving = {r["path"]: r for r in report["serving"]}
    assert serving[ATTENTION_QUERY]["served"] == "dense"
    assert (
        serving[ATTENTION_QUERY]["why"]
        == f"block density 1.00 > {DEFAULT_MAX_DENSITY}: faster dense"
    )
    assert serving[WORDS]["served"].startswith("codes lookup")
    assert main(["report", str(out), "--json", "--max-density", "1"]) == 0
    lifted = {r["path"]: r for r in json.loads(capsys.readouterr().out)["serving"]}
    assert lifted[ATTENTION_QUERY]["served"] == "block-sparse 4-bit codes"
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "stored as they are (not compressed)" in text and "kept dense (rule" in text
    assert "encoder.layer.0.output.dense.weight" in text and "transpose" in text
    assert "served by lscjax.load(file, layout='block_sparse') as:" in text


def test_dotted_npz_and_json_recipe_file_compress(tmp_path, capsys):
    rng = np.random.default_rng(0)
    flat = {
        "Dense_0.kernel": rng.normal(size=(64, 48)).astype(np.float32),
        "Dense_0.bias": np.zeros(48, np.float32),
        "Dense_1.kernel": rng.normal(size=(48, 10)).astype(np.float32),
    }
    np.savez(tmp_path / "p.npz", **flat)
    (tmp_path / "r.json").write_text(json.dumps({"recipe": "deep_compression", "sparsity": 0.9}))
    out = tmp_path / "p.lsc"
    args = ["compress", str(tmp_path / "p.npz"), "-o", str(out), "--quiet"]
    assert main([*args, "--recipe-file", str(tmp_path / "r.json")]) == 0
    capsys.readouterr()
    model = lscjax.load(out, layout="model")
    assert sorted(model.encoded) == ["Dense_0/kernel", "Dense_1/kernel"]
    assert model.meta["recipe"]["name"] == "deep_compression"
    assert (tmp_path / "p.npz").stat().st_size > 8 * out.stat().st_size
    kernel = np.asarray(model.params()["Dense_0"]["kernel"])
    assert np.count_nonzero(kernel) + np.count_nonzero(model.params()["Dense_1"]["kernel"]) == (
        round(0.1 * (64 * 48 + 48 * 10))
    )


def test_where_regex_is_searched_and_repeatable(tmp_path, capsys):
    rng = np.random.default_rng(0)
    flat = {
        "enc/kernel": rng.normal(size=(32, 32)).astype(np.float32),
        "emb/embedding": rng.normal(size=(40, 32)).astype(np.float32),
        "enc/bias": np.zeros(32, np.float32),
    }
    np.savez(tmp_path / "p.npz", **flat)
    out = tmp_path / "p.lsc"
    args = ["compress", str(tmp_path / "p.npz"), "-o", str(out), "--quiet", "--sparsity", "0.5"]
    assert main([*args, "--where", "^enc/k", "--where", "embedding$"]) == 0
    assert sorted(lscjax.load(out, layout="model").encoded) == ["emb/embedding", "enc/kernel"]
    assert main([*args, "--where", "mb/emb"]) == 0  # a search, not a full match
    assert sorted(lscjax.load(out, layout="model").encoded) == ["emb/embedding"]


def test_empty_selection_is_an_error_listing_leaves(tmp_path, capsys):
    np.savez(tmp_path / "p.npz", **{"fc/weight": np.ones((4, 4), np.float32)})
    args = ["compress", str(tmp_path / "p.npz"), "-o", str(tmp_path / "p.lsc"), "--quiet"]
    for extra in ([], ["--where", "nothing"]):
        assert main([*args, *extra]) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "selects none of the 1 leaves: 'fc/weight' [4, 4]" in err
        assert "--where REGEX" in err
    assert not (tmp_path / "p.lsc").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--format", "foo"], "unknown format 'foo'"),
        (["--sparsity", "1.5"], r"sparsity must be in [0, 1), got 1.5"),
        (["--where", "("], "not a regular expression"),
    ],
)
def test_bad_settings_refused_before_any_work(tmp_path, capsys, extra, message):
    # the checkpoint does not exist: an error about the setting shows it was checked first
    args = ["compress", str(tmp_path / "absent.npz"), "-o", str(tmp_path / "p.lsc"), "--quiet"]
    assert main([*args, *extra]) == 1
    assert message in capsys.readouterr().err


def test_bad_recipe_files(tmp_path, capsys):
    args = ["compress", str(tmp_path / "absent.npz"), "-o", str(tmp_path / "p.lsc")]
    cases = {
        "a.toml": ("sparsity = [", "recipe file"),
        "b.toml": ("sparsityy = 0.5", "unknown key(s) ['sparsityy']"),
        "c.json": ('{"rules": [{"pattern": "x", "bits": 40}]}', "rule 'x': bits must be"),
        "d.toml": ("where = 3", "'where' must be a list"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        assert main([*args, "--recipe-file", str(tmp_path / name)]) == 1
        assert message in capsys.readouterr().err


def test_torch_pickle_refused(tmp_path, capsys):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02")
    args = ["compress", str(tmp_path / "pytorch_model.bin"), "-o", str(tmp_path / "m.lsc")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "never opens them" in err and "safetensors" in err


def test_bench_exits_non_zero_naming_the_failed_benchmarks(monkeypatch, capsys):
    ran = []

    def fake_run(cmd, **kwargs):
        ran.append(cmd[1].rsplit("/", 1)[-1])
        return subprocess.CompletedProcess(cmd, 1 if "codecs" in cmd[1] else 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert main(["bench", "--quick", "--only", "codecs", "matmul"]) == 1
    assert ran == ["codecs.py", "matmul.py"]  # every benchmark runs, then the exit status
    err = capsys.readouterr().err
    assert "codecs" in err and "matmul" not in err
    assert main(["bench", "--quick", "--only", "matmul"]) == 0
