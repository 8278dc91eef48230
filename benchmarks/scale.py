"""Compressing large checkpoints: wall time, peak memory and throughput of `lscjax compress`.

    python benchmarks/scale.py                     # 100M, 300M, "one" at 1, 2, all workers; 1B once
    python benchmarks/scale.py --sizes 100M 300M   # a subset
    python benchmarks/scale.py --quick             # 20M params, 1 and 2 workers, no JSON
    python benchmarks/scale.py --sizes 1B --no-kmeans  # one point, keeping the rest of the JSON

Each point writes a synthetic transformer-shaped float32 checkpoint (token embedding [V, d];
per layer the query / key / value / output kernels [d, d], the MLP kernels [d, 4d] and [4d, d]
with their biases and two LayerNorms; normal(0, 0.02) values) as Hugging Face's multi-file
safetensors layout (shards of <= 2 GB and model.safetensors.index.json), tensor by tensor, so
the generator holds one tensor at a time; the "one" point is a checkpoint of a single
[16384, 4096] tensor (67M weights, an LM head's size), which the workers share only by taking
slices of it (lscjax._src.parallel). It then runs ``lscjax compress --recipe lsc`` (95%
global magnitude sparsity, 5-bit k-means codes, LSC + rANS) on it under ``/usr/bin/time -v``
and reports wall time, peak RSS of the process, weights per second (all params of the
checkpoint over the wall time) and the file ratio (checkpoint bytes over .lsc bytes); then
loads the .lsc file back (``lscjax.load(..., layout="quantized")``: QArray codes + codebooks,
one tensor decoded at a time) under the same measurement. The big files are deleted after
each point. Before them, the cost of fitting k-means on a sample (`SAMPLE_POINTS` of the kept
weights, lscjax._src.quant.kmeans) instead of every kept weight is measured on a pruned normal
layer (1024 x 2048 at 10%): mean squared error and time of each (``--sizes`` with no size runs
only that). Writes benchmarks/results/scale.json.
"""

import argparse
import json
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

RESULTS = pathlib.Path(__file__).parent / "results" / "scale.json"
VOCAB = 32000
SHAPES = {"20M": 512, "100M": 768, "300M": 1024, "1B": 2048}
SIZES = {"20M": 20e6, "100M": 100e6, "300M": 300e6, "1B": 1e9, "one": 16384 * 4096}
ONE_TENSOR = {"lm_head.kernel": (16384, 4096)}
"""The "one" point: a checkpoint of one 67M-weight tensor, which workers can only share by
taking slices of it."""
REPEATS = {"one": 5}
"""Compress runs per worker count (the median is reported): the "one" point takes seconds, of
which the interpreter's and JAX's start-up are about half, so single runs are noisy."""
SHARD_BYTES = 2 << 30
REPO = pathlib.Path(__file__).resolve().parents[1]


def tensor_shapes(params: float, width: int) -> dict[str, tuple]:
    """{dotted name: shape} of a transformer of about `params` parameters and width `width`."""
    per_layer = 12 * width * width + 13 * width
    layers = max(1, round((params - VOCAB * width) / per_layer))
    shapes = {"embed.embedding": (VOCAB, width)}
    for i in range(layers):
        layer = f"layers_{i}"
        for name in ("query", "key", "value", "out"):
            shapes[f"{layer}.attention.{name}.kernel"] = (width, width)
            shapes[f"{layer}.attention.{name}.bias"] = (width,)
        shapes[f"{layer}.mlp.up.kernel"] = (width, 4 * width)
        shapes[f"{layer}.mlp.up.bias"] = (4 * width,)
        shapes[f"{layer}.mlp.down.kernel"] = (4 * width, width)
        shapes[f"{layer}.mlp.down.bias"] = (width,)
        for norm in ("norm_0", "norm_1"):
            shapes[f"{layer}.{norm}.scale"] = (width,)
            shapes[f"{layer}.{norm}.bias"] = (width,)
    return shapes


