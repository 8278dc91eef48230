"""Storage codecs: bits per non-zero of every format next to the combinatorial floor, LeNet-5's
total LSC ratio in the LSC paper's setting, and LSC+Huffman speed beside zlib.

    python benchmarks/codecs.py            # trains LeNet-5 once (cached), ~3 min on 2 cores
    python benchmarks/codecs.py --quick    # smaller random layers and speed matrix, no JSON

Exits with status 1 when a check FAILs (a --quick run checks them at its smaller sizes).

Layers: LeNet-5 trained on Fashion-MNIST (Adam 1e-3, batch 128, 2 epochs, seed 0), each kernel
magnitude-pruned to the ADMM densities of Liu et al. (conv1 20%, conv2 8%, fc1 0.9%, fc2 7%) and to
Deep Compression's (66%, 12%, 8%, 19%); random 512 x 512 float32 layers with uniformly random
masks at 20, 10, 5, 2, 1% density. Values stay 32-bit floats. Speed: CPU seconds
(time.process_time, best of 3, one thread) for a 4096 x 4096 float32 matrix at 10% density;
"weights/s" counts all 16.7M positions. Writes benchmarks/results/codecs.json.
"""

import argparse
import json
import pathlib
import time
import zlib

import jax
import numpy as np
import optax

import lscjax
from lscjax import coding

ADMM = {"Conv_0": 0.20, "Conv_1": 0.08, "Dense_0": 0.009, "Dense_1": 0.07}
DEEP_COMPRESSION = {"Conv_0": 0.66, "Conv_1": 0.12, "Dense_0": 0.08, "Dense_1": 0.19}
RANDOM_DENSITIES = (0.20, 0.10, 0.05, 0.02, 0.01)
PAPER_RATIO = 51.03
GOAL_RATIO = 55.0
RESULTS = pathlib.Path(__file__).parent / "results" / "codecs.json"


def trained_lenet5(cache: pathlib.Path) -> dict:
    """{layer: float32 kernel} of LeNet-5 trained as in the module docstring (cached as .npz)."""
    if cache.exists():
        return dict(np.load(cache))
    model = lscjax.models.LeNet5()
    params = model.init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))["params"]
    images, labels = lscjax.data.fashion_mnist("train")
    params, _ = lscjax.models.fit(
        lambda p, x: model.apply({"params": p}, x),
        params,
        optax.adam(1e-3),
        images,
        labels,
        steps=2 * len(labels) // 128,
        batch_size=128,
    )
    kernels = {name: np.asarray(layer["kernel"]) for name, layer in params.items()}
    np.savez(cache, **kernels)
    return kernels


def pruned(kernel: np.ndarray, density: float) -> np.ndarray:
    """`kernel` magnitude-pruned (lscjax.prune.magnitude) to `density`."""
    params = {"kernel": kernel}
    masks = lscjax.prune.magnitude(params, 1.0 - density)
    return np.asarray(lscjax.prune.apply(params, masks)["kernel"])


def random_layer(rng, density: float, shape=(512, 512)) -> np.ndarray:
    values = np.abs(rng.standard_normal(shape)).astype(np.float32) + 1e-3
    return np.where(rng.random(shape) < density, values, 0).astype(np.float32)


def costs(layers: dict) -> dict:
    """{layer: {"format/entropy": Row fields}} and the floor per layer."""
    out = {}
    for name, array in layers.items():
        table = coding.compare(array)
        out[name] = {
            "size": table.size,
            "nonzeros": table.nonzeros,
            "floor": table.floor,
            "rows": {
                f"{r.format}/{r.entropy}": {
                    "index_per_nonzero": r.index_per_nonzero,
                    "value_per_nonzero": r.value_per_nonzero,
                    "total_bits": r.total_bits,
                    "ratio": r.ratio,
                    "options": r.options,
                }
                for r in table.rows
            },
        }
    return out


