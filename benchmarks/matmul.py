"""Block-sparse matmul (XLA path) against dense and jax.experimental.sparse BCOO, in one run.

W is 4096 x 4096 float32 in Flax's (in, out) layout; x is [batch, 4096]. For each batch (1, 16,
64), block (32, 64) and block density (5, 10, 25 %), this times one call of:

* dense, each W.T-free form and the x @ W.T form; the baseline is the fastest of them;
* lscjax.sparse.matmul with float32 block values and with 4-bit codes (packed two per byte,
  unpacked and dequantized inside the jitted computation);
* BCOO ``x @ W`` (random masks only).

Timing protocol (`rotated_times`): every function cycles through copies of its weights in
separate buffers, at least ROTATE_BYTES of them (8x this machine's 32 MB L3), so each call
reads its weights cold from memory, as a layer of a model larger than the cache does. The
functions take turns in chunks of calls (load drifts hit all alike), every function making the
same number of calls; ratios use the fastest call (the machine is shared and load only adds
time), medians are recorded beside them. A call right after a dense product, which streams
64 MB through every cache level, also finds JAX's own dispatch path cold: `dispatch_overhead`
measures that on a no-op (printed and recorded in the results' meta).

Two block masks: "random" (the non-zero blocks at uniformly random positions: rows differ in
length, so a padded ELL layout would carry Kmax - mean(counts) zero blocks per row; float
layouts split their longest rows off into an overflow, shown as "split at" the ELL width) and
"balanced" (the same number of non-zero blocks in every output block row: no padding).

Prints ratios (time / dense, BCOO / sparse) and writes benchmarks/results/matmul.json. Ratios
are given against the row's own dense minimum and against the pooled dense baseline (the best
dense time of the batch size over all rows: the same computation); goals use the pooled one.

Exits with status 1 when a goal point misses its goal.

Usage: python benchmarks/matmul.py [--reps 20] [--quick] [--out PATH]
       python benchmarks/matmul.py --table PATH   (a results file as a Markdown table)
"""

import argparse
import functools
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
ROTATE_BYTES = 256 * 2**20  # weights each function cycles through
MAX_SETS = 256  # copies of one weight at most (4-bit codes at 5% blocks are 0.4 MB)
CHUNK = 16  # calls a function makes in a row before the next takes its turn


