"""structure="channel": channel masks, coupled groups, every schedule and criterion."""

import os

import keras
import numpy as np
import pytest
from keras import layers as L
from keras import ops

import keras_gap as kg
from keras_gap import masks
from keras_gap.wrapper import collect_wrappers

pytestmark = pytest.mark.core


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


# masks.py ------------------------------------------------------------------------------
def test_channel_scores_are_l1_per_output_channel():
    k = np.arange(24, dtype="float32").reshape(2, 3, 4) - 10.0
    np.testing.assert_allclose(masks.channel_scores(np.abs(k)), np.abs(k).sum(axis=(0, 1)))
    np.testing.assert_allclose(masks.channel_scores(np.abs(k), axis=-2),
                               np.abs(k).sum(axis=(0, 2)))
    dw = np.abs(np.random.default_rng(0).normal(size=(3, 3, 4, 2))).astype("float32")
    np.testing.assert_allclose(masks.channel_scores(dw, axis=(-2, -1)),
                               dw.reshape(9, 8).sum(axis=0), rtol=1e-6)


@pytest.mark.parametrize("n, sparsity, kept", [(10, 0.5, 5), (10, 0.95, 1), (3, 0.7, 1),
                                               (8, 0.0, 8), (64, 0.75, 16)])
def test_channel_mask_exact_count_and_at_least_one(n, sparsity, kept):
    keep = _np(masks.channel_mask(np.ones(n, "float32"), sparsity))
    assert int(keep.sum()) == kept


def test_pool_and_expand_channel_mask():
    pooled = masks.pool_channel_scores([np.array([1., 2., 3.]), np.array([5., 0., 0., 7.])],
                                       [np.array([0, 1, 2]), np.array([2, -1, 1, 0])], 3)
    np.testing.assert_allclose(pooled, [8., 2., 8.])
    full = _np(masks.expand_channel_mask([1, 0, 1], (2, 2, 5, 3)))
    assert full.shape == (2, 2, 5, 3)
    np.testing.assert_array_equal(full[0, 0, 0], [1, 0, 1])
    dw = _np(masks.expand_channel_mask([1, 0, 0, 1], (3, 3, 2, 2), axis=(-2, -1)))
    np.testing.assert_array_equal(dw[1, 1], [[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="does not fit"):
        masks.expand_channel_mask([1, 0], (3, 3))


# Validation ----------------------------------------------------------------------------
def _mlp():
    return keras.Sequential([keras.Input((6,)), L.Dense(8, name="h"), L.Dense(3, name="o")])


@pytest.mark.parametrize("kwargs, match", [
    (dict(structure="filters"), "`structure` must be one of"),
    (dict(structure="channel", block_size=(4, 1)), "block_size"),
    (dict(structure="channel", sparsity_m_by_n=(2, 4)), "sparsity_m_by_n"),
    (dict(structure="channel", scope="global"), "scope='global'"),
])
def test_bad_structure_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kg.prune_low_magnitude(_mlp(), **kwargs)
    if "scope" not in kwargs:
        with pytest.raises(ValueError, match=match):
            kg.PruneLowMagnitude(L.Dense(3), **kwargs)


def test_channel_wrapper_on_a_layer_without_channels_is_refused():
    layer = kg.PruneLowMagnitude(L.Embedding(10, 4), structure="channel")
    with pytest.raises(ValueError, match="no.*it can mask|has none it can mask"):
        layer.build((None, 3))


def test_channel_structure_is_serialized(tmp_path):
    pruned = kg.prune_low_magnitude(_mlp(), structure="channel")
    w = collect_wrappers(pruned)[0]
    assert w.get_config()["structure"] == "channel"
    path = os.path.join(tmp_path, "p.keras")
    pruned.save(path)
    loaded = keras.saving.load_model(path)
    assert {x.structure for x in collect_wrappers(loaded)} == {"channel"}


def test_standalone_wrapper_masks_whole_channels_with_bias():
    layer = kg.PruneLowMagnitude(L.Conv2D(8, 3), structure="channel")
    layer.build((None, 6, 6, 3))
    layer.update_masks(0.75)
    kernel, bias = (_np(m) for m in layer.masks)
    keep = bias.astype(bool)
    assert keep.sum() == 2
    assert (kernel[..., keep] == 1).all() and (kernel[..., ~keep] == 0).all()
    # The two filters of largest L1 norm stay.
    l1 = np.abs(_np(layer.layer.kernel)).sum(axis=(0, 1, 2))
    assert set(np.flatnonzero(keep)) == set(np.argsort(l1)[-2:])


# Training -------------------------------------------------------------------------------
def _resnet():
    i = keras.Input((8, 8, 2))
    x = L.Conv2D(8, 3, padding="same", name="c1")(i)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU()(x)
    y = L.Conv2D(8, 3, padding="same", name="c2")(x)
    y = L.BatchNormalization(name="bn2")(y)
    x = L.ReLU()(L.Add()([x, y]))
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.Conv2D(12, 1, name="c3")(x)
    x = L.BatchNormalization(name="bn3")(x)
    x = L.ReLU()(x)
    return keras.Model(i, L.Dense(4, name="head")(L.GlobalAveragePooling2D()(x)))


def _data(n=32):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 8, 8, 2)).astype("float32"), rng.integers(0, 4, n)


