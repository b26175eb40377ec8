"""Growing networks (keras_gap.growing): gates, seed, schedule, penalty, finalize, resume."""

import os

import keras
import numpy as np
import pytest

import keras_gap as kg
from keras_gap.growing import gating

L = keras.layers
pytestmark = pytest.mark.core


def cnn():
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        L.Conv2D(8, 3, padding="same", activation="relu", name="c1"),
        L.Conv2D(12, 3, use_bias=False, name="c2"), L.BatchNormalization(name="bn2"),
        L.ReLU(), L.Flatten(), L.Dense(16, activation="relu", name="d1"),
        L.Dense(4, name="out")], name="cnn")


def resnet(blocks=2):
    inputs = keras.Input((8, 8, 2))
    x = L.ReLU()(L.BatchNormalization(name="stem_bn")(L.Conv2D(6, 3, padding="same",
                                                               name="stem")(inputs)))
    for s, width in enumerate((6, 10), start=1):
        for b in range(1, blocks + 1):
            stride = 2 if (s > 1 and b == 1) else 1
            y = L.ReLU()(L.BatchNormalization(name=f"s{s}b{b}_bn1")(
                L.Conv2D(width, 3, strides=stride, padding="same", name=f"s{s}b{b}_c1")(x)))
            y = L.BatchNormalization(name=f"s{s}b{b}_bn2")(
                L.Conv2D(width, 3, padding="same", name=f"s{s}b{b}_c2")(y))
            skip = x
            if stride != 1 or x.shape[-1] != width:
                skip = L.BatchNormalization(name=f"s{s}b{b}_sbn")(
                    L.Conv2D(width, 1, strides=stride, name=f"s{s}b{b}_sc")(x))
            x = L.ReLU()(L.Add(name=f"s{s}b{b}_add")([skip, y]))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(3, name="out")(x), name="resnet")


def data(model, n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n,) + tuple(model.input_shape[1:])).astype("float32")
    y = rng.integers(0, model.output_shape[-1], n)
    return x, y


def randomize_bn(model, seed=1):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape).astype("f"))
            layer.moving_variance.assign(
                rng.uniform(0.5, 2, size=layer.moving_variance.shape).astype("f"))
            layer.beta.assign(rng.normal(size=layer.beta.shape).astype("f"))


def fit(gated, x, y, epochs=2, callback=None, **kw):
    gated.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return gated.fit(x, y, batch_size=8, epochs=epochs, verbose=0,
                     callbacks=[callback or kg.growing.GrowingCallback(final_temperature=50,
                                                                       freeze_fraction=0)],
                     **kw)


def predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def scores(gate):
    return keras.ops.convert_to_numpy(gate.scores())


# Gates and seed ---------------------------------------------------------------------------
def test_seed_scores_and_one_gate_per_group():
    model = resnet()
    gated = kg.growing.add_gates(model, seed_channels=0.5, seed_blocks=1,
                                 target=kg.growing.Budget(flops=0.5), seed=0)
    gates = gating.gates_of(gated)
    channel = [g for g in gates if g.kind == "channel"]
    blocks = [g for g in gates if g.kind == "block"]
    # Stage 1's residual stream (stem + both blocks' conv2) is one coupled group.
    stream = next(g for g in channel if "stem" in g.targets)
    assert sorted(stream.targets) == ["s1b1_c2", "s1b2_c2", "stem"]
    assert len(blocks) == 4
    np.testing.assert_array_equal(scores(stream), [2.0] * 3 + [-2.0] * 3)
    on = {g.targets[0]: scores(g)[0] > 0 for g in blocks}
    assert on == {"s1b1_add": True, "s1b2_add": False, "s2b1_add": True, "s2b2_add": False}
    # cost shares: positive, and every structure of the space counted
    for g in gates:
        assert np.all(keras.ops.convert_to_numpy(g.cost) > 0)


