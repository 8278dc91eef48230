"""`lscjax report --plot`: the legend covers no bar and no label of the figure."""

import pytest

from lscjax._src.report import plot_storage, storage_figure

pytest.importorskip("matplotlib")


def mlp_report(kib=(24.9, 4.2, 0.4)) -> dict:
    """A 3-layer MLP's report with `kib` KiB per layer (40% values, 60% index). The default is
    LeNet-300-100 under the `lsc` recipe (docs/results/pipeline.md): one tall bar, two short."""
    return {
        "layers": [
            {"path": f"Dense_{i}/kernel", "kept_pct": 5.0, "value_bits": k * 0.4 * 8192}
            | {"index_bits": k * 0.6 * 8192}
            for i, k in enumerate(kib)
        ],
        "total": {"weights_ratio": 63.2},
    }


def overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


# Heights where a legend inside the axes (matplotlib's "best" place) covers a bar or a label:
# even bars, and a tall middle one; then one layer and eight.
CASES = [(24.9, 4.2, 0.4), (17.3, 19.6, 19.2), (1.1, 14.5, 0.8), (3.0,), (5.0, 1.0) * 4]


@pytest.mark.parametrize("kib", CASES, ids=lambda kib: f"{len(kib)}-layers-{kib[0]}")
def test_legend_overlaps_no_bar_or_label(kib):
    report = mlp_report(kib)
    layers = len(kib)
    fig = storage_figure(report)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    legend = ax.get_legend().get_window_extent(renderer)
    bars = [patch.get_window_extent(renderer) for patch in ax.patches]
    labels = [text.get_window_extent(renderer) for text in ax.texts]  # the "% kept" labels
    ticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels() + ax.get_yticklabels()]
    assert len(bars) == 2 * layers and len(labels) == layers
    others = bars + labels + ticks + [ax.title.get_window_extent(renderer)]
    assert not any(overlaps(legend, box) for box in others)
    figure = fig.bbox
    for box in [legend, *labels]:  # nothing cut off at the figure's edges
        assert figure.x0 <= box.x0 and box.x1 <= figure.x1 and figure.y0 <= box.y0
        assert box.y1 <= figure.y1
    for label in labels:  # the labels stay inside the axes (the y range leaves room)
        assert label.y1 <= ax.get_window_extent(renderer).y1


def test_plot_writes_a_png(tmp_path):
    plot_storage(mlp_report(), tmp_path / "bits.png")
    assert (tmp_path / "bits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
