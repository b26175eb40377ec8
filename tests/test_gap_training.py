"""GaP end to end: invariants after every training step, P-GaP, resume, errors."""

import os
import warnings

import keras
import numpy as np
import pytest

import keras_gap as kg
from keras_gap.masks import num_to_keep

TARGET = 0.8


def _data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 8, 8, 1), dtype=np.float32)
    y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))).astype("int32")
    return x, y


def _model():
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, activation="relu", name="c1"),
        keras.layers.Conv2D(8, 3, activation="relu", name="c2"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(16, activation="relu", name="d1"),
        keras.layers.Dense(2, name="d2"),
    ])


def _compile(model, optimizer=None):
    model.compile(optimizer or keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _np(v):
    return keras.ops.convert_to_numpy(v)


class InvariantChecker(keras.callbacks.Callback):
    """Checks GaP's invariants after every training step."""

    def __init__(self, target=TARGET, one_dense=True):
        super().__init__()
        self.target = target
        self.one_dense = one_dense
        self.steps_checked = 0
        self.grown_seen = []

    def on_train_batch_end(self, batch, logs=None):
        grown = int(logs["gap_partition"])
        self.grown_seen.append(grown)
        dense_partitions = []
        for p, wrappers in kg.gap_partitions(self.model).items():
            all_dense = True
            for w in wrappers:
                for v, m in zip(w.pruned_weights, w.masks):
                    v, m = _np(v), _np(m)
                    assert np.all(v[m == 0] == 0), f"masked weight non-zero in {w.name}"
                    if p == grown:
                        assert m.all(), f"grown partition {p} is not dense"
                    else:
                        kept = int(m.sum())
                        assert kept == num_to_keep(m.size, self.target), (
                            f"partition {p} ({w.name}) keeps {kept} of {m.size}")
                    all_dense &= bool(m.all())
            if all_dense:
                dense_partitions.append(p)
        if self.one_dense and grown >= 0:
            assert dense_partitions == [grown], dense_partitions
        if grown == -1:
            assert dense_partitions == []
        self.steps_checked += 1


@pytest.mark.core
@pytest.mark.parametrize("method", ["cgap", "pgap"])
def test_gap_invariants_every_step(method):
    keras.utils.set_random_seed(1)
    x, y = _data()
    pruned = kg.prune_gap(_model(), target_sparsity=TARGET, num_partitions=2,
                          epochs_per_step=1, rounds=2, finetune_epochs=1,
                          partitioning="sequential", method=method)
    _compile(pruned)
    checker = InvariantChecker()
    history = pruned.fit(x, y, batch_size=64, epochs=kg.gap_total_epochs(pruned),
                         callbacks=[kg.GaPCallback(verbose=0), checker], verbose=0)
    steps = 4
    assert checker.steps_checked == 5 * steps
    assert checker.grown_seen == [0] * steps + [1] * steps + [0] * steps + [1] * steps + [-1] * steps
    report = kg.sparsity_report(kg.strip_pruning(pruned))
    for row in report.rows:
        assert row.nonzero == num_to_keep(row.params, TARGET), row
    assert history.history["gap_partition"] == [0, 1, 0, 1, -1]
    assert history.history["loss"][-1] < history.history["loss"][0]


@pytest.mark.core
def test_gap_global_distribution_hits_target_exactly():
    keras.utils.set_random_seed(2)
    x, y = _data()
    pruned = kg.prune_gap(_model(), target_sparsity=TARGET, num_partitions=2,
                          steps_per_step=3, rounds=1, distribution="global")
    _compile(pruned)
    pruned.fit(x, y, batch_size=64, epochs=2,
               callbacks=[kg.GaPCallback(verbose=0)], verbose=0)
    report = kg.sparsity_report(pruned)
    budget = sum(num_to_keep(r.params, TARGET) for r in report.rows)
    assert report.nonzero == budget
    # Global ratios differ between layers (they are not all the uniform target).
    assert len({round(r.sparsity, 3) for r in report.rows}) > 1



@pytest.mark.core
def test_gap_global_one_layer_per_partition_is_non_uniform():
    """With one layer per partition a global prune-back still moves weights
    between layers; a sparse layer can lose weights but never regrows one."""
    keras.utils.set_random_seed(4)
    x, y = _data()
    pruned = kg.prune_gap(_model(), target_sparsity=TARGET, num_partitions=4,
                          partitioning=[["c1"], ["c2"], ["d1"], ["d2"]],
                          steps_per_step=3, rounds=1, distribution="global")
    _compile(pruned)
    wrappers = {w.layer.name: w for w in kg.wrapper.collect_wrappers(pruned)}
    seen = []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.model  # JAX: sync the trainer state into the variables first
            seen.append({n: np.asarray(keras.ops.convert_to_numpy(w.masks[0]))
                         for n, w in wrappers.items()})

    gap = kg.GaPCallback(verbose=0)
    pruned.fit(x, y, batch_size=64, epochs=4, callbacks=[gap, Watch()], verbose=0)
    report = kg.sparsity_report(pruned)
    assert report.nonzero == sum(num_to_keep(r.params, TARGET) for r in report.rows)
    # Not the uniform counts (which differ from each other only by rounding).
    moved = [abs(r.nonzero - num_to_keep(r.params, TARGET)) for r in report.rows]
    assert max(moved) > 2, moved
    # After the first grow, a layer that is not dense only loses weights until it is grown.
    for name in wrappers:
        for before, after in zip(seen, seen[1:]):
            if before[name].all() or after[name].all():
                continue  # its own grown phase (and the boundary into or out of it)
            assert not (after[name] > before[name]).any(), name


def test_gap_keep_dense_and_random_start():
    keras.utils.set_random_seed(3)
    x, y = _data()
    pruned = kg.prune_gap(_model(), target_sparsity=0.9, num_partitions=2,
                          steps_per_step=2, rounds=1, keep_dense=["c1", "d2"], seed=5)
    names = [w.layer.name for w in kg.wrapper.collect_wrappers(pruned)]
    assert names == ["c2", "d1"]
    _compile(pruned)
    cb = kg.GaPCallback(verbose=0)
    pruned.fit(x[:64], y[:64], batch_size=64, epochs=1, callbacks=[cb], verbose=0)
    # The sparse partition started from an exact-count random mask (no magnitude).
    d1 = kg.gap_partitions(pruned)[1][0]
    mask = _np(d1.masks[0])
    assert int(mask.sum()) == num_to_keep(mask.size, 0.9)


def test_gap_reset_optimizer_regrown_was_removed_with_a_clear_error():
    with pytest.raises(ValueError, match="'regrown' was removed.*'none'"):
        kg.GaPCallback(reset_optimizer="regrown")


def test_gap_regrown_weights_restart_with_zero_slots_under_none():
    """What 'regrown' promised holds for every mode: slots of removed weights are
    zeroed when they are pruned, so a regrown weight starts with zero slots."""
    keras.utils.set_random_seed(4)
    x, y = _data(320)
    pruned = kg.prune_gap(_model(), target_sparsity=TARGET, num_partitions=2,
                          steps_per_step=2, rounds=2, partitioning="sequential")
    _compile(pruned)
    seen = {}

    class Probe(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            # Runs after GaPCallback's boundary work (callback order).
            if batch == 4:  # boundary 2: partition 0 regrown
                w = kg.gap_partitions(self.model)[0][0]
                from keras_gap.optimizer_state import slot_variables
                seen["slots"] = [_np(s) for s in slot_variables(self.model.optimizer,
                                                                 w.pruned_weights[0])]
                seen["weight"] = _np(w.pruned_weights[0])
                seen["mask"] = _np(w.masks[0])

    pruned.fit(x, y, batch_size=64, epochs=1,
               callbacks=[kg.GaPCallback(reset_optimizer="none", verbose=0), Probe()],
               verbose=0)
    assert seen["mask"].all()
    regrown = seen["weight"] == 0
    assert regrown.sum() >= num_to_keep(regrown.size, 1 - TARGET) - 1
    assert len(seen["slots"]) == 2  # Adam: momentum and velocity
    for slot in seen["slots"]:
        assert np.all(slot[regrown] == 0)


def test_gap_resume_from_keras_checkpoint_matches_uninterrupted(tmp_path):
    import tensorflow as tf
    tf.config.experimental.enable_op_determinism()
    x, y = _data(192)

    def fresh():
        keras.utils.set_random_seed(11)
        p = kg.prune_gap(_model(), target_sparsity=TARGET, num_partitions=3,
                         epochs_per_step=1, rounds=1, finetune_epochs=1, seed=3)
        return _compile(p, keras.optimizers.SGD(0.05, momentum=0.9))

    full = fresh()
    full.fit(x, y, batch_size=64, epochs=4, shuffle=False,
             callbacks=[kg.GaPCallback(verbose=0)], verbose=0)

    part = fresh()
    part.fit(x, y, batch_size=64, epochs=2, shuffle=False,
             callbacks=[kg.GaPCallback(verbose=0)], verbose=0)
    path = os.path.join(tmp_path, "mid.keras")
    part.save(path)
    resumed = keras.models.load_model(path)
    assert int(_np(kg.wrapper.collect_wrappers(resumed)[0].pruning_step)) == 6
    resumed.fit(x, y, batch_size=64, epochs=4, initial_epoch=2, shuffle=False,
                callbacks=[kg.GaPCallback(verbose=0)], verbose=0)

    for a, b in zip(kg.wrapper.collect_wrappers(full), kg.wrapper.collect_wrappers(resumed)):
        for ma, mb in zip(a.masks, b.masks):
            np.testing.assert_array_equal(_np(ma), _np(mb))
        for va, vb in zip(a.pruned_weights, b.pruned_weights):
            np.testing.assert_allclose(_np(va), _np(vb), atol=1e-6)


def test_gap_backup_and_restore_resumes(tmp_path):
    x, y = _data(128)
    keras.utils.set_random_seed(5)
    pruned = kg.prune_gap(_model(), target_sparsity=TARGET, num_partitions=2,
                          epochs_per_step=1, rounds=1, finetune_epochs=1)
    _compile(pruned)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        pruned.fit(x, y, batch_size=64, epochs=3, verbose=0,
                   callbacks=[kg.GaPCallback(verbose=0), backup, Crash()])
    checker = InvariantChecker()
    history = pruned.fit(x, y, batch_size=64, epochs=3, verbose=0,
                         callbacks=[kg.GaPCallback(verbose=0), backup, checker])
    # Only the last epoch (fine-tuning) ran again after the restore.
    assert checker.grown_seen == [-1, -1]
    assert history.history["gap_partition"] == [-1]


def test_gap_errors():
    with pytest.raises(ValueError, match="more than the 4 prunable layers"):
        kg.prune_gap(_model(), num_partitions=5)
    with pytest.raises(ValueError, match="target_sparsity"):
        kg.prune_gap(_model(), target_sparsity=1.0)
    with pytest.raises(ValueError, match="epochs_per_step"):
        kg.prune_gap(_model(), epochs_per_step=0)
    with pytest.raises(ValueError, match="steps_per_step"):
        kg.prune_gap(_model(), steps_per_step=0)
    with pytest.raises(ValueError, match="not in the model"):
        kg.prune_gap(_model(), keep_dense=["nope"])
    with pytest.raises(ValueError, match="appears in partitions"):
        kg.prune_gap(_model(), num_partitions=2, partitioning=[["c1", "c2"], ["c2", "d1", "d2"]])
    with pytest.raises(ValueError, match="method"):
        kg.prune_gap(_model(), method="xgap")
    # GaPCallback on a model prune_gap did not prepare.
    x, y = _data(64)
    plain = _compile(kg.prune_low_magnitude(_model()))
    with pytest.raises(ValueError, match="not prepared by keras_gap.prune_gap"):
        plain.fit(x, y, epochs=1, verbose=0, callbacks=[kg.GaPCallback()])


def test_gap_short_fit_warns():
    x, y = _data(128)
    pruned = _compile(kg.prune_gap(_model(), num_partitions=2, epochs_per_step=2,
                                   rounds=1, finetune_epochs=1))
    assert kg.gap_total_epochs(pruned) == 5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned.fit(x, y, batch_size=64, epochs=1, verbose=0,
                   callbacks=[kg.GaPCallback(verbose=0)])
    messages = [str(w.message) for w in caught]
    assert any("epochs=5" in m for m in messages), messages


@pytest.mark.core
def test_gap_with_fggp_prune_back():
    keras.utils.set_random_seed(6)
    x, y = _data()
    pruned = kg.prune_gap(_model(), target_sparsity=TARGET, num_partitions=2,
                          steps_per_step=4, rounds=1, criterion=kg.criteria.FGGP(rate=0.9))
    _compile(pruned)
    checker = InvariantChecker()
    pruned.fit(x, y, batch_size=64, epochs=3, verbose=0,
               callbacks=[kg.GaPCallback(verbose=0), checker])
    assert checker.grown_seen[-1] == -1
    # The optimizer is restored after fit (the gradient recorder is detached).
    assert type(pruned.optimizer).__name__ == "Adam"
    low_rate = _compile(kg.prune_gap(_model(), target_sparsity=TARGET, num_partitions=2,
                                     steps_per_step=4, rounds=1,
                                     criterion=kg.criteria.FGGP(rate=0.5)))
    with pytest.raises(ValueError, match="larger rate"):
        low_rate.fit(x, y, batch_size=64, epochs=2, verbose=0,
                     callbacks=[kg.GaPCallback(verbose=0)])
    with pytest.raises(ValueError, match="global"):
        kg.prune_gap(_model(), distribution="global", criterion=kg.criteria.FGGP(rate=0.9))
    with pytest.raises(ValueError, match="blocks"):
        kg.prune_gap(_model(), distribution="global", block_size=(4, 1))


def test_gap_callback_tensorboard_and_epoch_logs(tmp_path):
    x, y = _data(128)
    pruned = _compile(kg.prune_gap(_model(), target_sparsity=TARGET, num_partitions=2,
                                   epochs_per_step=1, rounds=1))
    history = pruned.fit(x, y, batch_size=64, epochs=2, verbose=0,
                         callbacks=[kg.GaPCallback(log_dir=str(tmp_path), verbose=0)])
    assert history.history["sparsity_p0"] == [0.0, pytest.approx(TARGET, abs=0.01)]
    assert history.history["sparsity_p1"][0] == pytest.approx(TARGET, abs=0.01)
    events = [f for _, _, files in os.walk(tmp_path) for f in files if "tfevents" in f]
    assert events, "GaPCallback(log_dir=...) wrote no TensorBoard event file"


class _Scale(keras.layers.Layer):
    """A custom layer with a weight keras-gap does not know how to prune."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.scale


def test_gap_unsupported_layers():
    def model():
        return keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, name="a"),
                                 _Scale(name="scale"), keras.layers.Dense(4, name="b"),
                                 keras.layers.Dense(2, name="c")])
    with pytest.raises(ValueError, match="'scale'.*unsupported_layers='keep_dense'"):
        kg.prune_gap(model(), num_partitions=2)
    pruned = kg.prune_gap(model(), num_partitions=2, unsupported_layers="keep_dense")
    assert [w.layer.name for w in kg.wrapper.collect_wrappers(pruned)] == ["a", "b", "c"]


def test_pgap_resume_mid_round_warns_and_completes(tmp_path):
    x, y = _data(128)
    keras.utils.set_random_seed(7)
    pruned = _compile(kg.prune_gap(_model(), target_sparsity=TARGET, num_partitions=2,
                                   epochs_per_step=1, rounds=1, finetune_epochs=1,
                                   method="pgap"))
    pruned.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=[kg.GaPCallback(verbose=0)])
    path = str(tmp_path / "mid_round.keras")
    pruned.save(path)
    resumed = keras.models.load_model(path)
    with pytest.warns(UserWarning, match="middle of a round"):
        resumed.fit(x, y, batch_size=64, epochs=3, initial_epoch=1, verbose=0,
                    callbacks=[kg.GaPCallback(verbose=0)])
    for row in kg.sparsity_report(resumed).rows:
        assert row.nonzero == num_to_keep(row.params, TARGET)


def test_merge_copies_unit():
    from keras_gap.gap.pgap import merge_copies
    a = [np.array([1.0]), np.array([2.0]), np.array([10.0]), np.array([3], "int32")]
    b = [np.array([5.0]), np.array([6.0]), np.array([20.0]), np.array([4], "int32")]
    merged = merge_copies({0: a, 1: b}, {0: {0}, 1: {1}})
    assert [float(m[0]) for m in merged] == [1.0, 6.0, 15.0, 3.0]
    with pytest.raises(ValueError, match="one copy per partition"):
        merge_copies({0: a}, {0: {0}, 1: {1}})
    assert float(merge_copies({0: a}, {0: {0}, 1: {1}}, base=b)[1][0]) == 6.0


@pytest.mark.core
def test_prune_gap_target_tflite_blocks_dense_kernels():
    pruned = kg.prune_gap(_model(), target_sparsity=0.75, num_partitions=2,
                          steps_per_step=2, target="tflite")
    blocks = {w.layer.name: tuple(w.block_size) for w in kg.wrapper.collect_wrappers(pruned)}
    # Dense kernels whose input size is a multiple of 4 get TFLite's (4, 1)
    # blocks; convolutions stay unstructured.
    assert blocks == {"c1": (1, 1), "c2": (1, 1), "d1": (4, 1), "d2": (4, 1)}
    with pytest.raises(ValueError, match="`target` must be one of.*received 'tpu'"):
        kg.prune_gap(_model(), target_sparsity=0.75, num_partitions=2, steps_per_step=2,
                     target="tpu")