def test_gate_training_samples_are_binary_and_shared_by_coupled_sites():
    inputs = keras.Input((4, 4, 8))
    gate = kg.growing.Gate(8, targets=["a", "b"], budget_kind="flops", budget=0.5, seed=3)
    values = gate(inputs)
    a = kg.growing.ApplyGate()([L.Conv2D(8, 1, name="a")(inputs), values])
    b = kg.growing.ApplyGate()([L.Conv2D(8, 1, name="b")(inputs), values])
    model = keras.Model(inputs, [a, b])
    gate.score.assign(np.linspace(-1, 1, 8).astype("float32"))
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 8)).astype("float32")
    for _ in range(3):
        ya, yb = [keras.ops.convert_to_numpy(t) for t in model(x, training=True)]
        on_a = np.abs(ya).sum(axis=(0, 1, 2)) > 0
        on_b = np.abs(yb).sum(axis=(0, 1, 2)) > 0
        np.testing.assert_array_equal(on_a, on_b)
        np.testing.assert_array_equal(on_a, keras.ops.convert_to_numpy(gate.sample) > 0)
    # the penalty is lambda * sum(cost * sigmoid(beta * s)), added once per call
    gate.penalty.assign(2.0)
    gate.cost.assign(np.full(8, 0.1, "float32"))
    model(x, training=True)
    expected = 2.0 * 0.1 * np.sum(1 / (1 + np.exp(-np.linspace(-1, 1, 8))))
    assert len(model.losses) == 1
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(model.losses[0])), expected,
                               rtol=1e-5)
    # inference: hard gates s > 0
    ya, _ = model(x, training=False)
    on = np.abs(keras.ops.convert_to_numpy(ya)).sum(axis=(0, 1, 2)) > 0
    np.testing.assert_array_equal(on, np.linspace(-1, 1, 8) > 0)


def test_channel_gate_keeps_its_best_channel():
    gate = kg.growing.Gate(4)
    gate.build()
    gate.score.assign(np.array([-3, -1, -2, -5], "float32"))
    y = keras.ops.convert_to_numpy(gate(np.ones((1, 4), "float32"), training=False))
    np.testing.assert_array_equal(y, [0, 1, 0, 0])


# Training, schedule, penalty, cost accounting -----------------------------------------------
@pytest.mark.parametrize("build", [cnn, resnet])
def test_train_finalize_equal_outputs(build):
    space = build()
    randomize_bn(space)
    blocks = 1 if build is resnet else None
    gated = kg.growing.add_gates(space, seed_channels=0.5, seed_blocks=blocks,
                                 target=kg.growing.Budget(flops=0.5), seed=0)
    x, y = data(space)
    before = [scores(g).copy() for g in gating.gates_of(gated)]
    history = fit(gated, x, y, epochs=2)
    after = [scores(g) for g in gating.gates_of(gated)]
    assert any(np.any(a != b) for a, b in zip(after, before))   # scores are trained
    for key in ("flops", "flops_sampled", "flops_final", "train_flops", "channels", "beta",
                "penalty"):
        assert len(history.history[key]) == 2, key
    if build is resnet:
        assert "blocks" in history.history
    # turn some structures off so that finalize removes channels (and a block)
    for g in gating.gates_of(gated):
        s = scores(g).copy()
        if g.kind == "channel":
            s[::2] = -1.0
        else:
            s[:] = -1.0 if g.targets == ["s1b1_add"] else 1.0
        g.set_scores(s)
    small = kg.growing.finalize(gated)
    assert not gating.gates_of(small)
    diff = np.abs(predict(gated, x) - predict(small, x)).max()
    assert diff <= 1e-5
    report = kg.flops_report(small, reference=space)
    structure = gating.GateStructure(gated)
    ratio = structure.ratio([gating.hard_gates(g) for g in structure.gates])
    np.testing.assert_allclose(report.macs_ratio, ratio, rtol=1e-6)
    assert ratio < 1
    if build is resnet:    # off blocks: their branch layers are gone
        names = {layer.name for layer in small.layers}
        assert "s1b1_c1" not in names and "s1b2_c1" in names


