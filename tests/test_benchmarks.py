"""The benchmark scripts stay runnable: every one takes --quick (as `lscjax bench --quick` passes
it), and benchmarks/matmul_gpu.py, which only a lent GPU runs for real, runs in --smoke mode.

The smoke mode executes the GPU benchmark's code path on CPU (the Pallas Triton kernel in
interpret mode, toy sizes, 2 weight sets) and checks every product against a NumPy dense product
before timing; the timings themselves mean nothing on CPU.
"""

import subprocess
import sys
from pathlib import Path

import jax
import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


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


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py")))
def test_every_benchmark_takes_quick(script):
    """`lscjax bench --quick` passes --quick to every script: each must accept it."""
    done = subprocess.run(
        [sys.executable, script, "--help"], cwd=BENCHMARKS, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--quick" in done.stdout


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="a GPU runs the benchmark for real")
def test_gpu_benchmark_skips_without_a_gpu():
    done = subprocess.run(
        [sys.executable, "matmul_gpu.py", "--quick"], cwd=BENCHMARKS, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.startswith("skipped: needs a GPU")
