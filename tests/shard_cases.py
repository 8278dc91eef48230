"""The cases of the sharding tests, shared by tests/test_shard.py (one device, the reference) and
tests/sharding_worker.py (several devices and processes)."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import lscjax
from lscjax._src.tree import map_selected
from lscjax.quant import QArray
from lscjax.sparse import BlockSparse

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_bert"


def _coded(kernel) -> QArray:
    """`kernel` with its smaller half of |w| zeroed, coded by 4 bits into 15 even levels + 0."""
    w = np.asarray(kernel)
    w = np.where(np.abs(w) >= np.median(np.abs(w)), w, 0)
    book = np.concatenate([[0.0], np.linspace(w.min(), w.max(), 15)]).astype(np.float32)
    codes = 1 + np.argmin(np.abs(w[..., None] - book[1:]), axis=-1)
    codes = np.where(w == 0, 0, codes).astype(np.uint8)
    return QArray(jnp.asarray(codes), jnp.asarray(book), "kmeans", 4, w.shape)


def bert_case():
    """(module, block-sparse params, (input_ids, attention_mask, token_type_ids)) of the tiny
    BERT fixture, its kernels pruned to 50% and coded (4 bits) in coded blocks of 8."""
    module, params = lscjax.models.bert_from_hf(FIXTURE)
    quantized = map_selected(lambda _, w: _coded(w), params, fill="keep")
    sparse = lscjax.flax.to_block_sparse(quantized, block=8, max_density=1.0)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 100, (4, 6)).astype(np.int32)
    mask = np.ones((4, 6), np.int32)
    mask[1, 4:] = 0
    return module, sparse, (ids, mask, np.zeros_like(ids))


def _float_grads(grads) -> dict:
    """{'grad/<path>': array} of the float leaves of a gradient pytree (ints give float0)."""
    leaves = jax.tree_util.tree_flatten_with_path(grads)[0]
    return {
        "grad/" + jax.tree_util.keystr(kp): g
        for kp, g in leaves
        if jnp.issubdtype(g.dtype, jnp.floating)
    }


def bert_results(module, params, inputs, *, grads: bool = True) -> dict:
    """The served last hidden state and (`grads`) the float gradients of its mean square, under
    jit."""
    apply = lscjax.flax.compressed_apply(module.apply)

    def loss(p):
        return jnp.mean(apply({"params": p}, *inputs) ** 2)

    out = {"hidden": jax.jit(apply)({"params": params}, *inputs)}
    if grads:
        out |= _float_grads(jax.jit(jax.grad(loss, allow_int=True))(params))
    return out


def matmul_case():
    """x float32 [6, 48] and a float BlockSparse [48, 72] in blocks of 8 (a random block mask)."""
    rng = np.random.default_rng(1)
    dense = rng.normal(size=(48, 72)).astype(np.float32)
    dense *= np.kron(rng.random((6, 9)) < 0.4, np.ones((8, 8), np.float32))
    return rng.normal(size=(6, 48)).astype(np.float32), BlockSparse.from_dense(dense, 8)


def matmul_results(x, w) -> dict:
    """x @ W, and the gradients of sum((x @ W)^2) with respect to x and to W (as a dense kernel:
    the block values' gradient scattered to their places)."""

    def loss(x, w):
        return jnp.sum(lscjax.sparse.matmul(x, w) ** 2)

    dx, dw = jax.jit(jax.grad(loss, argnums=(0, 1), allow_int=True))(x, w)
    ov = w.overflow
    if ov is not None:
        ov = dataclasses.replace(ov, blocks=dw.overflow.blocks)
    dense = dataclasses.replace(w, blocks=dw.blocks, overflow=ov).todense()
    return {"matmul": jax.jit(lscjax.sparse.matmul)(x, w), "matmul_dx": dx, "matmul_dw": dense}
