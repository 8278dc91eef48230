"""benchmarks/matmul_gpu.py, which only a lent GPU runs for real, still runs: its --smoke mode.

The smoke mode executes the GPU benchmark's code path on CPU (the Pallas Triton kernel in
interpret mode, toy sizes, 2 weight sets) and checks every product against a NumPy dense product
before timing; the timings themselves mean nothing on CPU.
"""

import subprocess
import sys
from pathlib import Path

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
