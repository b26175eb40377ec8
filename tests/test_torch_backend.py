"""The pruning invariants on the PyTorch backend (skipped without torch).

Runs in a subprocess because the Keras backend is fixed at import time.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.torch

SCRIPT = textwrap.dedent('''
    import numpy as np, torch, keras, keras_gap as kg
    torch.set_num_threads(1)
    assert keras.backend.backend() == "torch"
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(128, 16)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(2)])
    sched = kg.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=6, frequency=2)
    pruned = kg.prune_low_magnitude(model, pruning_schedule=sched)
    pruned.compile(keras.optimizers.Adam(0.01),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    class Check(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            for w in kg.wrapper.collect_wrappers(self.model):
                for v, m in zip(w.pruned_weights, w.masks):
                    v, m = keras.ops.convert_to_numpy(v), keras.ops.convert_to_numpy(m)
                    assert np.count_nonzero(v[m == 0]) == 0, "masked weight not zero"

    pruned.fit(x, y, batch_size=16, epochs=2, verbose=0,
               callbacks=[kg.UpdatePruningStep(), Check()])
    wrappers = kg.wrapper.collect_wrappers(pruned)
    assert int(keras.ops.convert_to_numpy(wrappers[0].pruning_step)) == 16
    for w in wrappers:
        n, kept = w.mask_counts()[0]
        assert kept == kg.masks.num_to_keep(n, 0.8), (w.name, kept, n)
    out = keras.ops.convert_to_numpy(pruned.predict(x, verbose=0))
    stripped = kg.strip_pruning(pruned)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(stripped.predict(x, verbose=0)),
                               out, atol=1e-6)
    print("TORCH_OK")
''')


def test_pruning_invariants_on_torch_backend():
    pytest.importorskip("torch", reason="PyTorch is not installed")
    env = dict(os.environ, KERAS_BACKEND="torch")
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            env=env, timeout=600)
    assert "TORCH_OK" in result.stdout, result.stderr[-3000:]
