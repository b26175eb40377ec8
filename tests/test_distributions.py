"""Per-layer sparsity distributions (uniform / ERK / ER), sparse starts, global top-k."""

import math

import numpy as np
import pytest

import keras
import keras_gap as kg
from keras_gap import distributions as dist
from keras_gap import masks as mask_lib
from keras_gap.wrapper import collect_wrappers

pytestmark = pytest.mark.core


def _kept(shapes, sparsities):
    return sum(mask_lib.num_to_keep(math.prod(shapes[k]), sparsities[k]) for k in shapes)


def test_erk_hand_computed_two_layers():
    # raw ERK: A (10,20): 30/200 = 0.15; B (20,5): 25/100 = 0.25.
    # keep 150 of 300: eps = 150 / (200*0.15 + 100*0.25) = 150/55.
    # A keeps 81.8 -> 81, B 68.2 -> 68; one short -> largest remainder (A) -> 82.
    shapes = {"A": (10, 20), "B": (20, 5)}
    s = dist.layer_sparsities(shapes, 0.5, "erk")
    assert mask_lib.num_to_keep(200, s["A"]) == 82
    assert mask_lib.num_to_keep(100, s["B"]) == 68
    assert s["A"] == pytest.approx(1 - 82 / 200)
    assert s["B"] == pytest.approx(1 - 68 / 100)


def test_erk_layer_over_density_one_is_made_dense_and_rest_resolved():
    # B (4,4): raw 0.5 would get density 5008/208 * 0.5 > 1 -> dense;
    # re-solve: A keeps 5008 - 16 = 4992 of 10000.
    shapes = {"A": (100, 100), "B": (4, 4)}
    s = dist.layer_sparsities(shapes, 0.5, "erk")
    assert s["B"] == 0.0
    assert mask_lib.num_to_keep(10000, s["A"]) == 4992
    assert _kept(shapes, s) == mask_lib.num_to_keep(10016, 0.5)


def test_er_ignores_spatial_dims_erk_does_not():
    d = dist.erk_densities({"c": (3, 3, 8, 16), "d": (64, 10)}, 400, "er")
    k = dist.erk_densities({"c": (3, 3, 8, 16), "d": (64, 10)}, 400, "erk")
    # no layer saturates at this budget, so density ratios are the raw ratios:
    # ER (24/128)/(74/640), ERK (30/1152)/(74/640)
    assert max(d.values()) < 1 and max(k.values()) < 1
    assert d["c"] / d["d"] == pytest.approx((24 / 128) / (74 / 640))
    assert k["c"] / k["d"] == pytest.approx((30 / 1152) / (74 / 640))


