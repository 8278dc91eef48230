"""`Calibration`: the input statistics of a Flax model's layers over unlabelled batches.

For every Dense / DenseGeneral / Conv layer (Linen) and Linear / LinearGeneral / Conv layer
(NNX) that the model calls, the layer's inputs are flattened to rows X [N, d] (a Conv's through
its patches, in the order of ``kernel.reshape(-1, out)``: kh, kw, cin) and reduced on the fly
to ``X^T X`` and the per-feature squared norms, in float32: the activations themselves are never
kept. Linen layers are seen through ``flax.linen.intercept_methods``; NNX layers by wrapping
their classes' ``__call__`` while the capture is traced, each layer found by the identity of its
kernel among the params passed in.
"""

import collections
import contextlib
import math
from collections.abc import Callable, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lscjax._src.errors import LscError
from lscjax._src.prune.hessian import LayerStats
from lscjax._src.tree import Where, leaves_with_paths, selection

LINEN_LAYERS = (nn.Dense, nn.DenseGeneral, nn.Conv)
NNX_LAYERS = (nnx.Linear, nnx.LinearGeneral, nnx.Conv)


def _padding(padding, nd: int):
    if isinstance(padding, str) and padding.upper() in ("SAME", "VALID"):
        return padding.upper()
    if isinstance(padding, int):
        return [(padding, padding)] * nd
    if isinstance(padding, tuple | list) and len(padding) == nd:
        return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
    raise LscError(f"calibration: Conv padding {padding!r} is not supported")


def _tuple(value, nd: int):
    if value is None:
        return (1,) * nd
    return (value,) * nd if isinstance(value, int) else tuple(value)


def layer_rows(module, x) -> jax.Array:
    """The rows X float32 [N, d] that `module` (a supported layer) multiplies by its kernel."""
    return _rows(module, x)[0]


def _rows(module, x) -> tuple[jax.Array, tuple[int, ...]]:
    """(rows float32 [N, d], lead): `layer_rows` and the shape of its leading axes, prod(lead)
    = N (a Dense's batch axes; a Conv's batch axes and output positions)."""
    x = jnp.asarray(x, jnp.float32)
    if isinstance(module, nn.Dense | nnx.Linear):
        return x.reshape(-1, x.shape[-1]), x.shape[:-1]
    if isinstance(module, nn.DenseGeneral | nnx.LinearGeneral):
        if getattr(module, "batch_dims", ()) or getattr(module, "batch_axis", None):
            raise LscError(f"calibration: {type(module).__name__} with batch dims is not supported")
        axis = module.axis if isinstance(module.axis, tuple | list) else (module.axis,)
        axis = tuple(a % x.ndim for a in axis)
        moved = jnp.moveaxis(x, axis, tuple(range(x.ndim - len(axis), x.ndim)))
        lead = moved.shape[: x.ndim - len(axis)]
        return moved.reshape(-1, math.prod(x.shape[a] for a in axis)), lead
    kernel_size = tuple(module.kernel_size)
    nd = len(kernel_size)
    if module.feature_group_count != 1:
        raise LscError("calibration: grouped Conv (feature_group_count > 1) is not supported")
    if x.ndim == nd + 1:
        x = x[None]
    x = x.reshape(-1, *x.shape[-(nd + 1) :])
    spatial = "".join("HWDXYZ"[i] for i in range(nd))
    patches = jax.lax.conv_general_dilated_patches(
        x,
        kernel_size,
        _tuple(module.strides, nd),
        _padding(module.padding, nd),
        lhs_dilation=_tuple(module.input_dilation, nd),
        rhs_dilation=_tuple(module.kernel_dilation, nd),
        dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
    )  # [..., C * prod(kernel_size)], C major
    c = x.shape[-1]
    lead = patches.shape[:-1]
    patches = patches.reshape(-1, c, math.prod(kernel_size))
    return jnp.swapaxes(patches, 1, 2).reshape(-1, math.prod(kernel_size) * c), lead


@contextlib.contextmanager
def _nnx_capture(callback):
    """Wrap the NNX layer classes' __call__ so that each call reports (module, input)."""
    originals = {cls: cls.__call__ for cls in NNX_LAYERS}

    def wrap(cls):
        original = originals[cls]

        def call(self, x, *args, **kwargs):
            callback(self, self.kernel.get_value(), x)
            return original(self, x, *args, **kwargs)

        return call

    try:
        for cls in NNX_LAYERS:
            cls.__call__ = wrap(cls)
        yield
    finally:
        for cls, original in originals.items():
            cls.__call__ = original


