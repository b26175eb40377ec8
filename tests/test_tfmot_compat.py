"""tf-mot code runs unchanged: step numbering, layers, names, callbacks (issue 13).

tf-mot itself is only imported in subprocesses (importing it sets
TF_USE_LEGACY_KERAS=1 for the whole process).
"""

import importlib.util
import json
import os
import subprocess
import sys
import warnings

import keras

import numpy as np
import pytest

import keras_gap as kg
from keras_gap.wrapper import collect_wrappers

HERE = os.path.dirname(__file__)
needs_tfmot = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow_model_optimization") is None
    or importlib.util.find_spec("tf_keras") is None,
    reason="tensorflow-model-optimization and tf_keras are not installed "
           "(pip install -e '.[tfmot]')")


def np_(x):
    return keras.ops.convert_to_numpy(x)


def _run_tfmot(script, *args):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["KERAS_BACKEND"] = "tensorflow"
    out = subprocess.run([sys.executable, os.path.join(HERE, "subprocess_scripts", script),
                          *args], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# Step numbering ------------------------------------------------------------------------
SCHEDULES = [
    kg.ConstantSparsity(0.5, begin_step=0, frequency=4),
    kg.PolynomialDecay(0.1, 0.8, begin_step=2, end_step=10, frequency=3),
    kg.ConstantSparsity(0.6, begin_step=3, end_step=7, frequency=2),
]
STEPS = 12


def _keras_gap_trace(schedule):
    x = np.random.RandomState(0).rand(STEPS * 8, 16).astype("float32")
    y = (x.sum(1) > 8).astype("int32")
    model = keras.Sequential([
        keras.Input((16,)),
        kg.prune_low_magnitude(keras.layers.Dense(40), pruning_schedule=schedule),
        keras.layers.Dense(2)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trace = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            wrapper = collect_wrappers(self.model)[0]
            # The live count (the callback's; ``pruning_step`` itself is written
            # at epoch ends, mask updates and saves).
            trace.append([wrapper.current_step(),
                          float((np_(wrapper.masks[0]) == 0).mean())])

    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False,
              callbacks=[kg.UpdatePruningStep(), Record()])
    return trace


def _change_steps(trace):
    """[(pruning_step, sparsity)] at every batch where the mask changed."""
    out, last = [], 0.0
    for step, sparsity in trace:
        if sparsity != last:
            out.append((step, sparsity))
            last = sparsity
    return out


@pytest.mark.core
@pytest.mark.tfmot
@needs_tfmot
def test_schedules_fire_at_the_same_steps_as_tfmot():
    configs = [s.get_config() for s in SCHEDULES]
    tfmot_traces = _run_tfmot("tfmot_steps.py", json.dumps(configs), str(STEPS))["traces"]
    for schedule, theirs in zip(SCHEDULES, tfmot_traces):
        ours = _keras_gap_trace(schedule)
        assert [s for s, _ in ours] == [s for s, _ in theirs] == list(range(1, STEPS + 1))
        ours_changes, their_changes = _change_steps(ours), _change_steps(theirs)
        # Same batches; sparsities equal up to tf-mot rounding n*(1-s) where
        # keras-gap floors it (one weight of 640).
        assert [s for s, _ in ours_changes] == [s for s, _ in their_changes], (
            schedule, ours_changes, their_changes)
        for (_, a), (_, b) in zip(ours_changes, their_changes):
            assert a == pytest.approx(b, abs=1.5 / 640), (schedule, ours, theirs)


@pytest.mark.core
def test_first_batch_is_step_one():
    trace = _keras_gap_trace(kg.ConstantSparsity(0.5, begin_step=0, frequency=4))
    # step 0 never runs: the first update is at the 4th batch, as in tf-mot.
    assert _change_steps(trace) == [(4, 0.5)]
    trace = _keras_gap_trace(kg.ConstantSparsity(0.5, begin_step=1, frequency=100))
    assert _change_steps(trace) == [(1, 0.5)]


@pytest.mark.core
def test_legacy_checkpoint_schedule_is_shifted_exactly():
    """A .keras saved when step 0 was the first batch updates at the same batches."""
    wrapper = kg.PruneLowMagnitude(keras.layers.Dense(4), pruning_schedule=kg.PolynomialDecay(
        0.1, 0.8, begin_step=2, end_step=10, frequency=3))
    config = wrapper.get_config()
    assert config["step_origin"] == 1
    assert kg.PruneLowMagnitude.from_config(config).pruning_schedule.begin_step == 2
    legacy = {k: v for k, v in config.items() if k != "step_origin"}
    old = kg.PolynomialDecay(0.1, 0.8, begin_step=2, end_step=10, frequency=3)
    new = kg.PruneLowMagnitude.from_config(legacy).pruning_schedule
    assert (new.begin_step, new.end_step) == (3, 11)
    for batch in range(20):  # old numbering: batch b was step b; now step b + 1
        assert new(batch + 1) == old(batch)
    gap = kg.PruneLowMagnitude(keras.layers.Dense(4), pruning_schedule=kg.GaPPruningSchedule(
        0, 2, 0.5, steps_per_step=3, begin_step=1)).get_config()
    gap.pop("step_origin")
    gap["pruning_schedule"]["config"]["begin_step"] = 0  # what old keras-gap saved
    assert kg.PruneLowMagnitude.from_config(gap).pruning_schedule.begin_step == 1


# Layers --------------------------------------------------------------------------------
@pytest.mark.core
def test_multi_head_attention_called_with_keywords(tmp_path):
    inp = keras.Input((5, 8))
    mha = keras.layers.MultiHeadAttention(2, 4)
    x = mha(query=inp, value=inp, key=inp, attention_mask=None)
    x = keras.layers.MultiHeadAttention(2, 4)(inp, value=x)  # mixed positional / keyword
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Flatten()(x)))
    data = np.random.RandomState(0).rand(2, 5, 8).astype("float32")
    want = np_(model(data))
    pruned = kg.prune_low_magnitude(model)
    assert len(collect_wrappers(pruned)) == 3
    np.testing.assert_allclose(np_(pruned(data)), want, rtol=1e-5, atol=1e-6)
    pruned.save(str(tmp_path / "mha.keras"))
    loaded = keras.models.load_model(str(tmp_path / "mha.keras"))
    np.testing.assert_allclose(np_(loaded(data)), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np_(kg.strip_pruning(pruned)(data)), want, rtol=1e-5, atol=1e-6)


