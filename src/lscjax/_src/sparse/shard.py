"""Tensor-parallel `BlockSparse` weights: block rows (output features) split over a mesh axis.

`shard` places a weight's block rows on the devices of one `jax.sharding.Mesh` axis (each device
holds ``R / n`` consecutive output block rows: blocks, indices and counts; the codebook is
replicated) and returns a `ShardedBlockSparse`. `lscjax.sparse.matmul` multiplies it under
`jax.shard_map`: every device computes its own output features from the whole input row
(``x`` replicated over the weight's axis, split over `batch_axis` when one is given), with no
communication; the devices' outputs are then gathered (one all-gather per product). The same
code runs on one process or several (`jax.distributed.initialize`): the arrays are global, each
process placing the rows of its own devices.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lscjax._src.errors import LscError
from lscjax._src.sparse.block_sparse import BlockSparse
from lscjax._src.sparse.stack import merged


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["blocks", "indices", "counts", "codebook", "overflow"],
    meta_fields=["shape", "block", "bits", "row_groups", "mesh", "axis", "batch_axis"],
)
@dataclasses.dataclass(frozen=True)
class ShardedBlockSparse(BlockSparse):
    """A `BlockSparse` whose block rows are split over the mesh axis `axis`.

    The arrays hold R' >= R block rows (R' a multiple of the axis size; rows past R are empty)
    and are global `jax.Array` values sharded along their first axis; no overflow, no row groups.

    Attributes:
      mesh: static; the `jax.sharding.Mesh`.
      axis: static; the mesh axis name the block rows (output features) are split over.
      batch_axis: static; the mesh axis name the rows of x are split over, or None (x is
        replicated).
    """

    mesh: Mesh | None = dataclasses.field(default=None, metadata=dict(static=True))
    axis: str | None = dataclasses.field(default=None, metadata=dict(static=True))
    batch_axis: str | None = dataclasses.field(default=None, metadata=dict(static=True))

    def local(self, blocks, indices, counts, codebook) -> BlockSparse:
        """The plain BlockSparse of one device's rows (inside `shard_map`), from its pieces."""
        rows = blocks.shape[0]
        shape = (*self.shape[:-1], rows * self.block[1])
        return BlockSparse(blocks, indices, counts, codebook, shape, self.block, self.bits)

    def unsharded(self) -> BlockSparse:
        """The plain BlockSparse (its R block rows, the padding dropped), replicated on the
        mesh's devices."""
        rows = -(-self.shape[-1] // self.block[1])
        whole = NamedSharding(self.mesh, P())
        blocks, indices, counts = (
            jax.device_put(a, whole)[:rows] for a in (self.blocks, self.indices, self.counts)
        )
        return BlockSparse(
            blocks,
            indices,
            counts,
            self.codebook,
            self.shape,
            self.block,
            self.bits,
        )

    def todense(self) -> jax.Array:
        """The dense kernel (see `BlockSparse.todense`)."""
        return self.unsharded().todense()


def _place(a: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array of the host array `a`, each process placing its devices' pieces."""
    return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])


def _check_axis(mesh, name, what: str) -> None:
    if name is not None and name not in mesh.axis_names:
        raise LscError(f"shard: {what} {name!r} is not an axis of the mesh {mesh.axis_names}")


def _shard_one(w: BlockSparse, mesh: Mesh, axis: str, batch_axis) -> ShardedBlockSparse:
    if w.blocks.ndim != 4:
        raise LscError(
            f"shard: expected one kernel's blocks [R, Kmax, b_in, b_out], got {w.blocks.shape} "
            "(a stacked BlockSparse is sharded layer by layer)"
        )
    w = merged(w)
    n = mesh.shape[axis]
    rows = w.blocks.shape[0]
    pad = -rows % n
    host = [np.asarray(a) for a in (w.blocks, w.indices, w.counts)]
    host = [np.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)) for a in host]
    split = NamedSharding(mesh, P(axis))
    blocks, indices, counts = (_place(a, split) for a in host)
    codebook = None
    if w.codebook is not None:
        codebook = _place(np.asarray(w.codebook), NamedSharding(mesh, P()))
    return ShardedBlockSparse(
        blocks,
        indices,
        counts,
        codebook,
        w.shape,
        w.block,
        w.bits,
        mesh=mesh,
        axis=axis,
        batch_axis=batch_axis,
    )


