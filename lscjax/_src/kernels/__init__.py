"""Block-sparse matmul kernels: the pure-lax reference (XLA path, oracle) and Pallas GPU/TPU."""