def test_temperature_rounds_and_clipping():
    space = cnn()
    # score_scale tiny: training barely moves the scores, the clip is what shows
    gated = kg.growing.add_gates(space, seed_channels=0.5, seed=0, initial_score=1.0,
                                 score_scale=1e-4)
    x, y = data(space)
    history = fit(gated, x, y, epochs=4,
                  callback=kg.growing.GrowingCallback(final_temperature=100, rounds=2,
                                                      freeze_fraction=0))
    np.testing.assert_allclose(history.history["beta"], [1, 100, 1, 100], rtol=1e-5)
    assert "penalty" not in history.history     # no budget, no penalty
    for g in gating.gates_of(gated):   # s <- min(beta * s, 1) after round 1, beta = 100
        s = scores(g)
        np.testing.assert_allclose(s[s > 0], 1.0, atol=1e-3)
        np.testing.assert_allclose(s[s < 0], -100.0, atol=1e-2)


def test_penalty_adapts_toward_the_budget():
    space = cnn()
    x, y = data(space)
    under = kg.growing.add_gates(space, seed_channels=0.25, seed=0,
                                 target=kg.growing.Budget(flops=0.9))
    h = fit(under, x, y, epochs=2)
    assert h.history["penalty"][1] < h.history["penalty"][0]
    over = kg.growing.add_gates(cnn(), seed_channels=1.0, seed=0,
                                target=kg.growing.Budget(params=0.1))
    h = fit(over, x, y, epochs=2)
    assert h.history["penalty"][1] > h.history["penalty"][0]
    assert "params_final" in h.history


def test_save_and_resume_continues_the_schedule(tmp_path):
    space = cnn()
    gated = kg.growing.add_gates(space, seed_channels=0.5, seed=0,
                                 target=kg.growing.Budget(flops=0.5))
    x, y = data(space)
    first = fit(gated, x, y, epochs=1,
                callback=kg.growing.GrowingCallback(final_temperature=81, epochs=5,
                                                    freeze_fraction=0))
    path = os.path.join(tmp_path, "gated.keras")
    gated.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(predict(loaded, x), predict(gated, x), atol=1e-6)
    rest = loaded.fit(x, y, batch_size=8, epochs=4, verbose=0,
                      callbacks=[kg.growing.GrowingCallback(final_temperature=81,
                                                            freeze_fraction=0)])
    betas = first.history["beta"] + rest.history["beta"]
    np.testing.assert_allclose(betas, [1, 3, 9, 27, 81], rtol=1e-5)
    lam = keras.ops.convert_to_numpy(gating.gates_of(gated)[0].penalty)
    assert rest.history["penalty"][0] == pytest.approx(float(lam))
    assert gating.trained_epochs(gating.gates_of(loaded)[0]) == 5


