"""Tiny model and data for tests/test_ray_runner.py (shipped to Ray workers by value)."""

import os
import signal

import numpy as np


def build():
    """A compiled 3-layer MLP with fixed initial weights."""
    import keras
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((8,)),
                              keras.layers.Dense(16, activation="relu", name="d1"),
                              keras.layers.Dense(16, activation="relu", name="d2"),
                              keras.layers.Dense(3, name="out")])
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def build_uncompiled():
    model = build()
    import keras
    return keras.Sequential(model.layers)


def build_unprunable():
    import keras
    model = keras.Sequential([keras.Input((8,)), keras.layers.Activation("relu")])
    model.compile("sgd", "mse")
    return model


def arrays():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = ((x[:, 0] > 0).astype("int32") + (x[:, 1] > 1).astype("int32"))
    return x, y


def data():
    return arrays()


def failing_data():
    raise OSError("training data unavailable on this worker (test)")


def data_failing_on_workers(driver_pid):
    if os.getpid() != driver_pid:
        raise OSError("training data unavailable on this worker (test)")
    return arrays()


def killing_data(marker, driver_pid):
    """The arrays as a PyDataset (batches of 32, in order) that SIGKILLs its
    worker process at its second batch, once (``marker`` records the pid)."""
    import keras

    x, y = arrays()

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return len(x) // 32

        def __getitem__(self, i):
            if i == 1 and os.getpid() != driver_pid and not os.path.exists(marker):
                with open(marker, "w") as f:
                    f.write(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            return x[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32]

    return Batches()
