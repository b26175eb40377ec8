"""PruneLowMagnitude on every registry layer: masks, forward pass, training."""

import numpy as np
import pytest
import keras
from keras import layers as L
from keras import ops

import keras_gap as kg
from keras_gap import masks as mask_lib
from keras_gap import registry
from pruning_testlib import np_, masked_nonzeros

pytestmark = pytest.mark.core


def _mha():
    return L.MultiHeadAttention(num_heads=2, key_dim=4)


# name -> (layer factory, input shape without batch, expected prunable weight names)
LAYERS = {
    "dense": (lambda: L.Dense(8), (12,), ["kernel"]),
    "einsum_dense": (lambda: L.EinsumDense("ab,bc->ac", output_shape=8, bias_axes="c"),
                     (12,), ["kernel"]),
    "conv1d": (lambda: L.Conv1D(8, 3), (10, 4), ["kernel"]),
    "conv2d": (lambda: L.Conv2D(8, 3), (6, 6, 4), ["kernel"]),
    "conv3d": (lambda: L.Conv3D(4, 2), (4, 4, 4, 2), ["kernel"]),
    "conv1d_transpose": (lambda: L.Conv1DTranspose(4, 3), (6, 4), ["kernel"]),
    "conv2d_transpose": (lambda: L.Conv2DTranspose(4, 3), (5, 5, 4), ["kernel"]),
    "conv3d_transpose": (lambda: L.Conv3DTranspose(4, 2), (3, 3, 3, 2), ["kernel"]),
    "separable_conv2d": (lambda: L.SeparableConv2D(8, 3), (6, 6, 4), ["pointwise_kernel"]),
    "separable_conv1d": (lambda: L.SeparableConv1D(8, 3), (8, 4), ["pointwise_kernel"]),
    "embedding": (lambda: L.Embedding(20, 8), None, ["embeddings"]),
    "mha": (_mha, (5, 8), ["kernel"] * 4),
    "lstm": (lambda: L.LSTM(6), (5, 4), ["kernel", "recurrent_kernel"]),
    "gru": (lambda: L.GRU(6), (5, 4), ["kernel", "recurrent_kernel"]),
    "simple_rnn": (lambda: L.SimpleRNN(6), (5, 4), ["kernel", "recurrent_kernel"]),
}


def _inputs(name, shape, n=4, seed=0):
    rng = np.random.default_rng(seed)
    if name == "embedding":
        return rng.integers(0, 20, size=(n, 7)).astype("int32")
    return rng.normal(size=(n,) + shape).astype("float32")


def _build_wrapper(name, **kwargs):
    factory, shape, _ = LAYERS[name]
    wrapper = kg.PruneLowMagnitude(
        factory(), pruning_schedule=kg.ConstantSparsity(0.5, begin_step=0, frequency=1),
        **kwargs)
    x = _inputs(name, shape)
    wrapper(x) if name != "mha" else wrapper(x, x)
    return wrapper, x


def _call(layer, name, x, **kwargs):
    return layer(x, **kwargs) if name != "mha" else layer(x, x, **kwargs)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_registry_layer_gets_one_mask_per_prunable_weight(name):
    wrapper, _ = _build_wrapper(name)
    expected = LAYERS[name][2]
    assert [w.name for w in wrapper.pruned_weights] == expected
    assert len(wrapper.masks) == len(expected)
    for w, m in zip(wrapper.pruned_weights, wrapper.masks):
        assert tuple(m.shape) == tuple(w.shape) and not m.trainable
        assert np_(m).min() == 1.0, "masks start as all ones"
    assert not wrapper.pruning_step.trainable and int(np_(wrapper.pruning_step)) == 0
    assert wrapper.pruning_step.dtype == "int32"


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_forward_pass_uses_masked_weights_without_assigning(name):
    """With masks set but weights untouched, the output equals the inner layer
    run on weight*mask, and call() does not modify the weights."""
    wrapper, x = _build_wrapper(name)
    rng = np.random.default_rng(1)
    for m in wrapper.masks:
        m.assign((rng.random(tuple(m.shape)) < 0.5).astype("float32"))
    before = [np_(w).copy() for w in wrapper.pruned_weights]
    out = np_(_call(wrapper, name, x, training=False))
    after = [np_(w) for w in wrapper.pruned_weights]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b, err_msg="call() must not assign weights")
    unmasked = np_(_call(wrapper.layer, name, x))
    for w, m in zip(wrapper.pruned_weights, wrapper.masks):
        w.assign(np_(w) * np_(m))
    reference = np_(_call(wrapper.layer, name, x))
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5,
                               err_msg=f"{name}: wrapper output != layer(weight*mask)")
    assert not np.allclose(out, unmasked), f"{name}: masks had no effect on the output"


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_update_masks_exact_count_and_zeroes_weights(name, sparsity):
    wrapper, x = _build_wrapper(name)
    wrapper.update_masks(sparsity)
    for w, (n, kept) in zip(wrapper.pruned_weights, wrapper.mask_counts()):
        assert kept == mask_lib.num_to_keep(n, sparsity), (w.path, kept, n)
    assert masked_nonzeros(wrapper) == [0] * len(wrapper.masks)