def shard(w, mesh: Mesh, axis: str, *, batch_axis: str | None = None):
    """Split block-sparse weights' output features over the mesh axis `axis`.

    Args:
      w: a `BlockSparse`, or a pytree (e.g. params from `lscjax.flax.to_block_sparse` or
        ``lscjax.load(..., layout="block_sparse")``): its BlockSparse leaves are sharded and its
        other array leaves replicated on the mesh.
      mesh: the `jax.sharding.Mesh` (its devices may span several processes).
      axis: the mesh axis name the block rows are split over (tensor parallelism).
      batch_axis: a mesh axis name the rows of x are split over in `lscjax.sparse.matmul`
        (data parallelism), or None.

    Returns:
      A `ShardedBlockSparse` (or the pytree with them), for `lscjax.sparse.matmul` and
      `lscjax.flax.compressed_apply` under `jax.jit`; results equal the unsharded weight's.

    Raises:
      LscError: an axis not in the mesh, `batch_axis` equal to `axis`, a stacked BlockSparse.

    Example:
      >>> mesh = jax.make_mesh((1, len(jax.devices())), ("data", "model"))  # e.g. (2, 4)
      >>> sparse = lscjax.flax.to_block_sparse(params, block=8)
      >>> sharded = lscjax.sparse.shard(sparse, mesh, "model", batch_axis="data")
      >>> logits = jax.jit(lscjax.flax.compressed_apply(model.apply))({"params": sharded}, images)
    """
    _check_axis(mesh, axis, "axis")
    _check_axis(mesh, batch_axis, "batch_axis")
    if axis is None or batch_axis == axis:
        raise LscError(f"shard: axis must be a mesh axis other than batch_axis, got {axis!r}")
    replicated = NamedSharding(mesh, P())

    def one(leaf):
        if isinstance(leaf, BlockSparse):
            return _shard_one(leaf, mesh, axis, batch_axis)
        return _place(np.asarray(leaf), replicated)

    return jax.tree_util.tree_map(one, w, is_leaf=lambda x: isinstance(x, BlockSparse))


def _reshard(a, mesh: Mesh, spec: P):
    """`a` laid out as `spec` on `mesh`: `jax.reshard` for explicit mesh axes, a sharding
    constraint for automatic ones."""
    if all(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
        return jax.reshard(a, NamedSharding(mesh, spec))
    return jax.lax.with_sharding_constraint(a, NamedSharding(mesh, spec))


def sharded_matmul(x, w: ShardedBlockSparse, product) -> jax.Array:
    """``x @ W`` for a `ShardedBlockSparse`: `product` (the one-device ``(x [M, K], BlockSparse)
    -> [M, N_local]``) on each device's rows under `jax.shard_map`.

    Args:
      x: float [..., K].
      w: the sharded weight.
      product: the plain matmul of one device.

    Returns:
      [..., N], replicated on the mesh (each device's output features gathered).
    """
    k, n = w.matrix_shape
    lead = x.shape[:-1]
    x2 = jnp.reshape(x, (-1, k))
    m = x2.shape[0]
    pad = 0 if w.batch_axis is None else -m % w.mesh.shape[w.batch_axis]
    x2 = _reshard(jnp.pad(x2, ((0, pad), (0, 0))), w.mesh, P(w.batch_axis, None))
    arrays = (w.blocks, w.indices, w.counts, w.codebook)
    specs = (P(w.axis), P(w.axis), P(w.axis), None if w.codebook is None else P())

    both = (w.axis,) if w.batch_axis is None else (w.batch_axis, w.axis)

    def varying(a, axes):
        # Each device's pieces are made varying over the axes they are replicated on, so that
        # their cotangents (partial sums on each device) are summed over those axes.
        return None if a is None or not axes else jax.lax.pcast(a, axes, to="varying")

    def body(x_local, blocks, indices, counts, codebook):
        x_local = varying(x_local, (w.axis,))
        if w.batch_axis is not None:
            blocks = varying(blocks, (w.batch_axis,))
        codebook = varying(codebook, both)
        return product(x_local, w.local(blocks, indices, counts, codebook))

    y = jax.shard_map(
        body,
        mesh=w.mesh,
        in_specs=(P(w.batch_axis, None), *specs),
        out_specs=P(w.batch_axis, w.axis),
    )(x2, *arrays)
    # Gathered onto every device: the next layer (a reshape into patches, attention heads, ...)
    # then sees a plain array whatever the mesh's axis types.
    return _reshard(y, w.mesh, P())[:m, :n].reshape(*lead, n)