@pytest.mark.core
def test_strip_pruning_of_a_never_built_sequential():
    pruned = kg.prune_low_magnitude(keras.Sequential([keras.layers.Dense(3),
                                                      keras.layers.Dense(2)]))
    stripped = kg.strip_pruning(pruned)
    assert not collect_wrappers(stripped)
    assert stripped(np.ones((1, 4), "float32")).shape == (1, 2)


@pytest.mark.core
def test_weightless_and_non_prunable_layers_become_no_op_wrappers():
    L = keras.layers
    layers = [L.Dropout(0.1), L.MaxPooling2D(), L.BatchNormalization(),
              L.DepthwiseConv2D(3, padding="same"), L.Flatten(), L.Dense(4)]
    wrapped = kg.prune_low_magnitude(layers)  # unbuilt, as a tf-mot user writes it
    model = keras.Sequential([keras.Input((6, 6, 2))] + wrapped)
    assert [len(w.pruned_weights) for w in wrapped] == [0, 0, 0, 0, 0, 1]
    model.compile("sgd", "mse")
    model.fit(np.ones((4, 6, 6, 2)), np.ones((4, 4)), verbose=0,
              callbacks=[kg.UpdatePruningStep()])
    assert [type(l).__name__ for l in kg.strip_pruning(model).layers] == [
        type(l).__name__ for l in layers]


@pytest.mark.core
def test_unknown_unbuilt_layer_error_does_not_claim_it_owns_weights():
    class Mystery(keras.layers.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1],))

        def call(self, x):
            return x * self.w

    with pytest.raises(ValueError, match="not built yet") as info:
        kg.PruneLowMagnitude(Mystery())
    assert "owns weights but" not in str(info.value)
    built = Mystery()
    built.build((None, 3))
    with pytest.raises(ValueError, match="Mystery owns weights"):
        kg.PruneLowMagnitude(built)


