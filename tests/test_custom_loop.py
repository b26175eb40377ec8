"""Custom training loops as tf-mot's "Pruning in Keras" guide writes them (issue 13).

TensorFlow: the guide's GradientTape loop, unchanged but for the import.
Every backend: the same callbacks driven by hand around ``train_on_batch``.
"""

import glob
import os

import keras
import numpy as np
import pytest

import keras_gap as kg
from keras_gap import masks as mask_lib
from keras_gap.wrapper import collect_wrappers

EPOCHS, BATCHES, BATCH = 4, 4, 16
TARGET = 0.8


def np_(x):
    return keras.ops.convert_to_numpy(x)


def _data():
    rng = np.random.RandomState(0)
    x = rng.rand(BATCHES * BATCH, 12).astype("float32")
    y = (x[:, :6].sum(1) > x[:, 6:].sum(1)).astype("int32")
    return x, y


def _pruned_model():
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dropout(0.1), keras.layers.Dense(2)])
    # Steps 1..16; updates at 3, 6, 9, 12; 0.8 from step 12.
    schedule = kg.PolynomialDecay(0.0, TARGET, begin_step=0, end_step=12, frequency=3)
    return kg.prune_low_magnitude(model, pruning_schedule=schedule)


def _read_scalars(log_dir):
    import tensorflow as tf
    values = {}
    for path in glob.glob(os.path.join(log_dir, "**", "events.out.tfevents*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                values.setdefault(v.tag, []).append(
                    (event.step, float(tf.make_ndarray(v.tensor))))
    return values


def _check_pruned(model, log_dir):
    wrappers = collect_wrappers(model)
    for w in wrappers:
        assert int(np_(w.pruning_step)) == EPOCHS * BATCHES
        for v, m, (n, kept) in zip(w.pruned_weights, w.masks, w.mask_counts()):
            assert kept == mask_lib.num_to_keep(n, TARGET), (v.path, kept, n)
            assert np.all(np_(v)[np_(m) == 0] == 0), v.path
    scalars = _read_scalars(log_dir)
    # tf-mot's PruningSummaries writes at each epoch's start in this loop.
    steps = [s for s, _ in scalars["sparsity/overall"]]
    assert steps == [0, 4, 8, 12], steps
    assert scalars["sparsity/overall"][-1][1] == pytest.approx(TARGET, abs=0.01)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="tf.GradientTape loop (TensorFlow backend)")
def test_tfmot_guide_gradient_tape_loop(tmp_path):
    import tensorflow as tf
    x, y = _data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    model_for_pruning = _pruned_model()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras.optimizers.Adam(1e-2)
    log_dir = str(tmp_path / "logs")

    # The guide's loop (tfmot.sparsity.keras -> keras_gap).
    unused_arg = -1
    model_for_pruning.optimizer = optimizer
    step_callback = kg.UpdatePruningStep()
    step_callback.set_model(model_for_pruning)
    log_callback = kg.PruningSummaries(log_dir=log_dir)
    log_callback.set_model(model_for_pruning)
    step_callback.on_train_begin()
    for _ in range(EPOCHS):
        log_callback.on_epoch_begin(epoch=unused_arg)
        for x_batch, y_batch in dataset:
            step_callback.on_train_batch_begin(batch=unused_arg)
            with tf.GradientTape() as tape:
                logits = model_for_pruning(x_batch, training=True)
                loss_value = loss(y_batch, logits)
                grads = tape.gradient(loss_value, model_for_pruning.trainable_variables)
            optimizer.apply_gradients(zip(grads, model_for_pruning.trainable_variables))
        step_callback.on_epoch_end(batch=unused_arg)
    _check_pruned(model_for_pruning, log_dir)


@pytest.mark.core
def test_callbacks_driven_by_hand_around_train_on_batch(tmp_path):
    """The same pattern on every backend (JAX has no GradientTape)."""
    x, y = _data()
    model = _pruned_model()
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    log_dir = str(tmp_path / "logs")
    step_callback = kg.UpdatePruningStep()
    step_callback.set_model(model)
    log_callback = kg.PruningSummaries(log_dir=log_dir)
    log_callback.set_model(model)
    step_callback.on_train_begin()
    for _ in range(EPOCHS):
        log_callback.on_epoch_begin(epoch=-1)
        for i in range(BATCHES):
            step_callback.on_train_batch_begin(batch=i)
            model.train_on_batch(x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH])
        step_callback.on_epoch_end(batch=-1)
    step_callback.on_train_end()
    _check_pruned(model, log_dir)
    # A later fit with the callback continues from the same step.
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[kg.UpdatePruningStep()])
    assert int(np_(collect_wrappers(model)[0].pruning_step)) == (EPOCHS + 1) * BATCHES


@pytest.mark.core
def test_on_epoch_end_before_set_model_is_a_clear_error():
    with pytest.raises(ValueError, match=r"before set_model\(\)"):
        kg.UpdatePruningStep().on_epoch_end(batch=-1)
    with pytest.raises(ValueError, match=r"before set_model\(\)"):
        kg.UpdatePruningStep().on_train_begin()
    with pytest.raises(ValueError, match=r"before set_model\(\)"):
        kg.PruningSummaries(log_dir="unused").on_epoch_begin(epoch=-1)


@pytest.mark.core
def test_update_pruning_step_without_wrappers_warns_and_does_nothing():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    with pytest.warns(UserWarning, match="found no PruneLowMagnitude layers"):
        model.fit(np.ones((8, 4)), np.ones((8, 2)), epochs=1, verbose=0,
                  callbacks=[kg.UpdatePruningStep()])
    model.fit(np.ones((8, 4)), np.ones((8, 2)), epochs=1, verbose=0)  # no guard left behind


@pytest.mark.core
def test_gap_callback_driven_by_hand():
    x, y = _data()
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)])
    pruned = kg.prune_gap(model, target_sparsity=0.75, num_partitions=2, steps_per_step=2,
                          finetune_steps=2)
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cb = kg.GaPCallback(verbose=0)
    cb.set_model(pruned)
    cb.on_train_begin()
    for _ in range(2):  # 2 GaP steps of 2 batches, then 2 fine-tuning batches: 6 steps
        for i in range(3):
            cb.on_train_batch_begin(batch=i)
            pruned.train_on_batch(x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH])
        cb.on_epoch_end(batch=-1)
    cb.on_train_end()
    for w in collect_wrappers(pruned):
        for n, kept in w.mask_counts():
            assert kept == mask_lib.num_to_keep(n, 0.75), w.name