def _traced_calls(apply_fn, params, batch, wanted: Callable[[str], bool]):
    """Run apply_fn(params, batch) under tracing and return [(kernel path, rows, input id)] per
    layer call: rows() gives (rows [N, d], lead shape); calls that multiply the same input
    array share its id."""
    ids = {id(leaf): path for path, leaf in leaves_with_paths(params)}
    paths = set(ids.values())
    calls, inputs = [], []

    def record(path, x, rows):
        if wanted(path):
            inputs.append(x)  # keeps x alive, so that no later input reuses its id
            calls.append((path, rows, id(x)))

    def linen(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(module, LINEN_LAYERS):
            kernel = module.get_variable("params", "kernel")
            path = ids.get(id(kernel), "/".join(module.path) + "/kernel")
            if path in paths:
                record(path, args[0], lambda: _rows(module, args[0]))
        return next_fun(*args, **kwargs)

    def nnx_call(module, kernel, x):
        path = ids.get(id(kernel))
        if path is not None:
            record(path, x, lambda: _rows(module, x))

    with nn.intercept_methods(linen), _nnx_capture(nnx_call):
        apply_fn(params, batch)
    return calls


def _row_weights(path: str, mask, lead: tuple[int, ...]) -> jax.Array:
    """float32 [prod(lead)] 0/1 weights of a layer's rows from a row mask whose shape is a
    prefix of `lead` (broadcast over the remaining axes).

    Raises:
      LscError: the mask's shape is not a prefix of `lead` (names `path`).
    """
    mask = jnp.asarray(mask)
    if tuple(mask.shape) != tuple(lead[: mask.ndim]):
        raise LscError(
            f"calibration: row_mask of shape {tuple(mask.shape)} does not match layer {path!r}, "
            f"whose input rows have leading axes {tuple(lead)} (the mask's shape must be a prefix)"
        )
    mask = mask.reshape(mask.shape + (1,) * (len(lead) - mask.ndim)) != 0
    return jnp.broadcast_to(mask, lead).reshape(-1).astype(jnp.float32)


class Calibration:
    """Unlabelled calibration batches and the model function that consumes them.

    Attributes:
      apply_fn: ``(params, batch) -> outputs``, a plain (not jitted) function calling the Flax
        model, e.g. ``lambda p, x: model.apply({"params": p}, x)`` (Linen) or
        ``lambda s, x: nnx.merge(graphdef, s)(x)`` (NNX; params = the nnx.State of its Params).
      batches: the first `num_batches` batches (all when None), kept as given (model inputs,
        e.g. token ids int32 [B, T] or images float32 [B, H, W, C]).
      row_mask: None (every row counts) or ``(batch) -> array [B, ...]`` marking the rows of the
        layers' inputs that count (non-zero) and those left out of every statistic (zero), e.g.
        ``lambda b: b[1]`` for the attention mask int32 [B, T] of padded token batches. Its
        shape must be a prefix of each layer's leading input axes (a Dense's [B, T], a Conv's
        [B, H_out, W_out]); it is broadcast over the rest.

    Example:
      >>> cal = lscjax.Calibration(apply_fn, [images])  # apply_fn(params, batch) -> logits
      >>> stats = cal.stats(params)  # {"Conv_0/kernel": LayerStats, ...}
      >>> pruned = cal.sequential(params, lambda p, s: lscjax.prune.sparsegpt(p, s, 0.5)[0])
    """

    def __init__(
        self,
        apply_fn: Callable,
        batches: Iterable,
        *,
        num_batches: int | None = None,
        row_mask: Callable | None = None,
    ):
        """See the class docstring.

        Raises:
          LscError: apply_fn or row_mask not callable, num_batches < 1, no batches.
        """
        if not callable(apply_fn):
            raise LscError(f"apply_fn must be callable, got {type(apply_fn).__name__}")
        if row_mask is not None and not callable(row_mask):
            raise LscError(f"row_mask must be None or callable, got {type(row_mask).__name__}")
        if num_batches is not None and (
            isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1
        ):
            raise LscError(f"num_batches must be None or an int >= 1, got {num_batches!r}")
        kept = []
        for batch in batches:
            if num_batches is not None and len(kept) == num_batches:
                break
            kept.append(batch)
        if not kept:
            raise LscError("calibration batches yield no batch")
        self.apply_fn = apply_fn
        self.batches = kept
        self.row_mask = row_mask
        self._runs: dict = {}
        self._probes: dict = {}

    def _probe(self, params, where: Where) -> dict[str, tuple[int, int]]:
        """{kernel path: (d, group)} of the selected layers the model calls, in call order; the
        layers of one group are called once each, on the same input array (a layer called more
        than once has a group of its own). Traced once per params structure and selection."""
        chosen = {p: True for p, _ in leaves_with_paths(params)}
        if where is not None:
            chosen = selection(params, where)
        key = (
            jax.tree_util.tree_structure(params),
            tuple((np.shape(w), jnp.result_type(w)) for _, w in leaves_with_paths(params)),
            tuple(p for p, c in chosen.items() if c),
        )
        if key in self._probes:
            return self._probes[key]
        found: dict[str, tuple[int, int]] = {}

        def probe(p, batch):
            calls = _traced_calls(self.apply_fn, p, batch, chosen.get)
            times = collections.Counter(path for path, _, _ in calls)
            groups: dict = {}
            for path, rows, source in calls:
                shared = source if times[path] == 1 else ("alone", path)
                group = groups.setdefault(shared, len(groups))
                found.setdefault(path, (int(rows()[0].shape[1]), group))
            return 0

        jax.eval_shape(probe, params, self.batches[0])
        if not found:
            raise LscError(
                "calibration: no selected kernel belongs to a Dense/DenseGeneral/Conv layer "
                f"that apply_fn calls (selected: {[p for p, c in chosen.items() if c][:5]})"
            )
        self._probes[key] = found
        return found

    def layers(self, params, *, where: Where = None) -> list[str]:
        """The kernel paths of the selected layers that the model calls, in call order.

        Args:
          params: the model's params (as apply_fn takes them).
          where: selection over the params (default: every kernel of a supported layer).

        Raises:
          LscError: no selected kernel belongs to a supported layer the model calls.
        """
        return list(self._probe(params, where))

    def _run(self, paths: tuple[str, ...], cross: bool):
        """The jitted (params, dense, batch, sums) -> sums for the layers `paths`, compiled
        once; with `cross`, the same layers' inputs in `dense`'s model are gathered too."""
        if (paths, cross) not in self._runs:
            wanted = set(paths).__contains__
            row_mask = self.row_mask

            def run(params, dense, batch, sums):
                sums = dict(sums)
                calls = _traced_calls(self.apply_fn, params, batch, wanted)
                refs = _traced_calls(self.apply_fn, dense, batch, wanted) if cross else calls
                for (path, rows, _), (_, ref_rows, _) in zip(calls, refs, strict=True):
                    x, lead = rows()
                    gram, sq, count, *prod = sums[path]
                    if row_mask is None:
                        wx, n = x, x.shape[0]
                    else:
                        weight = _row_weights(path, row_mask(batch), lead)
                        wx, n = x * weight[:, None], jnp.sum(weight).astype(jnp.int32)
                    if cross:
                        prod = [prod[0] + wx.T @ ref_rows()[0]]
                    sums[path] = (gram + wx.T @ x, sq + jnp.sum(wx * x, axis=0), count + n, *prod)
                return sums

            self._runs[paths, cross] = jax.jit(run, donate_argnums=3)
        return self._runs[paths, cross]

    def _gather(self, params, dims: Mapping[str, int], dense=None) -> dict[str, LayerStats]:
        """LayerStats of the layers {path: d} over all batches (one compiled run); with
        `dense` params, each one's `cross` with the same layer's inputs in dense's model."""
        paths = tuple(dims)
        cross = dense is not None
        sums = {
            path: (jnp.zeros((d, d), jnp.float32), jnp.zeros((d,), jnp.float32), jnp.int32(0))
            + ((jnp.zeros((d, d), jnp.float32),) if cross else ())
            for path, d in dims.items()
        }
        run = self._run(paths, cross)
        for batch in self.batches:
            sums = run(params, dense if cross else params, batch, sums)
        return {
            path: LayerStats(
                sums[path][0],
                jnp.sqrt(sums[path][1]),
                int(sums[path][2]),
                sums[path][3] if cross else None,
            )
            for path in paths
        }

    def stats(self, params, *, where: Where = None) -> dict[str, LayerStats]:
        """Statistics of the selected layers' inputs over all batches, from `params`' model.

        Args:
          params: the model's params.
          where: selection (default: every kernel of a supported layer).

        Returns:
          {kernel path: LayerStats} (gram float32 [d, d], norms float32 [d], count: the rows
          counted) in call order. A layer called more than once per batch accumulates every
          call; with `row_mask`, only the rows it marks count.

        Raises:
          LscError: as `layers`; a row_mask whose shape does not fit a layer's input rows.
        """
        return self._gather(params, {p: d for p, (d, _) in self._probe(params, where).items()})

    def sequential(
        self, params, compress_layer: Callable, *, where: Where = None, cross: bool = False
    ):
        """Layer-sequential calibration (the SparseGPT / GPTQ protocol).

        The layers are taken in call order; each one's statistics come from the model whose
        earlier layers `compress_layer` has already changed, and then it is changed too.
        Layers that multiply the same input array (e.g. an attention block's query, key and
        value) get their statistics from one run over the batches: changing one of them cannot
        change the others' input.

        Args:
          params: the model's params.
          compress_layer: ``(params, {path: LayerStats}) -> params`` (one layer's stats), e.g.
            ``lambda p, s: lscjax.prune.sparsegpt(p, s, 0.5)[0]``.
          where: selection (default: every kernel of a supported layer).
          cross: also gather each layer's ``cross = X^T X_dense`` float32 [d, d], X_dense its
            inputs in the model of `params` as passed (before any change), on the same rows:
            what `lscjax.prune.dense_target` needs to aim a layer at the dense model's
            outputs instead of its own on inputs that earlier layers already changed. Each
            batch then runs through both models.

        Returns:
          The params after every selected layer was compressed.
        """
        groups: dict[int, dict[str, int]] = {}
        for path, (d, group) in self._probe(params, where).items():
            groups.setdefault(group, {})[path] = d
        dense = params if cross else None
        for dims in groups.values():
            stats = self._gather(params, dims, dense)
            for path in dims:
                params = compress_layer(params, {path: stats[path]})
        return params
