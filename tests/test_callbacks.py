"""UpdatePruningStep logs and PruningSummaries event files."""

import glob
import os

import pytest
import keras

import keras_gap as kg
from pruning_testlib import blobs, compile_model, mlp


def _fit(callbacks, epochs=2):
    x, y = blobs(n=64)
    schedule = kg.ConstantSparsity(0.6, begin_step=0, frequency=1)
    pruned = compile_model(kg.prune_low_magnitude(mlp(), pruning_schedule=schedule))
    history = pruned.fit(x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=callbacks)
    return pruned, history


@pytest.mark.core
def test_sparsity_is_in_history_and_batch_logs():
    seen = []
    batch_logger = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append(logs.get("sparsity")))
    pruned, history = _fit([kg.UpdatePruningStep(), batch_logger])
    assert "sparsity" in history.history, history.history.keys()
    expected = kg.callbacks.overall_sparsity(kg.wrapper.collect_wrappers(pruned))
    assert history.history["sparsity"] == [pytest.approx(expected)] * 2
    assert expected == pytest.approx(0.6, abs=0.01)
    assert len(seen) == 8 and all(s == pytest.approx(expected) for s in seen)


def _read_scalars(log_dir):
    import tensorflow as tf
    values = {}
    for path in glob.glob(os.path.join(log_dir, "**", "events.out.tfevents*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                values.setdefault(v.tag, []).append(
                    (event.step, float(tf.make_ndarray(v.tensor))))
    return values


def test_pruning_summaries_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard", reason="PruningSummaries needs TensorBoard")
    log_dir = str(tmp_path / "logs")
    pruned, _ = _fit([kg.UpdatePruningStep(), kg.PruningSummaries(log_dir=log_dir)])
    files = glob.glob(os.path.join(log_dir, "**", "events.out.tfevents*"), recursive=True)
    assert files, f"no event files under {log_dir}"
    scalars = _read_scalars(log_dir)
    assert "sparsity/overall" in scalars and "pruning_step" in scalars
    per_weight = [t for t in scalars if t.startswith("sparsity/") and t != "sparsity/overall"]
    assert len(per_weight) == 3, per_weight
    steps = [s for s, _ in scalars["sparsity/overall"]]
    assert steps == [4, 8], "one write per epoch at the pruning step"
    assert scalars["sparsity/overall"][-1][1] == pytest.approx(0.6, abs=0.01)


def test_pruning_summaries_update_freq_batches(tmp_path):
    pytest.importorskip("tensorboard", reason="PruningSummaries needs TensorBoard")
    log_dir = str(tmp_path / "logs")
    _fit([kg.UpdatePruningStep(), kg.PruningSummaries(log_dir=log_dir, update_freq=2)],
         epochs=1)
    steps = [s for s, _ in _read_scalars(log_dir)["sparsity/overall"]]
    assert steps == [2, 4, 4], steps


@pytest.mark.core
@pytest.mark.parametrize("kwargs, match", [
    ({"log_dir": ""}, "log_dir"), ({"log_dir": None}, "log_dir"),
    ({"log_dir": "x", "update_freq": 0}, "update_freq"),
    ({"log_dir": "x", "update_freq": "batch"}, "update_freq"),
])
def test_pruning_summaries_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kg.PruningSummaries(**kwargs)


@pytest.mark.core
def test_overall_sparsity_counts_all_wrappers():
    pruned = kg.prune_low_magnitude(mlp())
    wrappers = kg.wrapper.collect_wrappers(pruned)
    assert kg.callbacks.overall_sparsity(wrappers) == 0.0
    wrappers[0].update_masks(0.5)
    n0 = wrappers[0].mask_counts()[0][0]
    total = sum(w.mask_counts()[0][0] for w in wrappers)
    assert kg.callbacks.overall_sparsity(wrappers) == pytest.approx(0.5 * n0 / total)
    assert kg.callbacks.overall_sparsity([]) == 0.0


@pytest.mark.core
def test_a_recompile_between_fits_uses_the_new_loss():
    """The guarded train step is reused across fits only while the model was not
    recompiled (compile() resets train_function); a recompile takes the new loss."""
    x, y = blobs(n=64)
    schedule = kg.ConstantSparsity(0.6, begin_step=0, frequency=1)
    pruned = compile_model(kg.prune_low_magnitude(mlp(), pruning_schedule=schedule))
    pruned.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[kg.UpdatePruningStep()])
    again = pruned.fit(x, y, batch_size=16, epochs=1, verbose=0,
                       callbacks=[kg.UpdatePruningStep()])
    assert again.history["loss"][0] < 5.0  # the cross-entropy step, reused

    def seven(y_true, y_pred):
        return keras.ops.mean(y_pred) * 0.0 + 7.0

    pruned.compile(optimizer=pruned.optimizer, loss=seven)
    history = pruned.fit(x, y, batch_size=16, epochs=1, verbose=0,
                         callbacks=[kg.UpdatePruningStep()])
    assert history.history["loss"][0] == pytest.approx(7.0)
