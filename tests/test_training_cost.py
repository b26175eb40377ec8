"""TrainingCost: training MACs relative to dense training, counted by hand."""

import numpy as np
import pytest
import keras

import keras_gap as kg
from keras_gap import masks as mask_lib
from keras_gap.wrapper import collect_wrappers
from pruning_testlib import compile_model

pytestmark = pytest.mark.core
L = keras.layers

# 16 -> Dense(32) -> BN -> Dense(10): kernels 512 and 320 MACs, BN 32 (never pruned).
KERNEL_MACS, FIXED_MACS = 512 + 320, 32
DENSE_MACS = KERNEL_MACS + FIXED_MACS
NEVER = 10 ** 6   # a begin_step no test reaches: only the test edits masks


def _model():
    return keras.Sequential([keras.Input((16,)), L.Dense(32, name="d1"),
                             L.BatchNormalization(), L.Dense(10, name="d2")])


def _data(n=64):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(n, 16)).astype("float32"),
            rng.integers(0, 10, size=n).astype("int32"))


def _forward_macs_at(sparsity):
    kept = mask_lib.num_to_keep(512, sparsity) + mask_lib.num_to_keep(320, sparsity)
    return FIXED_MACS + kept


def test_dense_model_costs_exactly_one():
    model = _model()
    compile_model(model)
    cost = kg.TrainingCost()
    history = model.fit(*_data(), batch_size=16, epochs=2, verbose=0, callbacks=[cost])
    assert cost.steps == 8
    assert cost.relative == 1.0
    assert history.history["train_macs_ratio"] == [1.0, 1.0]
    assert cost.dense_train_macs == cost.train_macs == 3 * 8 * DENSE_MACS


def test_constant_75_percent_costs_its_density_on_wrapped_layers():
    pruned = kg.prune_low_magnitude(
        _model(), pruning_schedule=kg.ConstantSparsity(0.75, begin_step=NEVER))
    for w in collect_wrappers(pruned):
        w.update_masks(0.75)
    compile_model(pruned)
    cost = kg.TrainingCost()
    pruned.fit(*_data(), batch_size=16, epochs=1, verbose=0,
               callbacks=[kg.UpdatePruningStep(), cost])
    # (32 + 128 + 80) / (32 + 512 + 320) = 240 / 864
    assert cost.relative == pytest.approx(240 / 864)
    assert cost.relative == pytest.approx(_forward_macs_at(0.75) / DENSE_MACS)


class _EditAtBatch(keras.callbacks.Callback):
    """Prunes every wrapper to ``sparsity`` at the start of batch ``at``."""

    def __init__(self, at, sparsity):
        super().__init__()
        self.at, self.sparsity = at, sparsity

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.at:
            for w in collect_wrappers(self.model):
                w.update_masks(self.sparsity)


@pytest.mark.parametrize("order", ["cost_last", "cost_first"])
def test_mask_change_mid_training_is_charged_from_its_batch_in_any_order(order):
    pruned = kg.prune_low_magnitude(
        _model(), pruning_schedule=kg.ConstantSparsity(0.75, begin_step=NEVER))
    compile_model(pruned)
    cost, edit, step = kg.TrainingCost(), _EditAtBatch(3, 0.75), kg.UpdatePruningStep()
    callbacks = [edit, step, cost] if order == "cost_last" else [cost, step, edit]
    history = pruned.fit(*_data(), batch_size=8, epochs=1, verbose=0, callbacks=callbacks)
    # Batches 0-2 dense, batches 3-7 at 75%.
    expected = (3 * DENSE_MACS + 5 * _forward_macs_at(0.75)) / (8 * DENSE_MACS)
    assert cost.steps == 8
    assert cost.relative == pytest.approx(expected)
    assert history.history["train_macs_ratio"][0] == pytest.approx(expected)


def test_gradual_pruning_costs_between_dense_and_final_density():
    pruned = kg.prune_low_magnitude(
        _model(), pruning_schedule=kg.PolynomialDecay(0.0, 0.75, begin_step=2, end_step=10,
                                                      frequency=2))
    compile_model(pruned)
    cost = kg.TrainingCost()
    history = pruned.fit(*_data(), batch_size=16, epochs=4, verbose=0,
                         callbacks=[kg.UpdatePruningStep(), cost])
    ratios = history.history["train_macs_ratio"]
    assert ratios[0] > ratios[-1] > _forward_macs_at(0.75) / DENSE_MACS
    assert ratios == sorted(ratios, reverse=True)      # cumulative, density falls
    assert cost.relative == ratios[-1]


def test_gap_grown_partition_counts_dense():
    pruned = kg.prune_gap(_model(), target_sparsity=0.75, num_partitions=2, rounds=1,
                          epochs_per_step=1, finetune_epochs=1)
    compile_model(pruned)
    cost = kg.TrainingCost()
    pruned.fit(*_data(), batch_size=16, epochs=kg.gap_total_epochs(pruned), verbose=0,
               callbacks=[kg.GaPCallback(verbose=0), cost])
    # While a partition is grown its kernel costs in full: above the 75% floor.
    assert _forward_macs_at(0.75) / DENSE_MACS < cost.relative < 1.0


def test_one_callback_per_model_and_log_name_checked():
    with pytest.raises(ValueError, match="log_name"):
        kg.TrainingCost(log_name="")
    cost = kg.TrainingCost()
    for _ in range(2):
        model = _model()
        compile_model(model)
        if cost.steps:
            with pytest.raises(ValueError, match="another model"):
                model.fit(*_data(16), epochs=1, verbose=0, callbacks=[cost])
        else:
            model.fit(*_data(16), epochs=1, verbose=0, callbacks=[cost])