def write_checkpoint(folder: pathlib.Path, shapes: dict[str, tuple], seed: int = 0) -> int:
    """Write the safetensors shards and index of `shapes`, one tensor in memory at a time.

    Returns the total bytes of the shards."""
    shards, current, size = [], {}, 0
    for name, shape in shapes.items():
        nbytes = 4 * int(np.prod(shape))
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[name] = shape
        size += nbytes
    shards.append(current)
    rng = np.random.default_rng(seed)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {}, 0
        for name, shape in shard.items():
            end = offset + 4 * int(np.prod(shape))
            header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, end]}
            offset = end
            weight_map[name] = file
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        with open(folder / file, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            for name, shape in shard.items():
                if name.endswith(".scale"):
                    values = np.ones(shape, np.float32)
                else:
                    values = (0.02 * rng.standard_normal(shape, np.float32)).astype(np.float32)
                f.write(values.tobytes())
        total += offset
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return total


def timed(argv: list[str]) -> dict:
    """Run `argv` under /usr/bin/time -v: {"wall_s", "peak_rss_mb"}."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    start = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-v", *argv], capture_output=True, text=True, env=env, check=False
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return {"wall_s": wall, "peak_rss_mb": rss / 1024}


LOAD = "import sys, lscjax; lscjax.load(sys.argv[1], layout='quantized')"


def point(size: str, workers: list[int], tmp: pathlib.Path) -> list[dict]:
    """Compress (and load back) one synthetic checkpoint at each worker count."""
    folder = tmp / f"ckpt_{size}"
    folder.mkdir()
    shapes = ONE_TENSOR if size == "one" else tensor_shapes(SIZES[size], SHAPES[size])
    params = sum(int(np.prod(s)) for s in shapes.values())
    start = time.perf_counter()
    ckpt_bytes = write_checkpoint(folder, shapes)
    print(f"{size}: {params / 1e6:.0f}M params written in {time.perf_counter() - start:.0f} s")
    rows = []
    try:
        for n in workers:
            out = tmp / f"{size}.lsc"
            argv = [sys.executable, "-m", "lscjax._src.cli", "compress", str(folder)]
            before = os.getloadavg()[0]
            runs = [
                timed([*argv, "-o", str(out), "--recipe", "lsc", "--workers", str(n), "--quiet"])
                for _ in range(REPEATS.get(size, 1))
            ]
            run = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]  # the median run
            load = timed([sys.executable, "-c", LOAD, str(out)])
            row = {
                "load_average_1min": [before, os.getloadavg()[0]],
                "size": size,
                "params": params,
                "workers": n,
                "compress_wall_s": run["wall_s"],
                "compress_wall_runs_s": [r["wall_s"] for r in runs],
                "compress_peak_rss_mb": run["peak_rss_mb"],
                "weights_per_s": params / run["wall_s"],
                "ratio": ckpt_bytes / out.stat().st_size,
                "load_wall_s": load["wall_s"],
                "load_peak_rss_mb": load["peak_rss_mb"],
            }
            rows.append(row)
            print(
                f"  workers {n} (load average {before:.1f}): {row['compress_wall_s']:.1f} s, peak RSS "
                f"{row['compress_peak_rss_mb']:.0f} MB, {row['weights_per_s'] / 1e6:.2f} M weights/s, "
                f"ratio {row['ratio']:.1f}; load {row['load_wall_s']:.1f} s, "
                f"{row['load_peak_rss_mb']:.0f} MB",
                flush=True,
            )
            out.unlink()
    finally:
        shutil.rmtree(folder)
    return rows


def kmeans_sample_cost(shape: tuple, density: float, bits: int = 5) -> dict:
    """Distortion (mean squared error over the kept weights) and time of `kmeans_leaf` fit on
    its deterministic sample against Lloyd over every kept weight, on one normal(0, 0.02)
    layer magnitude-pruned to `density`."""
    import jax

    from lscjax._src.quant import kmeans as km

    w = (0.02 * np.random.default_rng(1).standard_normal(shape, np.float32)).astype(np.float32)
    w[np.abs(w) < np.quantile(np.abs(w), 1 - density)] = 0
    kept = w != 0
    out = {"shape": list(shape), "kept": int(kept.sum()), "sample": km.SAMPLE_POINTS}
    saved = km.SAMPLE_POINTS
    for name, sample in (("sampled", saved), ("full", w.size)):
        km.SAMPLE_POINTS = sample
        try:
            start = time.perf_counter()
            q = km.kmeans_leaf(
                w, bits, init=km.DEFAULT_INIT, iters=km.MAX_ITERS, tol=km.TOL, key=jax.random.key(0)
            )
            error = np.asarray(q.dequantize())[kept] - w[kept]
            out[f"{name}_s"] = time.perf_counter() - start
            out[f"{name}_mse"] = float(np.mean(error.astype(np.float64) ** 2))
        finally:
            km.SAMPLE_POINTS = saved
    out["mse_ratio"] = out["sampled_mse"] / out["full_mse"]
    print(
        f"k-means {shape} at {density:.0%}: sampled MSE / full MSE = {out['mse_ratio']:.4f}, "
        f"{out['sampled_s']:.2f} s against {out['full_s']:.2f} s"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20M params, 1 and 2 workers")
    parser.add_argument(
        "--sizes", nargs="*", choices=list(SIZES), default=["100M", "300M", "1B", "one"]
    )
    parser.add_argument("--tmp", default=None, help="folder for the checkpoints (default: temp)")
    parser.add_argument("--no-kmeans", action="store_true", help="skip the k-means sampling cost")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    sizes = ["20M"] if args.quick else args.sizes
    every = sorted({1, 2, cores})
    shapes = [(512, 1024)] if args.quick else [(1024, 2048)]
    sampling = []
    if not args.no_kmeans:
        sampling = [kmeans_sample_cost(shape, 0.05 if args.quick else 0.1) for shape in shapes]
    if not args.quick and sampling:
        record([], sampling, cores)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for size in sizes:
            workers = [1, 2] if args.quick else ([cores] if size == "1B" else every)
            rows = point(size, workers, pathlib.Path(tmp))
            if not args.quick:
                record(rows, [], cores)


def record(rows: list[dict], sampling: list[dict], cores: int) -> None:
    """Merge `rows` (replacing those of the same size and workers) and `sampling` into the JSON."""
    RESULTS.parent.mkdir(exist_ok=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"rows": []}
    done = {(r["size"], r["workers"]) for r in rows}
    kept = [r for r in previous["rows"] if (r["size"], r["workers"]) not in done]
    sampling = sampling or previous.get("kmeans_sampling", [])
    out = {"cores": cores, "rows": kept + rows, "kmeans_sampling": sampling}
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS}", flush=True)


if __name__ == "__main__":
    main()
