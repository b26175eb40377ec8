"""kg.materialize: channels removed for real, outputs unchanged, per layer type."""

import os
import warnings

import keras
import numpy as np
import pytest
from keras import layers as L

import keras_gap as kg
from structured_testlib import max_diff, randomize_bn, zero_channels

pytestmark = pytest.mark.core
TOL = 1e-5


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=(4,) + shape).astype("float32")


def _check(model, shape, expect_removed=None, **zero):
    randomize_bn(model)
    zeroed = zero_channels(model, **zero)
    small, report = kg.materialize(model, return_report=True)
    diff = max_diff(model, small, _x(shape))
    assert diff <= TOL, f"outputs changed by {diff}\n{report}"
    if expect_removed is None:
        expect_removed = sum(zeroed.values())
    assert report.channels_removed == expect_removed, str(report)
    if expect_removed:
        assert report.params_after < report.params_before
        assert small.count_params() == report.params_after
    return small, report


def _seq(shape, *layers):
    return keras.Sequential([keras.Input(shape)] + list(layers))


def _functional(shape, body):
    i = keras.Input(shape)
    return keras.Model(i, body(i))


# One model per layer type in the list. Biases stay non-zero: the
# constant a zeroed channel carries is folded into the consumer's bias.
CASES = {
    "dense": ((6,), lambda: _seq((6,), L.Dense(8, activation="relu"), L.Dense(3))),
    "dense_sigmoid_f0_nonzero": ((6,), lambda: _seq(
        (6,), L.Dense(8, activation="sigmoid"), L.Dense(3))),
    "conv1d_valid": ((10, 3), lambda: _seq((10, 3), L.Conv1D(8, 3), L.ReLU(), L.Conv1D(4, 3),
                                           L.GlobalAveragePooling1D(), L.Dense(2))),
    "conv2d_bn_pool_flatten_dense": ((8, 8, 3), lambda: _seq(
        (8, 8, 3), L.Conv2D(8, 3), L.BatchNormalization(), L.Activation("relu"),
        L.MaxPooling2D(), L.Dropout(0.5), L.Conv2D(6, 1), L.AveragePooling2D(2),
        L.Flatten(), L.Dense(5), L.Dense(2))),
    "conv3d": ((5, 5, 5, 2), lambda: _seq((5, 5, 5, 2), L.Conv3D(6, 2), L.ELU(),
                                          L.Conv3D(4, 2), L.GlobalMaxPooling3D(), L.Dense(2))),
    "depthwise_separable": ((8, 8, 3), lambda: _seq(
        (8, 8, 3), L.Conv2D(8, 1), L.DepthwiseConv2D(3, depth_multiplier=2),
        L.BatchNormalization(), L.ReLU(), L.SeparableConv2D(6, 3), L.LeakyReLU(),
        L.SeparableConv2D(4, 1), L.GlobalAveragePooling2D(), L.Dense(2))),
    "einsum_dense": ((5, 6), lambda: _seq(
        (5, 6), L.EinsumDense("abc,cd->abd", output_shape=(5, 8), bias_axes="d"),
        L.Activation("tanh"), L.EinsumDense("abc,cd->abd", output_shape=(5, 6)),
        L.Flatten(), L.Dense(2))),
    "conv_transpose": ((6, 6, 3), lambda: _seq(
        (6, 6, 3), L.Conv2D(6, 1), L.Conv2DTranspose(6, 3, strides=2), L.ReLU(),
        L.Conv2D(4, 1), L.Flatten(), L.Dense(2))),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_materialize_per_layer_type_keeps_outputs(name):
    shape, build = CASES[name]
    model = build()
    # Conv2DTranspose consumes a constant channel at its borders: zero biases.
    zero_bias = name == "conv_transpose"
    small, report = _check(model, shape, zero_bias=zero_bias)
    assert report.channels_removed > 0


def _residual(i):
    x = L.Conv2D(8, 3, padding="same")(i)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    y = L.Conv2D(8, 3, padding="same")(x)
    y = L.BatchNormalization()(y)
    x = L.Add()([x, y])
    s = L.Conv2D(8, 1)(L.GlobalAveragePooling2D(keepdims=True)(x))
    x = L.Multiply()([x, L.Activation("sigmoid")(s)])
    z = L.Conv2D(4, 3, padding="same")(x)
    x = L.Concatenate()([x, z])
    x = L.ZeroPadding2D()(x)
    x = L.Conv2D(6, 3)(x)
    x = L.Flatten()(x)
    return L.Dense(3)(L.Dense(8)(x))


def test_residual_add_multiply_concat_with_structured_zeros():
    """Channel-structured zeros (bias, BN scale/offset too): every zero channel goes."""
    model = _functional((8, 8, 3), _residual)
    small, report = _check(model, (8, 8, 3), zero_bias=True, zero_bn=True)
    assert "add" not in [g for g, _, _ in report.kept]


def test_same_padding_with_a_nonzero_constant_keeps_the_channel_and_says_why():
    model = _seq((8, 8, 3), L.Conv2D(8, 1), L.Conv2D(4, 3, padding="same"),
                 L.GlobalAveragePooling2D(), L.Dense(2))
    # conv2d's zeroed channels carry their bias into a 'same' 3x3 conv: kept;
    # conv2d_1's zeroed channels only meet pooling and a Dense: removed.
    small, report = _check(model, (8, 8, 3), expect_removed=2)
    assert report.kept and report.kept[0][1] == 4 and "padding 'same'" in report.kept[0][2]


def test_nested_functional_and_sequential():
    inner_seq = keras.Sequential([keras.Input((8, 8, 8)), L.BatchNormalization(), L.ReLU(),
                                  L.Conv2D(6, 1)], name="inner_seq")
    j = keras.Input((8, 8, 6))
    inner_fn = keras.Model(j, L.Conv2D(5, 1)(L.ReLU()(j)), name="inner_fn")
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 1)(i)
    x = inner_fn(inner_seq(x))
    model = keras.Model(i, L.Dense(2)(L.GlobalAveragePooling2D()(x)))
    small, report = _check(model, (8, 8, 3))
    assert report.channels_removed == 4 + 3 + 2
    nested = [l for l in small.layers if isinstance(l, keras.Model)]
    assert [l.name for l in nested] == ["inner_seq", "inner_fn"]
    assert nested[0].inputs[0].shape[-1] == 4      # conv2d lost 4 of 8 channels
    assert nested[1].inputs[0].shape[-1] == 3      # inner_seq's conv lost 3 of 6