@pytest.mark.parametrize("distribution", ["uniform", "erk", "er"])
@pytest.mark.parametrize("target", [0.3, 0.9, 0.95, 0.98])
def test_overall_count_matches_target(distribution, target):
    rng = np.random.default_rng(int(target * 100))
    shapes = {}
    for i in range(6):
        if i % 2:
            shapes[f"conv{i}"] = (3, 3, int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        else:
            shapes[f"dense{i}"] = (int(rng.integers(5, 300)), int(rng.integers(5, 300)))
    shapes["conv1"] = (3, 3, 1, 4)  # a small first conv, kept dense below
    for kept_dense in ((), ("conv1",)):
        s = dist.layer_sparsities(shapes, target, distribution, kept_dense=kept_dense)
        total = sum(math.prod(v) for v in shapes.values())
        want = mask_lib.num_to_keep(total, target)
        got = _kept(shapes, s)
        assert abs(got - want) <= len(shapes)
        if distribution != "uniform" or kept_dense:
            assert got == want  # rounded by largest remainder: exact
        for k in kept_dense:
            assert s[k] == 0.0
        assert all(0.0 <= v < 1.0 for v in s.values())


def test_uniform_without_kept_dense_is_the_target_everywhere():
    s = dist.layer_sparsities({"a": (10, 10), "b": (7, 3)}, 0.8)
    assert s == {"a": 0.8, "b": 0.8}


def test_erk_power_scale_zero_is_uniform_split():
    shapes = {"a": (10, 100), "b": (50, 20)}
    s = dist.layer_sparsities(shapes, 0.6, "erk", erk_power_scale=0.0)
    assert s["a"] == pytest.approx(0.6) and s["b"] == pytest.approx(0.6)


def test_target_impossible_with_kept_dense_is_an_error():
    shapes = {"first": (3, 3, 1, 64), "d": (64, 10)}
    with pytest.raises(ValueError, match="cannot be met.*kept-dense"):
        dist.layer_sparsities(shapes, 0.99, "erk", kept_dense=["first"])


def test_bad_inputs():
    shapes = {"a": (10, 10)}
    with pytest.raises(ValueError, match="Unknown sparsity distribution 'erdos'"):
        dist.layer_sparsities(shapes, 0.5, "erdos")
    with pytest.raises(ValueError, match="unknown weights"):
        dist.layer_sparsities(shapes, 0.5, kept_dense=["nope"])
    with pytest.raises(ValueError, match="target_sparsity"):
        dist.layer_sparsities(shapes, 1.0)
    with pytest.raises(ValueError, match="non-empty dict"):
        dist.layer_sparsities({}, 0.5)
    with pytest.raises(ValueError, match="unknown weights"):
        dist.layer_sparsities(shapes, 0.5, {"a": 0.5, "zzz": 0.1})
    with pytest.raises(ValueError, match=r"distribution\['a'\]"):
        dist.layer_sparsities(shapes, 0.5, {"a": 1.5})
    with pytest.raises(ValueError, match="no sparsity for"):
        dist.layer_sparsities({"a": (2, 2), "b": (2, 2)}, 0.5, {"a": 0.5})
    assert dist.validate_distribution("ERK") == "erk"
    with pytest.raises(ValueError, match="must be one of"):
        dist.validate_distribution(3)


def test_dict_distribution_passes_through():
    s = dist.layer_sparsities({"a": (4, 4), "b": (4, 4)}, 0.0, {"a": 0.25, "b": 0.5})
    assert s == {"a": 0.25, "b": 0.5}


def test_random_masks_have_exact_counts():
    shapes = {"a": (30, 40), "b": (3, 3, 4, 8)}
    s = dist.layer_sparsities(shapes, 0.5, "erk")
    masks = dist.random_masks(shapes, 0.5, "erk", seed=3)
    for k, m in masks.items():
        m = np.asarray(keras.ops.convert_to_numpy(m))
        assert m.shape == shapes[k]
        assert int(m.sum()) == mask_lib.num_to_keep(m.size, s[k])


def test_global_topk_masks_exact_and_joint():
    a = keras.ops.convert_to_tensor(np.array([[0.1, 0.2], [0.3, 0.4]], "float32"))
    b = keras.ops.convert_to_tensor(np.array([5.0, 6.0, 0.05, 7.0], "float32"))
    ma, mb = mask_lib.global_topk_masks([a, b], 0.5)
    ma, mb = keras.ops.convert_to_numpy(ma), keras.ops.convert_to_numpy(mb)
    np.testing.assert_array_equal(ma, [[0, 0], [0, 1]])
    np.testing.assert_array_equal(mb, [1, 1, 0, 1])
    ties = keras.ops.ones((7,))
    (m,) = mask_lib.global_topk_masks([ties], 0.5)
    assert int(keras.ops.convert_to_numpy(m).sum()) == mask_lib.num_to_keep(7, 0.5)


def _cnn():
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, padding="same", name="first"),
        keras.layers.Conv2D(8, 3, padding="same", name="conv"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, name="head"),
    ])


def test_prune_low_magnitude_erk_random_start():
    pruned = kg.prune_low_magnitude(
        _cnn(), pruning_schedule=kg.ConstantSparsity(0.5, 0),
        pruning_policy=lambda layer: layer.name != "first",
        initial_mask="erk_random", initial_sparsity=0.5, seed=0)
    wrappers = collect_wrappers(pruned)
    assert [w.layer.name for w in wrappers] == ["conv", "head"]
    shapes = {v.path: tuple(v.shape) for w in wrappers for v in w.pruned_weights}
    want = dist.layer_sparsities(shapes, 0.5, "erk")
    for w in wrappers:
        for v, m in zip(w.pruned_weights, w.masks):
            m = keras.ops.convert_to_numpy(m)
            assert int(m.sum()) == mask_lib.num_to_keep(m.size, want[v.path])
            assert np.all(keras.ops.convert_to_numpy(v)[m == 0] == 0)
    # ERK: the conv (smaller raw density) is sparser than the dense head here
    assert want[wrappers[0].pruned_weights[0].path] > want[wrappers[1].pruned_weights[0].path]


def test_sparse_start_options_are_checked():
    with pytest.raises(ValueError, match="needs `initial_sparsity`"):
        kg.prune_low_magnitude(_cnn(), initial_mask="random")
    with pytest.raises(ValueError, match="initial_mask"):
        kg.prune_low_magnitude(_cnn(), initial_mask="sparse", initial_sparsity=0.5)
    with pytest.raises(ValueError, match="sparse start"):
        kg.prune_low_magnitude(_cnn(), initial_sparsity=0.5)
    with pytest.raises(ValueError, match="scope"):
        kg.prune_low_magnitude(_cnn(), scope="model")
    with pytest.raises(ValueError, match="Unknown sparsity distribution"):
        kg.prune_low_magnitude(_cnn(), distribution="erdos")
