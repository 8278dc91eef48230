"""Recipes: checked when built, per-layer rules (first match wins, keep dense), what is recorded."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lscjax
from lscjax import LscError, Recipe, Rule
from lscjax._src.report import storage_report


@pytest.fixture(scope="module")
def params():
    rng = np.random.default_rng(0)
    return {
        "attn": {"kernel": rng.normal(size=(16, 16)).astype(np.float32)},
        "ffn": {"kernel": rng.normal(size=(16, 32)).astype(np.float32), "bias": np.ones(32)},
        "emb": {"embedding": rng.normal(size=(40, 16)).astype(np.float32)},
        "head": {"kernel": rng.normal(size=(32, 8)).astype(np.float32)},
    }


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"sparsity": 1.5}, r"recipe sparsity must be in \[0, 1\), got 1.5"),
        ({"sparsity": {"attn/kernel": -0.1}}, "sparsity of 'attn/kernel'"),
        ({"bits": 17}, r"bits must be an int in \[0, 16\]"),
        ({"bits": {"attn/kernel": 2.5}}, "bits of 'attn/kernel'"),
        ({"dense_bits": 0}, "dense_bits"),
        ({"prune": "random"}, "prune must be one of"),
        ({"format": "foo"}, "unknown format 'foo'"),
        ({"entropy": "zip"}, "entropy must be one of"),
        ({"format_options": {"blocks": 4}}, r"takes no option\(s\) \['blocks'\]"),
        ({"rules": [{"pattern": "("}]}, "not a regular expression"),
        ({"rules": [{"pattern": "a", "bit": 4}]}, r"unknown field\(s\) \['bit'\]"),
        ({"rules": [{"pattern": "a", "keep_dense": True, "bits": 4}]}, "keep_dense takes no"),
        ({"rules": [{"pattern": "a", "sparsity": 1.0}]}, r"rule 'a': sparsity must be in"),
        ({"rules": [{"pattern": "a", "format": "ri", "format_options": {"block": 4}}]}, "'ri'"),
        ({"rules": "attn"}, "sequence of Rule"),
    ],
)
def test_bad_recipes_are_refused_when_built(changes, message):
    with pytest.raises(LscError, match=message):
        lscjax.recipe("lsc", **changes)
    with pytest.raises(LscError, match=message):
        Recipe(**({"name": "mine", "sparsity": 0.5} | changes))


def test_rules_from_mappings_become_rules():
    rc = lscjax.recipe("lsc", rules=[{"pattern": "emb", "bits": 4}, Rule("ffn", keep_dense=True)])
    assert rc.rules == (Rule("emb", bits=4), Rule("ffn", keep_dense=True))
    assert rc.rule_for("x/emb/embedding") == Rule("emb", bits=4) and rc.rule_for("head") is None


class NeverTrained:
    """A loss that fails the test if training ever starts."""

    calls = 0

    def __call__(self, p, batch):
        NeverTrained.calls += 1
        raise AssertionError("training started")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"sparsity": {"attn/kernel": 0.5}}, r"missing \['ffn/kernel', 'head/kernel'\]"),
        ({"sparsity": {"attn/kernel": 0.5, "ffn/kernel": 0.5, "head/kernel": 0.5, "x": 0.1}}, "x"),
        ({"bits": {"attn/kernel": 4}}, r"no entry for \['ffn/kernel', 'head/kernel'\]"),
    ],
)
def test_partial_maps_refused_before_any_training(params, changes, message):
    retrain = lscjax.Retrain(NeverTrained(), [None], steps=5)
    for prune in ("gradual", "admm"):
        with pytest.raises(LscError, match=message):
            lscjax.compress(params, lscjax.recipe("lsc", prune=prune, **changes), retrain=retrain)
    assert NeverTrained.calls == 0


def test_rules_first_match_wins_and_keep_dense(params):
    rc = lscjax.recipe(
        "lsc",
        sparsity=0.5,
        bits=5,
        rules=[
            Rule(r"^emb/", sparsity=0.0, bits=3, format="csr"),
            Rule(r"attn/kernel$", sparsity=0.75, bits=2),
            Rule(r"kernel$", bits=0),  # ffn and head: float values, the recipe's sparsity
            Rule(r"^head/", keep_dense=True),  # never reached: head matched the rule above
            Rule(r"bias$", keep_dense=True),
        ],
    )
    where = lambda path, leaf: path.endswith(("kernel", "embedding", "bias"))  # noqa: E731
    model = lscjax.compress(params, rc, where=where)
    dense = lscjax.CompressedModel(model.encoded, model.raw).params()
    attn, emb = np.asarray(dense["attn"]["kernel"]), np.asarray(dense["emb"]["embedding"])
    assert np.count_nonzero(attn) == 64  # 25% of 256
    assert len(np.unique(attn[attn != 0])) <= 3  # 2 bits: 0 + 3 centroids
    assert np.count_nonzero(emb) == emb.size and len(np.unique(emb)) <= 8
    assert model.encoded["emb/embedding"].format == "csr"
    for name, size in (("ffn", 16 * 32), ("head", 32 * 8)):  # each layer at 50%: uniform
        kernel = np.asarray(dense[name]["kernel"])
        assert np.count_nonzero(kernel) == size // 2
        magnitude = np.abs(params[name]["kernel"])  # the larger half by magnitude, values exact
        top = magnitude >= np.sort(magnitude, axis=None)[size // 2]
        np.testing.assert_array_equal(kernel, np.where(top, params[name]["kernel"], 0))
        assert model.encoded[f"{name}/kernel"].quantized is None
    assert set(model.raw) == {"ffn/bias"} and model.meta["kept_dense"] == {"ffn/bias": "bias$"}
    np.testing.assert_array_equal(model.raw["ffn/bias"], params["ffn"]["bias"])
    layers = {r["path"]: r for r in storage_report(model)["layers"]}
    assert layers["emb/embedding"]["kept"] == emb.size  # code 0 is a centroid here, not a zero
    assert layers["attn/kernel"]["kept"] == 64
    skipped = storage_report(model)["skipped"]
    assert skipped == [
        {
            "path": "ffn/bias",
            "shape": [32],
            "dtype": "float64",
            "bytes": 256,
            "reason": "kept dense (rule 'bias$')",
        }
    ]


def test_keep_dense_everything_is_an_error(params):
    rc = lscjax.recipe("lsc", rules=[Rule("kernel", keep_dense=True)])
    with pytest.raises(LscError, match="keep every selected leaf dense"):
        lscjax.compress(params, rc)


def test_recorded_prune_is_what_ran(params):
    model = lscjax.compress(params, "lsc")  # "gradual" without retrain: one-shot magnitude
    assert model.meta["recipe"]["prune"] == "magnitude"
    assert model.meta["recipe"]["name"] == "lsc"
    small = {"d": {"kernel": jnp.asarray(params["attn"]["kernel"])}}

    def loss(p, batch):
        return jnp.sum(p["d"]["kernel"] ** 2)

    retrain = lscjax.Retrain(loss, [0], steps=2, optimizer=optax.sgd(1e-3))
    model = lscjax.compress(small, lscjax.recipe("lsc", sparsity=0.5), retrain=retrain)
    assert model.meta["recipe"]["prune"] == "gradual"
    rules = lscjax.recipe("lsc", rules=[Rule("d/", bits=3), Rule("e", keep_dense=True)])
    model = lscjax.compress(small, rules)
    assert model.meta["recipe"]["rules"] == [
        {"pattern": "d/", "bits": 3},
        {"pattern": "e", "keep_dense": True},
    ]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(quant="lloyd"), "quant"),
        (dict(quant="rdq"), "exactly one"),
        (dict(quant="rdq", target_bits=3.0, target_distortion=0.01), "exactly one"),
        (dict(target_bits=3.0), "quant='rdq'"),
        (dict(quant="rdq", target_bits=-1.0), "target_bits"),
        (dict(quant="rdq", target_distortion=float("inf")), "target_distortion"),
        (dict(quant="rdq", target_bits=3.0, prune="sparsegpt"), "calibrated"),
    ],
)
def test_rdq_recipe_checked_when_built(changes, message):
    with pytest.raises(lscjax.LscError, match=message):
        lscjax.recipe("lsc", **changes)