def test_freeze_fixes_the_architecture_and_trains_the_weights():
    space = resnet()
    gated = kg.growing.add_gates(space, seed_channels=0.5, seed_blocks=1, seed=0,
                                 target=kg.growing.Budget(flops=0.5))
    x, y = data(space)
    gates = gating.gates_of(gated)
    # 4 epochs, the last 2 frozen: beta anneals over the first 2 (1 -> 50)
    cb = kg.growing.GrowingCallback(final_temperature=50, freeze_fraction=0.5, epochs=4)
    history = fit(gated, x, y, epochs=2, callback=cb)
    np.testing.assert_allclose(history.history["beta"], [1, 50], rtol=1e-5)
    assert cb.growth_epochs() == 2
    assert float(keras.ops.convert_to_numpy(gates[0].frozen)) == 0.0
    hard = [gating.hard_gates(g) for g in gates]
    kernel = keras.ops.convert_to_numpy(gated.get_layer("s1b1_c2").kernel).copy()
    gated.fit(x, y, batch_size=8, epochs=2, verbose=0,
              callbacks=[kg.growing.GrowingCallback(final_temperature=50, freeze_fraction=0.5)])
    for g, h in zip(gates, hard):
        np.testing.assert_array_equal(gating.hard_gates(g), h)        # no gate flipped
        np.testing.assert_array_equal(gating.sampled_gates(g), h)     # no sampling
        s = scores(g)
        np.testing.assert_allclose(np.abs(s), g.initial_score, rtol=1e-5)  # no score step
        assert float(keras.ops.convert_to_numpy(g.frozen)) == 1.0
    assert not np.allclose(keras.ops.convert_to_numpy(gated.get_layer("s1b1_c2").kernel),
                           kernel)                                    # weights train on
    # a frozen gate in training: its inference values, no penalty in the loss
    gate = gates[0]
    gate.penalty.assign(100.0)
    values = keras.ops.convert_to_numpy(gate(x, training=True))
    np.testing.assert_array_equal(values, hard[0])
    assert [float(keras.ops.convert_to_numpy(v)) for v in gate.losses] == [0.0]
    gate.frozen.assign(0.0)
    gate(x, training=True)
    assert float(keras.ops.convert_to_numpy(gate.losses[0])) > 0
    small = kg.growing.finalize(gated)
    np.testing.assert_allclose(predict(small, x), predict(gated, x), atol=1e-5)


def test_freeze_schedule_epochs():
    space = cnn()
    gated = kg.growing.add_gates(space, seed_channels=0.5, seed=0,
                                 target=kg.growing.Budget(flops=0.5))
    x, y = data(space)
    cb = kg.growing.GrowingCallback(final_temperature=16, freeze_fraction=0.4)
    h = fit(gated, x, y, epochs=5, callback=cb)
    assert cb.growth_epochs() == 3
    np.testing.assert_allclose(h.history["beta"], [1, 4, 16, 16, 16], rtol=1e-5)
    # frozen epochs: lambda no longer adapts
    assert h.history["penalty"][3] == h.history["penalty"][4]


def test_default_freeze_keeps_the_gates_across_the_frozen_epochs():
    """The default (freeze_fraction=0.3): of 7 epochs the last 2 are frozen; the hard,
    sampled and soft gates and the scores are the same at the end of each of them."""
    space = cnn()
    gated = kg.growing.add_gates(space, seed_channels=0.5, seed=0,
                                 target=kg.growing.Budget(flops=0.5))
    x, y = data(space)
    gates = gating.gates_of(gated)
    snapshots = []

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append([(gating.hard_gates(g), gating.sampled_gates(g),
                               gating.soft_gates(g), scores(g).copy()) for g in gates])

    cb = kg.growing.GrowingCallback(final_temperature=16)
    assert cb.freeze_fraction == 0.3
    gated.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    h = gated.fit(x, y, batch_size=8, epochs=7, verbose=0, callbacks=[cb, Snapshot()])
    assert cb.growth_epochs() == 5
    np.testing.assert_allclose(h.history["beta"], [1, 2, 4, 8, 16, 16, 16], rtol=1e-5)
    for frozen in snapshots[5:]:                  # the 2 frozen epochs
        for now, then in zip(frozen, snapshots[5]):
            for a, b in zip(now, then):
                np.testing.assert_array_equal(a, b)
    for g, (hard, sampled, _, s) in zip(gates, snapshots[-1]):
        np.testing.assert_array_equal(sampled, hard)
        np.testing.assert_allclose(np.abs(s), g.initial_score, rtol=1e-5)
    assert h.history["penalty"][5] == h.history["penalty"][6]
    assert h.history["flops_final"][5] == h.history["flops_final"][6]


