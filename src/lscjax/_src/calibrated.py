"""The calibrated stages of `compress`: layer-sequential SparseGPT / Wanda pruning, the pruned
layer's kept weights refit by least squares (`prune.refit`), and GPTQ (act-order) onto each
layer's k-means codebook(s).

Each pass takes the model's supported layers in call order; a layer's statistics come from the
model whose earlier layers are already compressed (the SparseGPT / GPTQ protocol), and the
layer is then pruned and/or quantized before the next one is measured. Each layer is first
retargeted (`prune.dense_target`): its kernel replaced by the one that best reproduces the
dense model's outputs from those drifted inputs, so that it corrects the earlier layers' error.
"""

from collections.abc import Mapping

from tqdm.auto import tqdm

from lscjax._src.flax.calibration import Calibration
from lscjax._src.prune.refit import refit
from lscjax._src.prune.sparsegpt import sparsegpt
from lscjax._src.prune.target import dense_target
from lscjax._src.prune.wanda import wanda
from lscjax._src.quant.gptq import gptq
from lscjax._src.quant.options import per_leaf
from lscjax._src.quant.qarray import is_qarray
from lscjax._src.tree import Where, leaves_with_paths, map_selected

CALIBRATED_PRUNE = {"sparsegpt": sparsegpt, "wanda": wanda}
PRUNE_DAMP = 0.1
"""The damping of the pass's SparseGPT updates and least-squares refit, a fraction of the
Hessian's mean diagonal: ten times the papers' 0.01, which overfits a few thousand calibration
tokens once every layer aims at the dense target. On all-MiniLM-L6-v2 (SparseGPT 50% + refit,
no quantization, mean cosine on the evaluation sentences, benchmarks/ptq_ablation.py):
0.01 / 0.01 0.954, 0.1 / 0.1 0.956, 0.01 / 0.1 0.956, 0.3 / 0.1 0.955."""


def calibrated_pass(
    params,
    calibration: Calibration,
    where: Where,
    *,
    prune: str | None = None,
    sparsity: float | Mapping[str, float] = 0.0,
    pattern=None,
    bits: Mapping[str, int] | None = None,
    per_channel: bool | Mapping[str, bool] = False,
    init: str | None = None,
    progress: bool = False,
):
    """One layer-sequential pass over the selected layers that the model calls, each aimed at
    the dense model's outputs (`prune.dense_target`).

    Args:
      params: the model's params.
      calibration: the `Calibration`.
      where: the selection (None: every kernel of a supported layer).
      prune: "sparsegpt", "wanda" or None (no pruning in this pass); each pruned layer's kept
        weights are then refit by least squares to the dense layer's outputs (`prune.refit`).
      sparsity: one sparsity or a {path: sparsity} map.
      pattern: None, "n:m" or (b0, b1).
      bits: {path: bits} of the layers to quantize by GPTQ onto their k-means codebook (a
        path missing or 0: not quantized), or None.
      per_channel: one k-means codebook per output channel (`lscjax.quant.gptq`): one bool or
        a {path: bool} map.
      init: the codebooks' k-means init (None: `lscjax.quant.gptq`'s default).
      progress: a progress bar.

    Returns:
      (params with the pruned layers' weights and the quantized layers' dequantized weights,
      {path: keep mask} of the pruned layers, {path: QArray} of the quantized layers).
    """
    masks, qleaves = {}, {}
    bar = tqdm(
        total=len(calibration.layers(params, where=where)),
        desc="calibrated",
        disable=not progress,
        leave=False,
    )

    def compress_layer(params, one):
        (path,) = one
        params = dense_target(params, one)
        if prune is not None:
            damp = {"damp": PRUNE_DAMP} if prune == "sparsegpt" else {}
            pruned, mask = CALIBRATED_PRUNE[prune](
                params, one, per_leaf(sparsity, path, "sparsity"), pattern=pattern, **damp
            )
            masks[path] = dict(leaves_with_paths(mask))[path]
            params = refit(params, mask, one, start=pruned, damp=PRUNE_DAMP)
        if bits and bits.get(path, 0) > 0:
            q = gptq(
                params,
                one,
                bits[path],
                grid="kmeans",
                act_order=True,
                init=init,
                per_channel=per_leaf(per_channel, path, "per_channel"),
            )
            leaf = dict(leaves_with_paths(q, is_leaf=is_qarray))[path]
            qleaves[path] = leaf
            params = map_selected(
                lambda p, _, q=leaf: q.dequantize(),
                params,
                where=lambda p, _, q=path: p == q,
                fill="keep",
            )
        bar.update()
        return params

    params = calibration.sequential(params, compress_layer, where=where, cross=True)
    bar.close()
    return params, masks, qleaves
