"""PyTorch / Hugging Face state dicts -> Flax trees: orientation, names, layout record, refusals."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from lscjax import LscError
from lscjax._src.hf_layout import apply_transform, from_torch

RNG = np.random.default_rng(0)


def normal(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def test_square_linear_serves_x_times_w_transposed():
    # nn.Linear(4, 4): y = x @ W.T + b, by hand; a square weight cannot reveal a missing
    # transpose through its shape.
    w, b = normal(4, 4), normal(4)
    x = normal(3, 4)
    expected = np.array(
        [[sum(x[i, k] * w[o, k] for k in range(4)) + b[o] for o in range(4)] for i in range(3)]
    )
    tree, layout = from_torch({"fc.weight": w, "fc.bias": b})
    y = nn.Dense(4).apply({"params": tree["fc"]}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(x @ w + b, expected)  # the untransposed product is a different answer
    assert layout == {
        "fc/kernel": {"source": "fc.weight", "transform": "transpose"},
        "fc/bias": {"source": "fc.bias", "transform": "identity"},
    }


def test_bert_like_names_and_orientation():
    sd = {
        "embeddings.position_ids": np.arange(8, dtype=np.int64)[None],
        "embeddings.word_embeddings.weight": normal(10, 6),
        "embeddings.LayerNorm.weight": normal(6),
        "embeddings.LayerNorm.bias": normal(6),
        "encoder.layer.0.attention.self.query.weight": normal(6, 6),
        "encoder.layer.0.intermediate.dense.weight": normal(12, 6),
        "encoder.layer.0.intermediate.dense.bias": normal(12),
    }
    tree, layout = from_torch(sd, skip=r"position_ids$")
    emb = tree["embeddings"]
    np.testing.assert_array_equal(
        emb["word_embeddings"]["embedding"], sd["embeddings.word_embeddings.weight"]
    )
    np.testing.assert_array_equal(emb["LayerNorm"]["scale"], sd["embeddings.LayerNorm.weight"])
    np.testing.assert_array_equal(emb["LayerNorm"]["bias"], sd["embeddings.LayerNorm.bias"])
    layer = tree["encoder"]["layer"]["0"]
    np.testing.assert_array_equal(
        layer["attention"]["self"]["query"]["kernel"],
        sd["encoder.layer.0.attention.self.query.weight"].T,
    )
    assert layer["intermediate"]["dense"]["kernel"].shape == (6, 12)
    assert layer["intermediate"]["dense"]["kernel"].flags.c_contiguous
    assert layout["encoder/layer/0/attention/self/query/kernel"] == {
        "source": "encoder.layer.0.attention.self.query.weight",
        "transform": "transpose",
    }
    assert layout["embeddings/word_embeddings/embedding"]["transform"] == "identity"
    assert list(layout) == [
        "embeddings/word_embeddings/embedding",
        "embeddings/LayerNorm/scale",
        "embeddings/LayerNorm/bias",
        "encoder/layer/0/attention/self/query/kernel",
        "encoder/layer/0/intermediate/dense/kernel",
        "encoder/layer/0/intermediate/dense/bias",
    ]
    # The looked-up rows are the table's rows: Embed serves it untransposed.
    ids = jnp.array([[3, 7]])
    out = nn.Embed(10, 6).apply({"params": emb["word_embeddings"]}, ids)
    np.testing.assert_array_equal(
        np.asarray(out)[0], sd["embeddings.word_embeddings.weight"][[3, 7]]
    )


def test_embeddings_override():
    table = normal(5, 3)
    tree, layout = from_torch({"wte.weight": table}, embeddings=r"^wte$")
    np.testing.assert_array_equal(tree["wte"]["embedding"], table)
    tree, _ = from_torch({"word_embeddings.weight": table}, embeddings=None)
    np.testing.assert_array_equal(tree["word_embeddings"]["kernel"], table.T)
    tree, _ = from_torch({"tok.weight": table}, embeddings=lambda module: module == "tok")
    assert "embedding" in tree["tok"]
    # ALBERT's projection out of the embedding size is an nn.Linear.
    tree, _ = from_torch({"encoder.embedding_hidden_mapping_in.weight": table})
    np.testing.assert_array_equal(tree["encoder"]["embedding_hidden_mapping_in"]["kernel"], table.T)


@pytest.mark.parametrize("window", [(3,), (3, 2), (2, 3, 2)])
def test_conv_oihw_to_hwio_serves_torch_conv(window):
    # torch.nn.ConvNd(in=2, out=3) weight [out, in, *window]; a cross-correlation by hand at
    # one 'VALID' output position against Flax's nn.Conv on the converted kernel.
    w = normal(3, 2, *window)
    x = normal(1, *window, 2)  # NHWC input the size of the window: one output position
    tree, layout = from_torch({"conv.weight": w})
    assert layout["conv/kernel"]["transform"] == "conv_to_hwio"
    kernel = tree["conv"]["kernel"]
    assert kernel.shape == (*window, 2, 3)
    y = nn.Conv(3, window, padding="VALID", use_bias=False).apply({"params": tree["conv"]}, x)
    expected = np.array([np.sum(w[o] * np.moveaxis(x[0], -1, 0)) for o in range(3)])
    np.testing.assert_allclose(np.asarray(y).reshape(3), expected, rtol=1e-5, atol=1e-5)


def test_gamma_beta_are_scale_bias():
    g, b = normal(4), normal(4)
    tree, layout = from_torch({"LayerNorm.gamma": g, "LayerNorm.beta": b})
    np.testing.assert_array_equal(tree["LayerNorm"]["scale"], g)
    np.testing.assert_array_equal(tree["LayerNorm"]["bias"], b)
    assert layout["LayerNorm/scale"] == {"source": "LayerNorm.gamma", "transform": "identity"}


def test_dtype_kept():
    w = normal(3, 2).astype(np.float16)
    tree, _ = from_torch({"fc.weight": w})
    assert tree["fc"]["kernel"].dtype == np.float16


@pytest.mark.parametrize(
    ("sd", "match"),
    [
        ({"bn.running_mean": normal(3)}, r"'bn.running_mean'.*skip="),
        ({"fc.weight": normal(2, 2, 2, 2, 2, 2)}, r"'fc.weight' \(ndim 6\)"),
        ({"fc.bias": normal(2, 2)}, r"'fc.bias' \(ndim 2\)"),
        ({"fc.weight": np.float32(1.0)}, r"'fc.weight' \(ndim 0\)"),
        (
            {"embeddings.position_ids": np.arange(4)[None]},
            r"'embeddings.position_ids'.*int64.*skip=",
        ),
        ({"weight": normal(2, 2)}, r"'weight'.*dotted name"),
        ({"a..weight": normal(2, 2)}, r"dotted name"),
        (
            {"a.weight": normal(2), "a.gamma": normal(2)},
            r"'a.weight' and 'a.gamma' both convert to 'a/scale'",
        ),
    ],
)
def test_refusals_name_the_tensor(sd, match):
    with pytest.raises(LscError, match=match):
        from_torch(sd)


def test_refuses_everything_skipped_and_bad_tests():
    with pytest.raises(LscError, match="no tensor converted"):
        from_torch({"fc.weight": normal(2, 2)}, skip="fc")
    with pytest.raises(LscError, match="skip: expected a regex"):
        from_torch({"fc.weight": normal(2, 2)}, skip=3)
    with pytest.raises(LscError, match="embeddings: expected a regex"):
        from_torch({"fc.weight": normal(2, 2)}, embeddings=["fc"])


def test_apply_transform_refusals():
    with pytest.raises(LscError, match="'transpose' of an array of shape \\(3,\\)"):
        apply_transform(normal(3), "transpose")
    with pytest.raises(LscError, match="'flip'"):
        apply_transform(normal(3, 3), "flip")
