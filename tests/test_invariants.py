"""The masks hold under every training setup: steps_per_execution, every optimizer,
shared layers, EMA, checkpoints written in the middle of an epoch.

Each test here failed on keras-gap before `MaskedOptimizer` (masks enforced after
the optimizer's update inside the compiled step) and the callback-kept step count.
"""

import numpy as np
import pytest
import keras

import keras_gap as kg
from keras_gap.wrapper import collect_wrappers
from pruning_testlib import InvariantChecker, blobs, compile_model, masked_nonzeros, mlp, np_

pytestmark = pytest.mark.core

TORCH = keras.backend.backend() == "torch"
no_spe_on_torch = pytest.mark.skipif(
    TORCH, reason="Keras' PyTorch trainer only allows steps_per_execution=1")


def _sgd_map():
    return keras.optimizers.MultiOptimizer(keras.optimizers.OptimizerMap(
        keras.optimizers.Adam(0.01), {"dense_1": keras.optimizers.SGD(0.05, momentum=0.9)}))


# Optimizers whose update moves masked entries (Muon orthogonalizes the whole
# matrix; AdamW decays; a composite hides its slots), and the usual ones.
OPTIMIZERS = {
    "muon": lambda: keras.optimizers.Muon(0.02),
    "lion": lambda: keras.optimizers.Lion(1e-3),
    "adafactor": lambda: keras.optimizers.Adafactor(0.01),
    "adamw_decay": lambda: keras.optimizers.AdamW(0.01, weight_decay=0.5),
    "loss_scale": lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(0.01)),
    "multi_optimizer": _sgd_map,
    "ema": lambda: keras.optimizers.Adam(0.01, use_ema=True, ema_momentum=0.5),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_masked_weights_are_zero_after_every_step_whatever_the_optimizer(name):
    x, y = blobs(n=160)
    # Masks change at steps 2, 4, ..., 10 (tf-mot numbering), then stay fixed.
    schedule = kg.PolynomialDecay(0.0, 0.75, begin_step=0, end_step=10, frequency=2)
    pruned = kg.prune_low_magnitude(mlp(), pruning_schedule=schedule)
    compile_model(pruned, OPTIMIZERS[name]())
    checker = InvariantChecker(schedule)
    pruned.fit(x, y, epochs=3, batch_size=32, verbose=0,
               callbacks=[kg.UpdatePruningStep(), checker])
    assert checker.checked == 15
    assert not checker.failures, "\n".join(checker.failures[:6])
    for w in collect_wrappers(pruned):  # also after fit (EMA swaps weights in at the end)
        assert masked_nonzeros(w) == [0] * len(w.masks), w.name
    assert kg.callbacks.overall_sparsity(collect_wrappers(pruned)) == pytest.approx(0.75, abs=1e-2)


def test_after_fit_model_optimizer_is_the_compiled_one_and_next_fit_reuses_the_step():
    x, y = blobs(n=64)
    pruned = kg.prune_low_magnitude(mlp(), pruning_schedule=kg.ConstantSparsity(0.5, 0, frequency=1))
    opt = keras.optimizers.Muon(0.02)
    compile_model(pruned, opt)
    cb = kg.UpdatePruningStep()
    pruned.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[cb])
    assert pruned.optimizer is opt
    masking = cb._masking
    step_function = pruned.train_function  # the guard until the next fit
    pruned.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[cb])
    assert cb._masking is masking, "the second fit must reuse the wrapper (no retrace)"
    assert pruned.optimizer is opt and step_function is not None
    assert [w.current_step() for w in collect_wrappers(pruned)] == [4, 4, 4]


def _shared_model():
    inp = keras.Input((16,))
    shared = keras.layers.Dense(16, activation="relu", name="shared")
    h = shared(keras.layers.Dense(16, name="into")(inp))
    h = shared(h)  # the same layer at a second call site
    return keras.Model(inp, keras.layers.Dense(3, name="head")(h))


def test_a_shared_layer_counts_one_step_per_batch():
    x, y = blobs(n=256)
    # Masks update at steps 5, 10, 15 (not at 3, 5, 8 as a double-counting layer would).
    schedule = kg.PolynomialDecay(0.0, 0.6, begin_step=0, end_step=15, frequency=5)
    pruned = kg.prune_low_magnitude(_shared_model(), pruning_schedule=schedule)
    compile_model(pruned)
    checker = InvariantChecker(schedule)
    pruned.fit(x, y, epochs=2, batch_size=32, verbose=0,
               callbacks=[kg.UpdatePruningStep(), checker])
    assert not checker.failures, "\n".join(checker.failures[:6])
    steps = [int(np_(w.pruning_step)) for w in collect_wrappers(pruned)]
    assert steps == [16, 16, 16], steps  # 16 batches (a double count gave 32)


