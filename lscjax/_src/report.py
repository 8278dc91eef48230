"""Plain-text tables for the command line and the examples."""

import numpy as np

from lscjax._src.tree import Where, selected_leaves


def format_table(header: list[str], rows: list[list]) -> str:
    """Right-aligned columns (the first left-aligned), one header line and a rule."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row):
        first = row[0].ljust(widths[0])
        return "  ".join([first] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)])

    return "\n".join([line(cells[0]), "-" * len(line(cells[0]))] + [line(r) for r in cells[1:]])


def sparsity_table(params, *, where: Where = None) -> str:
    """Per-layer table of the selected leaves: shape, weights, kept, kept %, plus a total line."""
    rows, total, kept_total = [], 0, 0
    for path, leaf in selected_leaves(params, where):
        kept = int(np.count_nonzero(np.asarray(leaf)))
        rows.append(
            [
                path,
                "x".join(map(str, np.shape(leaf))),
                leaf.size,
                kept,
                f"{100 * kept / leaf.size:.2f}%",
            ]
        )
        total, kept_total = total + leaf.size, kept_total + kept
    rows.append(["total", "", total, kept_total, f"{100 * kept_total / max(total, 1):.2f}%"])
    return format_table(["layer", "shape", "weights", "kept", "kept %"], rows)
