"""Transformer layers served from the compressed form: DenseGeneral (attention projections),
Einsum, Embed (looked up from codes), Linen and NNX, against dense apply on the decoded weights."""

from pathlib import Path

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lscjax
from lscjax import LscError
from lscjax._src.tree import leaves_with_paths, path_str
from lscjax.flax import compressed_apply, to_block_sparse, to_block_sparse_nnx, to_dense
from lscjax.quant import QArray
from lscjax.sparse import BlockSparse, MultiAxisKernel, lookup

VOCAB, DIM, HEADS, TOKENS = 40, 32, 2, 6
BLOCK = 8


class Encoder(nn.Module):
    """Embed -> self-attention (DenseGeneral q/k/v [32, 2, 16], out [2, 16, 32]) -> Einsum ->
    Dense FFN -> logits through Embed.attend."""

    @nn.compact
    def __call__(self, ids):
        embed = nn.Embed(VOCAB, DIM)
        h = embed(ids)
        h = h + nn.MultiHeadDotProductAttention(num_heads=HEADS)(h)
        heads = nn.Einsum((DIM, HEADS, DIM // HEADS), "btd,dhk->bhtk")(h)  # output permuted
        h = h + heads.transpose(0, 2, 1, 3).reshape(h.shape)
        h = h + nn.Dense(DIM)(nn.gelu(nn.Dense(2 * DIM)(h)))
        return embed.attend(nn.LayerNorm()(h))


def _block_pruned(params, seed: int):
    """Half of the blocks of every kernel's served matrix view zeroed (the view contracts the
    axes that the kernel has beyond its bias: one for query / key / value [32, 2, 16])."""
    rng = np.random.default_rng(seed)

    def prune(kp, w):
        path = path_str(kp)
        if not path.endswith("kernel"):
            return w
        bias = "/".join(path.split("/")[:-1] + ["bias"])
        out_axes = np.ndim(leaves.get(bias, np.zeros(w.shape[-1:])))
        m = np.asarray(w).reshape(int(np.prod(w.shape[: w.ndim - out_axes])), -1)
        keep = rng.random((m.shape[0] // BLOCK, m.shape[1] // BLOCK)) < 0.5
        keep[0] = True
        return jnp.asarray(m * np.kron(keep, np.ones((BLOCK, BLOCK))), w.dtype).reshape(w.shape)

    leaves = dict(leaves_with_paths(params))
    return jax.tree_util.tree_map_with_path(prune, params)


@pytest.fixture(scope="module")
def encoder():
    """The model, its block-pruned params and token ids, built once."""
    model = Encoder()
    ids = jax.random.randint(jax.random.key(1), (3, TOKENS), 0, VOCAB)
    params = _block_pruned(model.init(jax.random.key(0), ids)["params"], 0)
    return model, params, ids


def _weights(path: str, leaf) -> bool:
    return path.rsplit("/", 1)[-1] in ("kernel", "embedding")


@pytest.mark.parametrize("bits", [None, 4, 8])
def test_linen_encoder_equals_dense_apply(encoder, bits):
    model, params, ids = encoder
    chex.clear_trace_counter()
    if bits is not None:
        params = lscjax.quant.kmeans(params, bits, where=_weights, iters=5)
    sparse = to_block_sparse(params, block=BLOCK, max_density=1.0)
    attention = sparse["MultiHeadDotProductAttention_0"]
    assert isinstance(attention["query"]["kernel"], MultiAxisKernel)
    assert attention["query"]["kernel"].matrix.shape == (DIM, DIM)
    assert isinstance(attention["out"]["kernel"], BlockSparse)  # [2, 16, 32]: one output axis
    assert isinstance(sparse["Einsum_0"]["kernel"], MultiAxisKernel)
    assert sparse["Dense_0"]["kernel"].bits == bits
    table = sparse["Embed_0"]["embedding"]
    assert isinstance(table, QArray) if bits else isinstance(table, jax.Array)
    decoded = to_dense(sparse)
    chex.assert_trees_all_close(decoded, lscjax.quant.dequantize(params))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def predict(variables, ids):
        return compressed_apply(model.apply)(variables, ids)

    for step in range(2):
        got = predict({"params": sparse}, (ids + step) % VOCAB)
        want = model.apply({"params": decoded}, (ids + step) % VOCAB)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def test_embed_lookup_equals_dense_table():
    rng = np.random.default_rng(1)
    table = jnp.asarray(rng.standard_normal((VOCAB, 12)), jnp.float32)
    ids = jnp.asarray([[0, 3, VOCAB - 1], [-1, 7, 7]])
    quantized = [
        lscjax.quant.kmeans({"t": table}, 4, where=lambda p, _: True)["t"],
        lscjax.quant.binarize({"t": table}, scale="row", where=lambda p, _: True)["t"],
        lscjax.quant.product({"t": table}, 4, 4, where=lambda p, _: True)["t"],
        lscjax.quant.residual({"t": table}, 3, 2, where=lambda p, _: True)["t"],
    ]
    for q in quantized:
        dense = np.asarray(q.dequantize())
        np.testing.assert_array_equal(jax.jit(lookup)(q, ids), dense[np.asarray(ids)])
    out_of_range = jnp.asarray([VOCAB, -VOCAB - 1, 2])
    np.testing.assert_array_equal(
        lookup(quantized[0], out_of_range), jnp.take(quantized[0].dequantize(), out_of_range, 0)
    )
    with pytest.raises(LscError, match="integers"):
        lookup(quantized[0], jnp.zeros(3))


def test_multi_axis_kernel_without_bias_needs_in_axes():
    """Without a bias the query kernel's view is ambiguous: serving refuses the wrong one, and
    `in_axes` gives the right one."""

    class Query(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.DenseGeneral((HEADS, DIM // HEADS), use_bias=False)(x)

    x = jax.random.normal(jax.random.key(2), (2, TOKENS, DIM))
    params = Query().init(jax.random.key(0), x)["params"]
    wrong = to_block_sparse(params, block=BLOCK, max_density=1.0)
    with pytest.raises(LscError, match="DenseGeneral_0.*in_axes"):
        compressed_apply(Query().apply)({"params": wrong}, x)
    right = to_block_sparse(
        params, block=BLOCK, max_density=1.0, in_axes={"DenseGeneral_0/kernel": 1}
    )
    got = compressed_apply(Query().apply)({"params": right}, x)
    np.testing.assert_allclose(got, Query().apply({"params": params}, x), rtol=1e-5, atol=1e-6)


def _served_error(make_layer, x, match: str, table: bool = False):
    """compressed_apply of a one-layer Net raises LscError matching `match` (the layer's kernel
    converted to BlockSparse; with `table`, its Embed table too)."""

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return make_layer()(x)

    params = Net().init(jax.random.key(0), x)["params"]
    if not table:
        sparse = to_block_sparse(params, block=4, max_density=1.0)
    else:
        sparse = {
            "Embed_0": {"embedding": BlockSparse.from_dense(params["Embed_0"]["embedding"], 4)}
        }
    with pytest.raises(LscError, match=match):
        compressed_apply(Net().apply)({"params": sparse}, x)


def test_refusals_name_the_layer():
    x = jnp.ones((2, 8))
    _served_error(lambda: nn.Dense(4, precision="highest"), x, "layer 'Dense_0'.*precision")
    custom = lambda *a, **k: jax.lax.dot_general(*a, **k)  # noqa: E731
    _served_error(lambda: nn.Dense(4, dot_general=custom), x, "'Dense_0'.*dot_general")
    _served_error(lambda: nn.DenseGeneral(4, batch_dims=(0,)), x, "'DenseGeneral_0'.*batch axes")
    _served_error(lambda: nn.Einsum((4, 8), "bd,hd->bh"), x, "'Einsum_0'.*not a matmul.*leading")
    _served_error(lambda: nn.Einsum((2, 8, 4), "bd,bdh->bh"), x, "'Einsum_0'.*batch axis")
    _served_error(lambda: nn.Embed(8, 4), jnp.zeros(2, int), "'Embed_0'.*QArray", table=True)


def test_load_where_leaves_layers_alone(encoder, tmp_path):
    model, params, ids = encoder
    recipe = lscjax.recipe("deep_compression", sparsity=0.5)
    compressed = lscjax.compress(params, recipe, where=_weights)
    lscjax.save(tmp_path / "m.lsc", compressed)
    keep_attention = lambda path, _: "Attention" not in path  # noqa: E731
    served = lscjax.load(
        tmp_path / "m.lsc",
        layout="block_sparse",
        block=BLOCK,
        max_density=1.0,
        where=keep_attention,
    )
    attention = served["MultiHeadDotProductAttention_0"]
    assert all(isinstance(attention[p]["kernel"], jax.Array) for p in attention)
    assert isinstance(served["Dense_0"]["kernel"], BlockSparse)
    assert isinstance(served["Embed_0"]["embedding"], QArray)
    dense = lscjax.load(tmp_path / "m.lsc")
    got = jax.jit(compressed_apply(model.apply))({"params": served}, ids)
    want = model.apply({"params": dense}, ids)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
    with pytest.raises(LscError, match="selects none"):
        lscjax.load(tmp_path / "m.lsc", layout="block_sparse", where=lambda p, _: False)


class NnxEncoder(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(VOCAB, DIM, rngs=rngs)
        self.query = nnx.LinearGeneral(DIM, (HEADS, DIM // HEADS), rngs=rngs)
        self.out = nnx.LinearGeneral((HEADS, DIM // HEADS), DIM, axis=(-2, -1), rngs=rngs)
        self.ffn = nnx.Linear(DIM, DIM, rngs=rngs)

    def __call__(self, ids):
        h = self.embed(ids)
        h = h + self.out(nnx.tanh(self.query(h)))
        return self.embed.attend(self.ffn(h))


@pytest.mark.parametrize("bits", [None, 4, 8])
def test_nnx_encoder_equals_dense(bits):
    chex.clear_trace_counter()
    model = NnxEncoder(nnx.Rngs(0))
    weights = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    weights = _block_pruned(weights, 3)
    if bits is not None:
        weights = lscjax.quant.kmeans(weights, bits, where=_weights, iters=5)
    sparse = to_block_sparse_nnx(model, block=BLOCK, max_density=1.0, params=weights)
    assert isinstance(sparse.query.kernel(), MultiAxisKernel)
    assert isinstance(sparse.out.kernel(), BlockSparse) and sparse.ffn.kernel().bits == bits
    assert isinstance(sparse.embed, lscjax.flax.CodedEmbed if bits else nnx.Embed)
    dense = NnxEncoder(nnx.Rngs(0))
    nnx.update(dense, nnx.State(lscjax.quant.dequantize(weights)))
    ids = jax.random.randint(jax.random.key(4), (2, TOKENS), 0, VOCAB)

    @nnx.jit
    @chex.assert_max_traces(n=1)
    def forward(m, ids):
        return m(ids)

    for step in range(2):
        want = dense((ids + step) % VOCAB)
        got = forward(sparse, (ids + step) % VOCAB)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def test_default_policy_serves_dense_kernels_dense_and_says_why(encoder):
    """Under the default max_density, kernels with every block non-zero are served dense (codes
    dequantized once); the serving table says which layer is served how, with its block density
    counted by hand."""
    model, params, ids = encoder
    rng = np.random.default_rng(5)
    sparse_kernel = np.zeros((2 * DIM, DIM), np.float32)  # Dense_0 is the FFN's output
    sparse_kernel[:BLOCK, :BLOCK] = rng.standard_normal((BLOCK, BLOCK))  # 1 of 32 blocks
    params = {**params, "Dense_0": {**params["Dense_0"], "kernel": jnp.asarray(sparse_kernel)}}
    quantized = lscjax.quant.kmeans(params, 4, where=_weights, iters=5)
    served = to_block_sparse(quantized, block=BLOCK)
    assert isinstance(served["Dense_0"]["kernel"], BlockSparse)
    dense_ffn = served["Dense_1"]["kernel"]  # [32, 64], over half of its blocks: dense
    np.testing.assert_array_equal(dense_ffn, quantized["Dense_1"]["kernel"].dequantize())
    rows = {r["path"]: r for r in lscjax.flax.serving_table(served, block=BLOCK)}
    assert rows["Dense_0/kernel"]["served"] == "block-sparse 4-bit codes"
    assert rows["Dense_0/kernel"]["density"] == pytest.approx(1 / 32)
    assert rows["Dense_1/kernel"]["served"] == "dense"
    by_hand = (np.abs(np.asarray(dense_ffn)).reshape(4, BLOCK, 8, BLOCK).sum((1, 3)) > 0).mean()
    assert rows["Dense_1/kernel"]["density"] == pytest.approx(by_hand)
    assert "faster dense" in rows["Dense_1/kernel"]["why"]
    assert rows["Embed_0/embedding"]["served"].startswith("codes lookup")
    text = lscjax.flax.format_serving_table(list(rows.values()))
    assert text.splitlines()[0].split() == ["layer", "shape", "served", "as", "why"]
    decoded = lscjax.quant.dequantize(quantized)
    got = jax.jit(compressed_apply(model.apply))({"params": served}, ids)
    want = model.apply({"params": decoded}, ids)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


@pytest.mark.parametrize("bits", [None, 4, 8])
def test_tiny_bert_served_equals_dense_apply(bits):
    """The tiny BERT fixture with every Dense kernel block-pruned and every Embed table (with
    codes) compressed serves like dense apply on the decoded weights, under jit, one trace."""
    chex.clear_trace_counter()
    model, params = lscjax.models.bert_from_hf(Path(__file__).parent / "fixtures" / "tiny_bert")
    params = _block_pruned(params, 7)
    if bits is not None:
        params = lscjax.quant.kmeans(params, bits, where=_weights, iters=5)
    served = to_block_sparse(params, block=BLOCK, max_density=1.0)
    whole = lambda x: isinstance(x, BlockSparse | QArray)  # noqa: E731
    kernels = [leaf for path, leaf in leaves_with_paths(served, whole) if "kernel" in path]
    assert kernels and all(isinstance(k, BlockSparse) for k in kernels)
    decoded = lscjax.quant.dequantize(params)
    ids = jax.random.randint(jax.random.key(8), (2, 7), 0, model.config.vocab_size)
    mask = jnp.ones_like(ids).at[1, 5:].set(0)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def encode(variables, ids, mask):
        return compressed_apply(model.apply)(variables, ids, mask)

    for step in range(2):
        shifted = (ids + step) % model.config.vocab_size
        got = encode({"params": served}, shifted, mask)
        want = model.apply({"params": decoded}, shifted, mask)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