@no_spe_on_torch
def test_steps_per_execution_constant_sparsity_reaches_its_target():
    x, y = blobs(n=256)
    # frequency=4 puts updates at steps 4, 8, ...: inside executions of 8 steps
    # (1-8, 9-16, ...), so each is applied at its execution's end.
    schedule = kg.ConstantSparsity(0.5, begin_step=0, frequency=4)
    pruned = kg.prune_low_magnitude(mlp(), pruning_schedule=schedule)
    pruned.compile(keras.optimizers.Muon(0.02),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   steps_per_execution=8)
    seen = []

    class AfterExecution(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            ws = collect_wrappers(self.model)
            seen.append((kg.callbacks.overall_sparsity(ws),
                         sum(sum(masked_nonzeros(w)) for w in ws), ws[0].current_step()))

    with pytest.warns(UserWarning, match="steps_per_execution=8.*up to 7 steps late"):
        pruned.fit(x, y, epochs=2, batch_size=16, verbose=0,
                   callbacks=[kg.UpdatePruningStep(), AfterExecution()])
    # 16 batches per epoch, 4 executions in all; masked weights exactly 0 after each.
    assert [s for _, _, s in seen] == [8, 16, 24, 32]
    assert [bad for _, bad, _ in seen] == [0, 0, 0, 0]
    # The step-4 update is applied after execution 1 (not lost, as it was).
    assert seen[0][0] == 0.0 and seen[1][0] == pytest.approx(0.5, abs=1e-2)
    assert kg.callbacks.overall_sparsity(collect_wrappers(pruned)) == pytest.approx(0.5, abs=1e-2)
    assert [int(np_(w.pruning_step)) for w in collect_wrappers(pruned)] == [32, 32, 32]


@no_spe_on_torch
def test_steps_per_execution_aligned_update_is_exact():
    x, y = blobs(n=128)
    # Executions of 4 steps start at steps 1, 5, 9, ...: an update at step 5 is exact.
    schedule = kg.ConstantSparsity(0.5, begin_step=5, end_step=5, frequency=1)
    pruned = kg.prune_low_magnitude(mlp(), pruning_schedule=schedule)
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   steps_per_execution=4)
    seen = []

    class Before(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(kg.callbacks.overall_sparsity(collect_wrappers(self.model)))

    pruned.fit(x, y, epochs=1, batch_size=16, verbose=0,
               callbacks=[kg.UpdatePruningStep(), Before()])
    assert seen[0] == 0.0 and seen[1] == pytest.approx(0.5, abs=1e-2)


@no_spe_on_torch
def test_steps_per_execution_cgap_ends_at_target_with_no_partition_dense():
    x, y = blobs(n=256)
    pruned = kg.prune_gap(mlp(), target_sparsity=0.8, num_partitions=2, steps_per_step=6,
                          rounds=1, finetune_steps=6, partitioning="sequential")
    pruned.compile(keras.optimizers.Adam(0.01),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   steps_per_execution=4)
    with pytest.warns(UserWarning, match="applied at its end"):
        pruned.fit(x, y, epochs=2, batch_size=32, verbose=0,
                   callbacks=[kg.GaPCallback(verbose=0)])
    for w in collect_wrappers(pruned):
        for n, kept in w.mask_counts():
            assert kept == kg.masks.num_to_keep(n, 0.8), (w.name, n, kept)
        assert masked_nonzeros(w) == [0] * len(w.masks)


def test_checkpoint_in_the_middle_of_an_epoch_carries_its_step(tmp_path):
    x, y = blobs(n=192)
    schedule = kg.PolynomialDecay(0.0, 0.7, begin_step=0, end_step=12, frequency=2)

    def fresh():
        keras.utils.set_random_seed(3)
        p = kg.prune_low_magnitude(mlp(), pruning_schedule=schedule)
        return compile_model(p, keras.optimizers.SGD(0.05, momentum=0.9))

    path = str(tmp_path / "mid.keras")
    first = fresh()
    saved = {}

    class SaveAtBatch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 3 and not saved:  # step 4 of 6 in the first epoch
                self.model.save(path)
                saved["masks"] = [np_(m) for w in collect_wrappers(self.model) for m in w.masks]

    first.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0,
              callbacks=[kg.UpdatePruningStep(), SaveAtBatch()])
    loaded = keras.saving.load_model(path)
    assert [int(np_(w.pruning_step)) for w in collect_wrappers(loaded)] == [4, 4, 4]
    np.testing.assert_array_equal(
        np.concatenate([m.ravel() for m in saved["masks"]]),
        np.concatenate([np_(m).ravel() for w in collect_wrappers(loaded) for m in w.masks]))
    # The optimizer state came back too: the file holds the compiled optimizer's variables.
    assert int(np_(loaded.optimizer.iterations)) == 4
    # Resuming on the epoch's last two batches (steps 5 and 6; a mask update is due at
    # step 6) ends where the uninterrupted run ended: same masks, same weights.
    loaded.fit(x[128:], y[128:], epochs=1, batch_size=32, shuffle=False, verbose=0,
               callbacks=[kg.UpdatePruningStep()])
    assert [int(np_(w.pruning_step)) for w in collect_wrappers(loaded)] == [6, 6, 6]
    for a, b in zip(collect_wrappers(first), collect_wrappers(loaded)):
        for ma, mb in zip(a.masks, b.masks):
            np.testing.assert_array_equal(np_(ma), np_(mb))
    for va, vb in zip(first.trainable_variables, loaded.trainable_variables):
        np.testing.assert_allclose(np_(va), np_(vb), rtol=1e-5, atol=1e-6)
