"""Run by tests/test_shard.py in a subprocess with several CPU devices (XLA_FLAGS is read when
JAX starts, so it cannot be set inside the test process).

    python sharding_worker.py single OUT.npz                  # 8 devices, one process
    python sharding_worker.py multi OUT.npz PROCESS PORT      # 4 devices in each of 2 processes

Both modes compute, on a (data=2, model=4) mesh, the tiny BERT fixture compressed (k-means codes
in coded blocks of 8) and sharded with `lscjax.sparse.shard`, served by
`lscjax.flax.compressed_apply` under jit: its last hidden state; "single" also the gradients of a
loss with respect to every float leaf (codebooks, embeddings, LayerNorms, biases) and one sharded
matmul (float blocks) forward and backward. Results are gathered onto every process and
written by process 0; the test compares them with one device.
"""

import os
import sys

import jax
import numpy as np

MODE, OUT = sys.argv[1], sys.argv[2]
if MODE == "multi":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"localhost:{sys.argv[4]}", num_processes=2, process_id=int(sys.argv[3])
    )

import shard_cases  # noqa: E402  (after jax.distributed.initialize)
from jax.experimental import multihost_utils  # noqa: E402

import lscjax  # noqa: E402

mesh = jax.make_mesh((2, 4), ("data", "model"))
assert len(jax.devices()) == 8, jax.devices()
module, params, inputs = shard_cases.bert_case()
sharded = lscjax.sparse.shard(params, mesh, "model", batch_axis="data")
results = shard_cases.bert_results(module, sharded, inputs, grads=MODE == "single")
if MODE == "single":
    x, w = shard_cases.matmul_case()
    results |= shard_cases.matmul_results(
        x, lscjax.sparse.shard(w, mesh, "model", batch_axis="data")
    )
results = {
    k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in results.items()
}
if jax.process_index() == 0:
    np.savez(OUT, **results)
    os.sync()