def best_times(fns: dict, args: dict, reps: int) -> tuple[dict, dict]:
    """(min, median) wall time (s) of each jitted fn over `reps` round-robin runs (weights warm:
    used for BCOO, which is many times slower than the others whatever its cache state).

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


def copies(weight, nbytes: int) -> list:
    """Copies of a weight pytree in separate buffers, together at least ROTATE_BYTES (2 to
    MAX_SETS of them): cycled through, none is still cached when its turn comes again."""
    sets = min(MAX_SETS, max(2, -(-ROTATE_BYTES // nbytes)))
    return [jax.tree.map(lambda a: jnp.array(a, copy=True), weight) for _ in range(sets)]


def rotated_times(fns: dict, rounds: int) -> tuple[dict, dict]:
    """(min, median) wall time (s) of one call of each jitted fn, its weights cold.

    Args:
      fns: {name: (fn, [args, ...])}; each args tuple holds its own copy of the weights.
      rounds: every fn makes CHUNK calls per round, cycling through its args; the fns take
        turns, so each makes ``rounds * CHUNK`` calls.
    """
    for fn, arg_sets in fns.values():
        jax.block_until_ready(fn(*arg_sets[0]))  # compile
    times = {name: [] for name in fns}
    for r in range(rounds):
        for name, (fn, arg_sets) in fns.items():
            for i in range(r * CHUNK, (r + 1) * CHUNK):
                args = arg_sets[i % len(arg_sets)]
                start = time.perf_counter()
                jax.block_until_ready(fn(*args))
                times[name].append(time.perf_counter() - start)
    best = {name: float(np.min(t)) for name, t in times.items()}
    return best, {name: float(np.median(t)) for name, t in times.items()}


def dispatch_overhead(x, w, calls: int = 50) -> dict:
    """The fastest of `calls` calls (ms) of a jitted no-op on x, in a row and each right after a
    dense ``x @ w`` (whose weights stream through every cache level, JAX's dispatch path's too)."""
    noop, dense = jax.jit(lambda x: x + 1), jax.jit(lambda x, w: x @ w)
    jax.block_until_ready((noop(x), dense(x, w)))
    alone, after_dense = [], []
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(noop(x))
        alone.append(time.perf_counter() - start)
    for _ in range(calls):
        jax.block_until_ready(dense(x, w))
        start = time.perf_counter()
        jax.block_until_ready(noop(x))
        after_dense.append(time.perf_counter() - start)
    return dict(noop_ms=min(alone) * 1e3, noop_after_dense_ms=min(after_dense) * 1e3)


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


def dense_forms(kernel: np.ndarray) -> dict:
    """The dense products to time: {name: (jitted fn(x, weight), weight copies)}; every one
    computes x @ W, from W [in, out] or from W stored transposed ([out, in])."""
    w_sets, wt_sets = (
        copies(jnp.asarray(kernel), kernel.nbytes),
        copies(jnp.asarray(kernel.T), kernel.nbytes),
    )
    return {
        "x@W": (jax.jit(lambda x, w: x @ w), w_sets),
        "(Wt@x.T).T": (jax.jit(lambda x, wt: (wt @ x.T).T), wt_sets),
        "x@Wt.T": (
            jax.jit(lambda x, wt: lax.dot_general(x, wt, (((1,), (1,)), ((), ())))),
            wt_sets,
        ),
    }


def coded(rng, kernel, block):
    """4-bit codes with the kernel's sparsity pattern (code 0 = 0.0), as a BlockSparse."""
    codebook = np.concatenate([[0.0], np.sort(rng.standard_normal(15))]).astype(np.float32)
    codes = np.where(kernel != 0, rng.integers(1, 16, kernel.shape), 0).astype(np.uint8)
    return BlockSparse.from_codes(codes, codebook, block, bits=4), codebook[codes]


def run(reps: int, quick: bool, impl: str) -> list[dict]:
    rng = np.random.default_rng(0)
    batches = (16,) if quick else (1, 16, 64)
    blocks = (32, 64)
    densities = (0.10,) if quick else (0.05, 0.10, 0.25)
    sparse_fn = jax.jit(functools.partial(matmul, impl=impl))
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
                weights = dense_forms(kernel)
                weights.update(
                    sparse_f32=(sparse_fn, copies(w_float, w_float.nbytes)),
                    sparse_4bit=(sparse_fn, copies(w_codes, w_codes.nbytes)),
                )
                for batch in batches:
                    x = jnp.asarray(rng.standard_normal((batch, SIZE)), jnp.float32)
                    np.testing.assert_allclose(
                        sparse_fn(x, w_float), x @ kernel, rtol=2e-3, atol=2e-3
                    )
                    np.testing.assert_allclose(
                        sparse_fn(x, w_codes), x @ decoded, rtol=2e-3, atol=2e-3
                    )
                    fns = {name: (fn, [(x, w) for w in ws]) for name, (fn, ws) in weights.items()}
                    t, t_median = rotated_times(fns, reps)
                    if bcoo is not None:  # >= 20x slower: a few calls measure it well enough
                        bcoo_t, bcoo_median = best_times({"bcoo": bcoo_fn}, {"bcoo": (x, bcoo)}, 3)
                        t.update(bcoo_t)
                        t_median.update(bcoo_median)
                    dense_name = min(DENSE_FORMS, key=t.get)
                    dense = t[dense_name]
                    row = dict(
                        block=block,
                        density=density,
                        mask=mask,
                        batch=batch,
                        kmax=int(counts.max()),
                        overflow_width=int(w_float.kmax) if w_float.overflow else None,
                        mean_count=float(counts.mean()),
                        dense_form=dense_name,
                        sets={name: len(ws) for name, (_, ws) in weights.items()},
                        times_ms={k: v * 1e3 for k, v in t.items()},
                        median_times_ms={k: v * 1e3 for k, v in t_median.items()},
                        float_over_dense=t["sparse_f32"] / dense,
                        codes4_over_dense=t["sparse_4bit"] / dense,
                        median_float_over_dense=t_median["sparse_f32"] / t_median[dense_name],
                        median_codes4_over_dense=t_median["sparse_4bit"] / t_median[dense_name],
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
                        f"Kmax/mean={kmax_text(row)} "
                        f"dense({dense_name})={dense * 1e3:7.3f}ms "
                        f"f32/dense={row['float_over_dense']:.3f} "
                        f"4bit/dense={row['codes4_over_dense']:.3f} (medians "
                        f"{row['median_float_over_dense']:.3f} / "
                        f"{row['median_codes4_over_dense']:.3f}){bcoo_text}",
                        flush=True,
                    )
                del weights
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


