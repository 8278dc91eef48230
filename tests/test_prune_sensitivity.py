"""Sensitivity analysis: each layer pruned alone, against a hand-computed metric."""

import jax.numpy as jnp
import numpy as np
import pytest

from lscjax import prune


def params():
    rng = np.random.default_rng(0)
    return {
        "Dense_0": {
            "kernel": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32),
            "bias": jnp.ones(5),
        },
        "Dense_1": {
            "kernel": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32),
            "bias": jnp.ones(4),
        },
    }


def l1_total(p) -> float:
    return float(sum(jnp.abs(v["kernel"]).sum() for v in p.values()))


@pytest.mark.parametrize("sparsities", [[0.5], [0.0, 0.25, 0.9]])
def test_each_layer_alone_matches_hand_computation(sparsities):
    p = params()
    table = prune.sensitivity(l1_total, p, sparsities)
    assert list(table) == ["Dense_0/kernel", "Dense_1/kernel"]
    total = l1_total(p)
    for path, row in table.items():
        mags = np.sort(np.abs(np.asarray(p[path.split("/")[0]]["kernel"])).ravel())
        for s in sparsities:
            removed = mags[: mags.size - round(mags.size * (1 - s))].sum()
            assert row[s] == pytest.approx(total - removed, rel=1e-5)


def test_table_markdown():
    text = prune.sensitivity_table(
        {"a/kernel": {0.5: 0.91234, 0.9: 0.5}, "b/kernel": {0.5: 1.0, 0.9: 0.25}}
    )
    lines = text.splitlines()
    assert lines[0] == "| layer | 50% | 90% |"
    assert lines[2] == "| a/kernel | 0.9123 | 0.5000 |"
    assert len(lines) == 4