@pytest.mark.parametrize("name", ["dense", "conv2d", "embedding", "mha", "lstm",
                                  "separable_conv2d", "conv2d_transpose"])
def test_training_keeps_masked_weights_exactly_zero(name):
    factory, shape, _ = LAYERS[name]
    sched = kg.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=4, frequency=2)
    if name == "embedding":
        inp = keras.Input((7,), dtype="int32")
        h = kg.prune_low_magnitude(factory(), pruning_schedule=sched)(inp)
    elif name == "mha":
        inp = keras.Input(shape)
        h = kg.prune_low_magnitude(factory(), pruning_schedule=sched)(inp, inp)
    else:
        inp = keras.Input(shape)
        h = kg.prune_low_magnitude(factory(), pruning_schedule=sched)(inp)
    out = L.Dense(1)(L.Flatten()(h))
    model = keras.Model(inp, out)
    model.compile("adam", "mse")
    x = _inputs(name, shape, n=48)
    y = np.random.default_rng(0).normal(size=(48, 1)).astype("float32")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[kg.UpdatePruningStep()])
    wrapper = kg.wrapper.collect_wrappers(model)[0]
    assert int(np_(wrapper.pruning_step)) == 6
    assert masked_nonzeros(wrapper) == [0] * len(wrapper.masks)
    for _, (n, kept) in zip(wrapper.pruned_weights, wrapper.mask_counts()):
        assert kept == mask_lib.num_to_keep(n, 0.8)


def test_depthwise_conv_is_opt_in():
    model = keras.Sequential([keras.Input((6, 6, 4)), L.DepthwiseConv2D(3),
                              L.Conv2D(4, 1)])
    pruned = kg.prune_low_magnitude(model)
    assert [type(l).__name__ for l in pruned.layers] == ["DepthwiseConv2D", "PruneLowMagnitude"]
    pruned = kg.prune_low_magnitude(model, prune_depthwise=True)
    wrappers = kg.wrapper.collect_wrappers(pruned)
    assert [type(w.layer).__name__ for w in wrappers] == ["DepthwiseConv2D", "Conv2D"]
    wrappers[0].update_masks(0.5)
    n, kept = wrappers[0].mask_counts()[0]
    assert kept == mask_lib.num_to_keep(n, 0.5)
    # Wrapped by hand without opting in: a no-op wrapper, as in tf-mot.
    w = kg.PruneLowMagnitude(L.DepthwiseConv2D(3))
    w(np.zeros((1, 6, 6, 4), "float32"))
    assert w.pruned_weights == [] and w.mask_counts() == []


def test_norms_and_weightless_layers_pass_through():
    model = keras.Sequential([
        keras.Input((8,)), L.Dense(8), L.BatchNormalization(), L.LayerNormalization(),
        L.Dropout(0.1), L.Activation("relu"), L.Dense(2)])
    pruned = kg.prune_low_magnitude(model)
    kinds = [type(l).__name__ for l in pruned.layers]
    assert kinds == ["PruneLowMagnitude", "BatchNormalization", "LayerNormalization",
                     "Dropout", "Activation", "PruneLowMagnitude"]


class PrunableBlock(L.Layer):
    """A custom layer following tf-mot's PrunableLayer contract."""

    def build(self, input_shape):
        self.w1 = self.add_weight(shape=(input_shape[-1], 8), name="w1")
        self.w2 = self.add_weight(shape=(8, 4), name="w2")
        self.scale = self.add_weight(shape=(4,), initializer="ones", name="scale")

    def call(self, x):
        return ops.matmul(ops.relu(ops.matmul(x, self.w1)), self.w2) * self.scale

    def get_prunable_weights(self):
        return [self.w1, self.w2]


class OpaqueLayer(L.Layer):
    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 3), name="w")

    def call(self, x):
        return ops.matmul(x, self.w)


def test_custom_layer_with_get_prunable_weights_trains_and_masks():
    sched = kg.ConstantSparsity(0.75, begin_step=0, frequency=1)
    model = keras.Sequential([keras.Input((6,)), PrunableBlock(), L.Dense(1)])
    pruned = kg.prune_low_magnitude(model, pruning_schedule=sched)
    wrapper = kg.wrapper.collect_wrappers(pruned)[0]
    assert isinstance(wrapper.layer, PrunableBlock)
    assert [w.name for w in wrapper.pruned_weights] == ["w1", "w2"]
    pruned.compile("sgd", "mse")
    x = np.random.default_rng(0).normal(size=(32, 6)).astype("float32")
    pruned.fit(x, x[:, :1], batch_size=8, verbose=0, callbacks=[kg.UpdatePruningStep()])
    assert [k for _, k in wrapper.mask_counts()] == [12, 8]
    assert masked_nonzeros(wrapper) == [0, 0]
    assert len(wrapper.masks) == 2


