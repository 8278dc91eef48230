"""`compress`: the whole pipeline, params -> prune -> (retrain) -> quantize -> (fine-tune) -> encode.

Two recipes ship: "deep_compression" (Han et al. 2016: magnitude pruning, k-means weight sharing
with 8-bit conv / 5-bit fc codes, Huffman-coded relative index) and "lsc" (Liu et al. 2020:
pruning, k-means, Layerwise Sparse Coding with rANS entropy coding). Every field can be changed
per call (`recipe("lsc", sparsity={...}, bits={...})`) or a `Recipe` given whole.
"""

import dataclasses
from collections.abc import Callable, Iterable, Mapping

import jax
import numpy as np
import optax
from tqdm.auto import tqdm

from lscjax._src.coding.codec import encode
from lscjax._src.compressed import CompressedModel
from lscjax._src.errors import LscError
from lscjax._src.loop import make_step
from lscjax._src.prune.distributions import distributed_magnitude
from lscjax._src.prune.magnitude import apply
from lscjax._src.quant.kmeans import kmeans
from lscjax._src.quant.qarray import dequantize, is_qarray
from lscjax._src.train.admm import admm, admm_masks
from lscjax._src.train.centroids import quantized_params, shared_centroids
from lscjax._src.train.gradual import gradual, polynomial
from lscjax._src.train.masking import keep_masks
from lscjax._src.tree import Where, leaves_with_paths, map_selected, selection


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What `compress` does to each selected leaf.

    Attributes:
      name: recorded in the file.
      sparsity: overall sparsity in [0, 1) (one magnitude threshold over all selected leaves,
        so large redundant layers lose more), or {path: sparsity} per layer.
      prune: "magnitude" (one shot, Han et al.), "gradual" (Zhu & Gupta's polynomial schedule
        from 0 to `sparsity` over the first 3/4 of the retrain steps; one-shot magnitude
        when no `retrain` is given) or "admm" (Zhang et al. 2018; needs `retrain`).
      bits: code bits per layer: an int, a {path: bits} map, or None for the default of
        `conv_bits` for kernels with ndim > 2 and `dense_bits` for 2-D kernels. 0 keeps the
        float32 values (no quantization).
      conv_bits, dense_bits: the defaults (Deep Compression: 8 and 5).
      format: the index format ("lsc", "ri", "sri", "csr", ...; see lscjax.coding.encode).
      entropy: "ans", "huffman" or "none".
      format_options: extra options for lscjax.coding.encode (e.g. {"block": 4}).
    """

    name: str
    sparsity: float | Mapping[str, float]
    prune: str = "magnitude"
    bits: int | Mapping[str, int] | None = None
    conv_bits: int = 8
    dense_bits: int = 5
    format: str = "lsc"
    entropy: str = "ans"
    format_options: Mapping = dataclasses.field(default_factory=dict)

    def bits_for(self, path: str, leaf) -> int:
        """The code bits of one selected leaf (0: float32 values kept).

        An explicit int or map is used as given. The default (`conv_bits` / `dense_bits`) is
        capped at ``floor(log2(kept)) - 2``, i.e. at most kept / 4 codebook entries, so the
        codebook (32 bits per entry) costs at most 8 bits per kept weight: a 256-entry codebook
        for a layer of 400 kept weights would otherwise cost more than the codes themselves.
        """
        if isinstance(self.bits, Mapping):
            if path not in self.bits:
                raise LscError(f"recipe bits map has no entry for {path!r}")
            return int(self.bits[path])
        if self.bits is not None:
            return int(self.bits)
        default = self.conv_bits if np.ndim(leaf) > 2 else self.dense_bits
        kept = int(np.count_nonzero(np.asarray(leaf)))
        return max(1, min(default, int(np.log2(max(kept, 2))) - 2))


PRUNE_METHODS = ("magnitude", "gradual", "admm")
RECIPES = {
    "deep_compression": Recipe("deep_compression", sparsity=0.92, format="ri", entropy="huffman"),
    "lsc": Recipe("lsc", sparsity=0.95, prune="gradual", format="lsc", entropy="ans"),
}


def recipe(name: str, **changes) -> Recipe:
    """A shipped recipe ("deep_compression" or "lsc") with some fields changed."""
    if name not in RECIPES:
        raise LscError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)}")
    return dataclasses.replace(RECIPES[name], **changes)


@dataclasses.dataclass(frozen=True)
class Retrain:
    """The user's training hook, run between the stages of `compress`.

    Attributes:
      loss_fn: ``(params, batch) -> float32 []``.
      data: an iterable of batches; iterated again from the start whenever it runs out.
      steps: optimizer steps per stage (after pruning: masked retraining; after quantization:
        centroid fine-tuning; ADMM uses `admm_rounds * admm_every` more).
      optimizer: the inner optimizer of every stage.
      admm_every, admm_rounds, admm_rho: the ADMM schedule (Z/U update period, number of
        updates, penalty) when the recipe prunes with "admm".
    """

    loss_fn: Callable
    data: Iterable
    steps: int
    optimizer: optax.GradientTransformation = dataclasses.field(
        default_factory=lambda: optax.adam(1e-4)
    )
    admm_every: int = 200
    admm_rounds: int = 5
    admm_rho: float = 1e-3

    def run(self, params, optimizer, steps: int, *, progress: bool, desc: str):
        """Train `params` for `steps` steps of `loss_fn` with `optimizer`: (params, opt_state)."""
        step = make_step(self.loss_fn, optimizer)
        params = jax.tree_util.tree_map(jax.numpy.array, params)
        state = optimizer.init(params)
        batches = iter(self.data)
        for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(self.data)
                batch = next(batches, None)
                if batch is None:
                    raise LscError("retrain data yields no batches") from None
            params, state, _ = step(params, state, batch)
        return params, state


def _prune(params, rc: Recipe, retrain: Retrain | None, where: Where, progress: bool):
    """Prune per the recipe: (params with exact zeros, masks)."""
    if rc.prune not in PRUNE_METHODS:
        raise LscError(f"recipe prune must be one of {PRUNE_METHODS}, got {rc.prune!r}")
    per_layer = isinstance(rc.sparsity, Mapping)
    if rc.prune == "magnitude" or (rc.prune == "gradual" and retrain is None):
        masks = distributed_magnitude(
            params, rc.sparsity, "uniform" if per_layer else "global", where=where
        )
        return apply(params, masks), masks
    if retrain is None:
        raise LscError("recipe prune='admm' trains: pass retrain=Retrain(loss_fn, data, steps)")
    if rc.prune == "gradual":
        final = max(rc.sparsity.values(), default=0.0) if per_layer else rc.sparsity
        end = max(1, (3 * retrain.steps) // 4)
        schedule = polynomial(0.0, final, 0, end, frequency=max(1, end // 20))
        opt = gradual(
            retrain.optimizer,
            schedule,
            distribution=rc.sparsity if per_layer else "global",
            where=where,
        )
        params, state = retrain.run(params, opt, retrain.steps, progress=progress, desc="gradual")
        masks = state.masks
    else:
        opt = admm(
            retrain.optimizer,
            rc.sparsity,
            rho=retrain.admm_rho,
            every=retrain.admm_every,
            where=where,
        )
        params, state = retrain.run(
            params, opt, retrain.admm_every * retrain.admm_rounds, progress=progress, desc="admm"
        )
        masks = admm_masks(state)
    return apply(params, masks), masks


def compress(
    params,
    recipe: str | Recipe = "lsc",
    *,
    retrain: Retrain | None = None,
    where: Where = None,
    progress: bool = False,
) -> CompressedModel:
    """Compress a parameter pytree into a `CompressedModel` (save it with `lscjax.save`).

    Stages: prune the selected leaves (one-shot magnitude, gradual over the retrain steps, or
    ADMM); retrain the kept weights with `keep_masks` (if `retrain`); k-means-quantize each
    selected leaf to its bits (zeros keep the 0 code); fine-tune the centroids with
    `shared_centroids` (if `retrain`); encode each selected leaf with the recipe's format and
    entropy coder. Unselected leaves (biases, norms) are stored losslessly.

    Args:
      params: a pytree of float arrays (nested dicts, as Flax params).
      recipe: "lsc", "deep_compression", or a `Recipe`.
      retrain: optional `Retrain` hook (loss, data, steps) run after pruning and quantization.
      where: the leaves to compress (default: 'kernel' leaves with ndim >= 2).
      progress: progress bars.

    Returns:
      A CompressedModel holding one Encoded per selected leaf and the raw unselected leaves.

    Raises:
      LscError (a ValueError): an unknown recipe or bad setting, naming the leaf path.
    """
    rc = RECIPES.get(recipe) if isinstance(recipe, str) else recipe
    if rc is None:
        raise LscError(f"unknown recipe {recipe!r}; expected one of {sorted(RECIPES)}")
    params, masks = _prune(params, rc, retrain, where, progress)
    if retrain is not None:
        params, _ = retrain.run(
            params,
            keep_masks(retrain.optimizer, masks),
            retrain.steps,
            progress=progress,
            desc="retrain",
        )
        params = apply(params, masks)  # exact zeros, whatever the optimizer did
    chosen = selection(params, where)
    bits = {p: rc.bits_for(p, w) for p, w in leaves_with_paths(params) if chosen[p]}
    quantized = {p: b for p, b in bits.items() if b > 0}
    if quantized:
        qleaves = {}
        for path in tqdm(quantized, desc="k-means", disable=not progress, leave=False):
            one = kmeans(params, quantized, where=lambda p, _, q=path: p == q)
            qleaves[path] = dict(leaves_with_paths(one, is_leaf=is_qarray))[path]
        qparams = map_selected(
            lambda p, _: qleaves[p], params, where=lambda p, _: p in qleaves, fill="keep"
        )
        if retrain is not None:
            opt = shared_centroids(retrain.optimizer, qparams)
            tuned, state = retrain.run(
                dequantize(qparams), opt, retrain.steps, progress=progress, desc="centroids"
            )
            qparams = quantized_params(tuned, state)
        params = qparams
    encoded, raw = {}, {}
    leaves = leaves_with_paths(params, is_leaf=is_qarray)
    for path, leaf in tqdm(leaves, desc="encode", disable=not progress, leave=False):
        if chosen.get(path, False):
            encoded[path] = encode(leaf, rc.format, entropy=rc.entropy, **rc.format_options)
        else:
            raw[path] = np.asarray(leaf)
    return CompressedModel(encoded=encoded, raw=raw, meta=recipe_meta(rc))


def recipe_meta(rc: Recipe) -> dict:
    """The file header's model-level facts for a model compressed with `rc`."""
    return {"recipe": dataclasses.asdict(rc) | {"format_options": dict(rc.format_options)}}
