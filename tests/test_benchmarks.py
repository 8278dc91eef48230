"""The benchmark scripts stay runnable: every one takes --quick (as `lscjax bench --quick` passes
it), and benchmarks/matmul_gpu.py, which only a lent GPU runs for real, runs in --smoke mode.

The smoke mode executes the GPU benchmark's code path on CPU (the Pallas Triton kernel in
interpret mode, toy sizes, 2 weight sets) and checks every product against a NumPy dense product
before timing; the timings themselves mean nothing on CPU.
"""

import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py"))


def test_the_benchmarks_are_found():
    assert {"codecs.py", "matmul.py", "matmul_gpu.py"} <= set(SCRIPTS)


@pytest.mark.slow
def test_gpu_benchmark_smoke_run():
    done = subprocess.run(
        [sys.executable, "matmul_gpu.py", "--smoke"],
        cwd=BENCHMARKS,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert sum(line.startswith("N=K=256 b=32 d=0.25") for line in lines) == 2  # batch 1, 16
    assert any(line.startswith("GOAL bf16 <= 0.15") for line in lines)


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_takes_quick(script):
    """`lscjax bench --quick` passes --quick to every script: each must declare it as an option
    (its help lists it on an option line, not merely somewhere in the description)."""
    done = subprocess.run(
        [sys.executable, script, "--help"], cwd=BENCHMARKS, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"^  --quick\b", done.stdout, re.MULTILINE), done.stdout


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() == "gpu", reason="a GPU runs the benchmark for real")
def test_gpu_benchmark_skips_without_a_gpu():
    done = subprocess.run(
        [sys.executable, "matmul_gpu.py", "--quick"], cwd=BENCHMARKS, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.startswith("skipped: needs a GPU")


def _matmul_benchmark():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import matmul
    finally:
        sys.path.remove(str(BENCHMARKS))
    return matmul


def test_weight_copies_are_separate_buffers_of_at_least_rotate_bytes():
    matmul = _matmul_benchmark()
    w = jnp.arange(12.0).reshape(3, 4)
    assert len(matmul.copies(w, matmul.ROTATE_BYTES // 4 - 1)) == 5  # ceil(ROTATE_BYTES / nbytes)
    sets = matmul.copies({"w": w}, matmul.ROTATE_BYTES // 4)
    assert len(sets) == 4
    pointers = {s["w"].unsafe_buffer_pointer() for s in sets} | {w.unsafe_buffer_pointer()}
    assert len(pointers) == 5
    for s in sets:
        np.testing.assert_array_equal(s["w"], w)
    assert len(matmul.copies(w, 2 * matmul.ROTATE_BYTES)) == 2
    assert len(matmul.copies(w, 1)) == matmul.MAX_SETS


def test_rotated_times_cycles_each_function_through_its_weights():
    matmul = _matmul_benchmark()
    seen = {"a": [], "b": []}

    def recorder(name):
        return lambda i: seen[name].append(int(i)) or jnp.zeros(())

    fns = {"a": (recorder("a"), [(0,), (1,), (2,)]), "b": (recorder("b"), [(7,)])}
    best, median = matmul.rotated_times(fns, rounds=2)
    calls = 2 * matmul.CHUNK
    assert seen["a"] == [0] + [i % 3 for i in range(calls)]  # one compile call, then the cycle
    assert seen["b"] == [7] * (calls + 1)
    assert set(best) == set(median) == {"a", "b"}
    assert all(0 < best[k] <= median[k] for k in best)


def _nncodec_benchmark():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import importlib

        return importlib.import_module("nncodec")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_equal_distortion_table_interpolates_pareto_fronts_in_log_distortion():
    bench = _nncodec_benchmark()
    point = lambda bits, d: {"bits_per_weight": bits, "rel_mse": d}  # noqa: E731
    # The point (2.5, 1e-2) is beaten by (2.0, 1e-2) and left out of the front.
    ours = bench.pareto([point(3.0, 1e-3), point(2.5, 1e-2), point(2.0, 1e-2), point(1.0, 1e-1)])
    assert [p["bits_per_weight"] for p in ours] == [3.0, 2.0, 1.0]
    theirs = bench.pareto([point(4.0, 1e-3), point(2.0, 1e-1)])
    # Half way in log distortion between 1e-3 and 1e-2: 2.5 bits; theirs: a quarter of the way
    # from 4.0 to 2.0 in log distortion.
    assert bench.bits_at(ours, 10**-2.5) == pytest.approx(2.5)
    assert bench.bits_at(theirs, 10**-2.5) == pytest.approx(3.5)
    assert np.isnan(bench.bits_at(ours, 1e-4))
    table = bench.equal_distortion({"a": ours}, {"b": theirs})
    ends = table["rows"][0], table["rows"][-1]
    assert [r["rel_mse"] for r in ends] == pytest.approx([1e-3, 1e-1])
    assert [r["diff_pct"] for r in ends] == pytest.approx([-25.0, -50.0])


@pytest.mark.slow
def test_nncodec_benchmark_quick_runs_lscjax_alone():
    done = subprocess.run(
        [sys.executable, "nncodec.py", "--quick"],
        cwd=BENCHMARKS,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("skipped NNCodec: --quick runs lscjax only")
    for label in ("dense", "80%"):
        assert f"## {label}: bits per weight at equal relative MSE" in done.stdout
    assert "| kmeans+context |" in done.stdout and "| rdq-uniform+ans |" in done.stdout
