"""ThiNet (Luo et al. 2017): greedy channel selection by the next layer's reconstruction error."""

import jax
import jax.numpy as jnp
import numpy as np

from lscjax._src.prune.channels import ChannelSelection, kernel_from_groups, layer_sample


def greedy_removal(contributions: np.ndarray, n_keep: int) -> np.ndarray:
    """ThiNet's greedy selection: grow the removed set T minimizing ||sum_{j in T} z_j||^2.

    Args:
      contributions: float [C, P]: z_c, channel c's contribution to P sampled output values.
      n_keep: channels kept, 1 <= n_keep <= C.

    Returns:
      bool np.ndarray [C] with exactly n_keep True (the channels not removed); ties pick the
      lower index.
    """
    z = np.asarray(contributions, np.float64)
    sq = np.einsum("cp,cp->c", z, z)
    removed_sum = np.zeros(z.shape[1])
    keep = np.ones(z.shape[0], bool)
    for _ in range(z.shape[0] - n_keep):
        err = removed_sum @ removed_sum + 2.0 * (z @ removed_sum) + sq
        j = int(np.argmin(np.where(keep, err, np.inf)))
        keep[j] = False
        removed_sum += z[j]
    return keep


def thinet(
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
    """Luo et al. 2017: choose a layer's input channels greedily, then rescale them.

    Sampled output values y = sum_c z_c (z_c: channel c's contribution) are kept as close as
    possible when the channels in T are removed by greedily minimizing ``||sum_{j in T} z_j||^2``
    (`greedy_removal`); then each kept channel's kernel slice is scaled by w_c, the least-squares
    solution of ``min_w ||y - sum_{c kept} w_c z_c||^2``.

    Args:
      inputs: the layer's inputs, float [N, H, W, C] (conv) or [N, D] (Dense); see
        `input_groups`.
      kernel: float [kh, kw, C, O] or [D, O].
      n_keep: input channels kept, 1 <= n_keep <= C.
      channels: C for a Dense layer after a flatten of C-channel maps (D = S * C).
      strides, padding: the conv's.
      max_rows: output positions sampled (of N * H' * W'), each with its O output values;
        None uses all.
      seed: the sampling seed.

    Returns:
      ChannelSelection(mask bool [C], kernel float32 [kernel.shape], zero on pruned channels).
      The mask is the channel mask of the layer producing `inputs`.
    """
    _, w, z, n_keep = layer_sample(
        inputs,
        kernel,
        n_keep,
        channels=channels,
        strides=strides,
        padding=padding,
        max_rows=max_rows,
        seed=seed,
    )
    keep = greedy_removal(z, n_keep)
    scale = np.zeros(w.shape[0], np.float32)
    scale[keep] = np.linalg.lstsq(z[keep].T, z.sum(axis=0), rcond=None)[0]
    return ChannelSelection(
        keep, kernel_from_groups(jnp.asarray(w * scale[:, None, None]), kernel.shape)
    )
