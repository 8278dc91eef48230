"""Leaf paths and where= selection."""

import jax.numpy as jnp
import pytest

from lscjax import LscError
from lscjax._src.tree import map_selected, selection


@pytest.fixture
def params():
    return {
        "Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)},
        "Conv_0": {"kernel": jnp.ones((2, 2, 1, 3)), "bias": jnp.ones(3)},
        "embed": {"kernel": jnp.ones(5)},  # a 1-D 'kernel': not selected by default
    }


def test_default_selects_kernels_with_ndim_ge_2(params):
    assert selection(params) == {
        "Conv_0/bias": False,
        "Conv_0/kernel": True,
        "Dense_0/bias": False,
        "Dense_0/kernel": True,
        "embed/kernel": False,
    }


def test_callable_where_gets_path_and_leaf(params):
    chosen = selection(params, lambda path, leaf: path.startswith("Dense") and leaf.ndim == 1)
    assert [p for p, s in chosen.items() if s] == ["Dense_0/bias"]


def test_pytree_where_with_none_as_false(params):
    where = {
        "Dense_0": {"kernel": False, "bias": True},
        "Conv_0": {"kernel": True, "bias": None},
        "embed": {"kernel": False},
    }
    chosen = selection(params, where)
    assert [p for p, s in chosen.items() if s] == ["Conv_0/kernel", "Dense_0/bias"]


def test_pytree_where_mismatch_names_the_missing_leaf(params):
    where = {"Dense_0": {"kernel": True, "bias": False}, "Conv_0": {"kernel": True, "bias": False}}
    with pytest.raises(LscError, match="embed/kernel"):
        selection(params, where)


def test_pytree_where_non_bool_leaf_names_path(params):
    where = {
        "Dense_0": {"kernel": 1.0, "bias": False},
        "Conv_0": {"kernel": True, "bias": False},
        "embed": {"kernel": False},
    }
    with pytest.raises(LscError, match="Dense_0/kernel"):
        selection(params, where)


def test_map_selected_fills_none_or_keeps(params):
    doubled = map_selected(lambda _, w: 2 * w, params, fill="keep")
    assert float(doubled["Dense_0"]["kernel"][0, 0]) == 2.0
    assert float(doubled["Dense_0"]["bias"][0]) == 1.0
    marked = map_selected(lambda _, w: w, params)
    assert marked["Dense_0"]["bias"] is None and marked["Conv_0"]["kernel"] is not None


def test_list_and_attribute_paths():
    tree = [{"kernel": jnp.ones((2, 2))}, {"kernel": jnp.ones((2, 2))}]
    assert list(selection(tree)) == ["0/kernel", "1/kernel"]


def torch_named():
    return {"fc": {"weight": jnp.ones((4, 3)), "bias": jnp.ones(4)}}


@pytest.mark.parametrize(
    "where",
    [None, lambda path, _: path.endswith("kernel"), {"fc": {"weight": False, "bias": None}}],
    ids=["default", "callable", "pytree"],
)
def test_empty_selection_lists_leaves_and_how_to_select(where):
    with pytest.raises(LscError) as err:
        selection(torch_named(), where)
    text = str(err.value)
    assert "selects none of the 2 leaves" in text
    assert "'fc/weight' [4, 3]" in text and "'fc/bias' [4]" in text
    assert "where=" in text and "--where REGEX" in text
    assert ("default selection" in text) == (where is None)


def test_empty_selection_through_a_transform_and_the_allowed_cases():
    import lscjax

    with pytest.raises(LscError, match="selects none"):
        lscjax.prune.magnitude(torch_named(), 0.5)
    with pytest.raises(LscError, match="selects none"):
        lscjax.quant.kmeans(torch_named(), 4)
    many = {f"layer{i}": {"weight": jnp.ones(2)} for i in range(7)}
    with pytest.raises(LscError, match=r"'layer4/weight' \[2\] and 2 more\."):
        selection(many)
    assert selection({}) == {}  # a tree without leaves selects nothing, without error
    assert not any(selection(torch_named(), allow_empty=True).values())
    assert map_selected(lambda _, w: w, torch_named(), allow_empty=True)["fc"]["bias"] is None