class _CheckEveryStep(keras.callbacks.Callback):
    """Masked weights are exactly 0 after every training step."""

    def on_train_batch_end(self, batch, logs=None):
        _channel_state(self.model)  # self.model: JAX syncs the trainer state first


def _fit(pruned, callback, epochs=2):
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data()
    pruned.fit(x, y, batch_size=8, epochs=epochs, callbacks=[callback, _CheckEveryStep()],
               verbose=0)


def _channel_state(model):
    """{layer name: per-channel (all weights zero) vector} of every wrapped layer."""
    out = {}
    for w in collect_wrappers(model):
        removed = ~w.channel_keep()
        for v, axis in zip(w.pruned_weights, w.channel_axes):
            z = masks.channel_scores(np.abs(_np(v)), axis) == 0
            assert z[removed].all(), f"{v.path}: masked weights not exactly 0"
            if v.name in ("kernel", "pointwise_kernel"):  # biases before BN may stay 0
                np.testing.assert_array_equal(z, removed, err_msg=f"{v.path}: kept but zero")
        out[w.layer.name] = removed
    return out


def _check_groups(pruned, sparsity):
    state = _channel_state(pruned)
    # Coupled: the residual group (c1, bn1, c2, bn2, dw) shares one channel set.
    for name in ("bn1", "c2", "bn2", "dw"):
        np.testing.assert_array_equal(state[name], state["c1"], err_msg=name)
    assert int((~state["c1"]).sum()) == masks.num_to_keep(8, sparsity)
    assert int((~state["c3"]).sum()) == masks.num_to_keep(12, sparsity)
    np.testing.assert_array_equal(state["bn3"], state["c3"])
    assert "head" not in state or not state["head"].any()  # reaches the output: kept
    return state


@pytest.mark.parametrize("schedule", [
    lambda: kg.ConstantSparsity(0.5, begin_step=1, frequency=2),
    lambda: kg.PolynomialDecay(0.0, 0.5, begin_step=1, end_step=6, frequency=1),
])
@pytest.mark.parametrize("criterion", ["magnitude", "random"])
def test_prune_low_magnitude_channel_every_schedule_and_criterion(schedule, criterion):
    pruned = kg.prune_low_magnitude(_resnet(), pruning_schedule=schedule(),
                                    structure="channel", criterion=criterion)
    _fit(pruned, kg.UpdatePruningStep())
    _check_groups(pruned, 0.5)


