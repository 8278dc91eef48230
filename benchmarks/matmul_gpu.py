"""Block-sparse matmul on a GPU (the Pallas Triton kernel) against dense bfloat16 ``x @ W``.

Not yet run on a GPU (the numbers in docs/results/sparse.md are CPU only). Every timed call multiplies x by each of `--sets` different weight sets in turn (one jitted function with
the products unrolled, summed into one output: one dispatch), so no set is still in the L2 cache
when it comes round again (H100: 50 MB of L2; 64 sets of an 8192^2 bf16 kernel are 8 GB; 4
distinct random kernels fill them, each repeated in its own buffers). Time per product = call
time / sets. The sets are separate arguments, not one stacked array under ``lax.map``: XLA:CPU
copies each stacked set out with a dynamic-slice before its product (measured: 16.6 ms per dense
4096^2 product at batch 16 under ``lax.map`` against 4 ms alone), which would charge every
product a copy of its weights.

* goal point: N = K = 8192, blocks of 64, 90% block sparsity (10% of the blocks kept, random
  positions), batch 16: bf16 block values (goal: <= 0.15 of dense) and 4-bit codes with a bf16
  codebook (goal: >= 15x faster than dense);
* the CPU table's grid (benchmarks/matmul.py): 4096^2, batch 1/16/64, blocks 32/64, 5/10/25%.

Prints ratios and writes JSON with
the device and JAX version. ``--smoke`` runs the same code on CPU in interpret mode at toy sizes
(tests/test_benchmarks.py), to keep the script working where no GPU is.

Usage: python benchmarks/matmul_gpu.py [--sets 64] [--reps 20] [--quick] [--out PATH]
       (--quick: the goal point only, 16 sets; without a GPU it prints that it skipped)
       python benchmarks/matmul_gpu.py --smoke
"""

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
from matmul import best_times, write_results

from lscjax._src.sparse.random import random_block_kernel
from lscjax.sparse import BlockSparse, matmul, stack

GOAL = {"size": 8192, "block": 64, "density": 0.10, "batch": 16, "bf16": 0.15, "4bit_speedup": 15}
TABLE = {"size": 4096, "batches": (1, 16, 64), "blocks": (32, 64), "densities": (0.05, 0.10, 0.25)}
SMOKE = {"size": 256, "batches": (1, 16), "blocks": (32,), "densities": (0.25,)}
DISTINCT = 4  # random kernels drawn per point; the sets repeat them in separate buffers


def weight_set(rng, size: int, block: int, density: float, sets: int):
    """`sets` kernels in separate buffers: dense bf16, bf16-valued and 4-bit BlockSparse.

    DISTINCT random kernels are drawn and repeated in separate buffers up to `sets`: the cache
    flatters a product only when it re-reads the same memory, so distinct buffers are enough,
    and drawing 64 random 8192^2 kernels would take minutes of the device's time. The sparse
    kernels are padded to one Kmax (`lscjax.sparse.stack`; the GPU kernel loops over each row's
    own count, so padding costs no work), so every product has the same shapes and the same
    Triton kernel.

    Returns:
      (dense bf16 [size, size] list, BlockSparse of bf16 values list, BlockSparse of 4-bit codes
      with a bf16 codebook list, the first set's codes as a dense float32 [size, size]).
    """
    dense, values, codes = [], [], []
    for _ in range(min(sets, DISTINCT)):
        kernel = random_block_kernel(rng, (size, size), block, density)
        codebook = jnp.asarray(np.concatenate([[0.0], np.sort(rng.standard_normal(15))]))
        code = np.where(kernel != 0, rng.integers(1, 16, kernel.shape), 0).astype(np.uint8)
        dense.append(jnp.asarray(kernel, jnp.bfloat16))
        values.append(BlockSparse.from_dense(dense[-1], block))
        codes.append(BlockSparse.from_codes(code, codebook.astype(jnp.bfloat16), block))
        if len(codes) == 1:
            first_codes = np.asarray(codebook.astype(jnp.bfloat16), np.float32)[code]

    def separate(stacked):  # indexing copies: set i gets buffers of its own
        return [jax.tree.map(lambda a, i=i: a[i % len(dense)], stacked) for i in range(sets)]

    return (
        separate(jnp.stack(dense)),
        separate(stack(values)),
        separate(stack(codes)),
        first_codes,
    )


