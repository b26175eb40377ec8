"""prune_low_magnitude on layers, lists, Sequential, Functional and nested
models; clear errors for unsupported uses."""

import numpy as np
import pytest
import keras
from keras import layers as L

import keras_gap as kg
from keras_gap.wrapper import PruneLowMagnitude, collect_wrappers
from pruning_testlib import blobs, compile_model, mlp, np_

pytestmark = pytest.mark.core


def _functional():
    inp = keras.Input((16,))
    a = L.Dense(8, activation="relu", name="a")(inp)
    b = L.Dense(8, activation="relu", name="b")(inp)
    h = L.Concatenate()([a, b])
    h = L.BatchNormalization()(h)
    return keras.Model(inp, L.Dense(3, name="out")(h))


def _nested():
    inner = keras.Sequential([keras.Input((8,)), L.Dense(8, activation="relu", name="in1"),
                              L.Dense(8, name="in2")], name="inner")
    inp = keras.Input((16,))
    h = L.Dense(8, name="stem")(inp)
    h = inner(h)
    return keras.Model(inp, L.Dense(3, name="head")(h))


def test_prune_a_layer():
    layer = L.Dense(4)
    wrapped = kg.prune_low_magnitude(layer, pruning_schedule=kg.ConstantSparsity(0.3, 0))
    assert isinstance(wrapped, PruneLowMagnitude) and wrapped.layer is layer
    assert wrapped.pruning_schedule == kg.ConstantSparsity(0.3, 0)


def test_prune_a_list_of_layers():
    layers = [L.Dense(4), L.Conv2D(2, 3)]
    wrapped = kg.prune_low_magnitude(layers, block_size=(1, 1))
    assert [type(w.layer) for w in wrapped] == [L.Dense, L.Conv2D]
    assert all(w.pruning_schedule == kg.ConstantSparsity(0.5, 0) for w in wrapped)


@pytest.mark.parametrize("build, wrapped_names", [
    (mlp, ["dense", "dense_1", "dense_2"]),
    (_functional, ["a", "b", "out"]),
    (_nested, ["stem", "in1", "in2", "head"]),
])
def test_prune_models_wraps_every_prunable_layer_and_keeps_outputs(build, wrapped_names):
    model = build()
    x, _ = blobs(n=8)
    before = np_(model.predict(x, verbose=0))
    pruned = kg.prune_low_magnitude(model)
    assert pruned is not model
    assert [w.layer.name for w in collect_wrappers(pruned)] == wrapped_names
    np.testing.assert_allclose(np_(pruned.predict(x, verbose=0)), before, rtol=1e-6,
                               atol=1e-6, err_msg="all-ones masks must not change outputs")
    assert type(pruned) is type(model) or isinstance(pruned, keras.Model)


def test_nested_model_is_cloned_not_shared():
    model = _nested()
    pruned = kg.prune_low_magnitude(model)
    inner = [l for l in pruned.layers if isinstance(l, keras.Model)]
    assert len(inner) == 1 and inner[0] is not model.get_layer("inner")
    assert all(isinstance(l, PruneLowMagnitude) for l in inner[0].layers)


def test_nested_model_trains_and_masks():
    x, y = blobs(n=64)
    pruned = kg.prune_low_magnitude(_nested(), pruning_schedule=kg.ConstantSparsity(
        0.5, begin_step=0, frequency=1))
    compile_model(pruned)
    pruned.fit(x, y, batch_size=16, verbose=0, callbacks=[kg.UpdatePruningStep()])
    for w in collect_wrappers(pruned):
        n, kept = w.mask_counts()[0]
        assert kept == n // 2, w.name
        assert int(np_(w.pruning_step)) == 4, w.name


def test_pruning_policy_keeps_layers_dense():
    pruned = kg.prune_low_magnitude(_functional(),
                                    pruning_policy=lambda layer: layer.name != "out")
    assert [w.layer.name for w in collect_wrappers(pruned)] == ["a", "b"]


def test_subclassed_model_is_a_clear_error():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(3)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(np.zeros((1, 4), "float32"))
    with pytest.raises(ValueError, match="subclassed.*prune_low_magnitude\\(keras.layers"):
        kg.prune_low_magnitude(net)


def test_subclassed_model_with_wrapped_layers_trains():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d1 = kg.prune_low_magnitude(
                L.Dense(8, activation="relu"),
                pruning_schedule=kg.ConstantSparsity(0.5, 0, frequency=1))
            self.d2 = L.Dense(3)

        def call(self, x):
            return self.d2(self.d1(x))

    x, y = blobs(n=64)
    net = Net()
    net(x[:1])  # build (UpdatePruningStep asks for built wrappers)
    compile_model(net)
    net.fit(x, y, batch_size=32, verbose=0, callbacks=[kg.UpdatePruningStep()])
    assert net.d1.mask_counts()[0][1] == 64
    stripped = kg.strip_pruning(net.d1)
    assert isinstance(stripped, L.Dense)