def test_magnitude_keeps_the_channels_of_largest_pooled_l1():
    model = _resnet()
    pruned = kg.prune_low_magnitude(model, pruning_schedule=kg.ConstantSparsity(0.5, 0),
                                    structure="channel")
    wrappers = {w.layer.name: w for w in collect_wrappers(pruned)}
    pooled = sum(np.abs(_np(wrappers[n].layer.kernel)).sum(axis=(0, 1, 2)) for n in ("c1", "c2"))
    cb = kg.UpdatePruningStep()
    cb.set_model(pruned)
    pruned.compile("sgd", "mse")
    cb.on_train_begin()
    cb.update_masks([(w, 0.5) for w in wrappers.values()])
    keep = wrappers["c1"].channel_keep()
    assert set(np.flatnonzero(keep)) == set(np.argsort(pooled)[-4:])


def test_fggp_channel():
    pruned = kg.prune_low_magnitude(
        _resnet(), pruning_schedule=kg.PolynomialDecay(0.0, 0.5, 1, 4, frequency=1),
        structure="channel", criterion=kg.criteria.FGGP(rate=1.0))
    _fit(pruned, kg.UpdatePruningStep())
    _check_groups(pruned, 0.5)


@pytest.mark.parametrize("method", ["cgap", "pgap"])
def test_prune_gap_channel_grows_and_prunes_whole_groups(method):
    pruned = kg.prune_gap(_resnet(), target_sparsity=0.5, num_partitions=2, steps_per_step=2,
                          rounds=1, finetune_steps=2, method=method, structure="channel")
    parts = {w.layer.name: w.pruning_schedule.partition for w in collect_wrappers(pruned)}
    # A group never spans partitions: c1, bn1, c2, bn2, dw go together.
    assert len({parts[n] for n in ("c1", "bn1", "c2", "bn2", "dw")}) == 1
    assert "head" not in parts
    _fit(pruned, kg.GaPCallback(verbose=0), epochs=2)
    _check_groups(pruned, 0.5)


def test_prune_gap_channel_rejects_other_distributions():
    with pytest.raises(ValueError, match="distribution"):
        kg.prune_gap(_resnet(), structure="channel", distribution="erk")


@pytest.mark.parametrize("how", ["prune_low_magnitude", "prune_gap"])
def test_integration_train_strip_materialize(how):
    model = _resnet()
    if how == "prune_gap":
        pruned = kg.prune_gap(model, target_sparsity=0.5, num_partitions=2, steps_per_step=2,
                              finetune_steps=2, structure="channel")
        callback = kg.GaPCallback(verbose=0)
    else:
        pruned = kg.prune_low_magnitude(
            model, pruning_schedule=kg.PolynomialDecay(0.0, 0.5, 1, 6, frequency=1),
            structure="channel")
        callback = kg.UpdatePruningStep()
    _fit(pruned, callback)
    stripped = kg.strip_pruning(pruned)
    small, report = kg.materialize(stripped, return_report=True)
    x, _ = _data(8)
    diff = np.abs(_np(stripped(x, training=False)) - _np(small(x, training=False))).max()
    assert diff <= 1e-5
    assert report.removed == {"c1": 4, "c3": 6}
    assert small.count_params() < 0.6 * stripped.count_params()
    assert report.kept == []


class SubclassedNet(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = kg.PruneLowMagnitude(
            L.Conv2D(8, 3), pruning_schedule=kg.ConstantSparsity(0.5, 1, frequency=1),
            structure="channel")
        self.pool = L.GlobalAveragePooling2D()
        self.out = L.Dense(4)

    def call(self, x):
        return self.out(self.pool(self.conv(x)))


def test_subclassed_model_prunes_each_layer_on_its_own_with_a_warning():
    model = SubclassedNet()
    model(np.zeros((1, 8, 8, 2), "float32"))
    with pytest.warns(UserWarning, match="on their own"):
        _fit(model, kg.UpdatePruningStep(), epochs=1)
    assert int(model.conv.channel_keep().sum()) == 4
    _channel_state(model)
