"""`compress`: the whole pipeline, params -> prune -> (retrain) -> quantize -> (fine-tune) -> encode.

Four recipes ship: "deep_compression" (Han et al. 2016: magnitude pruning, k-means weight sharing
with 8-bit conv / 5-bit fc codes, Huffman-coded relative index), "lsc" (Liu et al. 2020:
pruning, k-means, Layerwise Sparse Coding with rANS entropy coding), and the calibrated
"sparsegpt" and "wanda" (one-shot pruning from calibration data, the kept weights refit by least
squares, GPTQ onto each layer's k-means codebook, LSC + rANS; they need `calibration=`). Every field can be changed
per call (`recipe("lsc", sparsity={...}, bits={...})`) or a `Recipe` given whole.
"""

import dataclasses
import re
import warnings
from collections.abc import Callable, Iterable, Mapping

import jax
import numpy as np
import optax
from tqdm.auto import tqdm

from lscjax._src.calibrated import CALIBRATED_PRUNE, calibrated_pass
from lscjax._src.checkpoints import check_layout
from lscjax._src.coding.codec import encode
from lscjax._src.coding.entropy import check_entropy
from lscjax._src.coding.formats import FORMATS
from lscjax._src.compressed import CompressedModel, to_bytes
from lscjax._src.errors import LscError
from lscjax._src.flax.calibration import Calibration
from lscjax._src.loop import make_step
from lscjax._src.parallel import count_nonzero
from lscjax._src.prune.distributions import distributed_magnitude
from lscjax._src.prune.magnitude import apply, check_sparsity
from lscjax._src.prune.patterns import parse_pattern
from lscjax._src.quant.kmeans import DEFAULT_INIT, kmeans
from lscjax._src.quant.lloyd import INITS
from lscjax._src.quant.qarray import dequantize, is_qarray
from lscjax._src.quant.rdq import MAX_BITS as RDQ_MAX_BITS
from lscjax._src.quant.rdq import RELATIVE_TO
from lscjax._src.quant.trellis import MAX_BITS as TRELLIS_MAX_BITS
from lscjax._src.rdq_target import rdq_for_target
from lscjax._src.train.admm import admm, admm_masks
from lscjax._src.train.centroids import quantized_params, shared_centroids
from lscjax._src.train.gradual import gradual, polynomial
from lscjax._src.train.masking import keep_masks
from lscjax._src.tree import Where, leaves_with_paths, map_selected, selection

PRUNE_METHODS = ("magnitude", "gradual", "admm", *CALIBRATED_PRUNE)


