"""GaP restarts: reset_optimizer="fresh" is a new optimizer at every boundary,
StepLR restarts the learning rate per GaP step, loss scaling survives."""

import keras
import numpy as np
import pytest

import keras_gap as kg
from keras_gap import optimizer_state
from keras_gap.wrapper import collect_wrappers


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12)).astype("float32")
    y = (x[:, :6].sum(axis=1) > x[:, 6:].sum(axis=1)).astype("int32")
    return x, y


def _model():
    return keras.Sequential([
        keras.Input((12,)),
        keras.layers.Dense(16, activation="relu", name="d1"),
        keras.layers.Dense(16, activation="relu", name="d2"),
        keras.layers.Dense(2, name="d3"),
    ])


def _gap_model(steps_per_step=3, finetune_steps=2):
    return kg.prune_gap(_model(), target_sparsity=0.75, num_partitions=2,
                        steps_per_step=steps_per_step, rounds=1,
                        finetune_steps=finetune_steps, partitioning="sequential")


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _np(v):
    return np.asarray(keras.ops.convert_to_numpy(v))


class BoundaryProbe(keras.callbacks.Callback):
    """At the first boundary after the first batch (the masks change), keeps
    a stripped copy of the model as it enters that batch, and the weights and
    masks after the batch."""

    def __init__(self):
        super().__init__()
        self.batches = 0
        self.masks = None
        self.before = None  # stripped model as the boundary batch starts
        self.after = None   # {layer name: [weights]} after the boundary batch
        self.kept = None    # {layer name: [masks]} of that batch

    def on_train_batch_begin(self, batch, logs=None):
        model = self.model  # JAX: sync the trainer's state
        masks = {w.layer.name: [_np(m) for m in w.masks] for w in collect_wrappers(model)}
        changed = self.masks is not None and any(
            not np.array_equal(a, b) for n in masks for a, b in zip(masks[n], self.masks[n]))
        self.masks = masks
        if changed and self.before is None:
            stripped = kg.strip_pruning(model)  # shares the inner layers' variables
            self.before = keras.models.clone_model(stripped)
            self.before.set_weights(stripped.get_weights())
            self.kept = masks

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.before is not None and self.after is None:
            self.after = {w.layer.name: [_np(v) for v in w.layer.trainable_weights]
                          for w in collect_wrappers(self.model)}


def _boundary_update(optimizer, reset):
    """(update of the boundary batch under GaP, a fresh optimizer's update)."""
    keras.utils.set_random_seed(0)
    x, y = _data()
    pruned = _gap_model()
    pruned.compile(optimizer, _loss())
    probe = BoundaryProbe()
    pruned.fit(x, y, batch_size=len(x), epochs=8, shuffle=False, verbose=0,
               callbacks=[kg.GaPCallback(reset_optimizer=reset, verbose=0), probe])
    assert probe.before is not None and probe.after is not None
    reference = probe.before
    before = {l.name: [_np(v) for v in l.trainable_weights] for l in reference.layers}
    fresh = optimizer.__class__.from_config(optimizer.get_config())
    reference.compile(fresh, _loss())
    reference.train_on_batch(x, y)
    got, want = [], []
    for layer in reference.layers:
        for i, (w0, w_ref, w_gap) in enumerate(zip(before[layer.name],
                                                   [_np(v) for v in layer.trainable_weights],
                                                   probe.after[layer.name])):
            # Compare where the weight is trained (mask 1; biases everywhere).
            keep = probe.kept[layer.name][0] if i == 0 else np.ones_like(w0)
            got.append((w_gap - w0)[keep > 0])
            want.append((w_ref - w0)[keep > 0])
    return np.concatenate(got), np.concatenate(want)


def _adam():
    return keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-2, 20))


def _sgd():
    return keras.optimizers.SGD(0.05, momentum=0.9)


@pytest.mark.core
@pytest.mark.parametrize("make_optimizer", [_adam, _sgd], ids=["adam_cosine", "sgd_momentum"])
def test_fresh_first_update_after_boundary_equals_new_optimizer(make_optimizer):
    got, want = _boundary_update(make_optimizer(), "fresh")
    assert np.abs(want).max() > 1e-4  # the step does move the weights
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.core
@pytest.mark.parametrize("make_optimizer,reset", [(_adam, "all"), (_sgd, "none")],
                         ids=["adam_all", "sgd_none"])
def test_other_resets_are_not_a_new_optimizer(make_optimizer, reset):
    # "all" keeps Adam's step counter (bias correction, LR schedule); "none"
    # keeps SGD's momentum: the first update differs from a new optimizer's.
    got, want = _boundary_update(make_optimizer(), reset)
    assert np.abs(got - want).max() > 1e-3


