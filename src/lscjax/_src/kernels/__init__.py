"""Block-sparse matmul kernels: the pure-lax XLA path and Pallas GPU/TPU."""
