"""At which block density does a served kernel stop beating dense? The default `max_density`.

For transformer-sized kernels (all-MiniLM-L6-v2's 384 x 384 / 384 x 1536 / 1536 x 384 and
BERT-base's 768 x 3072), x of M = batch x tokens rows (128, 1024), 32 x 32 blocks at random
positions with block density 0.1 ... 1.0, this times one call
of the dense product ``x @ W`` and of `lscjax.sparse.matmul` with float32 block values and with
4-bit codes, under jit, each function cycling through copies of its weights (the rotated
protocol of benchmarks/matmul.py: weights cold, as in a model larger than the cache).

Prints, per density, the ratio sparse / dense of every point, their median and their worst,
and the largest density up to which the median ratio (float and 4-bit points together) stays
<= 1.0 (on a shared machine single points are noisy, medians are not): the serving policy's
threshold (`lscjax._src.sparse.leaf.DEFAULT_MAX_DENSITY`). --impl picks the sparse path: "auto"
(the compiled CPU kernel where it is built) or "xla" (the gather + batched-dot path). Writes
benchmarks/results/serve_density.json.

Usage: python benchmarks/serve_density.py [--rounds 3] [--impl auto|xla|cpu] [--quick] [--out PATH]
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from matmul import copies, rotated_times, write_results

from lscjax._src.sparse.random import random_block_kernel
from lscjax.sparse import BlockSparse, matmul, resolve_impl

SHAPES = ((384, 384), (384, 1536), (1536, 384), (768, 3072))
ROWS = (128, 1024)
DENSITIES = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
BLOCK = 32


def coded(kernel: np.ndarray) -> BlockSparse:
    """4-bit codes of `kernel`'s non-zeros (15 levels + exact 0), as BlockSparse."""
    nz = kernel != 0
    levels = np.quantile(kernel[nz], np.linspace(0, 1, 15)) if nz.any() else np.zeros(15)
    codebook = np.concatenate([[0.0], levels]).astype(np.float32)
    codes = np.where(nz, 1 + np.abs(kernel[..., None] - levels).argmin(-1), 0).astype(np.uint8)
    return BlockSparse.from_codes(codes, codebook, BLOCK, bits=4)


def point(rng, shape, rows: int, density: float, rounds: int, impl: str) -> dict:
    kernel = random_block_kernel(rng, shape, BLOCK, density)
    x = jnp.asarray(rng.standard_normal((rows, shape[0])), jnp.float32)
    weights = {
        "dense": jnp.asarray(kernel),
        "float": BlockSparse.from_dense(kernel, BLOCK),
        "4bit": coded(kernel),
    }
    dense_fn = jax.jit(lambda x, w: x @ w)
    sparse_fn = jax.jit(lambda x, w: matmul(x, w, impl=impl))
    fns = {}
    for name, w in weights.items():
        nbytes = sum(a.nbytes for a in jax.tree.leaves(w))
        sets = [(x, c) for c in copies(w, nbytes)]
        fns[name] = (dense_fn if name == "dense" else sparse_fn, sets)
    best, median = rotated_times(fns, rounds)
    row = dict(shape=list(shape), rows=rows, density=density)
    for name in weights:
        row[f"{name}_ms"] = best[name] * 1e3
        row[f"{name}_median_ms"] = median[name] * 1e3
    for name in ("float", "4bit"):  # the median call's ratio, and the fastest call's beside it
        row[f"{name}_ratio"] = median[name] / median["dense"]
        row[f"{name}_fastest_ratio"] = best[name] / best["dense"]
    return row


def threshold(rows: list[dict]) -> float | None:
    """The largest density whose median ratio (float and 4-bit points) is <= 1, every lower
    density also passing; None if the lowest fails."""
    passed = None
    for d in sorted({r["density"] for r in rows}):
        ratios = [x for r in rows if r["density"] == d for x in (r["float_ratio"], r["4bit_ratio"])]
        if np.median(ratios) > 1.0:
            break
        passed = d
    return passed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--impl", default="auto", choices=("auto", "xla", "cpu"))
    parser.add_argument("--quick", action="store_true", help="two shapes, 128 rows, 2 densities")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    shapes = SHAPES[:2] if args.quick else SHAPES
    rows_list = ROWS[:1] if args.quick else ROWS
    densities = (0.3, 1.0) if args.quick else DENSITIES
    rng = np.random.default_rng(0)
    rows = []
    for density in densities:
        for shape in shapes:
            for m in rows_list:
                r = point(rng, shape, m, density, 1 if args.quick else args.rounds, args.impl)
                rows.append(r)
                print(
                    f"d={density:.2f} {shape[0]}x{shape[1]} M={m:5d}: dense "
                    f"{r['dense_median_ms']:7.3f} ms  float x{r['float_ratio']:.2f}  "
                    f"4-bit x{r['4bit_ratio']:.2f}",
                    flush=True,
                )
        ratios = [
            x for r in rows if r["density"] == density for x in (r["float_ratio"], r["4bit_ratio"])
        ]
        print(f"d={density:.2f}: median x{np.median(ratios):.2f}, worst x{max(ratios):.2f}")
    limit = threshold(rows)
    print(f"largest density with median ratio <= 1: {limit}")
    write_results(
        args.out,
        "serve_density",
        rows,
        quick=args.quick,
        block=BLOCK,
        threshold=limit,
        impl=args.impl,
        kernel=resolve_impl(args.impl, BlockSparse.from_dense(np.ones((BLOCK, BLOCK)), BLOCK)),
    )


if __name__ == "__main__":
    main()