@pytest.mark.parametrize("wrapped", [False, True], ids=["adamw", "loss_scaled_adamw"])
def test_scores_get_no_weight_decay(wrapped):
    space = cnn()
    gated = kg.growing.add_gates(space, seed_channels=0.5, seed=0)
    x, y = data(space)
    opt = keras.optimizers.AdamW(1e-3, weight_decay=0.5)
    gated.compile(keras.optimizers.LossScaleOptimizer(opt) if wrapped else opt,
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    gated.fit(x, y, epochs=1, verbose=0, callbacks=[kg.growing.GrowingCallback()])
    # The inner AdamW decays: a wrapper (mixed precision) must not hide it.
    assert not any(opt._use_weight_decay(g.score) for g in gating.gates_of(gated))
    assert opt._use_weight_decay(gated.get_layer("c1").kernel)


def test_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorflow")
    space = cnn()
    gated = kg.growing.add_gates(space, seed_channels=0.5, seed=0)
    x, y = data(space)
    fit(gated, x, y, epochs=1,
        callback=kg.growing.GrowingCallback(log_dir=os.fspath(tmp_path)))
    assert os.listdir(os.path.join(tmp_path, "growing"))


# Errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, 1.5, -0.1, True, "half"])
def test_seed_channels_out_of_range(value):
    with pytest.raises(ValueError, match=r"seed_channels.*\(0, 1\]"):
        kg.growing.add_gates(cnn(), seed_channels=value)


@pytest.mark.parametrize("kwargs", [{"flops": 0}, {"flops": 1.2}, {"params": -1},
                                    {}, {"flops": 0.5, "params": 0.5}])
def test_budget_out_of_range(kwargs):
    with pytest.raises(ValueError, match="Budget"):
        kg.growing.Budget(**kwargs)


def test_no_gateable_layer():
    model = keras.Sequential([keras.Input((4,)), L.Dense(3)])
    with pytest.raises(ValueError, match="no gateable layer"):
        kg.growing.add_gates(model)


def test_seed_blocks_without_identifiable_block():
    inputs = keras.Input((6, 6, 2))
    a = L.Conv2D(4, 3, padding="same", name="left")(inputs)
    b = L.Conv2D(4, 3, padding="same", name="right")(inputs)
    x = L.Add(name="merge")([a, b])
    x = L.Dense(5, name="head")(L.Flatten()(L.Conv2D(3, 1, name="mix")(x)))
    model = keras.Model(inputs, x)
    with pytest.raises(ValueError, match=r"'merge'.*left.*right"):
        kg.growing.add_gates(model, seed_blocks=1)
    kg.growing.add_gates(model, seed_blocks=None)      # channel gates only: fine
    with pytest.raises(ValueError, match="no residual block"):
        kg.growing.add_gates(cnn(), seed_blocks=1)


def test_finalize_before_training_warns_and_returns_the_seed():
    space = cnn()
    gated = kg.growing.add_gates(space, seed_channels=0.5, seed=0)
    with pytest.warns(UserWarning, match="seed"):
        small = kg.growing.finalize(gated)
    x, _ = data(space)
    assert np.abs(predict(gated, x) - predict(small, x)).max() <= 1e-5
    assert small.get_layer("c1").filters == 4


def test_models_without_gates_are_refused():
    model = cnn()
    with pytest.raises(ValueError, match="no growing gates"):
        kg.growing.finalize(model)
    model.compile("adam", "mse")
    x, y = data(model)
    with pytest.raises(ValueError, match="no growing gates"):
        model.fit(x, np.zeros((32, 4)), verbose=0, callbacks=[kg.growing.GrowingCallback()])


@pytest.mark.parametrize("kwargs", [{"final_temperature": 1}, {"rounds": 0},
                                    {"penalty_rate": -1}, {"penalty_gain": "x"},
                                    {"update_freq": 0}, {"epochs": 0}, {"log_dir": ""},
                                    {"freeze_fraction": 1.0}, {"freeze_fraction": -0.1}])
def test_callback_arguments(kwargs):
    with pytest.raises(ValueError):
        kg.growing.GrowingCallback(**kwargs)
