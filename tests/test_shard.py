"""`lscjax.sparse.shard`: block rows split over a mesh axis give one device's results: forward
and backward on 8 CPU devices in one process, forward on 2 processes of 4 (jax.distributed)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import shard_cases

import lscjax

HERE = Path(__file__).parent


def _env(devices: int) -> dict:
    flags = f"--xla_force_host_platform_device_count={devices}"
    return dict(
        os.environ,
        XLA_FLAGS=flags,
        PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), str(HERE.parent)]),
        JAX_PLATFORMS="cpu",
    )


@pytest.fixture(scope="module")
def reference():
    """The one-device results of every case."""
    module, params, inputs = shard_cases.bert_case()
    out = shard_cases.bert_results(module, params, inputs)
    out |= shard_cases.matmul_results(*shard_cases.matmul_case())
    return {k: np.asarray(v) for k, v in out.items()}


def _compare(got, reference, keys):
    assert sorted(keys) and set(keys) <= set(got.files)
    for key in keys:
        np.testing.assert_allclose(got[key], reference[key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.slow
def test_eight_devices_equal_one(reference, tmp_path):
    out = tmp_path / "single.npz"
    done = subprocess.run(
        [sys.executable, "sharding_worker.py", "single", str(out)],
        cwd=HERE,
        env=_env(8),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(out)
    assert any(k.endswith(".codebook") for k in got.files)  # gradients reach the codebooks
    _compare(got, reference, list(reference))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one(reference, tmp_path):
    out, port = tmp_path / "multi.npz", str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "sharding_worker.py", "multi", str(out), str(i), port],
            cwd=HERE,
            env=_env(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    got = np.load(out)
    _compare(got, reference, ["hidden"])


def test_shard_places_rows_and_refuses_bad_axes():
    mesh = jax.make_mesh((1,), ("model",))
    x, w = shard_cases.matmul_case()
    s = lscjax.sparse.shard(w, mesh, "model")
    assert isinstance(s, lscjax.sparse.ShardedBlockSparse) and s.blocks.sharding.spec[0] == "model"
    np.testing.assert_array_equal(np.asarray(s.todense()), np.asarray(w.todense()))
    with pytest.raises(lscjax.LscError, match="'rows' is not an axis"):
        lscjax.sparse.shard(w, mesh, "rows")
    with pytest.raises(lscjax.LscError, match="other than batch_axis"):
        lscjax.sparse.shard(w, mesh, "model", batch_axis="model")
    with pytest.raises(lscjax.LscError, match="stacked"):
        lscjax.sparse.shard(lscjax.sparse.stack([w, w]), mesh, "model")
