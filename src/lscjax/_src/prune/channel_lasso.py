"""Channel pruning by LASSO regression and least-squares reconstruction (He et al. 2017)."""

import jax
import jax.numpy as jnp
import numpy as np

from lscjax._src.prune.channels import ChannelSelection, kernel_from_groups, layer_sample

_BISECTIONS = 40
_ITERATIONS = 300


def lasso_path_point(gram: np.ndarray, corr: np.ndarray, lam: float, beta0: np.ndarray):
    """argmin_b 1/2 b'Gb - c'b + lam * |b|_1 by FISTA (float64 [C]), warm-started at beta0."""
    step = 1.0 / max(np.linalg.eigvalsh(gram)[-1], 1e-30)
    beta, prev, t = beta0.copy(), beta0.copy(), 1.0
    for _ in range(_ITERATIONS):
        t_next = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
        point = beta + (t - 1.0) / t_next * (beta - prev)
        grad = gram @ point - corr
        prev, t = beta, t_next
        beta = np.sign(point - step * grad) * np.maximum(
            np.abs(point - step * grad) - step * lam, 0.0
        )
    return beta


def lasso_channels(contributions: np.ndarray, n_keep: int) -> np.ndarray:
    """Pick `n_keep` channels by LASSO over per-channel coefficients beta.

    Solves ``min_beta 1/2 ||y - sum_c beta_c z_c||^2 + lam ||beta||_1`` with y = sum_c z_c,
    bisecting lam until at most `n_keep` coefficients are non-zero.

    Args:
      contributions: float [C, P]: z_c, channel c's contribution to the P output values.
      n_keep: channels kept, 1 <= n_keep <= C.

    Returns:
      bool np.ndarray [C], exactly n_keep True: the non-zeros at the smallest lam found with at
      most n_keep of them, completed by |beta| at the largest lam with more.
    """
    z = np.asarray(contributions, np.float64)
    z = z / max(np.sqrt(np.mean(z * z)), 1e-30)
    gram = z @ z.T
    corr = gram.sum(axis=1)
    lo, hi = 0.0, float(np.max(np.abs(corr)))
    beta_lo = np.ones(z.shape[0])
    beta_hi = np.zeros(z.shape[0])
    for _ in range(_BISECTIONS):
        lam = 0.5 * (lo + hi)
        beta = lasso_path_point(gram, corr, lam, beta_lo)
        if np.count_nonzero(beta) > n_keep:
            lo, beta_lo = lam, beta
        else:
            hi, beta_hi = lam, beta
    order = np.lexsort((-np.abs(beta_lo), -np.abs(beta_hi)))
    keep = np.zeros(z.shape[0], bool)
    keep[order[:n_keep]] = True
    return keep


def channel_lasso(
    inputs: jax.Array,
    kernel: jax.Array,
    n_keep: int,
    *,
    channels: int | None = None,
    strides: tuple[int, int] = (1, 1),
    padding: str = "VALID",
    max_rows: int | None = 1024,
    seed: int = 0,
) -> ChannelSelection:
    """He et al. 2017: choose a layer's input channels by LASSO, then refit its kernel.

    The layer's output Y (before the bias) is reconstructed from `n_keep` of its C input
    channels: LASSO over per-channel coefficients picks the channels (see `lasso_channels`),
    then the kernel on the kept channels is refit by least squares to the original Y.

    Args:
      inputs: the layer's inputs, float [N, H, W, C] (conv) or [N, D] (Dense); see
        `input_groups`.
      kernel: float [kh, kw, C, O] or [D, O].
      n_keep: input channels kept, 1 <= n_keep <= C.
      channels: C for a Dense layer after a flatten of C-channel maps (D = S * C).
      strides, padding: the conv's.
      max_rows: output positions sampled (of N * H' * W') for the fit; None uses all.
      seed: the sampling seed.

    Returns:
      ChannelSelection(mask bool [C], kernel float32 [kernel.shape], zero on pruned channels).
      The mask is the channel mask of the layer producing `inputs`.
    """
    x, w, z, n_keep = layer_sample(
        inputs,
        kernel,
        n_keep,
        channels=channels,
        strides=strides,
        padding=padding,
        max_rows=max_rows,
        seed=seed,
    )
    keep = lasso_channels(z, n_keep)
    y = z.sum(axis=0).reshape(x.shape[0], w.shape[2])
    xk = x[:, keep].reshape(x.shape[0], -1).astype(np.float64)
    refit = np.linalg.lstsq(xk, y, rcond=None)[0].reshape(n_keep, w.shape[1], w.shape[2])
    full = np.zeros(w.shape, np.float32)
    full[keep] = refit
    return ChannelSelection(keep, kernel_from_groups(jnp.asarray(full), kernel.shape))
