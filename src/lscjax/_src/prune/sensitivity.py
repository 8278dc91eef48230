"""Sensitivity analysis (Distiller-style): a metric against sparsity, one layer pruned at a time."""

from collections.abc import Callable, Sequence

from lscjax._src.prune.magnitude import apply, magnitude
from lscjax._src.tree import Where, selected_leaves


def sensitivity(
    evaluate: Callable[[object], float],
    params,
    sparsities: Sequence[float],
    *,
    prune: Callable = magnitude,
    where: Where = None,
) -> dict[str, dict[float, float]]:
    """Evaluate the model with each selected layer alone pruned at each sparsity.

    Args:
      evaluate: ``params -> float`` (e.g. test accuracy).
      params: the trained pytree.
      sparsities: the sparsities to try, each in [0, 1).
      prune: ``prune(params, sparsity, where=...) -> masks`` (default magnitude pruning).
      where: the layers to analyse (default: 'kernel' leaves with ndim >= 2).

    Returns:
      {path: {sparsity: evaluate(params with only that layer pruned)}}.
    """
    table = {}
    for path, _ in selected_leaves(params, where):
        only = lambda p, _, target=path: p == target  # noqa: E731
        table[path] = {
            float(s): float(evaluate(apply(params, prune(params, s, where=only))))
            for s in sparsities
        }
    return table


def sensitivity_table(table: dict[str, dict[float, float]], *, digits: int = 4) -> str:
    """A `sensitivity` result as a markdown table: one row per layer, one column per sparsity."""
    sparsities = sorted({s for row in table.values() for s in row})
    head = "| layer | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |"
    rule = "|---|" + "---|" * len(sparsities)
    rows = [
        f"| {path} | " + " | ".join(f"{row[s]:.{digits}f}" for s in sparsities) + " |"
        for path, row in table.items()
    ]
    return "\n".join([head, rule, *rows])