@pytest.mark.core
@pytest.mark.parametrize("make_cell, counts", [
    (lambda L: L.RNN(L.LSTMCell(4)), [(3 * 16, 12), (4 * 16, 16)]),
    (lambda L: L.RNN([L.LSTMCell(4), L.GRUCell(3), L.SimpleRNNCell(2)]),
     [(48, 12), (64, 16), (36, 9), (27, 6), (6, 1), (4, 1)]),
])
def test_rnn_layers_with_cells_are_prunable(make_cell, counts):
    model = keras.Sequential([keras.Input((5, 3)), make_cell(keras.layers),
                              keras.layers.Dense(2)])
    pruned = kg.prune_low_magnitude(model, pruning_schedule=kg.ConstantSparsity(
        0.75, begin_step=1, frequency=1))
    pruned.compile("adam", "mse")
    pruned.fit(np.random.rand(16, 5, 3), np.random.rand(16, 2), verbose=0,
               callbacks=[kg.UpdatePruningStep()])
    w = collect_wrappers(pruned)[0]
    assert w.mask_counts() == [(n, kg.masks.num_to_keep(n, 0.75)) for n, _ in counts]
    assert [kept for _, kept in w.mask_counts()] == [k for _, k in counts]
    for v, m in zip(w.pruned_weights, w.masks):
        assert np.all(np_(v)[np_(m) == 0] == 0), v.path


class _PrunableCell(keras.layers.Layer, kg.PrunableLayer):
    state_size = 3

    def build(self, shape):
        self.kernel = self.add_weight(shape=(shape[-1], 3), name="kernel")
        self.other = self.add_weight(shape=(3,), name="other")

    def call(self, x, states):
        h = keras.ops.tanh(keras.ops.matmul(x, self.kernel) + states[0] * self.other)
        return h, [h]

    def get_prunable_weights(self):
        return [self.kernel]


class _OpaqueCell(keras.layers.Layer):
    state_size = 3

    def build(self, shape):
        self.kernel = self.add_weight(shape=(shape[-1], 3), name="kernel")

    def call(self, x, states):
        h = keras.ops.tanh(keras.ops.matmul(x, self.kernel) + states[0])
        return h, [h]


@pytest.mark.core
def test_rnn_cell_with_get_prunable_weights_and_bad_cell_error():
    rnn = keras.layers.RNN(_PrunableCell())
    rnn.build((None, 4, 2))
    w = kg.PruneLowMagnitude(rnn)
    w.build((None, 4, 2))
    assert [v.name for v in w.pruned_weights] == ["kernel"]
    bad = keras.layers.RNN(_OpaqueCell(name="opaque"))
    bad.build((None, 4, 2))
    with pytest.raises(ValueError, match="RNN cell 'opaque' of type _OpaqueCell"):
        kg.PruneLowMagnitude(bad).build((None, 4, 2))


@pytest.mark.core
def test_model_holding_a_wrapped_layer_is_pruned_around_it():
    schedule = kg.ConstantSparsity(0.9, begin_step=1, frequency=1)
    mine = kg.prune_low_magnitude(keras.layers.Dense(8, name="mine"), pruning_schedule=schedule)
    model = keras.Sequential([keras.Input((4,)), mine, keras.layers.Dense(2, name="other")])
    pruned = kg.prune_low_magnitude(model)
    wrappers = collect_wrappers(pruned)
    assert [w.layer.name for w in wrappers] == ["mine", "other"]
    assert wrappers[0] is mine and wrappers[0].pruning_schedule == schedule
    # Pruned again (tf-mot's double-XNNPACK test does this): a new model holding the
    # same wrappers, with a warning; a wrapper or a list of wrappers comes back as is.
    with pytest.warns(UserWarning, match="already wrapped in PruneLowMagnitude.*as tf-mot"):
        again = kg.prune_low_magnitude(pruned)
    assert again is not pruned
    assert [a is b for a, b in zip(collect_wrappers(again), wrappers)] == [True, True]
    with pytest.warns(UserWarning, match="already wrapped"):
        assert kg.prune_low_magnitude(mine) is mine
    with pytest.warns(UserWarning, match="already wrapped"):
        assert kg.prune_low_magnitude([mine])[0] is mine


@pytest.mark.core
def test_double_xnnpack_policy_as_tfmot():
    """tf-mot's own test prunes with PruneForLatencyOnXNNPack twice."""
    policy = kg.PruneForLatencyOnXNNPack()
    pruned = kg.prune_low_magnitude(_xnnpack_net(), pruning_policy=policy)
    with pytest.warns(UserWarning, match="already wrapped"):
        twice = kg.prune_low_magnitude(pruned, pruning_policy=policy)
    assert [w.layer.name for w in collect_wrappers(twice)] == ["pw1", "pw2"]


