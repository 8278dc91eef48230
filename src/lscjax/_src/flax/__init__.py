"""Flax integration: serve Linen and NNX models from BlockSparse kernels."""
