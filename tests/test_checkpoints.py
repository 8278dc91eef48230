"""Reading params from npz, safetensors, Flax msgpack and orbax checkpoints."""

from pathlib import Path

import jax
import numpy as np
import pytest
from flax import serialization

from lscjax import FormatError, LscError
from lscjax._src.checkpoints import check_layout, flatten, nest, read_checkpoint, read_params


@pytest.fixture
def params():
    rng = np.random.default_rng(0)
    return {
        "Conv_0": {
            "kernel": rng.normal(size=(5, 5, 1, 4)).astype(np.float32),
            "bias": rng.normal(size=4).astype(np.float32),
        },
        "Dense_0": {"kernel": rng.normal(size=(8, 3)).astype(np.float32)},
    }


def assert_same(a, b):
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_npz(tmp_path, params):
    np.savez(tmp_path / "p.npz", **flatten(params))
    assert_same(read_params(tmp_path / "p.npz"), params)


@pytest.mark.parametrize("sep", ["/", "."])
def test_safetensors(tmp_path, params, sep):
    save_file = pytest.importorskip("safetensors.numpy").save_file
    save_file(
        {k.replace("/", sep): v for k, v in flatten(params).items()}, tmp_path / "p.safetensors"
    )
    assert_same(read_params(tmp_path / "p.safetensors"), params)


@pytest.mark.parametrize("wrap", [False, True])
def test_flax_msgpack(tmp_path, params, wrap):
    tree = {"params": params} if wrap else params
    (tmp_path / "p.msgpack").write_bytes(serialization.to_bytes(tree))
    assert_same(read_params(tmp_path / "p.msgpack"), params)


def test_orbax_folder(tmp_path, params):
    ocp = pytest.importorskip("orbax.checkpoint")
    ocp.PyTreeCheckpointer().save(tmp_path / "ckpt", {"params": params})
    assert_same(read_params(tmp_path / "ckpt"), params)


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_params(tmp_path / "absent.npz")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(LscError, match="unknown checkpoint type"):
        read_params(tmp_path / "x.txt")
    (tmp_path / "bad.msgpack").write_bytes(b"\xc1\xc1garbage")
    with pytest.raises(FormatError):
        read_params(tmp_path / "bad.msgpack")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04broken")
    with pytest.raises(FormatError):
        read_params(tmp_path / "bad.npz")


def test_nest_rejects_conflicts():
    with pytest.raises(FormatError, match="both a tensor and a group"):
        nest({"a": np.zeros(1), "a/b": np.zeros(1)})


def torch_state_dict():
    """A tiny BERT-like PyTorch state dict: Linear weights [out, in], an Embedding, a LayerNorm
    and the int64 position_ids buffer."""
    rng = np.random.default_rng(1)
    f32 = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    return {
        "embeddings.position_ids": np.arange(6, dtype=np.int64)[None],
        "embeddings.word_embeddings.weight": f32(30, 8),
        "embeddings.LayerNorm.weight": f32(8),
        "embeddings.LayerNorm.bias": f32(8),
        "encoder.layer.0.attention.self.query.weight": f32(8, 8),
        "encoder.layer.0.attention.self.query.bias": f32(8),
        "encoder.layer.0.intermediate.dense.weight": f32(16, 8),
    }


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
@pytest.mark.parametrize("layout", ["auto", "torch"])
def test_torch_layout_read_in_flax_orientation(tmp_path, suffix, layout):
    sd = torch_state_dict()
    path = tmp_path / f"model{suffix}"
    if suffix == ".npz":
        np.savez(path, **sd)
    else:
        pytest.importorskip("safetensors.numpy").save_file(sd, path)
    params, record = read_checkpoint(path, layout=layout)
    layer = params["encoder"]["layer"]["0"]
    np.testing.assert_array_equal(
        layer["attention"]["self"]["query"]["kernel"],
        sd["encoder.layer.0.attention.self.query.weight"].T,
    )
    assert layer["intermediate"]["dense"]["kernel"].shape == (8, 16)
    emb = params["embeddings"]
    np.testing.assert_array_equal(
        emb["word_embeddings"]["embedding"], sd["embeddings.word_embeddings.weight"]
    )
    np.testing.assert_array_equal(emb["LayerNorm"]["scale"], sd["embeddings.LayerNorm.weight"])
    np.testing.assert_array_equal(emb["position_ids"], sd["embeddings.position_ids"])
    assert record["encoder/layer/0/intermediate/dense/kernel"] == {
        "source": "encoder.layer.0.intermediate.dense.weight",
        "transform": "transpose",
        "source_shape": [16, 8],
    }
    assert record["embeddings/position_ids"]["transform"] == "identity"
    assert set(record) == set(flatten(params))


def test_flax_layout_forced_reads_names_as_they_are(tmp_path):
    sd = torch_state_dict()
    np.savez(tmp_path / "m.npz", **sd)
    params, record = read_checkpoint(tmp_path / "m.npz", layout="flax")
    assert record is None
    np.testing.assert_array_equal(
        params["encoder"]["layer"]["0"]["intermediate"]["dense"]["weight"],
        sd["encoder.layer.0.intermediate.dense.weight"],
    )
    with pytest.raises(LscError, match="layout must be one of"):
        read_checkpoint(tmp_path / "m.npz", layout="pytorch")


def test_dotted_flax_npz(tmp_path, params):
    np.savez(tmp_path / "p.npz", **{k.replace("/", "."): v for k, v in flatten(params).items()})
    checkpoint = read_checkpoint(tmp_path / "p.npz")
    assert checkpoint.layout is None  # 'kernel' leaves: already Flax
    assert_same(checkpoint.params, params)


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth", ".ckpt", ".BIN"])
def test_torch_pickles_refused_unopened(tmp_path, suffix, monkeypatch):
    path = tmp_path / f"pytorch_model{suffix}"
    path.write_bytes(b"\x80\x02not even read")
    opened = []
    monkeypatch.setattr(Path, "open", lambda *a, **k: opened.append(a) or 1 / 0)
    monkeypatch.setattr(Path, "read_bytes", lambda *a, **k: opened.append(a) or 1 / 0)
    with pytest.raises(LscError, match="safetensors") as err:
        read_params(path)
    assert "pickle" in str(err.value) and str(path) in str(err.value)
    assert opened == []


def test_text_file_named_npz_is_a_clear_format_error(tmp_path):
    (tmp_path / "weights.npz").write_text("layer1: 0.5, 0.25\n")
    with pytest.raises(FormatError, match="not an .npz archive") as err:
        read_params(tmp_path / "weights.npz")
    assert "allow_pickle" not in str(err.value) and "b'layer1: 0.5, 0.2'" in str(err.value)


def test_layout_record_checked_against_shapes():
    record = {
        "fc/kernel": {"source": "fc.weight", "transform": "transpose", "source_shape": [4, 6]}
    }
    check_layout(record, {"fc/kernel": (6, 4)})
    with pytest.raises(LscError, match=r"'fc/kernel': shape \(4, 6\), but 'fc.weight'"):
        check_layout(record, {"fc/kernel": (4, 6)})  # stored untransposed
    with pytest.raises(LscError, match="not a leaf"):
        check_layout(record, {"fc/bias": (4,)})
    with pytest.raises(LscError, match="expected"):
        check_layout({"fc/kernel": {"source": "fc.weight", "transform": "flip"}}, {})
    conv = {
        "c/kernel": {
            "source": "c.weight",
            "transform": "conv_to_hwio",
            "source_shape": [8, 3, 5, 7],
        }
    }
    check_layout(conv, {"c/kernel": (5, 7, 3, 8)})