@pytest.mark.core
def test_xnnpack_policy_with_keras_ops_between_layers():
    """Keras ops between layers (Keras 3's answer to TF ops on tensors): element-wise
    add / subtract / multiply pass as in tf-mot; others get a clear error naming the op."""
    L = keras.layers

    def net(op):
        i = keras.Input((8, 8, 3))
        x = L.Conv2D(16, 3, strides=2, padding="valid")(L.ZeroPadding2D(1)(i))
        r = L.Conv2D(16, 1, name="pw")(x)
        return keras.Model(i, L.GlobalAveragePooling2D()(op(x, r)))

    policy = kg.PruneForLatencyOnXNNPack()
    for op in (lambda x, r: x + r, lambda x, r: x - r, lambda x, r: x * r):
        pruned = kg.prune_low_magnitude(net(op), pruning_policy=policy)
        assert [w.layer.name for w in collect_wrappers(pruned)] == ["pw"]
    for op, name in ((lambda x, r: keras.ops.concatenate([x, r], axis=-1), "Concatenate"),
                     (lambda x, r: x - keras.ops.mean(r, axis=-1, keepdims=True), "Mean")):
        with pytest.raises(ValueError, match=f"of type {name} is not supported by the "
                                             "PruneForLatencyOnXNNPack"):
            kg.prune_low_magnitude(net(op), pruning_policy=policy)


@pytest.mark.core
def test_n_by_m_on_an_input_axis_that_is_not_a_multiple_prunes_the_partial_group():
    """As tf-mot (its test expects 3 of 7 zero for 2:4): the last group is partial."""
    L = keras.layers
    model = keras.Sequential([keras.Input((7,)), L.Dense(8, name="odd_in"),
                              L.Dense(4, name="fits")])
    pruned = kg.prune_low_magnitude(model, sparsity_m_by_n=(2, 4))
    wrappers = collect_wrappers(pruned)
    assert [len(w.pruned_weights) for w in wrappers] == [1, 1]
    pruned.compile("sgd", "mse")
    pruned.fit(np.ones((8, 7)), np.ones((8, 4)), verbose=0,
               callbacks=[kg.UpdatePruningStep()])
    # 7 inputs: a group of 4 (2 zeros) and a partial group of 3 (1 zero), per output.
    assert wrappers[0].mask_counts() == [(56, 32)]  # 24 zeros, 32 kept
    assert wrappers[1].mask_counts() == [(32, 16)]  # 2 of every 4 from step 1 (tf-mot)
    with pytest.raises(ValueError, match="divisible by N=4"):
        kg.prune_low_magnitude(model, sparsity_m_by_n=(2, 4), strict=True)


@pytest.mark.core
def test_m_by_n_pairs_mean_zeros_and_old_saves_are_converted(tmp_path):
    """(M, N) is tf-mot's "M zeros in every N"; an asymmetric pair warns once that its
    meaning changed; a .keras file saved with the former meaning (N kept) loads as
    the same pattern."""
    import keras_gap.wrapper as wrapper_lib
    L = keras.layers
    wrapper_lib._WARNED_M_BY_N.discard((1, 4))
    with pytest.warns(UserWarning, match=r"\(1, 4\) means 1 zero\(s\) in every 4.*"
                                         r"sparsity_m_by_n=\(3, 4\)"):
        w = kg.PruneLowMagnitude(L.Dense(2), sparsity_m_by_n=(1, 4))
    w.build((None, 8))
    w.update_masks(0.0)
    assert w.mask_counts() == [(16, 12)]  # 3 of 4 kept
    config = w.get_config()
    assert config["m_by_n_meaning"] == "zeros"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a config of this version loads silently
        assert kg.PruneLowMagnitude.from_config(config).sparsity_m_by_n == (1, 4)
    legacy = dict(config, sparsity_m_by_n=[1, 4])
    legacy.pop("m_by_n_meaning")  # written before the change: (1, 4) meant 1 kept of 4
    with pytest.warns(UserWarning, match=r"saved by keras-gap before.*loaded as "
                                         r"sparsity_m_by_n=\(3, 4\)"):
        old = kg.PruneLowMagnitude.from_config(legacy)
    assert old.sparsity_m_by_n == (3, 4)


