"""Where the time of one served BERT call goes: a JAX profiler trace of dense and served calls.

The encoder of `benchmarks/serve_bert.py` (random, all-MiniLM-L6-v2's shape), its 36 encoder
Dense kernels pruned to 90% with balanced 32 x 32 blocks (float32 values), is called under jit
at (batch, tokens) = (8, 128) --calls times with the dense (pruned) weights and as served by
`lscjax.flax.to_block_sparse`, inside `jax.profiler` traces. Each traced operation is attributed
to the model operation it compiles (its HLO op_name) and summed into four groups: the encoder's
products, attention's scores and context (its two batched einsums with the softmax fused in),
the GELU, and everything else. XLA runs some operations side by side, so a group's summed time
can exceed its share of the wall time. Writes benchmarks/results/serve_profile.json.

Usage: python benchmarks/serve_profile.py [--calls 10] [--quick] [--out PATH]
"""

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile

import jax
import jax.numpy as jnp
from matmul import write_results
from serve_bert import MINILM, QUICK, encoder_kernels, pruned, random_model

from lscjax.flax import compressed_apply, to_block_sparse

GROUPS = (  # (group, pattern of the op_name): the first match wins
    ("encoder products", r"/(query|key|value|dense)/(dot_general|ffi_call)"),
    ("attention scores and context", r"attention/self/(bh\w+,bh\w+->bh\w+/dot_general|reduce_sum)"),
    ("GELU", r"intermediate/mul"),
    ("everything else", r""),
)


def op_names(hlo: str) -> dict:
    """{HLO instruction name: the op_name of its metadata} of a compiled module's text."""
    pattern = r"\n\s*%?([\w.\-]+) = [^\n]*?metadata=\{op_name=\"([^\"]*)\""
    return {m.group(1): m.group(2) for m in re.finditer(pattern, hlo)}


def profile(fn, args, calls: int) -> dict:
    """Summed operation time per call (ms) of each of GROUPS, and "total"."""
    names = op_names(fn.lower(*args).compile().as_text())
    for _ in range(3):
        fn(*args).block_until_ready()
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        for _ in range(calls):
            fn(*args).block_until_ready()
        jax.profiler.stop_trace()
        (trace,) = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
        events = json.load(gzip.open(trace))["traceEvents"]
    ms = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e["name"] in names:
            op = names[e["name"]]
            group = next(g for g, pattern in GROUPS if re.search(pattern, op))
            ms[group] += e["dur"] / 1e3 / calls
    return {**{g: ms[g] for g, _ in GROUPS}, "total": sum(ms.values())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="a small encoder, 2 calls")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model, params = random_model(QUICK if args.quick else MINILM)
    calls = 2 if args.quick else args.calls
    weights = pruned(params, "balanced", 0.9)
    served = {
        "dense": weights,
        "served": to_block_sparse(weights, 32, where=encoder_kernels),
    }
    ids = jnp.ones((8, 128), jnp.int32)
    fn = jax.jit(compressed_apply(model.apply))
    rows = []
    for name, p in served.items():
        row = dict(model=name, **profile(fn, ({"params": p}, ids, jnp.ones_like(ids)), calls))
        rows.append(row)
        print(
            f"{name:6s} "
            + "  ".join(f"{g}: {row[g]:.1f} ms" for g, _ in GROUPS)
            + f"  total: {row['total']:.1f} ms"
        )
    write_results(
        args.out, "serve_profile", rows, quick=args.quick, calls=calls, batch=8, tokens=128
    )


if __name__ == "__main__":
    main()