def test_unsupported_custom_layer_is_a_clear_error_naming_it():
    model = keras.Sequential([keras.Input((5,)), OpaqueLayer(name="mystery"), L.Dense(2)])
    with pytest.raises(ValueError, match=r"'mystery' of type OpaqueLayer.*keep_dense"):
        kg.prune_low_magnitude(model)
    with pytest.raises(ValueError, match="OpaqueLayer"):
        kg.PruneLowMagnitude(model.layers[0])


def test_unsupported_layers_keep_dense():
    model = keras.Sequential([keras.Input((5,)), OpaqueLayer(name="mystery"), L.Dense(2)])
    pruned = kg.prune_low_magnitude(model, unsupported_layers="keep_dense")
    assert [type(l).__name__ for l in pruned.layers] == ["OpaqueLayer", "PruneLowMagnitude"]
    with pytest.raises(ValueError, match="unsupported_layers"):
        kg.prune_low_magnitude(model, unsupported_layers="ignore")


def test_user_kernel_constraint_keeps_working():
    sched = kg.ConstantSparsity(0.5, begin_step=0, frequency=1)
    model = keras.Sequential([
        keras.Input((8,)),
        L.Dense(16, kernel_constraint=keras.constraints.NonNeg(), name="constrained"),
        L.Dense(1)])
    kernel = model.layers[0].kernel
    assert np_(kernel).min() < 0, "the test needs negative initial weights"
    pruned = kg.prune_low_magnitude(model, pruning_schedule=sched)
    pruned.compile(keras.optimizers.SGD(0.05), "mse")
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = -np.abs(x).sum(1, keepdims=True)
    pruned.fit(x, y, batch_size=16, epochs=1, verbose=0,
               callbacks=[kg.UpdatePruningStep()])
    wrapper = kg.wrapper.collect_wrappers(pruned)[0]
    k = np_(wrapper.pruned_weights[0])
    assert k.min() >= 0, "NonNeg kernel_constraint was lost under pruning"
    assert masked_nonzeros(wrapper) == [0]
    assert wrapper.mask_counts()[0][1] == 64


@pytest.mark.parametrize("block", [(4, 1), (16, 1)])
def test_block_structure_on_dense_wrapper(block):
    w = kg.PruneLowMagnitude(L.Dense(8), block_size=block, block_pooling_type="MAX")
    w(np.zeros((1, 32), "float32"))
    w.update_masks(0.75)
    m = np_(w.masks[0])
    per_block = m.reshape(32 // block[0], block[0], 8).sum(1)
    assert set(np.unique(per_block)) <= {0.0, float(block[0])}
    assert int((per_block > 0).sum()) == mask_lib.num_to_keep(32 // block[0] * 8, 0.75)


def test_n_by_m_is_recomputed_at_every_update_not_frozen():
    w = kg.PruneLowMagnitude(L.Conv2D(4, 3), sparsity_m_by_n=(2, 4))
    w(np.zeros((1, 5, 5, 8), "float32"))
    w.update_masks(0.0)
    first = np_(w.masks[0]).copy()
    groups = np.moveaxis(first, -2, -1).reshape(3, 3, 4, 2, 4)
    np.testing.assert_array_equal(groups.sum(-1), 2)
    # New weights with the opposite magnitude order inside each group.
    kernel = w.pruned_weights[0]
    kernel.assign(np.where(first == 1, 0.01, 1.0).astype("float32"))
    w.masks[0].assign(np.ones_like(first))
    w.update_masks(0.0)
    second = np_(w.masks[0])
    np.testing.assert_array_equal(second, 1 - first, err_msg="N:M mask must follow new weights")


@pytest.mark.parametrize("kwargs, shape, match", [
    ({"block_size": (3, 1)}, (8,), "does not divide"),
    # strict=True raises; by default the last group is partial, as in tf-mot
    # (tests/test_tfmot_compat.py)
    ({"sparsity_m_by_n": (2, 4), "strict": True}, (6,), "divisible by N=4"),
    ({"sparsity_m_by_n": (4, 4)}, (8,), "0 < M < N"),
    ({"block_size": (0, 1)}, (8,), "block_size"),
    ({"block_pooling_type": "SUM"}, (8,), "block_pooling_type"),
])
def test_bad_structure_is_a_clear_error(kwargs, shape, match):
    with pytest.raises(ValueError, match=match):
        w = kg.PruneLowMagnitude(L.Dense(4), **kwargs)
        w(np.zeros((1,) + shape, "float32"))


def test_wrapping_a_wrapper_is_an_error():
    w = kg.PruneLowMagnitude(L.Dense(2))
    with pytest.raises(ValueError, match="already"):
        kg.PruneLowMagnitude(w)
    with pytest.raises(ValueError, match="keras.layers.Layer"):
        kg.PruneLowMagnitude("dense")


def test_registry_answers():
    d = L.Dense(3)
    assert registry.is_supported(d)
    d.build((None, 4))
    assert [w.name for w in registry.get_prunable_weights(d)] == ["kernel"]
    bn = L.BatchNormalization()
    bn.build((None, 4))
    assert registry.get_prunable_weights(bn) == []
    o = OpaqueLayer()
    o.build((None, 4))
    assert not registry.is_supported(o)
    with pytest.raises(ValueError, match="get_prunable_weights"):
        registry.get_prunable_weights(o)