def print_table(title: str, result: dict) -> None:
    names = list(result)
    print(f"\n## {title}: index bits per non-zero (total bits)\n")
    print("| format / entropy | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for key in result[names[0]]["rows"]:
        cells = [
            f"{result[n]['rows'][key]['index_per_nonzero']:.2f} ({result[n]['rows'][key]['total_bits']})"
            for n in names
        ]
        print(f"| {key} | " + " | ".join(cells) + " |")
    print(
        "| floor log2 C(n,k)/k | " + " | ".join(f"{result[n]['floor']:.2f}" for n in names) + " |"
    )
    print(
        "| density | "
        + " | ".join(f"{result[n]['nonzeros'] / result[n]['size']:.4f}" for n in names)
        + " |"
    )


def checks(result: dict, densities: dict) -> list:
    """The claims checked on these layers (as printed and recorded): (claim, layer, passed)."""
    out = []
    for name, layer in result.items():
        rows = layer["rows"]
        ri_huffman = rows["ri/huffman"]["total_bits"]
        for entropy in ("huffman", "ans"):
            out.append(
                (
                    f"lsc/{entropy} < ri/huffman",
                    name,
                    rows[f"lsc/{entropy}"]["total_bits"] < ri_huffman,
                )
            )
        if densities[name] <= 0.10:
            for entropy in coding.ENTROPIES:
                passed = rows[f"sri/{entropy}"]["total_bits"] < rows[f"ri/{entropy}"]["total_bits"]
                out.append((f"sri/{entropy} < ri/{entropy}", name, passed))
    return out


def model_ratio(result: dict) -> dict:
    """{format/entropy: sum of dense float32 bits / sum of encoded bits} over the layers."""
    dense = sum(32 * layer["size"] for layer in result.values())
    keys = next(iter(result.values()))["rows"]
    return {
        k: dense / sum(layer["rows"][k]["total_bits"] for layer in result.values()) for k in keys
    }


def best_cpu_seconds(fn, repeats: int = 3):
    times, out = [], None
    for _ in range(repeats):
        start = time.process_time()
        out = fn()
        times.append(time.process_time() - start)
    return min(times), out


def rates(weights: int, encode_s: float, decode_s: float, ratio: float) -> dict:
    """Seconds, M weights per second and compression ratio of one codec."""
    return {
        "encode_s": encode_s,
        "decode_s": decode_s,
        "encode_mweights_per_s": weights / encode_s / 1e6,
        "decode_mweights_per_s": weights / decode_s / 1e6,
        "ratio": ratio,
    }


def speed(side: int) -> dict:
    rng = np.random.default_rng(0)
    matrix = np.where(rng.random((side, side)) < 0.10, rng.standard_normal((side, side)), 0)
    matrix = matrix.astype(np.float32)
    dense = matrix.tobytes()
    encode_s, enc = best_cpu_seconds(
        lambda: coding.encode(matrix, "lsc", entropy="huffman").to_bytes()
    )
    decode_s, out = best_cpu_seconds(lambda: coding.decode(coding.Encoded.from_bytes(enc)))
    assert np.array_equal(out.view(np.uint32), matrix.view(np.uint32))
    zlib_s, packed = best_cpu_seconds(lambda: zlib.compress(dense))
    unzlib_s, _ = best_cpu_seconds(lambda: zlib.decompress(packed))
    n = matrix.size
    return {
        "shape": [side, side],
        "lsc_huffman": rates(n, encode_s, decode_s, len(dense) / len(enc)),
        "zlib_level6": rates(n, zlib_s, unzlib_s, len(dense) / len(packed)),
        "load_average": list(map(float, open("/proc/loadavg").read().split()[:3])),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small random layers and speed matrix")
    parser.add_argument("--cache", default="/tmp/lscjax_bench_lenet5.npz", type=pathlib.Path)
    args = parser.parse_args()
    kernels = trained_lenet5(args.cache)
    sections = {
        "LeNet-5, ADMM densities": {k: ADMM[k] for k in ADMM},
        "LeNet-5, Deep Compression densities": {k: DEEP_COMPRESSION[k] for k in DEEP_COMPRESSION},
    }
    results, all_checks = {}, []
    for title, densities in sections.items():
        layers = {name: pruned(kernels[name], d) for name, d in densities.items()}
        results[title] = costs(layers)
        print_table(title, results[title])
        all_checks += checks(results[title], densities)
    rng = np.random.default_rng(0)
    shape = (128, 128) if args.quick else (512, 512)
    randoms = {f"random {d:.0%}": random_layer(rng, d, shape) for d in RANDOM_DENSITIES}
    title = f"Random {shape[0]}x{shape[1]} layers"
    results[title] = costs(randoms)
    print_table(title, results[title])
    all_checks += checks(results[title], dict(zip(randoms, RANDOM_DENSITIES, strict=True)))

    ratios = model_ratio(results["LeNet-5, ADMM densities"])
    print("\n## LeNet-5 total ratio vs dense float32 (ADMM densities, 32-bit values)\n")
    print("| format / entropy | ratio |\n|---|---|")
    for key, ratio in sorted(ratios.items(), key=lambda kv: -kv[1]):
        print(f"| {key} | {ratio:.2f}x |")
    for entropy in coding.ENTROPIES:
        all_checks.append(
            (
                f"LeNet-5 lsc/{entropy} >= {PAPER_RATIO}x",
                "total",
                ratios[f"lsc/{entropy}"] >= PAPER_RATIO,
            )
        )
    all_checks.append(
        (
            f"LeNet-5 lsc/huffman >= {GOAL_RATIO}x (goal)",
            "total",
            ratios["lsc/huffman"] >= GOAL_RATIO,
        )
    )

    timing = speed(1024 if args.quick else 4096)
    lsc, z = timing["lsc_huffman"], timing["zlib_level6"]
    print(f"\n## Speed, {timing['shape'][0]}^2 float32 at 10% density (CPU s, best of 3)\n")
    print("| codec | encode M weights/s | decode M weights/s | ratio |\n|---|---|---|---|")
    print(
        f"| lsc + huffman | {lsc['encode_mweights_per_s']:.1f} | {lsc['decode_mweights_per_s']:.1f} | {lsc['ratio']:.2f}x |"
    )
    print(
        f"| zlib (level 6) | {z['encode_mweights_per_s']:.1f} | {z['decode_mweights_per_s']:.1f} | {z['ratio']:.2f}x |"
    )
    print(
        f"| lsc / zlib | {lsc['encode_mweights_per_s'] / z['encode_mweights_per_s']:.2f}x | "
        f"{lsc['decode_mweights_per_s'] / z['decode_mweights_per_s']:.2f}x | {lsc['ratio'] / z['ratio']:.2f}x |"
    )
    print(f"load average during the run: {timing['load_average']}")
    all_checks.append(("encode >= 50 M weights/s", "speed", lsc["encode_mweights_per_s"] >= 50))
    all_checks.append(("decode >= 100 M weights/s", "speed", lsc["decode_mweights_per_s"] >= 100))

    print("\n## Checks\n")
    for claim, where, passed in all_checks:
        print(f"{'PASS' if passed else 'FAIL'}  {claim}  [{where}]")
    missed = sum(not passed for _, _, passed in all_checks)
    if not args.quick:
        write_json(results, ratios, timing, all_checks)
    if missed:
        raise SystemExit(f"{missed} check(s) FAILED")


def write_json(results: dict, ratios: dict, timing: dict, all_checks: list) -> None:
    """The full run's numbers and checks to RESULTS."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "layers": results,
                "lenet5_admm_ratio": ratios,
                "speed": timing,
                "checks": [{"claim": c, "where": w, "passed": p} for c, w, p in all_checks],
            },
            indent=1,
        )
    )
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
