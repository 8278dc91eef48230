"""Row-group plans of the XLA path against each other, at and around matmul.py's goal point.

The XLA path multiplies a BlockSparse row group by row group (`lscjax.sparse.BlockSparse.row_groups`):
rows sorted by descending count, cut into n groups, each padded only to its own longest row.
Fewer groups pad more; more groups cost more calls into XLA:CPU's batched dot, and reordering
float rows copies their blocks. This times, for W 4096 x 4096 float32 at 10% block density
(random and balanced masks, blocks 32 and 64) and x of 16 and 64 rows, the forward product with
float values and with 4-bit codes under:

* ``in place``: one group of length Kmax in stored order (no copy of float rows);
* ``n=2, 4, 8, 16``: the sorted plan cut into n groups (reordered unless all rows are equal);
* ``overflow`` (float values): the layout the constructors make, its longest rows split off into
  an overflow (`lscjax._src.sparse.plan.overflow_width`), under the library's plan.

The other plans run on the unsplit layout (`merged`).

Each plan runs through the same `_xla` the library uses, with the plan forced (the library picks
`lscjax._src.sparse.matmul._plan`). Timed as matmul.py times (`rotated_times`: every function
cycles through copies of its weights, so each call reads them cold). Ratios are to dense
``x @ W`` timed alongside: fastest call (min / min) and median / median. Writes
benchmarks/results/matmul_plans.json.

Usage: python benchmarks/matmul_plans.py [--reps 10] [--quick] [--out PATH]
       (--quick: blocks of 64, random masks, batch 16 only)
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from matmul import CHUNK, SIZE, coded, copies, rotated_times, write_results

from lscjax._src.sparse import plan as sparse_plan
from lscjax._src.sparse.matmul import _plan, _xla
from lscjax._src.sparse.random import random_block_kernel
from lscjax._src.sparse.stack import merged
from lscjax.sparse import BlockSparse

DENSITY = 0.10
GROUP_COUNTS = (2, 4, 8, 16)


def run(reps: int, quick: bool = False) -> list[dict]:
    rng = np.random.default_rng(0)
    forward = jax.jit(_xla, static_argnums=2)
    dense = jax.jit(lambda x, w: x @ w)
    rows = []
    for block in (64,) if quick else (32, 64):
        for mask in ("random",) if quick else ("random", "balanced"):
            kernel = random_block_kernel(
                rng, (SIZE, SIZE), block, DENSITY, balanced=mask == "balanced"
            )
            split = BlockSparse.from_dense(kernel, block)
            weights = {"f32": merged(split)}
            weights["4bit"], _ = coded(rng, kernel, block)
            w_dense = jnp.asarray(kernel)
            counts = np.asarray(split.counts)
            plans = {"in place": (int(counts.max()),)}
            plans.update({f"n={n}": sparse_plan.sorted_plan(counts, n) for n in GROUP_COUNTS})
            dense_sets = copies(w_dense, kernel.nbytes)
            sparse_sets = {storage: copies(w, w.nbytes) for storage, w in weights.items()}
            split_sets = copies(split, split.nbytes) if split.overflow is not None else []
            for batch in (16,) if quick else (16, 64):
                x = jnp.asarray(rng.standard_normal((batch, SIZE)), jnp.float32)
                fns = {"dense": (dense, [(x, d) for d in dense_sets])}
                plan_of = {}
                for storage, sets in sparse_sets.items():
                    for name, plan in plans.items():
                        fns[f"{storage} {name}"] = (forward, [(x, w, plan) for w in sets])
                        plan_of[f"{storage} {name}"] = plan
                if split_sets:
                    plan_of["f32 overflow"] = _plan(split, batch)
                    fns["f32 overflow"] = (
                        forward,
                        [(x, w, plan_of["f32 overflow"]) for w in split_sets],
                    )
                best, median = rotated_times(fns, reps)
                row = dict(block=block, mask=mask, batch=batch, kmax=int(counts.max()), plans={})
                row["overflow_width"] = split.kmax if split_sets else None
                for key in fns:
                    if key == "dense":
                        continue
                    storage = key.split(" ", 1)[0]
                    row["plans"][key] = dict(
                        storage=storage,
                        plan=list(plan_of[key]),
                        ms=best[key] * 1e3,
                        over_dense=best[key] / best["dense"],
                        median_over_dense=median[key] / median["dense"],
                    )
                row["dense_ms"] = best["dense"] * 1e3
                rows.append(row)
                text = "  ".join(
                    f"{k}={v['over_dense']:.3f}/{v['median_over_dense']:.3f}"
                    for k, v in row["plans"].items()
                )
                print(f"b={block} {mask:8s} batch={batch:2d} (best/median of dense) {text}")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reps", type=int, default=10, help=f"rounds of {CHUNK} calls per function"
    )
    parser.add_argument("--quick", action="store_true", help="one block, mask and batch")
    parser.add_argument(
        "--out", help="JSON path (default results/matmul_plans.json; --quick: none)"
    )
    args = parser.parse_args()
    rows = run(args.reps, args.quick)
    write_results(
        args.out,
        "matmul_plans",
        rows,
        quick=args.quick,
        reps=args.reps,
        size=SIZE,
        density=DENSITY,
        max_row_groups=sparse_plan.MAX_ROW_GROUPS,
    )


if __name__ == "__main__":
    main()
