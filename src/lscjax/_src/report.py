"""Plain-text tables for the command line and the examples."""

import numpy as np

from lscjax._src.sparse.leaf import format_serving_table
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


def storage_report(model, *, file_bytes: int | None = None) -> dict:
    """Per-layer storage of a CompressedModel as JSON-ready data.

    Returns:
      {"layers": [{path, shape, weights, kept, kept_pct, value_bits, index_bits, total_bits,
      value_bits_per_nz, index_bits_per_nz, ratio}], "total": {...}} where ratios are dense
      float32 bits over stored bits; "total" adds the raw (lossless) leaves and, when
      `file_bytes` is given, the whole file against all params as dense float32; "skipped":
      [{path, shape, dtype, bytes, reason}] for every leaf stored as it is ("not selected" or
      "kept dense (rule ...)"); "layout": the file's layout record of a converted PyTorch
      checkpoint ({path: {source, transform, source_shape}}) or None. The command line adds
      "serving": the `lscjax.flax.serving_table` rows of the file as loaded for serving.
    """
    layers = []
    for s in model.layers():
        nz = max(s.kept, 1)
        layers.append(
            {
                "path": s.path,
                "shape": list(s.shape),
                "weights": s.size,
                "kept": s.kept,
                "kept_pct": 100 * s.kept / max(s.size, 1),
                "value_bits": s.value_bits,
                "index_bits": s.index_bits,
                "total_bits": s.total_bits,
                "value_bits_per_nz": s.value_bits / nz,
                "index_bits_per_nz": s.index_bits / nz,
                "ratio": s.ratio,
            }
        )
    weights = sum(r["weights"] for r in layers)
    kept = sum(r["kept"] for r in layers)
    bits = sum(r["total_bits"] for r in layers)
    total = {
        "weights": weights,
        "kept": kept,
        "kept_pct": 100 * kept / max(weights, 1),
        "value_bits": sum(r["value_bits"] for r in layers),
        "index_bits": sum(r["index_bits"] for r in layers),
        "total_bits": bits,
        "weights_ratio": 32 * weights / max(bits, 1),
        "raw_bits": model.raw_bits,
    }
    if file_bytes is not None:
        total["file_bytes"] = file_bytes
        total["file_ratio"] = model.dense_bits / (8 * file_bytes)
    kept_dense = model.meta.get("kept_dense", {})
    skipped = [
        {
            "path": path,
            "shape": list(np.shape(array)),
            "dtype": str(np.asarray(array).dtype),
            "bytes": int(np.asarray(array).nbytes),
            "reason": (
                f"kept dense (rule {kept_dense[path]!r})" if path in kept_dense else "not selected"
            ),
        }
        for path, array in model.raw.items()
    ]
    return {
        "layers": layers,
        "total": total,
        "skipped": skipped,
        "layout": model.meta.get("layout"),
    }


def format_storage_report(report: dict) -> str:
    """The per-layer table of `storage_report` as text, with the totals below it."""
    rows = [
        [
            r["path"],
            "x".join(map(str, r["shape"])),
            r["weights"],
            f"{r['kept_pct']:.2f}%",
            f"{r['value_bits_per_nz']:.2f}",
            f"{r['index_bits_per_nz']:.2f}",
            r["total_bits"] // 8,
            f"{r['ratio']:.1f}x",
        ]
        for r in report["layers"]
    ]
    t = report["total"]
    rows.append(
        [
            "total",
            "",
            t["weights"],
            f"{t['kept_pct']:.2f}%",
            "",
            "",
            t["total_bits"] // 8,
            f"{t['weights_ratio']:.1f}x",
        ]
    )
    header = ["layer", "shape", "weights", "kept", "value b/nz", "index b/nz", "bytes", "ratio"]
    lines = [format_table(header, rows)]
    if "file_bytes" in t:
        lines.append(
            f"file: {t['file_bytes']} bytes, {t['file_ratio']:.1f}x smaller than all params as "
            f"float32 (weights alone: {t['weights_ratio']:.1f}x; lossless leaves {t['raw_bits'] // 8} bytes)"
        )
    if report.get("skipped"):
        rows = [
            [r["path"], "x".join(map(str, r["shape"])), r["dtype"], r["bytes"], r["reason"]]
            for r in report["skipped"]
        ]
        lines += ["", "stored as they are (not compressed):"]
        lines.append(format_table(["leaf", "shape", "dtype", "bytes", "why"], rows))
    if report.get("layout"):
        rows = [
            [path, e["source"], "x".join(map(str, e["source_shape"])), e["transform"]]
            for path, e in report["layout"].items()
        ]
        lines += ["", "layout: converted from a PyTorch checkpoint (Flax leaf <- tensor):"]
        lines.append(format_table(["leaf", "source", "source shape", "transform"], rows))
    if report.get("serving"):
        lines += ["", "served by lscjax.load(file, layout='block_sparse') as:"]
        lines.append(format_serving_table(report["serving"]))
    return "\n".join(lines)


def plot_storage(report: dict, out) -> None:
    """Per-layer stacked bars of value and index bits, with each layer's density, to a PNG.

    Needs matplotlib (pip install 'lscjax[plot]').
    """
    fig = storage_figure(report)
    fig.savefig(out, dpi=120)
    fig.clear()


def storage_figure(report: dict):
    """The matplotlib Figure of `plot_storage`: the legend sits right of the axes, so it covers
    no bar and no label, and the y range leaves room for the "% kept" labels above the bars."""
    try:
        import matplotlib
    except ImportError:
        from lscjax._src.errors import LscError

        raise LscError("--plot needs matplotlib: pip install 'lscjax[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = report["layers"]
    names = [r["path"].rsplit("/", 1)[0] for r in layers]
    value_kb = np.array([r["value_bits"] for r in layers]) / 8192
    index_kb = np.array([r["index_bits"] for r in layers]) / 8192
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(layers)) + 2, 3.5), layout="constrained")
    ax.bar(names, value_kb, label="values")
    ax.bar(names, index_kb, bottom=value_kb, label="index (all metadata)")
    for i, r in enumerate(layers):
        ax.annotate(
            f"{r['kept_pct']:.1f}% kept",
            (i, value_kb[i] + index_kb[i]),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylim(0, 1.15 * float(np.max(value_kb + index_kb, initial=0.0)) or 1.0)
    ax.set_ylabel("KiB")
    ax.set_title(f"{report['total']['weights_ratio']:.1f}x smaller weights")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8)
    return fig
