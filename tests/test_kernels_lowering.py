"""The Pallas kernels lower for their real targets on a CPU-only machine.

Interpret mode (test_kernels_pallas.py) checks what the kernels compute, not that Triton or
Mosaic accept them. ``jax.export`` for ``platforms=("cuda",)`` / ``("tpu",)`` runs the Pallas
lowering to Triton IR / Mosaic without a device, so these tests catch tiles, ops and dtypes the
real backends reject; and they check that `matmul`'s tile rule (`_fits`) agrees with the
lowering's own rule. (Compiling the lowered IR for a GPU or TPU still needs the device.)

The Triton lowering reads the target GPU's compute capability; with no GPU present, JAX 0.11
raises unless an abstract device names one, so the GPU kernel is exported for an H100 (the
device of benchmarks/matmul_gpu.py's goal point) under an abstract mesh, in every JAX version.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export
from jax.sharding import AbstractDevice, AbstractMesh, use_abstract_mesh

from lscjax._src.kernels import pallas_gpu, pallas_tpu
from lscjax._src.sparse.matmul import _fits
from lscjax._src.sparse.random import random_block_kernel
from lscjax.sparse import BlockSparse

TARGETS = {  # kernel module, export platform, custom call the lowering emits
    "pallas_gpu": (pallas_gpu, "cuda", "__gpu$xla.gpu.triton"),
    "pallas_tpu": (pallas_tpu, "tpu", "tpu_custom_call"),
}
H100 = AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")


def _weight(block: int, dtype, bits):
    rng = np.random.default_rng(block)
    kernel = random_block_kernel(rng, (2 * block, 3 * block), block, 0.5)
    if bits is None:
        return BlockSparse.from_dense(jnp.asarray(kernel, dtype), block)
    codebook = np.concatenate([[0.0], rng.standard_normal(15)])
    codes = np.where(kernel != 0, rng.integers(1, 16, kernel.shape), 0).astype(np.uint8)
    return BlockSparse.from_codes(codes, jnp.asarray(codebook, dtype), block, bits=bits)


def _lowered(name: str, w: BlockSparse, batch: int) -> str:
    """The StableHLO text of the kernel exported for its platform (raises if lowering fails)."""
    module, platform, target = TARGETS[name]
    args = [w.blocks, w.indices, w.counts] + ([] if w.bits is None else [w.codebook])
    x = jnp.ones((batch, w.matrix_shape[0]), w.dtype)
    device = (
        use_abstract_mesh(AbstractMesh((1,), ("d",), abstract_device=H100))
        if platform == "cuda"
        else contextlib.nullcontext()
    )
    with device:
        exported = export.export(
            jax.jit(lambda x, *a: module.block_matmul(x, *a)),
            platforms=(platform,),
            disabled_checks=[export.DisabledSafetyCheck.custom_call(target)],
        )(x, *args)
    return exported.mlir_module()


@pytest.mark.parametrize(
    "name, block, bits",
    [  # the smallest tiles `matmul` sends to each kernel (4-bit codes halve the x tile)
        ("pallas_gpu", 16, None),
        ("pallas_gpu", 32, 4),
        ("pallas_gpu", 64, None),
        ("pallas_gpu", 64, 4),
        ("pallas_tpu", 128, None),
        ("pallas_tpu", 256, 4),
    ],
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("batch", [1, 24])
def test_kernels_lower_for_their_device(name, block, bits, dtype, batch):
    w = _weight(block, dtype, bits)
    assert _fits(name, w)
    assert TARGETS[name][2] in _lowered(name, w, batch)


@pytest.mark.parametrize(
    "name, block, message",
    [("pallas_gpu", 24, "power of 2"), ("pallas_tpu", 64, "divisible by 8 and 128")],
)
def test_tiles_rejected_by_fits_do_not_lower(name, block, message):
    w = _weight(block, jnp.float32, None)
    assert not _fits(name, w)
    with pytest.raises(ValueError, match=message):
        _lowered(name, w, 16)