def test_blocked_groups_are_kept_and_reported():
    i = keras.Input((6,))
    x = L.Dense(8)(i)
    x = L.LayerNormalization()(x)  # mixes channels: blocks dense's group
    model = keras.Model(i, L.Dense(2)(x))
    zero_channels(model)  # nothing removable: no zeroing
    model.layers[1].kernel.assign(np.zeros((6, 8), "float32"))
    small, report = kg.materialize(model, return_report=True)
    assert report.channels_removed == 0
    assert any("LayerNormalization" in r for _, r in report.blocked)
    assert max_diff(model, small, _x((6,))) <= TOL


def test_materialize_strips_wrappers_with_a_warning_and_refuses_bad_input():
    model = _seq((6,), L.Dense(8), L.Dense(2))
    pruned = kg.prune_low_magnitude(model, structure="channel")
    with pytest.warns(UserWarning, match="PruneLowMagnitude"):
        small = kg.materialize(pruned)
    from keras_gap.wrapper import collect_wrappers
    assert not collect_wrappers(small)
    with pytest.raises(ValueError, match="not built"):
        kg.materialize(keras.Sequential([L.Dense(3)]))
    with pytest.raises(ValueError, match="Sequential or Functional"):
        kg.materialize(L.Dense(3))


def test_materialized_model_saves_and_loads_without_custom_objects(tmp_path):
    model = _functional((8, 8, 3), _residual)
    randomize_bn(model)
    zero_channels(model, zero_bias=True, zero_bn=True)
    small = kg.materialize(model)
    path = os.path.join(tmp_path, "small.keras")
    small.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects
    assert max_diff(small, loaded, _x((8, 8, 3))) == 0.0
    assert loaded.count_params() < model.count_params()
    assert "keras_gap" not in open(path, "rb").read().decode("latin-1")


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TFLite export needs TF")
def test_materialized_model_exports_to_tflite_and_saved_model(tmp_path):
    pytest.importorskip("tensorflow")
    model = _functional((8, 8, 3), _residual)
    zero_channels(model, zero_bias=True, zero_bn=True)
    small = kg.materialize(model)
    tfl = os.path.join(tmp_path, "small.tflite")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kg.export.to_tflite(small, tfl)
        kg.export.to_saved_model(small, os.path.join(tmp_path, "sm"))
    from keras_gap.export import runtime
    x = _x((8, 8, 3))[:1]
    y = np.asarray(runtime.run_tflite(tfl, x).outputs)
    np.testing.assert_allclose(y.reshape(1, -1), keras.ops.convert_to_numpy(small(x)),
                               atol=1e-4)


def test_keras_ops_on_symbolic_tensors_are_seen_through():
    """MobileNetV3's hard-swish: x * relu6(x + 3) / 6 written with keras.ops."""
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 1)(i)
    x = L.Multiply()([x, L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)])
    x = L.Conv2D(4, 1)(x)
    model = keras.Model(i, L.Dense(2)(L.GlobalAveragePooling2D()(x)))
    groups = {g.name: g for g in kg.channel_groups(model)}
    assert groups["conv2d"].removable, groups["conv2d"].blocked_by
    _check(model, (8, 8, 3))  # f(bias) is folded through the ops


def test_shared_consumer_keeps_channels_whose_constant_it_cannot_fold():
    i = keras.Input((6,))
    a = L.Dense(8, name="a")(i)
    b = L.Dense(8, name="b")(i)
    shared = L.Dense(3, name="shared")
    model = keras.Model(i, L.Concatenate()([shared(a), shared(b)]))
    _check(model, (6,), expect_removed=0)  # a, b couple through shared's input: kept
    small, report = kg.materialize(model, return_report=True)
    assert "called more than once" in report.kept[0][2]
