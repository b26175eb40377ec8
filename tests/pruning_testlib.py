"""Shared helpers for the keras-gap tests (tiny models and data, invariants)."""

import numpy as np
import keras
from keras import ops

from keras_gap import masks as mask_lib
from keras_gap.wrapper import collect_wrappers


def np_(x):
    return np.asarray(ops.convert_to_numpy(x))


def blobs(n=300, num_classes=3, dim=16, seed=0):
    """Linearly separable-ish Gaussian blobs: (x float32 [n, dim], y int32 [n])."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, size=(num_classes, dim))
    y = rng.integers(0, num_classes, size=n).astype("int32")
    x = (centers[y] + rng.normal(0, 1, size=(n, dim))).astype("float32")
    return x, y


def image_blobs(n=240, num_classes=3, size=8, channels=1, seed=0):
    """Tiny images whose class is a bright quadrant: (x [n, s, s, c], y [n])."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, size=n).astype("int32")
    x = rng.normal(0, 0.3, size=(n, size, size, channels)).astype("float32")
    h = size // 2
    for i, c in enumerate(y):
        r, q = divmod(int(c), 2)
        x[i, r * h:(r + 1) * h, q * h:(q + 1) * h, :] += 1.5
    return x, y


def mlp(dim=16, num_classes=3, hidden=32, name=None):
    return keras.Sequential([
        keras.Input((dim,)),
        keras.layers.Dense(hidden, activation="relu"),
        keras.layers.Dense(hidden, activation="relu"),
        keras.layers.Dense(num_classes),
    ], name=name)


def small_cnn(size=8, channels=1, num_classes=3):
    return keras.Sequential([
        keras.Input((size, size, channels)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(num_classes),
    ])


def compile_model(model, optimizer="adam"):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    return model


def masked_nonzeros(wrapper):
    """Number of entries that are masked out but not exactly zero, per weight."""
    return [int(np.count_nonzero(np_(w)[np_(m) == 0]))
            for w, m in zip(wrapper.pruned_weights, wrapper.masks)]


def expected_sparsity(schedule, last_step):
    """Sparsity of the last mask update at a step in [1, ``last_step``] (or None).

    Training steps are numbered from 1 (tf-mot): step 0 never runs."""
    for step in range(last_step, 0, -1):
        should, sparsity = schedule(step)
        if should:
            return sparsity
    return None


class InvariantChecker(keras.callbacks.Callback):
    """After EVERY training batch: masked weights are exactly 0, the mask keeps
    exactly ``num_to_keep(n, scheduled sparsity)`` entries and ``pruning_step``
    counts the batches. Failures are collected and asserted by the test."""

    def __init__(self, schedule, start_step=0):
        super().__init__()
        self.schedule = schedule
        self.global_batch = start_step
        self.failures = []
        self.checked = 0
        self.seen_sparsities = []

    def on_train_batch_end(self, batch, logs=None):
        model = self.model  # syncs JAX trainer state into the variables
        step = self.global_batch + 1  # tf-mot numbering: the first batch is step 1
        sparsity = expected_sparsity(self.schedule, step)
        for w in collect_wrappers(model):
            bad = masked_nonzeros(w)
            if any(bad):
                self.failures.append(f"step {step}: {w.name} masked non-zeros {bad}")
            counter = w.current_step()  # the live count (pruning_step: at epoch ends)
            if counter != step:
                self.failures.append(
                    f"step {step}: {w.name}.current_step()={counter}, expected {step}")
            for weight, (n, kept) in zip(w.pruned_weights, w.mask_counts()):
                want = n if sparsity is None else mask_lib.num_to_keep(n, sparsity)
                if kept != want:
                    self.failures.append(
                        f"step {step}: {weight.path} keeps {kept}/{n}, schedule "
                        f"sparsity {sparsity} wants {want}")
        self.seen_sparsities.append(sparsity)
        self.checked += 1
        self.global_batch += 1