class OptimizerProbe(keras.callbacks.Callback):
    """Records (iterations, learning rate) as every batch starts."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_begin(self, batch, logs=None):
        opt = self.model.optimizer
        self.seen.append((int(_np(opt.iterations)), float(_np(opt.learning_rate))))


@pytest.mark.core
def test_step_lr_restarts_at_every_boundary_and_spans_finetuning():
    keras.utils.set_random_seed(1)
    x, y = _data()
    pruned = _gap_model(steps_per_step=4, finetune_steps=8)
    pruned.compile(keras.optimizers.Adam(1.0), _loss())
    step_lr = kg.gap.StepLR(peak=0.01, warmup=0.25, shape="linear")
    probe = OptimizerProbe()
    epochs = 2 * 4 + 8  # two GaP steps of 4 batches, 8 fine-tuning batches
    pruned.fit(x, y, batch_size=len(x), epochs=epochs, verbose=0,
               callbacks=[kg.GaPCallback(reset_optimizer="fresh", step_lr=step_lr,
                                         verbose=0), probe])
    iterations = [it for it, _ in probe.seen]
    rates = [lr for _, lr in probe.seen]
    assert iterations == [0, 1, 2, 3] * 2 + list(range(8))
    expected = [step_lr(i, 4) for i in range(4)] * 2 + [step_lr(i, 8) for i in range(8)]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)
    assert rates[0] == pytest.approx(0.01) and rates[8] == pytest.approx(0.005)


@pytest.mark.core
def test_fresh_keeps_loss_scaling_working():
    keras.utils.set_random_seed(2)
    x, y = _data()
    pruned = _gap_model()
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-2))
    pruned.compile(optimizer, _loss())
    probe = OptimizerProbe()
    history = pruned.fit(x, y, batch_size=len(x), epochs=8, verbose=0,
                         callbacks=[kg.GaPCallback(reset_optimizer="fresh", verbose=0),
                                    probe])
    assert [it for it, _ in probe.seen] == [0, 1, 2, 0, 1, 2, 0, 1]
    scale = float(_np(optimizer.dynamic_scale))
    assert np.isfinite(scale) and scale > 0
    assert all(np.isfinite(history.history["loss"]))
    for v in pruned.trainable_variables:
        assert np.all(np.isfinite(_np(v)))


@pytest.mark.core
def test_restart_resets_slots_iterations_and_nadam_product():
    model = _model()
    optimizer = keras.optimizers.Nadam(1e-2)
    model.compile(optimizer, _loss())
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert int(_np(optimizer.iterations)) == 4
    reset = optimizer_state.restart(optimizer, model.trainable_variables)
    assert reset == 2 * len(model.trainable_variables)  # momentum + velocity each
    assert int(_np(optimizer.iterations)) == 0
    assert float(_np(optimizer._u_product)) == 1.0
    for v in model.trainable_variables:
        for slot in optimizer_state.slot_variables(optimizer, v):
            assert not np.any(_np(slot))


@pytest.mark.core
def test_step_lr_values_and_serialization():
    lr = kg.gap.StepLR(peak=2e-3, warmup=0.1, shape="cosine", alpha=0.1)
    assert lr(0, 100) == pytest.approx(2e-4)
    assert lr(9, 100) == pytest.approx(2e-3)
    assert lr(10, 100) == pytest.approx(2e-3)
    assert lr(55, 100) == pytest.approx(2e-3 * (0.1 + 0.9 * 0.5))
    assert kg.gap.StepLR(1.0, shape="linear")(5, 10) == pytest.approx(0.5)
    assert kg.gap.StepLR(1.0, warmup=0.5, shape="constant")(9, 10) == 1.0
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(lr))
    assert isinstance(restored, kg.gap.StepLR)
    assert restored.get_config() == lr.get_config()
    assert [restored(i, 37) for i in range(37)] == [lr(i, 37) for i in range(37)]
    # A config dict is accepted where a StepLR is.
    assert kg.GaPCallback(step_lr=lr.get_config(), verbose=0).step_lr(3, 10) == lr(3, 10)


def test_step_lr_and_reset_errors():
    for kwargs, match in [({"peak": 0}, "peak"), ({"peak": 1e-3, "warmup": 1.0}, "warmup"),
                          ({"peak": 1e-3, "shape": "step"}, "shape"),
                          ({"peak": 1e-3, "alpha": 2.0}, "alpha")]:
        with pytest.raises(ValueError, match=match):
            kg.gap.StepLR(**kwargs)
    with pytest.raises(ValueError, match="fresh.*received 'new'"):
        kg.GaPCallback(reset_optimizer="new")
    with pytest.raises(ValueError, match="step_lr.*received 0.1"):
        kg.GaPCallback(step_lr=0.1)
    x, y = _data()
    pruned = _gap_model()
    pruned.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-2, 9)),
                   _loss())
    with pytest.raises(ValueError, match="float learning rate.*CosineDecay"):
        pruned.fit(x, y, batch_size=len(x), epochs=1, verbose=0,
                   callbacks=[kg.GaPCallback(step_lr=kg.gap.StepLR(1e-2), verbose=0)])
