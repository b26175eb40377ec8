"""Real training: masked weights are exactly 0 and sparsity is exactly as
scheduled after EVERY training step, with Adam and SGD+momentum."""

import numpy as np
import pytest
import keras

import keras_gap as kg
from pruning_testlib import (InvariantChecker, blobs, compile_model, image_blobs,
                             mlp, small_cnn)

pytestmark = pytest.mark.core

OPTIMIZERS = {
    "adam": lambda: keras.optimizers.Adam(0.01),
    "sgd_momentum": lambda: keras.optimizers.SGD(0.05, momentum=0.9),
}


def _fit_and_check(model, x, y, schedule, optimizer, epochs, batch_size, **prune_kwargs):
    pruned = kg.prune_low_magnitude(model, pruning_schedule=schedule, **prune_kwargs)
    compile_model(pruned, OPTIMIZERS[optimizer]())
    checker = InvariantChecker(schedule)
    history = pruned.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0,
                         shuffle=True, callbacks=[kg.UpdatePruningStep(), checker])
    steps = epochs * -(-len(x) // batch_size)
    assert checker.checked == steps, "the invariant checker must see every step"
    assert not checker.failures, "\n".join(checker.failures[:10])
    return pruned, history, checker


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_mlp_gradual_pruning_invariants_every_step(optimizer):
    x, y = blobs(n=320)
    # 10 steps per epoch, 3 epochs (steps 1..30, tf-mot numbering): updates at
    # 3, 6, ..., 18; final 0.8 from step 18.
    schedule = kg.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=18, frequency=3)
    pruned, history, checker = _fit_and_check(mlp(), x, y, schedule, optimizer,
                                              epochs=3, batch_size=32)
    assert checker.seen_sparsities[-1] == pytest.approx(0.8)
    assert len(set(checker.seen_sparsities)) >= 5, "sparsity should rise gradually"
    acc = pruned.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
    assert acc > 0.6, f"accuracy {acc:.2f} is not better than chance (1/3)"
    assert history.history["sparsity"][-1] == pytest.approx(
        kg.callbacks.overall_sparsity(kg.wrapper.collect_wrappers(pruned)))


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_cnn_constant_sparsity_invariants_every_step(optimizer):
    x, y = image_blobs(n=192)
    schedule = kg.ConstantSparsity(0.7, begin_step=2, end_step=10, frequency=4)
    pruned, _, checker = _fit_and_check(small_cnn(), x, y, schedule, optimizer,
                                        epochs=2, batch_size=16)
    # Steps are numbered from 1 (tf-mot): begin_step=2 is the second batch.
    assert checker.seen_sparsities[:2] == [None, 0.7], "first pruning at begin_step"
    acc = pruned.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
    assert acc > 0.5, f"accuracy {acc:.2f} is not better than chance (1/3)"


def test_block_and_n_by_m_structures_hold_through_training():
    x, y = blobs(n=160)
    schedule = kg.ConstantSparsity(0.75, begin_step=0, frequency=2)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(3)])
    pruned, _, _ = _fit_and_check(model, x, y, schedule, "adam", epochs=1,
                                  batch_size=32, block_size=(4, 1))
    kernel_mask = np.asarray(keras.ops.convert_to_numpy(
        kg.wrapper.collect_wrappers(pruned)[0].masks[0]))
    per_block = kernel_mask.reshape(4, 4, 32).sum(1)
    assert set(np.unique(per_block)) <= {0.0, 4.0}

    keras.backend.clear_session()
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(4)])
    pruned = kg.prune_low_magnitude(model, sparsity_m_by_n=(2, 4),
                                    pruning_schedule=schedule)
    compile_model(pruned, keras.optimizers.Adam(0.01))
    pruned.fit(x, y, epochs=1, batch_size=32, verbose=0,
               callbacks=[kg.UpdatePruningStep()])
    for w in kg.wrapper.collect_wrappers(pruned):
        m = np.asarray(keras.ops.convert_to_numpy(w.masks[0]))
        groups = m.reshape(m.shape[0] // 4, 4, m.shape[1]).sum(1)
        np.testing.assert_array_equal(groups, 2, err_msg=w.name)
        k = np.asarray(keras.ops.convert_to_numpy(w.pruned_weights[0]))
        assert np.count_nonzero(k[m == 0]) == 0


@pytest.mark.skipif(keras.backend.backend() == "torch",
                    reason="Keras' PyTorch trainer only allows steps_per_execution=1")
def test_steps_per_execution_counts_steps_exactly():
    x, y = blobs(n=128)
    schedule = kg.ConstantSparsity(0.5, begin_step=0, frequency=100)
    pruned = kg.prune_low_magnitude(mlp(), pruning_schedule=schedule)
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   steps_per_execution=2)
    cb = kg.UpdatePruningStep()
    pruned.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[cb])
    steps = [int(keras.ops.convert_to_numpy(w.pruning_step))
             for w in kg.wrapper.collect_wrappers(pruned)]
    assert steps == [8, 8, 8]
    assert cb.step == 8
