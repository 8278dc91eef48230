"""The XLA path's two product forms against each other, by x's row count M.

`lscjax._src.kernels.xla.block_matmul` multiplies the gathered x either slot-batched (one
[M, b_in] @ [b_in, b_out] product per slot, summed over each row's slots) or row-batched (one
[M, Kmax * b_in] @ [Kmax * b_in, b_out] product per row, on a transposed copy of the gathered x),
and the plan picks by M (`lscjax.sparse.Tuning.slot_form_max_rows`). This compiles
`lscjax.sparse.matmul` with each form forced (through its ``tuning``)
and times both against dense ``x @ W``, for float32 weights of 10% random block density:

* W 4096 x 4096, blocks 32 and 64 (the shape of benchmarks/matmul.py);
* the matrix views of LeNet-5's kernels served in examples/serve_compressed.py (16 x 16 blocks):
  conv1 25 x 20 with every block kept, conv2 500 x 50 and fc1 800 x 500 at 10%; a batch of 256
  images gives conv1 147,456 patch rows and conv2 16,384.

Timed as matmul.py times (`rotated_times`: every function cycles through copies of its weights,
so each call reads them cold). Ratios use the fastest call. Writes
benchmarks/results/matmul_forms.json.

Usage: python benchmarks/matmul_forms.py [--reps 4] [--quick] [--out PATH]
       (--quick: 4096^2 b=64 and LeNet-5 conv1 at 1, 16 and 4096 rows)
       python benchmarks/matmul_forms.py --table PATH
"""

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matmul import CHUNK, SIZE, copies, rotated_times, write_results

from lscjax._src.sparse.random import random_block_kernel
from lscjax.sparse import BlockSparse, Tuning, matmul

LARGE_M = (1, 16, 256, 1024, 2048)
SMALL_M = (1, 16, 256, 1024, 2048, 4096, 16384)
CASES = (  # name, matrix shape, block, block density, rows of x
    ("4096^2 b=32", (SIZE, SIZE), 32, 0.10, LARGE_M),
    ("4096^2 b=64", (SIZE, SIZE), 64, 0.10, LARGE_M),
    ("LeNet-5 conv1", (25, 20), 16, 1.0, (*SMALL_M, 147456)),
    ("LeNet-5 conv2", (500, 50), 16, 0.10, SMALL_M),
    ("LeNet-5 fc1", (800, 500), 16, 0.10, SMALL_M),
)
QUICK = (
    ("4096^2 b=64", (SIZE, SIZE), 64, 0.10, (1, 16, 4096)),
    ("LeNet-5 conv1", (25, 20), 16, 1.0, (1, 16, 4096)),
)
FORMS = {"slot": 2**62, "row": 0, "library": None}  # slot_form_max_rows: forced, or the default


def compiled(x, w, form: str):
    """`matmul(x, w, impl="xla")` compiled with the product form forced ("slot", "row") or as the library
    picks it per piece of x's rows ("library")."""
    tuning = Tuning() if FORMS[form] is None else Tuning(slot_form_max_rows=FORMS[form])
    return jax.jit(lambda x, w: matmul(x, w, impl="xla", tuning=tuning)).lower(x, w).compile()


def run(reps: int, quick: bool = False) -> list[dict]:
    rng = np.random.default_rng(0)
    dense = jax.jit(lambda x, w: x @ w)
    rows = []
    for name, shape, block, density, batches in QUICK if quick else CASES:
        kernel = random_block_kernel(rng, shape, block, density)
        w = BlockSparse.from_dense(kernel, block)
        dense_sets = copies(jnp.asarray(kernel), kernel.nbytes)
        sparse_sets = copies(w, w.nbytes)
        for m in batches:
            x = jnp.asarray(rng.standard_normal((m, shape[0])), jnp.float32)
            fns = {"dense": (dense, [(x, d) for d in dense_sets])}
            for form in FORMS:
                fn = compiled(x, w, form)
                np.testing.assert_allclose(fn(x, w), x @ kernel, rtol=2e-3, atol=2e-3)
                fns[form] = (fn, [(x, c) for c in sparse_sets])
            best, _ = rotated_times(fns, reps)
            dense_s = best["dense"]
            row = dict(
                case=name,
                shape=list(shape),
                block=block,
                density=density,
                m=m,
                kmax=int(w.kmax),
                dense_ms=dense_s * 1e3,
                slot_ms=best["slot"] * 1e3,
                row_ms=best["row"] * 1e3,
                library_ms=best["library"] * 1e3,
            )
            rows.append(row)
            print(
                f"{name:14s} M={m:6d} dense {row['dense_ms']:9.3f} ms  "
                f"slot/dense {best['slot'] / dense_s:6.3f}  row/dense {best['row'] / dense_s:6.3f}  "
                f"row/slot {best['row'] / best['slot']:5.2f}  "
                f"library/dense {best['library'] / dense_s:6.3f}",
                flush=True,
            )
    return rows


def markdown_table(results: dict) -> str:
    """A results file's rows as a Markdown table."""
    meta = results["meta"]
    lines = [
        f"JAX {meta['jax']}, {meta['cpu_count']} CPUs, load average at the end "
        f"{tuple(round(a, 1) for a in meta['load_average'])}, fastest of "
        f"{meta['reps'] * CHUNK} calls, weights cold (rotated copies); the library takes the slot "
        f"form for pieces of x of up to "
        f"{meta['slot_form_max_rows']} rows.",
        "",
        "| weight | M | dense ms | slot / dense | row / dense | library / dense | row / slot |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['case']} | {r['m']} | {r['dense_ms']:.3f} | {r['slot_ms'] / r['dense_ms']:.3f} | "
            f"{r['row_ms'] / r['dense_ms']:.3f} | {r['library_ms'] / r['dense_ms']:.3f} | "
            f"{r['row_ms'] / r['slot_ms']:.2f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=4, help=f"rounds of {CHUNK} calls per function")
    parser.add_argument("--quick", action="store_true", help="two weights, three row counts")
    parser.add_argument(
        "--out", help="JSON path (default results/matmul_forms.json; --quick: none)"
    )
    parser.add_argument("--table", help="print this results file as a Markdown table and exit")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())))
        return
    rows = run(args.reps, args.quick)
    write_results(
        args.out,
        "matmul_forms",
        rows,
        quick=args.quick,
        reps=args.reps,
        slot_form_max_rows=Tuning().slot_form_max_rows,
    )


if __name__ == "__main__":
    main()
