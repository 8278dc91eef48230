"""Reading params from npz, safetensors, Flax msgpack and orbax checkpoints."""

import jax
import numpy as np
import pytest
from flax import serialization

from lscjax import FormatError, LscError
from lscjax._src.checkpoints import flatten, nest, read_params


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