def _check_bits(what: str, bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or not 0 <= bits <= 16:
        raise LscError(f"{what} must be an int in [0, 16] (0: float32 values), got {bits!r}")
    return int(bits)


def _check_format(what: str, format: str, options: Mapping) -> None:
    if format not in FORMATS:
        raise LscError(f"{what}: unknown format {format!r}; expected one of {tuple(FORMATS)}")
    unknown = set(options) - FORMATS[format].options
    if unknown:
        raise LscError(f"{what}: format {format!r} takes no option(s) {sorted(unknown)}")


@dataclasses.dataclass(frozen=True)
class Rule:
    """Per-layer settings for the selected leaves whose path matches `pattern`.

    In a `Recipe`, the first rule whose pattern matches a leaf's path decides for that leaf;
    settings it leaves as None come from the recipe itself.

    Attributes:
      pattern: a regular expression searched (`re.search`) in the leaf path, e.g.
        ``r"attention/.*/kernel$"``; anchor it with ``^`` / ``$`` for a full match.
      sparsity: this layer's own sparsity in [0, 1) (0: no pruning).
      bits: code bits in [0, 16] (0: float32 values, no quantization).
      format: the index format; with `format_options` (None: the format's defaults when
        `format` is set, else the recipe's options).
      keep_dense: leave the matching leaves unselected: stored losslessly as they are, never
        pruned or quantized (the other settings must then be None).
      per_channel: one k-means codebook per output channel (True) or per layer (False);
        None: the recipe's `per_channel`.
    """

    pattern: str
    sparsity: float | None = None
    bits: int | None = None
    format: str | None = None
    format_options: Mapping | None = None
    keep_dense: bool = False
    per_channel: bool | None = None

    def __post_init__(self):
        what = f"rule {self.pattern!r}"
        if not isinstance(self.pattern, str):
            raise LscError(
                f"rule pattern must be a regular expression string, got {self.pattern!r}"
            )
        try:
            re.compile(self.pattern)
        except re.error as err:
            raise LscError(f"{what}: not a regular expression ({err})") from None
        if not isinstance(self.keep_dense, bool):
            raise LscError(f"{what}: keep_dense must be true or false, got {self.keep_dense!r}")
        settings = (self.sparsity, self.bits, self.format, self.format_options, self.per_channel)
        if self.keep_dense and any(x is not None for x in settings):
            raise LscError(f"{what}: keep_dense takes no sparsity, bits, format or per_channel")
        if self.per_channel is not None and not isinstance(self.per_channel, bool):
            raise LscError(f"{what}: per_channel must be true or false, got {self.per_channel!r}")
        if self.sparsity is not None:
            check_sparsity(self.sparsity, f"{what}: sparsity")
        if self.bits is not None:
            _check_bits(f"{what}: bits", self.bits)
        if self.format_options is not None and self.format is None:
            raise LscError(f"{what}: format_options needs a format")
        if self.format is not None:
            _check_format(what, self.format, self.format_options or {})

    def matches(self, path: str) -> bool:
        """Whether `pattern` occurs in `path` (`re.search`)."""
        return re.search(self.pattern, path) is not None


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What `compress` does to each selected leaf; every field is checked when it is built.

    Attributes:
      name: recorded in the file.
      sparsity: overall sparsity in [0, 1) (one magnitude threshold over all selected leaves,
        so large redundant layers lose more), or {path: sparsity} per layer (with `rules`, the
        map must cover the selected leaves that no rule gives a sparsity).
      prune: "magnitude" (one shot, Han et al.), "gradual" (Zhu & Gupta's polynomial schedule
        from 0 to `sparsity` over the first 3/4 of the retrain steps; one-shot magnitude
        when no `retrain` is given), "admm" (Zhang et al. 2018; needs `retrain`), or the
        calibrated "sparsegpt" (Frantar & Alistarh 2023) and "wanda" (Sun et al. 2024), which
        need `calibration=` and prune each called layer to its sparsity, then refit its kept
        weights by least squares to the dense layer's outputs (`lscjax.prune.refit`).
      bits: code bits per layer: an int, a {path: bits} map, or None for the default of
        `conv_bits` for kernels with ndim > 2 and `dense_bits` for 2-D kernels. 0 keeps the
        float32 values (no quantization).
      conv_bits, dense_bits: the defaults (Deep Compression: 8 and 5).
      format: the index format ("lsc", "ri", "sri", "csr", ...; see lscjax.coding.encode).
      entropy: "ans", "context" (integer codes with one rANS model per row / column class),
        "huffman" or "none".
      format_options: extra options for lscjax.coding.encode (e.g. {"block": 4}).
      rules: per-layer `Rule`s (or dicts of Rule's fields), tried in order: the first whose
        pattern matches a selected leaf's path gives that leaf its settings (or keeps it
        dense); leaves no rule matches use the fields above. When a rule sets a sparsity and
        `sparsity` is a float, the other leaves share the global threshold among themselves.
      pattern: the calibrated methods' sparsity pattern: None (unstructured), "n:m" or a
        pair (b0, b1) of block sides (see `lscjax.prune.sparsegpt`); calibrated methods only.
      quant: "kmeans" (each layer to its bits) or "rdq": entropy-constrained quantization
        (`lscjax.quant.rdq`, at most ``2**bits`` codes for an int `bits` up to 10, else 256)
        at the lam that meets the target, found by `lscjax.quant.rdq_for_target` over all
        quantized layers, sized with the recipe's format and entropy coder; not with the
        calibrated prune methods. With format "trellis" (entropy "ans"), rdq's grid is
        "trellis" (dependent quantization, the fewest bits at a distortion; ``bits`` up to 16,
        default 14).
      target_bits: with quant="rdq", the encoded bits per weight of the quantized layers
        (the best quality that fits).
      target_distortion: with quant="rdq", their relative MSE ``sum ||W - Q||^2 /
        sum N Var(W)`` (the smallest encoding within it). Exactly one target is given.
      target_size: with quant="rdq", the whole .lsc file's bytes (every leaf, the header):
        the best quality whose file fits.
      relative_to: with quant="rdq", what each layer's distortion is relative to (see
        `lscjax.quant.rdq`): "layer" (the default: each layer's own variance) or "selection"
        (the variance of all quantized weights: one slope of squared error per bit for every
        layer, the fewest bits for a target_distortion, which is measured over them all). On
        all-MiniLM-L6-v2, "layer" keeps the sentence embeddings closer at equal file size.
      init: the k-means init of quant="kmeans" (plain k-means and GPTQ's codebooks; see
        `lscjax.quant.kmeans`): "linear" (the default: peaked codes, the smallest files under
        entropy coding), or "density" / "random" / "kmeans++" (less error at the same bits,
        near-equiprobable codes).
      per_channel: quant="kmeans" with one codebook per output channel (the last axis) instead
        of one per layer (`lscjax.quant.kmeans` / `lscjax.quant.gptq` ``per_channel``): less
        error, at n x 2**bits float32 codebook entries per layer; kernels of rank >= 2 only.

    Raises:
      LscError: a field out of range (sparsity outside [0, 1), bits outside [0, 16]), an
        unknown prune method, format, entropy coder or format option, a bad rule.
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
    rules: tuple[Rule, ...] = ()
    pattern: str | tuple[int, int] | None = None
    quant: str = "kmeans"
    target_bits: float | None = None
    target_distortion: float | None = None
    target_size: int | None = None
    relative_to: str = "layer"
    init: str = DEFAULT_INIT
    per_channel: bool = False

    def __post_init__(self):
        if isinstance(self.sparsity, Mapping):
            for path, value in self.sparsity.items():
                check_sparsity(value, f"recipe sparsity of {path!r}")
        else:
            check_sparsity(self.sparsity, "recipe sparsity")
        if self.prune not in PRUNE_METHODS:
            raise LscError(f"recipe prune must be one of {PRUNE_METHODS}, got {self.prune!r}")
        if isinstance(self.bits, Mapping):
            for path, value in self.bits.items():
                _check_bits(f"recipe bits of {path!r}", value)
        elif self.bits is not None:
            _check_bits("recipe bits", self.bits)
        for field in ("conv_bits", "dense_bits"):
            if _check_bits(f"recipe {field}", getattr(self, field)) == 0:
                raise LscError(f"recipe {field} must be in [1, 16] (set bits=0 for float values)")
        if self.pattern is not None:
            if self.prune not in CALIBRATED_PRUNE:
                raise LscError(f"recipe pattern applies to {tuple(CALIBRATED_PRUNE)} only")
            parse_pattern(self.pattern)
        _check_format("recipe", self.format, self.format_options)
        check_entropy(self.entropy)
        if isinstance(self.rules, str | Mapping | Rule) or not isinstance(self.rules, Iterable):
            raise LscError(f"recipe rules must be a sequence of Rule, got {self.rules!r}")
        rules = tuple(r if isinstance(r, Rule) else _rule_from(r) for r in self.rules)
        object.__setattr__(self, "rules", rules)
        _check_quant(self)

    def rule_for(self, path: str) -> Rule | None:
        """The first rule whose pattern matches `path`, or None."""
        return next((r for r in self.rules if r.matches(path)), None)

    def bits_for(self, path: str, leaf) -> int:
        """The code bits of one selected leaf (0: float32 values kept).

        A matching rule's bits, else an explicit int or map, are used as given. The default
        (`conv_bits` / `dense_bits`) is capped at ``floor(log2(kept)) - 2``, i.e. at most
        kept / 4 codebook entries, so the codebook (32 bits per entry) costs at most 8 bits
        per kept weight: a 256-entry codebook for a layer of 400 kept weights would otherwise
        cost more than the codes themselves.

        Raises:
          LscError: a bits map without an entry for `path`.
        """
        rule = self.rule_for(path)
        if rule is not None and rule.bits is not None:
            return rule.bits
        if isinstance(self.bits, Mapping):
            if path not in self.bits:
                raise LscError(f"recipe bits map has no entry for {path!r}")
            return int(self.bits[path])
        if self.bits is not None:
            return int(self.bits)
        default = self.conv_bits if np.ndim(leaf) > 2 else self.dense_bits
        kept = count_nonzero(leaf)
        return max(1, min(default, int(np.log2(max(kept, 2))) - 2))

    def per_channel_for(self, path: str) -> bool:
        """Whether one selected leaf gets a k-means codebook per output channel."""
        rule = self.rule_for(path)
        if rule is None or rule.per_channel is None:
            return self.per_channel
        return rule.per_channel

    def format_for(self, path: str) -> tuple[str, dict]:
        """The (format, format options) of one selected leaf."""
        rule = self.rule_for(path)
        if rule is None or rule.format is None:
            return self.format, dict(self.format_options)
        return rule.format, dict(rule.format_options or {})


QUANT_METHODS = ("kmeans", "rdq")


def _check_quant(rc: "Recipe") -> None:
    """Raise LscError unless the recipe's quant and targets fit together."""
    if rc.quant not in QUANT_METHODS:
        raise LscError(f"recipe quant must be one of {QUANT_METHODS}, got {rc.quant!r}")
    if not isinstance(rc.per_channel, bool):
        raise LscError(f"recipe per_channel must be true or false, got {rc.per_channel!r}")
    if rc.init not in INITS:
        raise LscError(f"recipe init must be one of {INITS}, got {rc.init!r}")
    if rc.init != DEFAULT_INIT and rc.quant != "kmeans":
        raise LscError("recipe init applies to quant='kmeans' (rdq starts from its own)")
    if (rc.per_channel or any(r.per_channel for r in rc.rules)) and rc.quant != "kmeans":
        raise LscError("recipe per_channel applies to quant='kmeans'")
    targets = {
        "target_bits": rc.target_bits,
        "target_distortion": rc.target_distortion,
        "target_size": rc.target_size,
    }
    given = {k: v for k, v in targets.items() if v is not None}
    if rc.relative_to not in RELATIVE_TO:
        raise LscError(f"recipe relative_to must be one of {RELATIVE_TO}, got {rc.relative_to!r}")
    if rc.quant == "kmeans":
        if given:
            raise LscError(f"recipe {sorted(given)} needs quant='rdq'")
        if rc.relative_to != "layer":
            raise LscError("recipe relative_to applies to quant='rdq'")
        return
    if len(given) != 1:
        raise LscError(
            f"recipe quant='rdq' needs exactly one of {sorted(targets)}; got {sorted(given)}"
        )
    ((name, value),) = given.items()
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < np.inf:
        raise LscError(f"recipe {name} must be a finite number > 0, got {value!r}")
    if name == "target_size" and not isinstance(value, int | np.integer):
        raise LscError(f"recipe target_size must be an int (bytes), got {value!r}")
    if rc.prune in CALIBRATED_PRUNE:
        raise LscError(f"recipe quant='rdq' does not run with the calibrated prune={rc.prune!r}")


def _rdq_leaves(params, rc: "Recipe", paths, nbytes: int | None = None) -> dict:
    """{path: QArray} of the layers at `paths`, by rdq at the recipe's target (see Recipe); for
    target_size, at `nbytes` of encoded layers."""
    if rc.format == "trellis":  # dependent quantization, its lattice codebook stored as a step
        grid, top, fallback = "trellis", TRELLIS_MAX_BITS, TRELLIS_MAX_BITS
    else:
        grid, top, fallback = "kmeans", RDQ_MAX_BITS, 8
    max_bits = rc.bits if isinstance(rc.bits, int) and 0 < rc.bits <= top else fallback
    q, _ = rdq_for_target(
        params,
        grid=grid,
        bits=rc.target_bits,
        bytes=nbytes,
        distortion=rc.target_distortion,
        max_bits=max_bits,
        where=lambda p, _: p in paths,
        format=rc.format,
        entropy=rc.entropy,
        format_options=rc.format_options,
        relative_to=rc.relative_to,
    )
    return {p: leaf for p, leaf in leaves_with_paths(q, is_leaf=is_qarray) if p in paths}


SIZE_TRIES = 4
"""The most rdq_for_target runs that `_rdq_to_size` makes to fit a file size."""


def _encode_leaf(rc: "Recipe", path: str, leaf):
    """One selected leaf encoded with its format (the recipe's, or its rule's) and entropy coder."""
    fmt, options = rc.format_for(path)
    return encode(leaf, fmt, entropy=rc.entropy, **options)


def _rdq_to_size(params, rc: "Recipe", paths, probe: CompressedModel) -> dict:
    """{path: QArray} of the layers at `paths` by rdq, the largest whose file fits
    rc.target_size.

    `probe` is the file with the layers encoded as zeros: it gives the other leaves' share of
    the file (encoded once), and the layers get the rest. Each miss (the layers' header entries
    differ from the zeros') lowers their budget by the excess, at most SIZE_TRIES runs.

    Raises:
      LscError: a target below the file's other contents, or one no run fits.
    """
    rest = len(to_bytes(probe)) - sum(len(probe.encoded[p].to_bytes()) for p in paths)
    budget = rc.target_size - rest
    for _ in range(SIZE_TRIES):
        if budget <= 0:
            break
        leaves = _rdq_leaves(params, rc, paths, nbytes=budget)
        encoded = {**probe.encoded, **{p: _encode_leaf(rc, p, q) for p, q in leaves.items()}}
        size = len(to_bytes(dataclasses.replace(probe, encoded=encoded)))
        if size <= rc.target_size:
            return leaves
        budget -= size - rc.target_size
    raise LscError(
        f"recipe target_size {rc.target_size} bytes: the file's other leaves and header take "
        f"{rest} bytes, leaving {max(budget, 0)} for the {len(paths)} quantized layers; ask "
        "for a larger size"
    )


def _rule_from(fields) -> Rule:
    """A Rule from a mapping of its fields (as recipe files give them)."""
    if not isinstance(fields, Mapping):
        raise LscError(f"a recipe rule must be a Rule or a mapping, got {fields!r}")
    unknown = set(fields) - {f.name for f in dataclasses.fields(Rule)}
    if unknown or "pattern" not in fields:
        raise LscError(
            f"recipe rule {dict(fields)}: unknown field(s) {sorted(unknown)}; a rule needs "
            "'pattern' and may set sparsity, bits, format, format_options, keep_dense"
        )
    return Rule(**fields)


RECIPES = {
    "deep_compression": Recipe("deep_compression", sparsity=0.92, format="ri", entropy="huffman"),
    "lsc": Recipe("lsc", sparsity=0.95, prune="gradual", format="lsc", entropy="ans"),
    "sparsegpt": Recipe("sparsegpt", sparsity=0.5, prune="sparsegpt", bits=4, per_channel=True),
    "wanda": Recipe("wanda", sparsity=0.5, prune="wanda", bits=4, per_channel=True),
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


def _select(params, rc: Recipe, where: Where) -> tuple[dict[str, bool], dict[str, str]]:
    """The leaves to compress ({path: bool}) and those the rules keep dense ({path: pattern}).

    Raises:
      LscError: `where` selects nothing, or the rules keep every selected leaf dense.
    """
    base = selection(params, where)
    kept_dense = {}
    for path, on in base.items():
        rule = rc.rule_for(path) if on else None
        if rule is not None and rule.keep_dense:
            kept_dense[path] = rule.pattern
    chosen = {path: on and path not in kept_dense for path, on in base.items()}
    if not any(chosen.values()):
        raise LscError(
            f"the recipe rules keep every selected leaf dense ({sorted(kept_dense)[:5]}): "
            "nothing is left to compress"
        )
    return chosen, kept_dense


def _targets(rc: Recipe, chosen: dict[str, bool]) -> float | dict[str, float]:
    """The sparsity of the chosen leaves: one global float, or {path: sparsity} per layer.

    Per layer when the recipe's sparsity is a map or a rule sets a sparsity (then the leaves no
    rule gives one get the recipe's float each).

    Raises:
      LscError: a sparsity map that misses a chosen leaf no rule covers, or names another one.
    """
    paths = [path for path, on in chosen.items() if on]
    ruled = {}
    for path in paths:
        rule = rc.rule_for(path)
        if rule is not None and rule.sparsity is not None:
            ruled[path] = float(rule.sparsity)
    if not isinstance(rc.sparsity, Mapping):
        return {p: ruled.get(p, float(rc.sparsity)) for p in paths} if ruled else rc.sparsity
    missing = [p for p in paths if p not in ruled and p not in rc.sparsity]
    unknown = sorted(set(rc.sparsity) - set(paths))
    if missing or unknown:
        raise LscError(
            f"recipe sparsity map does not match the selected leaves: missing {missing[:5]}, "
            f"unknown {unknown[:5]}"
        )
    return {p: ruled.get(p, float(rc.sparsity.get(p, 0.0))) for p in paths}


def _check_bits_cover(rc: Recipe, chosen: dict[str, bool]) -> None:
    """Raise LscError before any work when a bits map misses a chosen leaf no rule covers."""
    if not isinstance(rc.bits, Mapping):
        return
    missing = [
        p
        for p, on in chosen.items()
        if on and p not in rc.bits and getattr(rc.rule_for(p), "bits", None) is None
    ]
    if missing:
        raise LscError(f"recipe bits map has no entry for {missing[:5]}")


def _prune(params, rc: Recipe, targets, retrain: Retrain | None, where: Where, progress: bool):
    """Prune to `targets` (see `_targets`) per the recipe: (params with exact zeros, masks,
    the method that ran)."""
    per_layer = isinstance(targets, Mapping)
    if rc.prune == "magnitude" or (rc.prune == "gradual" and retrain is None):
        masks = distributed_magnitude(
            params, targets, "uniform" if per_layer else "global", where=where
        )
        return apply(params, masks), masks, "magnitude"
    if retrain is None:
        raise LscError("recipe prune='admm' trains: pass retrain=Retrain(loss_fn, data, steps)")
    if rc.prune == "gradual":
        final = max(targets.values(), default=0.0) if per_layer else targets
        end = max(1, (3 * retrain.steps) // 4)
        schedule = polynomial(0.0, final, 0, end, frequency=max(1, end // 20))
        opt = gradual(
            retrain.optimizer,
            schedule,
            distribution=targets if per_layer else "global",
            where=where,
        )
        params, state = retrain.run(params, opt, retrain.steps, progress=progress, desc="gradual")
        masks = state.masks
    else:
        opt = admm(
            retrain.optimizer,
            targets,
            rho=retrain.admm_rho,
            every=retrain.admm_every,
            where=where,
        )
        params, state = retrain.run(
            params, opt, retrain.admm_every * retrain.admm_rounds, progress=progress, desc="admm"
        )
        masks = admm_masks(state)
    return apply(params, masks), masks, rc.prune


def _record(rc: Recipe) -> dict:
    """The recipe as JSON-ready data (for the file header)."""
    record = dataclasses.asdict(rc)
    record["format_options"] = dict(rc.format_options)
    record["rules"] = [
        {
            k: v
            for k, v in dataclasses.asdict(r).items()
            if v is not None and not (k == "keep_dense" and v is False)
        }
        for r in rc.rules
    ]
    for key in ("sparsity", "bits"):
        if isinstance(record[key], Mapping):
            record[key] = dict(record[key])
    return record


def _calibrated_prune(params, rc: Recipe, targets, calibration, where, progress: bool, bits=None):
    """Layer-sequential SparseGPT / Wanda pruning to `targets` (and GPTQ of the layers in
    `bits`): (params, masks, {path: QArray})."""
    params, found, qleaves = calibrated_pass(
        params,
        calibration,
        where,
        prune=rc.prune,
        sparsity=targets,
        pattern=rc.pattern,
        bits=bits,
        per_channel={p: rc.per_channel_for(p) for p in bits or {}},
        init=rc.init,
        progress=progress,
    )
    masks = map_selected(lambda p, _: found[p], params, where=lambda p, _: p in found)
    return params, masks, qleaves


ONE_SHOT_SAFE = 0.5
"""The highest one-shot magnitude sparsity `compress` runs without a warning (see README)."""


def _warn_one_shot(rc: Recipe, targets, retrain, calibration) -> None:
    """Warn when a recipe would prune by magnitude, one shot, past ONE_SHOT_SAFE: no data."""
    if retrain is not None or calibration is not None or rc.prune not in ("magnitude", "gradual"):
        return
    values = targets.values() if isinstance(targets, Mapping) else [targets]
    highest = max(values, default=0.0)
    if highest > ONE_SHOT_SAFE:
        warnings.warn(
            f"recipe {rc.name!r} prunes {highest:.0%} by magnitude in one shot, with neither "
            "retrain= nor calibration=: this usually destroys a trained model's accuracy. Pass "
            "calibration=lscjax.Calibration(apply_fn, batches) with the 'sparsegpt' recipe, "
            "retrain=lscjax.Retrain(...) or lscjax.distillation(...), or a sparsity <= "
            f"{ONE_SHOT_SAFE}.",
            UserWarning,
            stacklevel=3,
        )


def compress(
    params,
    recipe: str | Recipe = "lsc",
    *,
    retrain: Retrain | None = None,
    calibration: Calibration | None = None,
    where: Where = None,
    layout: Mapping | None = None,
    progress: bool = False,
) -> CompressedModel:
    """Compress a parameter pytree into a `CompressedModel` (save it with `lscjax.save`).

    Stages: prune the selected leaves (one-shot magnitude, gradual over the retrain steps,
    ADMM, or from calibration data SparseGPT / Wanda); retrain the kept weights with
    `keep_masks` (if `retrain`); quantize each selected leaf to its bits (zeros keep the 0
    code): k-means, or with `calibration` GPTQ onto each called layer's k-means codebook;
    fine-tune the centroids with `shared_centroids` (if `retrain`); encode each selected leaf
    with the recipe's format and entropy coder. Unselected leaves (biases, norms) are stored
    losslessly.

    With `calibration` and no `retrain`, each layer in call order is pruned and quantized
    before the next one is measured (one layer-sequential pass); with both, pruning and
    quantization are two such passes with the retraining between them. Selected leaves that
    are not a called layer's kernel (e.g. embedding tables) get plain k-means.

    Args:
      params: a pytree of float arrays (nested dicts, as Flax params).
      recipe: "lsc", "deep_compression", "sparsegpt", "wanda", or a `Recipe`.
      retrain: optional `Retrain` hook (loss, data, steps) run after pruning and quantization
        (`lscjax.distillation` builds one from unlabelled batches).
      calibration: a `lscjax.Calibration` (the model function and unlabelled batches); needed
        by the "sparsegpt" and "wanda" recipes.
      where: the leaves to compress (default: 'kernel' leaves with ndim >= 2); the recipe's
        keep-dense rules remove leaves from it.
      layout: the layout record of a converted PyTorch checkpoint (`Checkpoint.layout` of
        ``read_checkpoint``), checked against the params' shapes and stored in the file.
      progress: progress bars.

    Returns:
      A CompressedModel holding one Encoded per selected leaf and the raw unselected leaves.

    Warns:
      UserWarning: one-shot magnitude pruning past 50% without `retrain` or `calibration`
        (what the "lsc" and "deep_compression" recipes do alone): it usually destroys a
        trained model's accuracy.

    Raises:
      LscError (a ValueError): an unknown recipe or bad setting, naming the leaf path; a
        calibrated recipe without `calibration`; a selection that matches no leaf, or only leaves the rules keep dense; a sparsity or
        bits map that misses a selected leaf (checked before any pruning or training); a
        layout record that does not match the params.
    """
    check_layout(layout, {p: np.shape(w) for p, w in leaves_with_paths(params)})
    rc = RECIPES.get(recipe) if isinstance(recipe, str) else recipe
    if rc is None:
        raise LscError(f"unknown recipe {recipe!r}; expected one of {sorted(RECIPES)}")
    calibrated = rc.prune in CALIBRATED_PRUNE
    if calibration is not None and not isinstance(calibration, Calibration):
        raise LscError(
            f"calibration must be a lscjax.Calibration, got {type(calibration).__name__}"
        )
    if calibrated and calibration is None:
        raise LscError(
            f"recipe prune={rc.prune!r} needs calibration=lscjax.Calibration(apply_fn, batches)"
        )
    chosen, kept_dense = _select(params, rc, where)
    targets = _targets(rc, chosen)
    _check_bits_cover(rc, chosen)
    _warn_one_shot(rc, targets, retrain, calibration)

    def picked(path: str, _) -> bool:
        return chosen.get(path, False)

    qleaves, pruned_by = {}, rc.prune
    if calibrated and retrain is None:  # one pass: each layer pruned, then quantized
        bits = {p: rc.bits_for(p, w) for p, w in leaves_with_paths(params) if chosen[p]}
        params, _, qleaves = _calibrated_prune(
            params, rc, targets, calibration, picked, progress, bits
        )
    else:
        if calibrated:
            params, masks, _ = _calibrated_prune(params, rc, targets, calibration, picked, progress)
        else:
            params, masks, pruned_by = _prune(params, rc, targets, retrain, picked, progress)
        if retrain is not None:
            params, _ = retrain.run(
                params,
                keep_masks(retrain.optimizer, masks),
                retrain.steps,
                progress=progress,
                desc="retrain",
            )
            params = apply(params, masks)  # exact zeros, whatever the optimizer did
        bits = {p: rc.bits_for(p, w) for p, w in leaves_with_paths(params) if chosen[p]}
        if calibration is not None:
            params, _, qleaves = calibrated_pass(
                params,
                calibration,
                picked,
                bits=bits,
                per_channel={p: rc.per_channel_for(p) for p in bits},
                init=rc.init,
                progress=progress,
            )
    quantized = {p: b for p, b in bits.items() if b > 0 and p not in qleaves}
    meta = recipe_meta(rc, pruned_by=pruned_by, kept_dense=kept_dense, layout=layout)

    def assemble(tree):
        """The CompressedModel of `tree`: its chosen leaves encoded, the others raw."""
        encoded, raw = {}, {}
        items = leaves_with_paths(tree, is_leaf=is_qarray)
        for path, leaf in tqdm(items, desc="encode", disable=not progress, leave=False):
            if chosen.get(path, False):
                encoded[path] = _encode_leaf(rc, path, leaf)
            else:
                raw[path] = np.asarray(leaf)
        return CompressedModel(encoded=encoded, raw=raw, meta=meta)

    if rc.quant == "rdq" and quantized:
        if rc.target_size is not None:
            zeros = map_selected(
                lambda _, w: np.zeros(np.shape(w), np.float32),
                params,
                where=lambda p, _: p in quantized,
                fill="keep",
            )
            qleaves |= _rdq_to_size(params, rc, set(quantized), assemble(zeros))
        else:
            qleaves |= _rdq_leaves(params, rc, set(quantized))
        quantized = {}
    if quantized or qleaves:
        for path in tqdm(quantized, desc="k-means", disable=not progress, leave=False):
            one = kmeans(
                params,
                quantized,
                init=rc.init,
                per_channel=rc.per_channel_for(path),
                where=lambda p, _, q=path: p == q,
            )
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
    return assemble(params)


def recipe_meta(
    rc: Recipe,
    *,
    pruned_by: str | None = None,
    kept_dense: Mapping[str, str] | None = None,
    layout: Mapping | None = None,
) -> dict:
    """The file header's model-level facts for a model compressed with `rc`.

    Args:
      rc: the recipe.
      pruned_by: the pruning method that ran, recorded as the recipe's `prune` ("magnitude"
        when "gradual" had no retraining); None: `rc.prune`.
      kept_dense: {path: rule pattern} of the leaves the rules kept dense.
      layout: the layout record of a converted PyTorch checkpoint.

    Returns:
      {"recipe": {...}, "kept_dense": {...}} plus "layout" when given.
    """
    ran = rc if pruned_by is None else dataclasses.replace(rc, prune=pruned_by)
    meta = {"recipe": _record(ran), "kept_dense": dict(kept_dense or {})}
    if layout is not None:
        meta["layout"] = {p: dict(entry) for p, entry in layout.items()}
    return meta
