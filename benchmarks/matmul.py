"""Block-sparse matmul (XLA path) against dense and jax.experimental.sparse BCOO, in one run.

W is 4096 x 4096 float32 in Flax's (in, out) layout; x is [batch, 4096]. For each batch (1, 16,
64), block (32, 64) and block density (5, 10, 25 %), this times, interleaved and as medians:

* dense, each W.T-free form and the x @ W.T form; the baseline is the fastest of them;
  ratios use the best of `--reps` interleaved runs (the machine is shared; load only adds time);
* lscjax.sparse.matmul with float32 block values and with 4-bit codes (packed two per byte,
  unpacked and dequantized inside the jitted computation);
* BCOO ``x @ W`` (random masks only).

Two block masks: "random" (the non-zero blocks at uniformly random positions: rows differ in
length, so the padded ELL layout carries Kmax - mean(counts) zero blocks per row) and "balanced"
(the same number of non-zero blocks in every output block row: no padding).

Prints ratios (time / dense, BCOO / sparse) and writes benchmarks/results/matmul.json. Ratios
are given against the row's own dense minimum and against the pooled dense baseline (the best
dense time of the batch size over all rows: the same computation); goals use the pooled one.

Usage: python benchmarks/matmul.py [--reps 40] [--quick] [--out PATH]
       python benchmarks/matmul.py --table PATH   (a results file as a Markdown table)
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import sparse as jsparse

from lscjax._src.sparse.random import random_block_kernel
from lscjax.sparse import BlockSparse, matmul

SIZE = 4096
DENSE_FORMS = ("x@W", "(Wt@x.T).T", "x@Wt.T")
GOAL = {"batch": 16, "density": 0.10, "float": 0.2, "4bit": 0.25, "bcoo": 20.0}


def best_times(fns: dict, args: dict, reps: int) -> tuple[dict, dict]:
    """(min, median) wall time (s) of each jitted fn over `reps` round-robin runs.

    Round-robin timing exposes every fn to the same load drifts; ratios use the minimum, since
    background load on a shared machine only ever adds time.
    """
    for name, fn in fns.items():
        jax.block_until_ready(fn(*args[name]))  # compile
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args[name]))
            times[name].append(time.perf_counter() - start)
    best = {name: float(np.min(t)) for name, t in times.items()}
    return best, {name: float(np.median(t)) for name, t in times.items()}


def write_results(out, name: str, rows: list[dict], *, quick: bool = False, **meta) -> None:
    """Write ``{"meta": ..., "rows": rows}`` as JSON to `out`, or benchmarks/results/`name`.json.

    A quick (reduced) run without an explicit `out` writes nothing: the results files hold full
    runs. meta gets the JAX version, the backend and device, the CPU and its load average at the
    end, and the given entries.
    """
    if quick and out is None:
        return
    meta = dict(
        jax=jax.__version__,
        backend=jax.default_backend(),
        device=str(jax.devices()[0]),
        cpu=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        load_average=os.getloadavg(),
        **meta,
    )
    path = Path(out) if out is not None else Path(__file__).parent / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(f"wrote {path}")


def dense_forms(x, w):
    """The dense products to time: {name: (jitted fn, args)}; every one computes x @ W."""
    wt = jnp.asarray(w.T)  # [out, in]
    return {
        "x@W": (jax.jit(lambda x, w: x @ w), (x, w)),
        "(Wt@x.T).T": (jax.jit(lambda x, wt: (wt @ x.T).T), (x, wt)),
        "x@Wt.T": (
            jax.jit(lambda x, wt: lax.dot_general(x, wt, (((1,), (1,)), ((), ())))),
            (x, wt),
        ),
    }


def coded(rng, kernel, block):
    """4-bit codes with the kernel's sparsity pattern (code 0 = 0.0), as a BlockSparse."""
    codebook = np.concatenate([[0.0], np.sort(rng.standard_normal(15))]).astype(np.float32)
    codes = np.where(kernel != 0, rng.integers(1, 16, kernel.shape), 0).astype(np.uint8)
    return BlockSparse.from_codes(codes, codebook, block, bits=4), codebook[codes]