@pytest.mark.parametrize("what", ["model", "layer", "list"])
def test_already_pruned_comes_back_with_its_wrappers_and_a_warning(what):
    """As tf-mot: pruning what is already fully wrapped returns it (a model: a new
    model holding the same wrappers) and warns; prune_gap still refuses it."""
    pruned = kg.prune_low_magnitude(mlp())
    target = {"model": pruned, "layer": pruned.layers[0], "list": [pruned.layers[0]]}[what]
    with pytest.warns(UserWarning, match="already wrapped in PruneLowMagnitude"):
        again = kg.prune_low_magnitude(target)
    if what == "model":
        assert [a is b for a, b in zip(again.layers, pruned.layers)] == [True] * 3
    else:
        assert again is target or again == target
    with pytest.raises(ValueError, match="already pruned"):
        kg.prune_gap(pruned, target_sparsity=0.5, num_partitions=2, steps_per_step=2)


def test_model_without_prunable_weights_is_a_clear_error():
    model = keras.Sequential([keras.Input((8,)), L.LayerNormalization(), L.Activation("relu")])
    with pytest.raises(ValueError, match="no prunable weights"):
        kg.prune_low_magnitude(model)
    everything_dense = lambda layer: False  # noqa: E731
    with pytest.raises(ValueError, match="no prunable weights"):
        kg.prune_low_magnitude(mlp(), pruning_policy=everything_dense)


@pytest.mark.parametrize("bad", ["model", 3, None])
def test_bad_to_prune_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="to_prune"):
        kg.prune_low_magnitude(bad)


def test_training_without_update_pruning_step_raises_through_fit():
    x, y = blobs(n=32)
    pruned = compile_model(kg.prune_low_magnitude(mlp()))
    with pytest.raises(RuntimeError, match="UpdatePruningStep"):
        pruned.fit(x, y, batch_size=16, verbose=0)


def test_second_fit_without_callback_also_raises():
    """The first fit traces the train function with the callback active; a later
    fit without it must still raise (not silently reuse the traced step)."""
    x, y = blobs(n=32)
    pruned = compile_model(kg.prune_low_magnitude(mlp()))
    pruned.fit(x, y, batch_size=16, verbose=0, callbacks=[kg.UpdatePruningStep()])
    with pytest.raises(RuntimeError, match="UpdatePruningStep"):
        pruned.fit(x, y, batch_size=16, verbose=0)


def test_model_still_trains_after_the_missing_callback_error():
    """On JAX too: the guard re-attaches the purged variable values before raising."""
    x, y = blobs(n=32)
    pruned = compile_model(kg.prune_low_magnitude(mlp()))
    pruned.fit(x, y, batch_size=16, verbose=0, callbacks=[kg.UpdatePruningStep()])
    with pytest.raises(RuntimeError, match="UpdatePruningStep"):
        pruned.fit(x, y, batch_size=16, verbose=0)
    pruned.fit(x, y, batch_size=16, verbose=0, callbacks=[kg.UpdatePruningStep()])
    assert int(np_(collect_wrappers(pruned)[0].pruning_step)) == 4


def test_inference_does_not_need_the_callback():
    x, _ = blobs(n=8)
    pruned = kg.prune_low_magnitude(mlp())
    pruned.predict(x, verbose=0)
    pruned(x, training=False)
    assert int(np_(collect_wrappers(pruned)[0].pruning_step)) == 0


def test_update_pruning_step_on_unpruned_model_warns_and_trains():
    # tf-mot does nothing here; keras-gap warns (tests/test_custom_loop.py too).
    x, y = blobs(n=16)
    model = compile_model(mlp())
    with pytest.warns(UserWarning, match="no PruneLowMagnitude"):
        model.fit(x, y, verbose=0, callbacks=[kg.UpdatePruningStep()])


def test_tfmot_argument_names_are_accepted():
    pruned = kg.prune_low_magnitude(
        mlp(dim=16, hidden=32), pruning_schedule=kg.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=0.9, begin_step=0, end_step=100,
            power=3, frequency=10),
        block_size=(4, 1), block_pooling_type="MAX", pruning_policy=None,
        sparsity_m_by_n=None)
    w = collect_wrappers(pruned)[0]
    assert w.block_size == (4, 1) and w.block_pooling_type == "MAX"