def kmax_text(row: dict) -> str:
    """'Kmax / mean count' of a results row, with the ELL width where the float layout is split
    into an overflow."""
    width = row.get("overflow_width")
    split = f" (split at {width})" if width else ""
    return f"{row['kmax']} / {row['mean_count']:.1f}{split}"


def markdown_table(results: dict) -> str:
    """A results file's rows as the Markdown table of docs/results/sparse.md."""
    meta = results["meta"]
    lines = [
        f"JAX {meta['jax']}, backend {meta['backend']}, {meta['cpu_count']} CPUs, load average "
        f"at the end {tuple(round(a, 1) for a in meta['load_average'])}; fastest of "
        f"{meta['reps'] * meta['calls_per_round']} calls per function, weights cold (rotated "
        f"copies); a no-op jitted call took {meta['noop_ms']:.3f} ms in a row, "
        f"{meta['noop_after_dense_ms']:.3f} ms right after a dense product.",
        "",
        "| block | density | mask | batch | Kmax / mean (f32 split) | dense ms (pooled) | f32 ms "
        "| 4-bit ms | f32 / dense | 4-bit / dense | medians f32 / 4-bit | BCOO / f32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        t = r["times_ms"]
        bcoo = f"{r['bcoo_over_float']:.0f}x" if r["bcoo_over_float"] else "-"
        lines.append(
            f"| {r['block']} | {r['density']:.0%} | {r['mask']} | {r['batch']} | "
            f"{kmax_text(r)} | {r['dense_pooled_ms']:.2f} | "
            f"{t['sparse_f32']:.2f} | {t['sparse_4bit']:.2f} | "
            f"{r['float_over_dense_pooled']:.3f} | {r['codes4_over_dense_pooled']:.3f} | "
            f"{r['median_float_over_dense']:.3f} / {r['median_codes4_over_dense']:.3f} | {bcoo} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reps",
        type=int,
        default=20,
        help=f"rounds of {CHUNK} calls per function",
    )
    parser.add_argument(
        "--quick", action="store_true", help="only the goal point (batch 16, density 10%%)"
    )
    parser.add_argument(
        "--out", help="JSON path (default: benchmarks/results/matmul.json; --quick writes none)"
    )
    parser.add_argument(
        "--impl",
        default="xla",
        choices=("xla", "cpu", "auto"),
        help="the sparse path (docs/results/sparse.md: xla; the CPU kernel: serving.md)",
    )
    parser.add_argument("--table", help="print this results file as a Markdown table and exit")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())))
        return
    x = jnp.ones((GOAL["batch"], SIZE), jnp.float32)
    overhead = dispatch_overhead(x, jnp.ones((SIZE, SIZE), jnp.float32))
    print(
        f"no-op jitted call: {overhead['noop_ms']:.3f} ms in a row, "
        f"{overhead['noop_after_dense_ms']:.3f} ms right after a dense product"
    )
    rows = run(args.reps, args.quick, args.impl)
    pool_dense(rows)
    goal_rows = [r for r in rows if r["batch"] == GOAL["batch"] and r["density"] == GOAL["density"]]
    missed = 0
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
        missed += not all(met)
    write_results(
        args.out,
        "matmul",
        rows,
        quick=args.quick,
        impl=args.impl,
        reps=args.reps,
        calls_per_round=CHUNK,
        rotate_bytes=ROTATE_BYTES,
        size=SIZE,
        goal=GOAL,
        **overhead,
    )
    if missed:
        raise SystemExit(f"goal not met at {missed} point(s)")


if __name__ == "__main__":
    main()
