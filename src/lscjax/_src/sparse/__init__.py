"""Block-sparse weights (device layout) and their matmul / conv."""