@pytest.mark.core
def test_very_high_sparsity_keeps_one_weight_per_tensor():
    dense = keras.layers.Dense(8)
    wrapper = kg.PruneLowMagnitude(dense, pruning_schedule=kg.ConstantSparsity(0.99, 1))
    wrapper.build((None, 10))
    wrapper.update_masks(0.99)  # tf-mot keeps max(1, round(80 * 0.01)) = 1
    assert wrapper.mask_counts() == [(80, 1)]
    x = np.random.RandomState(0).rand(4, 10).astype("float32")
    out = np_(wrapper(x))
    assert np.ptp(out, axis=0).max() > 0, "the output must not be constant"
    a, b = keras.ops.ones((10, 8)) * 1e-3, keras.ops.ones((20, 8))
    masks = kg.masks.global_topk_masks([a, b], 0.99)  # global: exact total, >= 1 each
    kept = [int(np_(m).sum()) for m in masks]
    assert kept == [1, kg.masks.num_to_keep(240, 0.99) - 1]


# Public names ----------------------------------------------------------------------------
@pytest.mark.tfmot
@needs_tfmot
def test_every_tfmot_sparsity_name_exists_in_keras_gap():
    theirs = _run_tfmot("tfmot_names.py")
    assert theirs, "tf-mot exported nothing?"
    missing = [n for n in theirs if not hasattr(kg, n)]
    assert not missing, f"tfmot.sparsity.keras names missing from keras_gap: {missing}"


@pytest.mark.core
def test_prunable_layer_and_prune_scope(tmp_path):
    class MyDense(keras.layers.Layer, kg.PrunableLayer):
        def build(self, shape):
            self.kernel = self.add_weight(shape=(shape[-1], 4), name="kernel")

        def call(self, x):
            return keras.ops.matmul(x, self.kernel)

        def get_prunable_weights(self):
            return [self.kernel]

    with pytest.raises(TypeError):
        type("NoWeights", (keras.layers.Layer, kg.PrunableLayer), {})()
    wrapper = kg.PruneLowMagnitude(MyDense())
    wrapper.build((None, 3))
    assert [v.name for v in wrapper.pruned_weights] == ["kernel"]
    pruned = kg.prune_low_magnitude(keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)]))
    path = str(tmp_path / "pruned.keras")
    pruned.save(path)
    with kg.prune_scope():
        loaded = keras.models.load_model(path)
    assert isinstance(loaded.layers[0], kg.PruneLowMagnitude)


def _xnnpack_net(extra=None):
    L = keras.layers
    inp = keras.Input((16, 16, 3))
    x = L.Conv2D(8, 3, strides=2, padding="valid")(L.ZeroPadding2D(1)(inp))
    x = L.ReLU()(L.BatchNormalization()(x))
    y = L.Conv2D(8, 1, name="pw1")(L.DepthwiseConv2D(3, padding="same")(x))
    x = L.Add()([x, y])
    if extra is not None:
        x = extra(x)
    x = L.Conv2D(16, 1, activation="relu", name="pw2")(x)
    x = L.GlobalAveragePooling2D(keepdims=True)(x)
    return keras.Model(inp, L.Dense(10, name="head")(L.Flatten()(x)))


@pytest.mark.core
def test_prune_for_latency_on_xnnpack():
    policy = kg.PruneForLatencyOnXNNPack()
    assert isinstance(policy, kg.PruningPolicy)
    pruned = kg.prune_low_magnitude(_xnnpack_net(), pruning_policy=policy)
    assert [w.layer.name for w in collect_wrappers(pruned)] == ["pw1", "pw2"]
    with pytest.raises(ValueError, match="MaxPooling2D is not supported by the "
                                         "PruneForLatencyOnXNNPack"):
        kg.prune_low_magnitude(_xnnpack_net(keras.layers.MaxPooling2D(1)),
                               pruning_policy=policy)
    plain = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
                              keras.layers.Flatten(), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="Conv2D 3x3 with strides 2"):
        kg.prune_low_magnitude(plain, pruning_policy=policy)


@pytest.mark.core
def test_pruning_summaries_accepts_tensorboard_arguments_with_a_warning():
    with pytest.warns(UserWarning, match=r"ignores the TensorBoard arguments \['profile_batch'\]"):
        kg.PruningSummaries(log_dir="unused", profile_batch=0)


@pytest.mark.core
def test_list_with_a_wrapped_layer_keeps_it():
    mine = kg.prune_low_magnitude(keras.layers.Dense(4))
    out = kg.prune_low_magnitude([mine, keras.layers.Dense(2)])
    assert out[0] is mine and isinstance(out[1], kg.PruneLowMagnitude)
    with pytest.warns(UserWarning, match="already wrapped"):  # tf-mot: returned as is
        assert kg.prune_low_magnitude([mine]) == [mine]