def summed_products(product):
    """jit of ``(x, ws) -> (sum_i product(x, ws[i]) in float32, product(x, ws[0]))``: the
    products unrolled, one dispatch; the first is returned for checking."""

    def run(x, ws):
        first = product(x, ws[0])
        total = functools.reduce(
            lambda acc, w: acc + product(x, w).astype(jnp.float32), ws[1:], first
        )
        return total.astype(jnp.float32), first

    return jax.jit(run)


def _check(got, x, w) -> None:
    """Assert the first set's product `got` [M, N] matches x @ w in float32 (bf16 tolerance)."""
    want = np.asarray(x, np.float32) @ np.asarray(w, np.float32)
    scale = np.abs(want).max()
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=3e-2, atol=3e-2 * scale)


def run(sets: int, reps: int, smoke: bool, quick: bool = False) -> list[dict]:
    rng = np.random.default_rng(0)
    interpret = smoke  # on CPU the Triton kernel runs in Pallas interpret mode
    impl = "pallas_gpu"
    dense_fn = summed_products(lambda x, w: x @ w)
    sparse_fn = summed_products(lambda x, w: matmul(x, w, impl=impl, interpret=interpret))
    grid = SMOKE if smoke else TABLE
    points = [
        (GOAL["size"] if not smoke else SMOKE["size"], GOAL["block"], GOAL["density"], (16,), True)
    ]
    points += [
        (grid["size"], b, d, grid["batches"], False)
        for b in grid["blocks"]
        for d in grid["densities"]
        if not quick
    ]
    rows = []
    for size, block, density, batches, goal in points:
        dense, values, codes, first_codes = weight_set(rng, size, block, density, sets)
        for batch in batches:
            x = jnp.asarray(rng.standard_normal((batch, size)), jnp.bfloat16)
            _check(sparse_fn(x, values)[1], x, dense[0])
            _check(sparse_fn(x, codes)[1], x, first_codes)
            fns = {"dense": dense_fn, "bf16": sparse_fn, "4bit": sparse_fn}
            args = {"dense": (x, dense), "bf16": (x, values), "4bit": (x, codes)}
            best, median = best_times(fns, args, reps)
            per = {k: v / sets for k, v in best.items()}
            row = dict(
                goal_point=goal,
                size=size,
                block=block,
                density=density,
                batch=batch,
                sets=sets,
                us_per_product={k: v * 1e6 for k, v in per.items()},
                median_us_per_product={k: v / sets * 1e6 for k, v in median.items()},
                bf16_over_dense=per["bf16"] / per["dense"],
                dense_over_4bit=per["dense"] / per["4bit"],
            )
            rows.append(row)
            print(
                f"{'GOAL ' if goal else ''}N=K={size} b={block} d={density:.2f} batch={batch:2d} "
                f"dense {per['dense'] * 1e6:9.1f} us  bf16/dense {row['bf16_over_dense']:.3f}  "
                f"dense/4bit {row['dense_over_4bit']:.1f}x",
                flush=True,
            )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, help="weight sets rotated (default 64; smoke 2)")
    parser.add_argument("--reps", type=int, help="interleaved rounds (default 20; smoke 2)")
    parser.add_argument("--smoke", action="store_true", help="CPU, interpret mode, toy sizes")
    parser.add_argument("--quick", action="store_true", help="the goal point only, 16 sets")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/matmul_gpu.json)")
    args = parser.parse_args()
    sets = args.sets or (2 if args.smoke else 16 if args.quick else 64)
    reps = args.reps or (2 if args.smoke else 20)
    if not args.smoke and jax.default_backend() != "gpu":
        print(f"skipped: needs a GPU (backend is {jax.default_backend()!r}); --smoke runs on CPU")
        return
    rows = run(sets, reps, args.smoke, args.quick)
    missed = 0
    for row in rows:
        if row["goal_point"]:
            met = (
                row["bf16_over_dense"] <= GOAL["bf16"],
                row["dense_over_4bit"] >= GOAL["4bit_speedup"],
            )
            print(
                f"GOAL bf16 <= {GOAL['bf16']}: {met[0]}, 4-bit >= {GOAL['4bit_speedup']}x: {met[1]}"
            )
            missed += not all(met)
    quick = args.smoke or args.quick
    write_results(
        args.out, "matmul_gpu", rows, quick=quick, sets=sets, reps=reps, smoke=args.smoke, goal=GOAL
    )
    if missed and not args.smoke:  # smoke timings (CPU, interpret mode) mean nothing
        raise SystemExit(f"goal not met at {missed} point(s)")


if __name__ == "__main__":
    main()
