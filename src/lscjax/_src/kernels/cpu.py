"""Block-sparse matmul on the CPU as a compiled XLA FFI kernel (the "cpu" path of `matmul`).

The kernel (cpu.cc, built with the package by setup.py) computes each [rows, b_out] output tile
with its accumulators in registers over the block row's non-zero blocks, reading x's blocks in
place: no gathered x, no padded slots, no transposes, which is what keeps the XLA path's
block-sparse product behind a dense GEMM on transformer-sized kernels
(docs/results/serving.md). It uses XLA's intra-op thread pool and picks AVX-512, AVX2 or
portable vector code at load time.

The build is optional (a machine without a C++ compiler installs lscjax without it), so
`available()` says whether the kernel is there; `matmul(impl="auto")` takes it on the CPU when it
is and the operands fit (`fits`), the XLA path otherwise.
"""

import functools

import jax
import jax.numpy as jnp

try:
    from lscjax._src.kernels import _cpu
except ImportError:  # pragma: no cover - a build without a C++ compiler
    _cpu = None

TARGET = "lscjax_block_matmul_f32"
B_OUT = (16, 32, 64)  # the output block widths the kernel is compiled for


def available() -> bool:
    """Whether the compiled CPU kernel was built with this installation."""
    return _cpu is not None


def fits(b_out: int, x_dtype, values_dtype) -> bool:
    """Whether the kernel takes a product with output blocks of `b_out` and these dtypes
    (float32 x and block values; other dtypes take the XLA path)."""
    return b_out in B_OUT and jnp.dtype(x_dtype) == jnp.float32 == jnp.dtype(values_dtype)


@functools.cache
def _register() -> None:
    jax.ffi.register_ffi_target(TARGET, _cpu.block_matmul_f32(), platform="cpu")


def block_matmul(x: jax.Array, values: jax.Array, indices: jax.Array, counts: jax.Array):
    """``y[:, r] = sum_{k < counts[r]} x[:, indices[r, k]] @ values[r, k]`` by the CPU kernel.

    Args:
      x: float32 [M, C * b_in].
      values: float32 [R, Kmax, b_in, b_out], b_out in `B_OUT` (slots past counts[r] are not read).
      indices: int32 [R, Kmax], each of the first counts[r] in [0, C) (the kernel checks, and
        fails the computation otherwise).
      counts: int32 [R], clamped to [0, Kmax].

    Returns:
      float32 [M, R * b_out].
    """
    _register()
    rows, _, _, b_out = values.shape
    out = jax.ShapeDtypeStruct((x.shape[0], rows * b_out), jnp.float32)
    return jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")(
        x, values, indices.astype(jnp.int32), counts.astype(jnp.int32)
    )
