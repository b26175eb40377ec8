"""kg.channel_groups: one analysis of coupled channels, blockers, nested models."""

import json

import keras
import numpy as np
import pytest
from keras import layers as L

import keras_gap as kg
from keras_gap.structured import analyze

pytestmark = pytest.mark.core


def _groups(model):
    return {g.name: g for g in kg.channel_groups(model)}


def test_residual_add_couples_producers_and_bn_depthwise_follow():
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="c1")(i)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU()(x)
    y = L.Conv2D(8, 3, padding="same", name="c2")(x)
    y = L.BatchNormalization(name="bn2")(y)
    x = L.Add(name="add")([x, y])
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)
    x = L.Conv2D(4, 1, name="c3")(x)
    out = L.Dense(2, name="head")(L.Flatten()(x))
    groups = _groups(keras.Model(i, out))
    assert list(groups) == ["c1", "c3", "head"]
    g = groups["c1"]
    assert g.size == 8 and g.removable and g.blocked_by == ()
    assert g.producers == ("c1", "c2")
    assert g.followers == ("bn1", "bn2", "dw")
    assert set(g.consumers) == {"c2", "c3"}
    assert groups["c3"].consumers == ("head",)
    assert not groups["head"].removable
    assert groups["head"].blocked_by == (("head", "reaches a model output"),)


def test_index_maps_flatten_concatenate_depthwise():
    i = keras.Input((2, 2, 3))
    a = L.Conv2D(2, 1, name="a")(i)
    b = L.Conv2D(3, 1, name="b")(i)
    x = L.Concatenate(name="cat")([a, b])
    d = L.DepthwiseConv2D(1, depth_multiplier=2, name="dw")(x)
    f = L.Flatten()(d)
    head = L.Dense(4, name="hidden")
    model = keras.Model(i, L.Dense(1)(head(f)))
    graph = analyze(model)
    ga, gb = (g.index for g in graph.groups[:2])
    # depthwise: input channel c -> outputs 2c, 2c+1; a's channels first, then b's.
    np.testing.assert_array_equal(graph.positions(graph.by_name("dw"), ga),
                                  [0, 0, 1, 1, -1, -1, -1, -1, -1, -1])
    np.testing.assert_array_equal(graph.positions(graph.by_name("dw"), gb),
                                  [-1, -1, -1, -1, 0, 0, 1, 1, 2, 2])
    # Flatten of [2, 2, 10]: row (h*W + w)*C + c holds channel c.
    rows = graph.positions(head, gb, key="in")
    assert rows.shape == (40,)
    np.testing.assert_array_equal(rows[:10], [-1, -1, -1, -1, 0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(rows[10:20], rows[:10])


@pytest.mark.parametrize("blocker, reason", [
    (lambda: L.Lambda(lambda t: t * 2.0), "Lambda"),
    (lambda: L.LayerNormalization(), "LayerNormalization"),
    (lambda: L.Activation("softmax"), "mixes channels"),
    (lambda: L.Reshape((4, 2)), "channel axis"),
])
def test_layers_it_cannot_see_through_block_the_group(blocker, reason):
    i = keras.Input((8,))
    x = L.Dense(8, name="d1")(i)
    x = blocker()(x)
    x = L.Flatten()(x)
    out = L.Dense(2, name="d2")(L.Dense(4, name="d3")(x))
    groups = _groups(keras.Model(i, out))
    assert not groups["d1"].removable
    assert any(reason in r for _, r in groups["d1"].blocked_by), groups["d1"].blocked_by
    assert groups["d3"].removable  # downstream of the blocker is fine again


def test_add_with_the_model_input_is_not_removable():
    i = keras.Input((4, 4, 3))
    x = L.Add()([i, L.Conv2D(3, 1, name="c")(i)])
    groups = _groups(keras.Model(i, L.Dense(2, name="o")(L.Flatten()(x))))
    assert not groups["c"].removable
    assert any(r == "model input" for _, r in groups["c"].blocked_by)


def test_nested_models_and_wrappers_are_seen_through():
    inner = keras.Sequential([keras.Input((4, 4, 6)), L.BatchNormalization(name="bn"),
                              L.Conv2D(5, 1, name="inner_c")], name="inner")
    i = keras.Input((4, 4, 3))
    x = inner(L.Conv2D(6, 1, name="c")(i))
    model = keras.Model(i, L.Dense(2, name="o")(L.GlobalAveragePooling2D()(x)))
    groups = _groups(model)
    assert groups["c"].followers == ("bn",) and groups["c"].consumers == ("inner_c",)
    assert groups["inner_c"].removable
    pruned = kg.prune_low_magnitude(model, structure="channel")
    assert [g.to_dict() for g in kg.channel_groups(pruned)] == [
        g.to_dict() for g in groups.values()]


def test_group_prints_and_serializes():
    model = keras.Sequential([keras.Input((5,)), L.Dense(4, name="h"), L.Dense(2, name="o")])
    g = kg.channel_groups(model)[0]
    text = str(g)
    assert "'h'" in text and "4 channels" in text and "removable" in text
    data = json.loads(json.dumps(g.to_dict()))
    assert data["producers"] == ["h"] and data["consumers"] == ["o"] and data["size"] == 4
    assert "reaches a model output" in str(kg.channel_groups(model)[1])


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="not built"):
        kg.channel_groups(keras.Sequential([L.Dense(3)]))
    with pytest.raises(ValueError, match="Sequential or Functional"):
        kg.channel_groups(L.Dense(3))


def test_sparsity_report_lists_channel_groups():
    model = keras.Sequential([keras.Input((5,)), L.Dense(4, name="h"), L.Dense(2, name="o")])
    report = kg.sparsity_report(model, channel_groups=True)
    text = str(report)
    assert "channel groups: 2 (1 removable)" in text and "group 0 'h'" in text
    assert [g["name"] for g in report.to_dict()["channel_groups"]] == ["h", "o"]
    assert "channel groups" not in str(kg.sparsity_report(model))


def test_keras_op_that_broadcasts_over_channels_blocks():
    i = keras.Input((4, 4, 3))
    x = L.Conv2D(6, 1, name="c")(i)
    x = x * keras.ops.mean(x, axis=-1, keepdims=True)  # mixes channels
    groups = _groups(keras.Model(i, L.Dense(2, name="o")(L.Flatten()(x))))
    assert not groups["c"].removable


def test_only_trivial_einsum_dense_is_a_producer():
    i = keras.Input((5, 6))
    x = L.EinsumDense("abc,cd->abd", output_shape=(5, 8), name="trivial")(i)
    x = L.EinsumDense("abc,cde->abde", output_shape=(5, 2, 4), name="heads")(x)
    groups = _groups(keras.Model(i, L.Dense(2, name="o")(L.Flatten()(x))))
    assert "trivial" in groups and "heads" not in groups
    assert not groups["trivial"].removable
    assert any("EinsumDense" in r for _, r in groups["trivial"].blocked_by)