def run(reps: int, quick: bool) -> list[dict]:
    rng = np.random.default_rng(0)
    batches = (16,) if quick else (1, 16, 64)
    blocks = (32, 64)
    densities = (0.10,) if quick else (0.05, 0.10, 0.25)
    sparse_fn = jax.jit(matmul)
    bcoo_fn = jax.jit(lambda x, w: x @ w)
    rows = []
    for block in blocks:
        for density in densities:
            for mask in ("random", "balanced"):
                kernel = random_block_kernel(
                    rng, (SIZE, SIZE), block, density, balanced=mask == "balanced"
                )
                w_float = BlockSparse.from_dense(kernel, block)
                w_codes, decoded = coded(rng, kernel, block)
                counts = np.asarray(w_float.counts)
                bcoo = jsparse.BCOO.fromdense(jnp.asarray(kernel)) if mask == "random" else None
                for batch in batches:
                    x = jnp.asarray(rng.standard_normal((batch, SIZE)), jnp.float32)
                    forms = dense_forms(x, jnp.asarray(kernel))
                    fns = {name: fn for name, (fn, _) in forms.items()}
                    args = {name: a for name, (_, a) in forms.items()}
                    fns.update(sparse_f32=sparse_fn, sparse_4bit=sparse_fn)
                    args.update(sparse_f32=(x, w_float), sparse_4bit=(x, w_codes))
                    np.testing.assert_allclose(
                        sparse_fn(x, w_float), x @ kernel, rtol=2e-3, atol=2e-3
                    )
                    np.testing.assert_allclose(
                        sparse_fn(x, w_codes), x @ decoded, rtol=2e-3, atol=2e-3
                    )
                    t, t_median = best_times(fns, args, reps)
                    if bcoo is not None:  # >= 20x slower: a few runs measure it well enough
                        bcoo_t, bcoo_median = best_times({"bcoo": bcoo_fn}, {"bcoo": (x, bcoo)}, 3)
                        t.update(bcoo_t)
                        t_median.update(bcoo_median)
                    dense_name = min(forms, key=t.get)
                    dense = t[dense_name]
                    row = dict(
                        block=block,
                        density=density,
                        mask=mask,
                        batch=batch,
                        kmax=int(w_float.kmax),
                        mean_count=float(counts.mean()),
                        dense_form=dense_name,
                        times_ms={k: v * 1e3 for k, v in t.items()},
                        median_times_ms={k: v * 1e3 for k, v in t_median.items()},
                        float_over_dense=t["sparse_f32"] / dense,
                        codes4_over_dense=t["sparse_4bit"] / dense,
                        bcoo_over_float=(t["bcoo"] / t["sparse_f32"]) if bcoo is not None else None,
                        nbytes_dense=kernel.nbytes,
                        nbytes_float=w_float.nbytes,
                        nbytes_4bit=w_codes.nbytes,
                    )
                    rows.append(row)
                    bcoo_text = (
                        f" bcoo/sparse {row['bcoo_over_float']:7.1f}x"
                        if row["bcoo_over_float"]
                        else ""
                    )
                    print(
                        f"b={block:2d} d={density:.2f} {mask:8s} batch={batch:2d} "
                        f"Kmax/mean={row['kmax']}/{row['mean_count']:.1f} "
                        f"dense({dense_name})={dense * 1e3:7.3f}ms "
                        f"f32/dense={row['float_over_dense']:.3f} "
                        f"4bit/dense={row['codes4_over_dense']:.3f}{bcoo_text}",
                        flush=True,
                    )
    return rows


def pool_dense(rows: list[dict]) -> None:
    """Add ratios against the pooled dense baseline: the best dense time over all rows of a batch.

    The dense product does not depend on the mask, block or density, so every row of a batch
    size times the same computation; on a loaded machine the pooled minimum is the most robust
    estimate of its cost (per-row minima can all be inflated by a burst of load).
    """
    for row in rows:
        pooled = min(
            min(r["times_ms"][form] for form in DENSE_FORMS)
            for r in rows
            if r["batch"] == row["batch"]
        )
        row["dense_pooled_ms"] = pooled
        row["float_over_dense_pooled"] = row["times_ms"]["sparse_f32"] / pooled
        row["codes4_over_dense_pooled"] = row["times_ms"]["sparse_4bit"] / pooled
        print(
            f"b={row['block']:2d} d={row['density']:.2f} {row['mask']:8s} "
            f"batch={row['batch']:2d} pooled dense={pooled:7.3f}ms "
            f"f32/dense={row['float_over_dense_pooled']:.3f} "
            f"4bit/dense={row['codes4_over_dense_pooled']:.3f}"
        )


def markdown_table(results: dict) -> str:
    """A results file's rows as the Markdown table of docs/results/sparse.md."""
    meta = results["meta"]
    lines = [
        f"JAX {meta['jax']}, backend {meta['backend']}, {meta['cpu_count']} CPUs, load average "
        f"at the end {tuple(round(a, 1) for a in meta['load_average'])}, best of {meta['reps']} "
        "interleaved runs.",
        "",
        "| block | density | mask | batch | Kmax / mean | dense ms (pooled) | f32 ms | 4-bit ms "
        "| f32 / dense | 4-bit / dense | BCOO / f32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        t = r["times_ms"]
        bcoo = f"{r['bcoo_over_float']:.0f}x" if r["bcoo_over_float"] else "-"
        lines.append(
            f"| {r['block']} | {r['density']:.0%} | {r['mask']} | {r['batch']} | "
            f"{r['kmax']} / {r['mean_count']:.1f} | {r['dense_pooled_ms']:.2f} | "
            f"{t['sparse_f32']:.2f} | {t['sparse_4bit']:.2f} | "
            f"{r['float_over_dense_pooled']:.3f} | {r['codes4_over_dense_pooled']:.3f} | {bcoo} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument(
        "--quick", action="store_true", help="only the goal point (batch 16, density 10%%)"
    )
    parser.add_argument(
        "--out", help="JSON path (default: benchmarks/results/matmul.json; --quick writes none)"
    )
    parser.add_argument("--table", help="print this results file as a Markdown table and exit")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())))
        return
    rows = run(args.reps, args.quick)
    pool_dense(rows)
    goal_rows = [r for r in rows if r["batch"] == GOAL["batch"] and r["density"] == GOAL["density"]]
    for r in goal_rows:
        met = (
            r["float_over_dense_pooled"] <= GOAL["float"],
            r["codes4_over_dense_pooled"] <= GOAL["4bit"],
            r["bcoo_over_float"] is None or r["bcoo_over_float"] >= GOAL["bcoo"],
        )
        print(
            f"GOAL b={r['block']} {r['mask']}: f32<=0.2 {met[0]}, 4bit<=0.25 {met[1]}, "
            f"bcoo>=20x {met[2]}"
        )
    write_results(
        args.out,
        "matmul",
        rows,
        quick=args.quick,
        reps=args.reps,
        size=SIZE,
        goal=GOAL,
    )


if __name__ == "__main__":
    main()
